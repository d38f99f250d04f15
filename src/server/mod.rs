//! Everything that only runs on the server: configuration, storage, the services, HTTP
//! routes and the command line. Compiled only with the `ssr` feature.
//!
//! # Layout
//!
//! Each layer may use the layers below it, never one above (`layout_tests` checks this):
//!
//! | layer | modules | what they do |
//! |---|---|---|
//! | entry points | [`startup`], [`cli`] | build and run the server; the `signet` commands |
//! | background | [`scheduler`] | the rotation loop and housekeeping |
//! | HTTP | [`http`] | every route: the REST API, the UI's extra routes, well-known, health, metrics |
//! | wiring | [`state`] | what every handler and server function can reach |
//! | answers | [`error`] | how a service failure is answered (status, message), for API and UI |
//! | services | [`keys`], [`accounts`], [`events`] | the key lifecycle and signing; admins, sessions, API tokens; reading the audit log |
//! | storage | [`storage`] | the database behind small traits, SQLite and PostgreSQL |
//! | records | [`audit`] | audit events, who caused them, their hash chain |
//! | settings | [`config`], [`telemetry`] | configuration from file and environment; logging |
//! | primitives | [`crypto`], [`files`] | keys, sealing, KEKs, PEM; private files on disk |
//!
//! The UI (`crate::app`) calls down into the services from its server functions; the
//! server uses the UI only to mount it ([`http::router`] renders `App` inside `shell`).

/// Admin accounts, browser sessions and API tokens.
pub mod accounts;
/// Audit events, their actors and their hash chain.
pub mod audit;
/// The `signet` command line.
pub mod cli;
/// Settings from `signet.toml` and `SIGNET_*` variables.
pub mod config;
/// Key pairs, sealing under KEKs, the KEKs, PEM.
pub mod crypto;
/// How failures are answered, the same for the API and the UI.
pub mod error;
/// Reading the audit log: filters, pages, the live tail.
pub mod events;
/// Files only Signet's user may read.
pub mod files;
/// Every HTTP route.
pub mod http;
/// The key service: lifecycle, snapshot, schedule, JWTs.
pub mod keys;
/// Scheduled rotation and housekeeping.
pub mod scheduler;
/// Building and running the server.
pub mod startup;
/// What request handlers share.
pub mod state;
/// The database.
pub mod storage;
/// Logging.
pub mod telemetry;

pub use config::Config;
pub use startup::{Application, ServeOptions};
pub use state::AppState;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod layout_tests;
