//! The state every request handler and server function can reach.

use crate::server::config::Config;
use crate::server::crypto::kek::Keyring;
use crate::server::keys::KeyService;
use crate::server::storage::Storage;
use axum::extract::FromRef;
use leptos::prelude::LeptosOptions;
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub storage: Arc<dyn Storage>,
    pub keyring: Arc<Keyring>,
    pub keys: Arc<KeyService>,
    /// API tokens recently accepted, honoured for a short while during a database outage.
    pub recent_tokens: Arc<crate::server::accounts::tokens::RecentTokens>,
    /// The live tail's shared poller and stream caps.
    pub tail: Arc<crate::server::events::Tail>,
    /// Behind an `Arc`, so the per-request clone of the state stays a few counter
    /// increments.
    pub leptos_options: Arc<LeptosOptions>,
}

impl FromRef<AppState> for LeptosOptions {
    fn from_ref(state: &AppState) -> Self {
        (*state.leptos_options).clone()
    }
}
