//! Everything that only runs on the server: configuration, startup, storage, HTTP routes
//! and the command line. Compiled only with the `ssr` feature.

pub mod api;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod files;
pub mod health;
pub mod jwt;
pub mod kek;
pub mod keys;
pub mod live;
pub mod metrics;
pub mod pem;
pub mod scheduler;
pub mod session;
pub mod startup;
pub mod state;
pub mod storage;
pub mod telemetry;
pub mod tokens;
pub mod web;
pub mod wellknown;

pub use config::Config;
pub use startup::{Application, ServeOptions};
pub use state::AppState;

#[cfg(test)]
mod fuzz_tests;
