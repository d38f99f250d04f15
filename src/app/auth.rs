//! Signing in and out, and the one-time password change: `/login`, `/account/password`.

use super::components::failure;
use super::wire::Me;
use crate::domain::admin::{MIN_PASSWORD_CHARS, check_new_password};
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;

/// The admin behind this request's session, if any.
#[server(prefix = "/ui", endpoint = "who_am_i")]
pub async fn who_am_i() -> Result<Option<Me>, ServerFnError> {
    use crate::server::AppState;
    // Pages outside the session layer (the 404 fallback) have nobody signed in.
    let state = expect_context::<AppState>();
    let Some(session) = use_context::<axum::http::request::Parts>()
        .and_then(|p| p.extensions.get::<tower_sessions::Session>().cloned())
    else {
        return Ok(None);
    };
    let admin =
        crate::server::accounts::sessions::current(&session, state.storage.as_ref(), &state.config)
            .await
            .map_err(|e| ServerFnError::new(e.to_string()))?;
    Ok(admin.map(|a| Me {
        email: a.email.to_string(),
        role: a.role,
        must_change_password: a.must_change_password,
    }))
}

/// Where to go after signing in: a path on this site, never another site.
#[cfg(feature = "ssr")]
pub fn safe_next(next: &str) -> String {
    // Browsers drop tabs and newlines from URLs, so "/\t/evil.example" would become
    // "//evil.example": no whitespace or control characters at all.
    let local = next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && !next.chars().any(|c| c.is_whitespace() || c.is_control());
    if local && next != "/login" {
        next.to_string()
    } else {
        "/config/jwks".to_string()
    }
}

/// Checks the credentials and starts a session; returns where the browser goes next.
#[server(prefix = "/ui", endpoint = "sign_in")]
pub async fn sign_in(
    email: String,
    password: String,
    next: String,
) -> Result<String, ServerFnError> {
    use super::guard::{fault, internal, refuse, require_same_origin};
    use crate::server::accounts::admins::{self, AuthError};
    use axum::http::StatusCode;
    let (state, session, source) = require_same_origin()?;
    if password.chars().count() > crate::domain::admin::MAX_PASSWORD_CHARS
        || email.chars().count() > 320
    {
        return Err(refuse(StatusCode::BAD_REQUEST, "That input is too long."));
    }
    match admins::sign_in(state.storage.as_ref(), &email, password, source).await {
        Ok(admin) => {
            crate::server::accounts::sessions::start(&session, &admin)
                .await
                .map_err(fault)?;
            Ok(if admin.must_change_password {
                crate::server::http::ui::PASSWORD_PAGE.to_string()
            } else {
                safe_next(&next)
            })
        }
        Err(AuthError::Refused) => Err(refuse(
            StatusCode::UNAUTHORIZED,
            "Sign-in failed: the email or password is wrong.",
        )),
        Err(e @ AuthError::Throttled(_)) => Err(refuse(
            StatusCode::TOO_MANY_REQUESTS,
            format!("Sign-in refused: {e}."),
        )),
        Err(e @ AuthError::Expired(_)) => Err(refuse(
            StatusCode::UNAUTHORIZED,
            format!("Sign-in refused: {e}."),
        )),
        Err(e) => Err(internal(e)),
    }
}

/// Ends the session.
#[server(prefix = "/ui", endpoint = "sign_out")]
pub async fn sign_out() -> Result<(), ServerFnError> {
    use super::guard::{Access, require_any_password};
    let caller = require_any_password(Access::Change).await?;
    crate::server::accounts::admins::signed_out(
        caller.state.storage.as_ref(),
        &caller.admin,
        caller.source.clone(),
    )
    .await;
    crate::server::accounts::sessions::end(&caller.session).await;
    Ok(())
}

/// Replaces the signed-in admin's password. Other sessions end; this one carries on
/// under a fresh id.
#[server(prefix = "/ui", endpoint = "change_password")]
pub async fn change_password(current: String, new: String) -> Result<(), ServerFnError> {
    use super::guard::{Access, fault, internal, refuse, require_any_password};
    use crate::server::accounts::admins::{self, AuthError};
    use axum::http::StatusCode;
    let caller = require_any_password(Access::Change).await?;
    match admins::change_own_password(
        caller.state.storage.as_ref(),
        &caller.admin,
        current,
        new,
        caller.source.clone(),
    )
    .await
    {
        Ok(()) => {
            let admin = caller
                .state
                .storage
                .find_admin(&caller.admin.id)
                .await
                .map_err(internal)?
                .ok_or_else(|| fault("admin vanished"))?;
            crate::server::accounts::sessions::start(&caller.session, &admin)
                .await
                .map_err(fault)?;
            Ok(())
        }
        Err(e @ (AuthError::Password(_) | AuthError::WrongPassword)) => Err(refuse(
            StatusCode::BAD_REQUEST,
            super::guard::sentence(&e.to_string()),
        )),
        Err(e @ AuthError::Throttled(_)) => Err(refuse(
            StatusCode::TOO_MANY_REQUESTS,
            super::guard::sentence(&e.to_string()),
        )),
        Err(e) => Err(internal(e)),
    }
}

