//! HTTP: every route Signet serves, assembled in [`router`]. Each module owns its
//! `router()`; handlers read [`AppState`] and call the services below them.

pub mod api;
pub mod client_ip;
pub mod error;
pub mod events;
pub mod health;
pub mod metrics;
pub mod ui;
pub mod wellknown;

use crate::app::{App, shell};
use crate::server::accounts::sessions;
use crate::server::state::AppState;
use axum::Router;
use axum::middleware::{from_fn, from_fn_with_state};
use leptos_axum::{LeptosRoutes as _, generate_route_list};

/// The whole application: the admin UI behind sessions, the API behind tokens, and the
/// public well-known, health and metrics routes.
pub fn router(state: AppState) -> Router {
    let routes = generate_route_list(App);
    // The admin UI (pages, server functions, event stream, exports) runs behind the
    // session layer and the sign-in gate; the JWKS, health and API routes never touch
    // a session.
    let ui = Router::new()
        .leptos_routes(&state, routes, {
            let options = (*state.leptos_options).clone();
            move || shell(options.clone())
        })
        .merge(ui::router())
        .merge(events::router())
        .layer(from_fn(ui::bad_arguments_are_400))
        .layer(from_fn_with_state(state.clone(), ui::page_gate))
        .layer(sessions::layer(state.storage.clone(), &state.config));
    let api = api::router().layer(from_fn(error::log_internal));
    let with_headers = Router::new()
        .merge(health::router())
        .merge(metrics::router())
        .nest("/api/v1", api)
        // `/api/v1/` itself is not an endpoint, but it is the API's: answer in JSON.
        .route("/api/v1/", axum::routing::any(error::not_found))
        .merge(ui)
        .fallback(leptos_axum::file_and_error_handler::<AppState, _>(shell))
        .layer(from_fn(ui::security_headers));
    // The well-known routes set their own few headers: the JWKS is the hot path, served
    // from precomputed bytes, and skips the middleware.
    Router::new()
        .merge(wellknown::router(&state))
        .merge(with_headers)
        .with_state(state)
}
