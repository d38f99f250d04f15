//! Signet: a self-hosted service for JWT signing keys.
//!
//! - [`domain`]: pure types and decisions, shared by server and browser.
//! - [`app`]: the Leptos admin UI (server-rendered, hydrated in the browser).
//! - `server` (feature `ssr`): configuration, storage, HTTP and the command line.

// Leptos views are deeply nested types; the JWKS page's exceeds the default limit.
#![recursion_limit = "256"]

// The server and the browser bundle must both be built with `--cfg erase_components`
// (.cargo/config.toml sets it), or the pages fail to hydrate: a build without it stops here
// instead of shipping a UI that never comes alive.
#[cfg(not(erase_components))]
compile_error!(
    "Signet is built with `--cfg erase_components` (set in .cargo/config.toml); a RUSTFLAGS \
     or CARGO_TARGET_<TRIPLE>_RUSTFLAGS setting of your own must include it"
);

pub mod app;
pub mod domain;
#[cfg(feature = "ssr")]
pub mod server;

/// Browser entry point: attaches the server-rendered page to the wasm app. The pages are
/// lazy routes, so hydration waits for the shown page's code (`hydrate_lazy`).
#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_lazy(app::App);
}
