//! Integration tests: the real server on port 0, a fresh SQLite file or a fresh
//! PostgreSQL database per test, and the real `signet` binary for the CLI.
#![cfg(feature = "ssr")]
#![allow(clippy::unwrap_used)]

mod admin;
mod api;
mod audit_mac;
mod badinput;
mod cli;
mod crash;
mod health;
mod helpers;
mod hsm;
mod interop;
mod keys;
mod live_tail;
mod migrations;
mod outage;
mod scheduler;
mod trust;
mod ui;
