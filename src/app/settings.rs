//! `/settings`: admin accounts (list, create, disable) and API tokens (list, create with
//! scopes, revoke). New secrets (a one-time password, a token) are shown once.

use super::components::{CopyButton, error_note, failure};
use super::wire::{AdminView, Secret, TokenView};
use super::{can_change, hydrated};
use leptos::prelude::*;
use leptos_meta::Title;

/// Scopes an API token can carry, with what each allows.
pub const SCOPES: [(&str, &str); 4] = [
    ("keys:read", "list keys and the schedule"),
    ("keys:write", "rotate, revoke, change the schedule"),
    ("audit:read", "read the audit log"),
    ("sign", "sign and verify tokens"),
];

#[server(prefix = "/ui", endpoint = "list_admins")]
pub async fn list_admins() -> Result<Vec<AdminView>, ServerFnError> {
    use super::guard::{Access, internal, require};
    let caller = require(crate::domain::Role::Viewer, Access::Read).await?;
    let admins = caller.state.storage.list_admins().await.map_err(internal)?;
    Ok(admins.into_iter().map(AdminView::from).collect())
}

/// Creates an admin with a one-time password, returned once.
#[server(prefix = "/ui", endpoint = "create_admin")]
pub async fn create_admin(email: String, role: String) -> Result<Secret, ServerFnError> {
    use super::guard::{Access, refuse, require};
    use axum::http::StatusCode;
    let caller = require(crate::domain::Role::Admin, Access::Change).await?;
    let role = crate::domain::Role::parse(&role)
        .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "The role must be admin or viewer."))?;
    let (admin, password) = crate::server::accounts::admins::create_admin(
        caller.state.storage.as_ref(),
        &email,
        role,
        None,
        &caller.actor(),
    )
    .await
    .map_err(super::guard::internal)?;
    Ok(Secret {
        label: format!(
            "One-time password for {} (it expires in 24 hours; they choose their own at \
             first sign-in)",
            admin.email
        ),
        secret: password.unwrap_or_default(),
    })
}

/// Disables or re-enables an admin.
#[server(prefix = "/ui", endpoint = "set_admin_disabled")]
pub async fn set_admin_disabled(id: String, disabled: bool) -> Result<(), ServerFnError> {
    use super::guard::{Access, require};
    let caller = require(crate::domain::Role::Admin, Access::Change).await?;
    crate::server::accounts::admins::set_disabled(
        caller.state.storage.as_ref(),
        &caller.admin,
        &id,
        disabled,
        caller.source.clone(),
    )
    .await
    .map_err(super::guard::internal)?;
    Ok(())
}

#[server(prefix = "/ui", endpoint = "list_tokens")]
pub async fn list_tokens() -> Result<Vec<TokenView>, ServerFnError> {
    use super::guard::{Access, internal, require};
    let caller = require(crate::domain::Role::Viewer, Access::Read).await?;
    let tokens = caller
        .state
        .storage
        .list_api_tokens()
        .await
        .map_err(internal)?;
    Ok(tokens.into_iter().map(TokenView::from).collect())
}

/// Creates an API token; its secret is returned once.
#[server(prefix = "/ui", endpoint = "create_token")]
pub async fn create_token(name: String, scopes: Vec<String>) -> Result<Secret, ServerFnError> {
    use super::guard::{Access, internal, require};
    use crate::server::accounts::tokens;
    let caller = require(crate::domain::Role::Admin, Access::Change).await?;
    let storage = caller.state.storage.as_ref();
    let secret = tokens::create(storage, name.trim(), &scopes, &caller.actor())
        .await
        .map_err(internal)?;
    Ok(Secret {
        label: format!(
            "API token {} (copy it now: it is not shown again)",
            name.trim()
        ),
        secret,
    })
}

#[server(prefix = "/ui", endpoint = "revoke_token")]
pub async fn revoke_token(id: String) -> Result<(), ServerFnError> {
    use super::guard::{Access, internal, refuse, require};
    use axum::http::StatusCode;
    let caller = require(crate::domain::Role::Admin, Access::Change).await?;
    let revoked = crate::server::accounts::tokens::revoke(
        caller.state.storage.as_ref(),
        &id,
        &caller.actor(),
    )
    .await
    .map_err(internal)?;
    caller.state.recent_tokens.forget(&id);
    if revoked {
        Ok(())
    } else {
        Err(refuse(
            StatusCode::NOT_FOUND,
            "No such token, or it is already revoked.",
        ))
    }
}

#[component]
pub fn SettingsPage() -> impl IntoView {
    view! {
        <Title text="Settings" />
        <h1>"Settings"</h1>
        <Admins />
        <Tokens />
    }
}

