//! Pure types and decisions: no IO, no async, no database.
//!
//! Everything here compiles for the browser (wasm) as well as the server, so the admin UI
//! validates input with exactly the same rules the server enforces.

pub mod admin;
pub mod algorithm;
pub mod audit;
pub mod lifecycle;
pub mod retention;
pub mod schedule;
pub mod text;
pub mod time;

pub use admin::{Email, Role};
pub use algorithm::{Algorithm, AlgorithmList, RsaBits};
pub use lifecycle::{KeyInfo, KeyState, Kid, Plan, Policy, Transition};
pub use retention::Retention;
pub use schedule::CronSchedule;
pub use text::{FilterText, Reason, TextError};
