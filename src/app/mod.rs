//! The admin UI: one Leptos app, rendered on the server and hydrated in the browser.
//!
//! Pages live in their own modules. Server functions stay thin: they check the caller
//! ([`guard`]), call server code, and return a wire type from [`wire`].

mod auth;
mod components;
mod events;
mod guard;
mod jwks;
mod overview;
mod pages;
mod schedule;
mod settings;
mod timeline;
pub mod wire;

use leptos::prelude::*;
use leptos_meta::{MetaTags, Stylesheet, Title, provide_meta_context};
use leptos_router::components::{A, Route, Router, Routes};
use leptos_router::{Lazy, LazyRoute, lazy_route, path};
use wire::Me;

/// The HTML document around the app. On the server it also sets the page's CSP, whose
/// script nonce Leptos puts on the hydration scripts.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    #[cfg(feature = "ssr")]
    if let (Some(nonce), Some(res)) = (
        leptos::nonce::use_nonce(),
        use_context::<leptos_axum::ResponseOptions>(),
    ) && let Ok(value) =
        axum::http::HeaderValue::from_str(&crate::server::http::ui::page_csp(&nonce))
    {
        res.insert_header(axum::http::header::CONTENT_SECURITY_POLICY, value);
    }
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

/// The signed-in admin, loaded once per page load and shared with every page.
pub type MeResource = Resource<Result<Option<Me>, ServerFnError>>;

/// Whether the signed-in admin may change things. Pages render their changing controls
/// disabled until this is true, which is never for a viewer.
pub fn can_change() -> Signal<bool> {
    let me = use_context::<MeResource>();
    Signal::derive(move || {
        me.and_then(|m| m.get())
            .and_then(Result::ok)
            .flatten()
            .is_some_and(|m| m.role == crate::domain::Role::Admin && !m.must_change_password)
    })
}

/// A signal that turns true once the page has hydrated: an Effect runs only in the
/// browser, so controls that need the wasm stay disabled until a click can work.
pub fn hydrated() -> ReadSignal<bool> {
    let (get, set) = signal(false);
    Effect::new(move |_| set.set(true));
    get
}

#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    let me: MeResource = Resource::new(|| (), |()| auth::who_am_i());
    provide_context(me);
    view! {
        <Stylesheet id="leptos" href="/pkg/signet.css" />
        <Title formatter=|page: String| format!("{page} · Signet") />
        <Router>
            <Nav />
            <main id="main">
                <Routes fallback=pages::NotFound>
                    <Route path=path!("/") view={Lazy::<OverviewRoute>::new()} />
                    <Route path=path!("/login") view={Lazy::<LoginRoute>::new()} />
                    <Route path=path!("/account/password") view={Lazy::<PasswordRoute>::new()} />
                    <Route path=path!("/config/jwks") view={Lazy::<JwksRoute>::new()} />
                    <Route path=path!("/config/schedule") view={Lazy::<ScheduleRoute>::new()} />
                    <Route path=path!("/events") view={Lazy::<EventsRoute>::new()} />
                    <Route path=path!("/settings") view={Lazy::<SettingsRoute>::new()} />
                </Routes>
            </main>
        </Router>
    }
}

/// Declares a page as a lazy route. Built with `cargo leptos --split` (as `./dev` builds),
/// each page's code goes into its own wasm file, which the browser fetches when it first
/// shows that page; the bundle every page loads holds only the shell, the navigation and
/// what pages share. A page starts its own data loads when it renders, so `data` is empty.
macro_rules! lazy_pages {
    ($($route:ident => $page:path),* $(,)?) => {$(
        struct $route;

        #[lazy_route]
        impl LazyRoute for $route {
            fn data() -> Self {
                Self
            }

            fn view(_this: Self) -> AnyView {
                $page().into_any()
            }
        }
    )*};
}

lazy_pages! {
    OverviewRoute => overview::OverviewPage,
    LoginRoute => auth::LoginPage,
    PasswordRoute => auth::PasswordPage,
    JwksRoute => jwks::JwksPage,
    ScheduleRoute => schedule::SchedulePage,
    EventsRoute => events::EventsPage,
    SettingsRoute => settings::SettingsPage,
}

#[component]
fn Nav() -> impl IntoView {
    let me = expect_context::<MeResource>();
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
                    <li><A href="/settings">"Settings"</A></li>
                </ul>
            </nav>
            <Transition fallback=|| ()>
                {move || Suspend::new(async move {
                    match me.await {
                        Ok(Some(m)) => view! { <Account me=m /> }.into_any(),
                        _ => view! { <A href="/login" attr:class="signin">"Sign in"</A> }.into_any(),
                    }
                })}
            </Transition>
        </header>
    }
}

/// Who is signed in, and the sign-out button.
#[component]
fn Account(me: Me) -> impl IntoView {
    let ready = hydrated();
    let sign_out = ServerAction::<auth::SignOut>::new();
    Effect::new(move |_| {
        // Signed out, or the session had already ended: either way, to the sign-in page.
        if sign_out.value().get().is_some() {
            auth::go("/login");
        }
    });
    view! {
        <div class="account">
            <span class="who" title="Signed in">
                <span id="me-email">{me.email}</span>
                " "
                <span class=format!("role {}", me.role)>{me.role.to_string()}</span>
            </span>
            <button
                type="button"
                class="ghost"
                id="sign-out"
                disabled=move || !ready.get() || sign_out.pending().get()
                on:click=move |_| {
                    sign_out.dispatch(auth::SignOut {});
                }
            >
                "Sign out"
            </button>
        </div>
    }
}