/// A button for an action that cannot be undone: the first click asks, in place, for a
/// second ("Confirm" or "Cancel"). With `ask` false it acts at once.
#[component]
fn ConfirmButton(
    /// The accessible name, e.g. "Revoke token ci".
    label: String,
    text: &'static str,
    class: &'static str,
    ask: bool,
    enabled: Signal<bool>,
    on_confirm: Callback<()>,
) -> impl IntoView {
    let armed = RwSignal::new(false);
    let confirm_label = format!("Confirm: {label}");
    view! {
        <Show
            when=move || armed.get()
            fallback=move || {
                let label = label.clone();
                view! {
                    <button type="button" class=class aria-label=label disabled=move || !enabled.get()
                        on:click=move |_| if ask { armed.set(true) } else { on_confirm.run(()) }>
                        {text}
                    </button>
                }
            }
        >
            <span class="confirm-inline">
                <button type="button" class="danger small" aria-label=confirm_label.clone()
                    disabled=move || !enabled.get()
                    on:click=move |_| { armed.set(false); on_confirm.run(()); }>
                    {format!("Confirm {}", text.to_lowercase())}
                </button>
                <button type="button" class="ghost small" on:click=move |_| armed.set(false)>"Cancel"</button>
            </span>
        </Show>
    }
}

/// A secret shown once, with a copy button.
#[component]
fn SecretBox(secret: Secret) -> impl IntoView {
    let text = secret.secret.clone();
    view! {
        <div class="secret" role="status">
            <p>{secret.label}</p>
            <code class="secret-value">{secret.secret}</code>
            <CopyButton text label="Copy" />
        </div>
    }
}

#[component]
fn Admins() -> impl IntoView {
    let ready = hydrated();
    let allowed = can_change();
    let enabled = move || ready.get() && allowed.get();
    let create = ServerAction::<CreateAdmin>::new();
    let toggle = ServerAction::<SetAdminDisabled>::new();
    let admins = Resource::new(
        move || (create.version().get(), toggle.version().get()),
        |_| list_admins(),
    );
    let email = RwSignal::new(String::new());
    let role = RwSignal::new("viewer".to_string());
    let email_problem = move || {
        let e = email.get();
        (!e.trim().is_empty())
            .then(|| crate::domain::Email::parse(&e).err().map(|e| e.to_string()))
            .flatten()
    };

    view! {
        <section class="card" aria-labelledby="admins-heading">
            <h2 id="admins-heading">"Admins"</h2>
            <Transition fallback=|| view! { <p>"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match admins.await {
                        Ok(list) => view! {
                            <div class="table-wrap">
                                <table class="list stack" id="admins">
                                    <thead><tr>
                                        <th scope="col">"Email"</th><th scope="col">"Role"</th><th scope="col">"Status"</th>
                                        <th scope="col">"Created"</th><th scope="col">"Last sign-in"</th><th scope="col">"Actions"</th>
                                    </tr></thead>
                                    <tbody>
                                        {list.into_iter().map(|a| {
                                            let (id, disabled) = (a.id.clone(), a.disabled);
                                            let status = if a.disabled { "disabled" } else if a.must_change_password { "one-time password" } else { "active" };
                                            let label = format!("{} {}", if disabled { "Enable" } else { "Disable" }, a.email);
                                            view! {
                                                <tr data-email=a.email.clone()>
                                                    <td data-label="Email">{a.email.clone()}</td>
                                                    <td data-label="Role">{a.role.to_string()}</td>
                                                    <td class="status" data-label="Status">{status}</td>
                                                    <td data-label="Created">{a.created_at}</td>
                                                    <td data-label="Last sign-in">{a.last_login_at.unwrap_or_else(|| "never".into())}</td>
                                                    <td data-label="Actions">
                                                        <ConfirmButton
                                                            label
                                                            text=if disabled { "Enable" } else { "Disable" }
                                                            class="ghost small"
                                                            // Enabling is harmless; disabling ends their sessions.
                                                            ask=!disabled
                                                            enabled=Signal::derive(move || enabled() && !toggle.pending().get())
                                                            on_confirm=Callback::new(move |()| {
                                                                toggle.dispatch(SetAdminDisabled { id: id.clone(), disabled: !disabled });
                                                            })
                                                        />
                                                    </td>
                                                </tr>
                                            }
                                        }).collect_view()}
                                    </tbody>
                                </table>
                            </div>
                        }.into_any(),
                        Err(e) => error_note(&e),
                    }
                })}
            </Transition>
            {move || failure(toggle.value().get())}
            <h3>"Add an admin"</h3>
            <form id="create-admin" class="inline-form" on:submit=move |ev| {
                ev.prevent_default();
                if email_problem().is_none() {
                    create.dispatch(CreateAdmin { email: email.get_untracked(), role: role.get_untracked() });
                }
            }>
                <div>
                    <label for="new-admin-email">"Email"</label>
                    <input id="new-admin-email" type="email" required=true autocomplete="off"
                        aria-describedby="new-admin-hint"
                        prop:value=email on:input=move |ev| email.set(event_target_value(&ev)) />
                </div>
                <div>
                    <label for="new-admin-role">"Role"</label>
                    <select id="new-admin-role" prop:value=role on:change=move |ev| role.set(event_target_value(&ev))>
                        <option value="viewer">"viewer (may look)"</option>
                        <option value="admin">"admin (may change things)"</option>
                    </select>
                </div>
                <button type="submit" class="primary" id="create-admin-button"
                    disabled=move || !enabled() || create.pending().get() || email_problem().is_some()>
                    "Create admin"
                </button>
            </form>
            <p id="new-admin-hint" class="hint" aria-live="polite">{move || email_problem().unwrap_or_default()}</p>
            <div aria-live="polite">
                {move || match create.value().get() {
                    Some(Ok(secret)) => view! { <SecretBox secret /> }.into_any(),
                    Some(Err(e)) => error_note(&e),
                    None => ().into_any(),
                }}
            </div>
        </section>
    }
}

