//! The admin UI: one Leptos app, rendered on the server and hydrated in the browser.
//!
//! Pages live in their own modules. Server functions stay thin: they read the server's
//! state from context, call server code, and return a wire type from [`wire`].

mod jwks;
mod login;
mod overview;
mod pages;
mod schedule;
pub mod wire;

use leptos::prelude::*;
use leptos_meta::{MetaTags, Stylesheet, Title, provide_meta_context};
use leptos_router::components::{A, Route, Router, Routes};
use leptos_router::path;

/// The HTML document around the app.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8" />
                <meta name="viewport" content="width=device-width, initial-scale=1" />
                <link rel="icon" type="image/svg+xml" href="/favicon.svg" />
                <HydrationScripts options />
                <MetaTags />
            </head>
            <body>
                <App />
            </body>
        </html>
    }
}

#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    view! {
        <Stylesheet id="leptos" href="/pkg/signet.css" />
        <Title formatter=|page: String| format!("{page} · Signet") />
        <Router>
            <Nav />
            <main id="main">
                <Routes fallback=pages::NotFound>
                    <Route path=path!("/") view=overview::OverviewPage />
                    <Route path=path!("/login") view=login::LoginPage />
                    <Route path=path!("/config/jwks") view=jwks::JwksPage />
                    <Route path=path!("/config/schedule") view=schedule::SchedulePage />
                    <Route path=path!("/events") view=pages::EventsPage />
                </Routes>
            </main>
        </Router>
    }
}

#[component]
fn Nav() -> impl IntoView {
    view! {
        <header class="topbar">
            <a class="skip" href="#main">"Skip to content"</a>
            <A href="/" attr:class="brand">"Signet"</A>
            <nav aria-label="Main">
                <ul>
                    <li class="group">
                        <span class="group-label">"Config"</span>
                        <ul>
                            <li><A href="/config/jwks">"JWKS"</A></li>
                            <li><A href="/config/schedule">"Schedule"</A></li>
                        </ul>
                    </li>
                    <li><A href="/events">"Events"</A></li>
                </ul>
            </nav>
            <A href="/login" attr:class="signin">"Sign in"</A>
        </header>
    }
}