/// Sends the browser to another page with a full load, so the next page is rendered
/// with the new session cookie.
pub fn go(path: &str) {
    #[cfg(feature = "hydrate")]
    if let Some(w) = web_sys::window() {
        let _ = w.location().assign(path);
    }
    #[cfg(not(feature = "hydrate"))]
    let _ = path;
}

#[component]
pub fn LoginPage() -> impl IntoView {
    let hydrated = RwSignal::new(false);
    Effect::new(move |_| hydrated.set(true));
    let query = use_query_map();
    let next = move || query.read().get("next").unwrap_or_default();
    let action = ServerAction::<SignIn>::new();
    Effect::new(move |_| {
        if let Some(Ok(target)) = action.value().get() {
            go(&target);
        }
    });
    let email = RwSignal::new(String::new());
    let password = RwSignal::new(String::new());

    view! {
        <Title text="Sign in" />
        <section class="card narrow">
            <h1>"Sign in"</h1>
            <p class="muted">"Signet admin console. Sessions end after a while without use."</p>
            <form
                id="login-form"
                on:submit=move |ev| {
                    ev.prevent_default();
                    action.dispatch(SignIn {
                        email: email.get_untracked(),
                        password: password.get_untracked(),
                        next: next(),
                    });
                }
            >
                <label for="email">"Email"</label>
                <input
                    id="email"
                    name="email"
                    type="email"
                    autocomplete="username"
                    required=true
                    prop:value=email
                    on:input=move |ev| email.set(event_target_value(&ev))
                />
                <label for="password">"Password"</label>
                <input
                    id="password"
                    name="password"
                    type="password"
                    autocomplete="current-password"
                    required=true
                    prop:value=password
                    on:input=move |ev| password.set(event_target_value(&ev))
                />
                <button
                    type="submit"
                    class="primary"
                    disabled=move || !hydrated.get() || action.pending().get()
                >
                    {move || if action.pending().get() { "Signing in…" } else { "Sign in" }}
                </button>
            </form>
            <div aria-live="polite">
                {move || failure(action.value().get())}
            </div>
        </section>
    }
}

#[component]
pub fn PasswordPage() -> impl IntoView {
    let hydrated = RwSignal::new(false);
    Effect::new(move |_| hydrated.set(true));
    let me = Resource::new(|| (), |()| who_am_i());
    let action = ServerAction::<ChangePassword>::new();
    Effect::new(move |_| {
        if let Some(Ok(())) = action.value().get() {
            go("/config/jwks");
        }
    });
    let current = RwSignal::new(String::new());
    let new = RwSignal::new(String::new());
    let repeat = RwSignal::new(String::new());
    let problem = move || {
        let n = new.get();
        if n.is_empty() {
            return None;
        }
        if let Err(e) = check_new_password(&n) {
            return Some(e.to_string());
        }
        let r = repeat.get();
        (!r.is_empty() && r != n).then(|| "the two new passwords differ".to_string())
    };

    view! {
        <Title text="Choose a password" />
        <section class="card narrow">
            <h1>"Choose a password"</h1>
            <Suspense fallback=|| ()>
                {move || Suspend::new(async move {
                    match me.await {
                        Ok(Some(m)) if m.must_change_password => view! {
                            <p class="notice" role="status">
                                "You signed in as " <strong>{m.email}</strong>
                                " with a one-time password. Choose your own before going on."
                            </p>
                        }.into_any(),
                        _ => ().into_any(),
                    }
                })}
            </Suspense>
            <form on:submit=move |ev| {
                ev.prevent_default();
                if new.get_untracked() != repeat.get_untracked() {
                    return;
                }
                action.dispatch(ChangePassword {
                    current: current.get_untracked(),
                    new: new.get_untracked(),
                });
            }>
                <label for="current-password">"Current password"</label>
                <input id="current-password" type="password" autocomplete="current-password" required=true
                    prop:value=current on:input=move |ev| current.set(event_target_value(&ev)) />
                <label for="new-password">{format!("New password ({MIN_PASSWORD_CHARS} characters or more)")}</label>
                <input id="new-password" type="password" autocomplete="new-password" required=true
                    aria-describedby="password-hint"
                    prop:value=new on:input=move |ev| new.set(event_target_value(&ev)) />
                <label for="repeat-password">"New password again"</label>
                <input id="repeat-password" type="password" autocomplete="new-password" required=true
                    aria-describedby="password-hint"
                    prop:value=repeat on:input=move |ev| repeat.set(event_target_value(&ev)) />
                <p id="password-hint" class="hint" aria-live="polite">{move || problem().unwrap_or_default()}</p>
                <button type="submit" class="primary"
                    disabled=move || !hydrated.get() || action.pending().get() || problem().is_some()>
                    "Save password"
                </button>
            </form>
            <div aria-live="polite">
                {move || failure(action.value().get())}
            </div>
        </section>
    }
}

#[cfg(all(test, feature = "ssr"))]
mod tests {
    use super::safe_next;

    #[test]
    fn sign_in_only_redirects_within_the_site() {
        assert_eq!(
            safe_next("/events?kind=keys.rotated"),
            "/events?kind=keys.rotated"
        );
        for outside in [
            "https://evil.example/",
            "//evil.example",
            "/\\evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "",
            "/login",
        ] {
            assert_eq!(safe_next(outside), "/config/jwks", "{outside}");
        }
    }
}