#[component]
fn Tokens() -> impl IntoView {
    let ready = hydrated();
    let allowed = can_change();
    let enabled = move || ready.get() && allowed.get();
    let create = ServerAction::<CreateToken>::new();
    let revoke = ServerAction::<RevokeToken>::new();
    let tokens = Resource::new(
        move || (create.version().get(), revoke.version().get()),
        |_| list_tokens(),
    );
    let name = RwSignal::new(String::new());
    let chosen = RwSignal::new(Vec::<String>::new());

    view! {
        <section class="card" aria-labelledby="tokens-heading">
            <h2 id="tokens-heading">"API tokens"</h2>
            <p class="muted">"Bearer tokens for the REST API under " <code>"/api/v1"</code> ". Only a hash is stored."</p>
            <Transition fallback=|| view! { <p>"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match tokens.await {
                        Ok(list) if list.is_empty() => view! { <p class="muted" id="no-tokens">"No API tokens yet."</p> }.into_any(),
                        Ok(list) => view! {
                            <div class="table-wrap">
                                <table class="list stack" id="tokens">
                                    <thead><tr>
                                        <th scope="col">"Name"</th><th scope="col">"Scopes"</th><th scope="col">"Created"</th>
                                        <th scope="col">"Status"</th><th scope="col">"Actions"</th>
                                    </tr></thead>
                                    <tbody>
                                        {list.into_iter().map(|t| {
                                            let id = t.id.clone();
                                            let live = t.revoked_at.is_none();
                                            let label = format!("Revoke token {}", t.name);
                                            view! {
                                                <tr data-token=t.name.clone()>
                                                    <td data-label="Name">{t.name.clone()}</td>
                                                    <td data-label="Scopes">{t.scopes.join(", ")}</td>
                                                    <td data-label="Created">{t.created_at}</td>
                                                    <td class="status" data-label="Status">{t.revoked_at.map_or_else(|| "active".to_string(), |r| format!("revoked {r}"))}</td>
                                                    <td data-label="Actions">
                                                        {live.then(|| view! {
                                                            <ConfirmButton
                                                                label
                                                                text="Revoke"
                                                                class="danger small"
                                                                ask=true
                                                                enabled=Signal::derive(move || enabled() && !revoke.pending().get())
                                                                on_confirm=Callback::new(move |()| {
                                                                    revoke.dispatch(RevokeToken { id: id.clone() });
                                                                })
                                                            />
                                                        })}
                                                    </td>
                                                </tr>
                                            }
                                        }).collect_view()}
                                    </tbody>
                                </table>
                            </div>
                        }.into_any(),
                        Err(e) => error_note(&e),
                    }
                })}
            </Transition>
            {move || failure(revoke.value().get())}
            <h3>"Create a token"</h3>
            <form id="create-token" on:submit=move |ev| {
                ev.prevent_default();
                create.dispatch(CreateToken { name: name.get_untracked(), scopes: chosen.get_untracked() });
            }>
                <label for="token-name">"Name (letters, digits, '-', '_', '.')"</label>
                <input id="token-name" required=true autocomplete="off" maxlength="64"
                    prop:value=name on:input=move |ev| name.set(event_target_value(&ev)) />
                <fieldset class="scopes">
                    <legend>"Scopes"</legend>
                    {SCOPES.iter().map(|&(name_text, what)| {
                        let scope = name_text.to_string();
                        let id = format!("scope-{}", scope.replace(':', "-"));
                        let s2 = scope.clone();
                        let (for_id, value) = (id.clone(), scope.clone());
                        view! {
                            <label class="inline" for=for_id>
                                <input type="checkbox" id=id value=value
                                    prop:checked=move || chosen.get().contains(&s2)
                                    on:change=move |ev| {
                                        let on = event_target_checked(&ev);
                                        chosen.update(|c| {
                                            c.retain(|s| s != &scope);
                                            if on { c.push(scope.clone()); }
                                        });
                                    } />
                                " " <code>{name_text}</code> " — " {what}
                            </label>
                        }
                    }).collect_view()}
                </fieldset>
                <button type="submit" class="primary" id="create-token-button"
                    disabled=move || !enabled() || create.pending().get() || name.get().trim().is_empty() || chosen.get().is_empty()>
                    "Create token"
                </button>
            </form>
            <div aria-live="polite">
                {move || match create.value().get() {
                    Some(Ok(secret)) => view! { <SecretBox secret /> }.into_any(),
                    Some(Err(e)) => error_note(&e),
                    None => ().into_any(),
                }}
            </div>
        </section>
    }
}
