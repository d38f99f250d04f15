//! `/config/jwks`: every signing key, grouped by algorithm, with its state, timestamps,
//! public JWK and a timeline; and the Rotate Keys, Rotate and revoke, and Revoke actions.

use super::components::{CopyButton, error_note};
use super::guard::describe;
use super::timeline::Timeline;
use super::wire::{ActionOutcome, KeyView, KeysPage};
use super::{can_change, hydrated};
use leptos::html;
use leptos::prelude::*;
use leptos_meta::Title;

#[server(prefix = "/ui", endpoint = "load_keys")]
pub async fn load_keys() -> Result<KeysPage, ServerFnError> {
    use super::guard::{Access, internal, require};
    use crate::domain::Role;
    let caller = require(Role::Viewer, Access::Read).await?;
    let state = caller.state;
    let mut keys = state.storage.list_keys().await.map_err(internal)?;
    keys.sort_by_key(|k| k.info.listing_order());
    let now = chrono::Utc::now();
    let next_rotation = state.keys.next_rotation(now);
    let keys = keys.iter().map(KeyView::from).collect();
    Ok(KeysPage {
        keys,
        algorithms: state.keys.enabled().iter().map(|a| a.to_string()).collect(),
        now_ts: now.timestamp(),
        next_rotation_ts: next_rotation.map(|t| t.timestamp()),
        next_rotation: next_rotation.map(crate::domain::time::format_utc),
    })
}

/// The reason an operator typed for the audit log.
#[cfg(feature = "ssr")]
fn reason_text(reason: &str) -> Result<String, ServerFnError> {
    crate::domain::Reason::parse(reason)
        .map(crate::domain::Reason::into_string)
        .map_err(super::guard::internal)
}

#[cfg(feature = "ssr")]
fn parse_alg(alg: &str) -> Result<Option<crate::domain::Algorithm>, ServerFnError> {
    // The form's empty choice is the default algorithm.
    let alg = Some(alg.trim()).filter(|a| !a.is_empty());
    crate::server::error::parse_alg(alg).map_err(super::guard::refusal)
}

#[cfg(feature = "ssr")]
fn summary(plan: &crate::domain::Plan, verb: &str) -> ActionOutcome {
    use crate::domain::KeyState;
    let promoted: Vec<String> = plan
        .transitions
        .iter()
        .filter(|t| t.to == KeyState::Active && t.from != t.to)
        .map(|t| format!("{} {}", t.alg, t.kid))
        .collect();
    let message = if promoted.is_empty() {
        format!("{verb}.")
    } else {
        format!("{verb}. Now active: {}.", promoted.join(", "))
    };
    ActionOutcome { message }
}

/// Rotates every enabled algorithm (`alg` empty) or one.
#[server(prefix = "/ui", endpoint = "rotate_keys")]
pub async fn rotate_keys(alg: String) -> Result<ActionOutcome, ServerFnError> {
    use super::guard::{Access, internal, require};
    let caller = require(crate::domain::Role::Admin, Access::Change).await?;
    let alg = parse_alg(&alg)?;
    let plan = caller
        .state
        .keys
        .rotate(alg, false, None, &caller.actor())
        .await
        .map_err(internal)?;
    Ok(summary(&plan, "Keys rotated"))
}

/// Revokes the active and next keys and puts fresh ones in place (suspected compromise).
#[server(prefix = "/ui", endpoint = "rotate_and_revoke")]
pub async fn rotate_and_revoke(
    alg: String,
    reason: String,
) -> Result<ActionOutcome, ServerFnError> {
    use super::guard::{Access, internal, require};
    let caller = require(crate::domain::Role::Admin, Access::Change).await?;
    let alg = parse_alg(&alg)?;
    let reason = reason_text(&reason)?;
    let plan = caller
        .state
        .keys
        .rotate(alg, true, Some(reason), &caller.actor())
        .await
        .map_err(internal)?;
    Ok(summary(
        &plan,
        "Keys rotated; the old active and next keys are revoked",
    ))
}

/// Revokes one key; it leaves the JWKS at once.
#[server(prefix = "/ui", endpoint = "revoke_key")]
pub async fn revoke_key(kid: String, reason: String) -> Result<ActionOutcome, ServerFnError> {
    use super::guard::{Access, internal, refuse, require};
    use axum::http::StatusCode;
    let caller = require(crate::domain::Role::Admin, Access::Change).await?;
    let kid = crate::domain::Kid::parse(&kid)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, e.to_string()))?;
    let reason = reason_text(&reason)?;
    let plan = caller
        .state
        .keys
        .revoke(&kid, reason, &caller.actor())
        .await
        .map_err(internal)?;
    Ok(summary(&plan, &format!("Key {kid} revoked")))
}

/// The action waiting for confirmation in the dialog.
#[derive(Debug, Clone, PartialEq)]
enum Pending {
    Rotate(String),
    RotateRevoke(String),
    Revoke {
        kid: String,
        alg: String,
        state: String,
    },
}

#[component]
pub fn JwksPage() -> impl IntoView {
    let ready = hydrated();
    let allowed = can_change();
    let enabled = move || ready.get() && allowed.get();

    let rotate = ServerAction::<RotateKeys>::new();
    let rotate_revoke = ServerAction::<RotateAndRevoke>::new();
    let revoke = ServerAction::<RevokeKey>::new();
    let busy = Signal::derive(move || {
        rotate.pending().get() || rotate_revoke.pending().get() || revoke.pending().get()
    });
    // Any finished action reloads the keys.
    let keys = Resource::new(
        move || {
            (
                rotate.version().get(),
                rotate_revoke.version().get(),
                revoke.version().get(),
            )
        },
        |_| load_keys(),
    );
    // The latest outcome of any action, for the status line.
    let outcome = RwSignal::new(None::<Result<String, String>>);
    for value in [rotate.value(), rotate_revoke.value(), revoke.value()] {
        Effect::new(move |_| {
            if let Some(v) = value.get() {
                outcome.set(Some(v.map(|o| o.message).map_err(|e| describe(&e))));
            }
        });
    }

    let pending = RwSignal::new(None::<Pending>);
    let scope = RwSignal::new(String::new());
    let dialog = NodeRef::<html::Dialog>::new();
    let ask = move |p: Pending| {
        pending.set(Some(p));
        if let Some(d) = dialog.get() {
            let _ = d.show_modal();
        }
    };
    let confirm = Callback::new(move |reason: String| {
        match pending.get_untracked() {
            Some(Pending::Rotate(alg)) => {
                rotate.dispatch(RotateKeys { alg });
            }
            Some(Pending::RotateRevoke(alg)) => {
                rotate_revoke.dispatch(RotateAndRevoke { alg, reason });
            }
            Some(Pending::Revoke { kid, .. }) => {
                revoke.dispatch(RevokeKey { kid, reason });
            }
            None => {}
        }
        outcome.set(None);
        pending.set(None);
    });

    view! {
        <Title text="JWKS" />
        <h1>"Config → JWKS"</h1>
        <p class="lead">
            "Each algorithm has one " <strong>"active"</strong> " key that signs and one "
            <strong>"next"</strong> " key, published ahead of its promotion. Rotated keys stay "
            "published until their retention ends; revoked keys leave at once. The public set is at "
            <a href="/.well-known/jwks.json">"/.well-known/jwks.json"</a> "."
        </p>
        <section class="card actions" aria-label="Key actions">
            <Transition fallback=|| ()>
                {move || Suspend::new(async move {
                    let algs = keys.await.map(|p| p.algorithms).unwrap_or_default();
                    view! {
                        <label for="rotate-scope">"Algorithms"</label>
                        <select id="rotate-scope" prop:value=scope
                            on:change=move |ev| scope.set(event_target_value(&ev))>
                            <option value="">"All enabled algorithms"</option>
                            {algs.into_iter().map(|a| view! { <option value=a.clone()>{a.clone()}</option> }).collect_view()}
                        </select>
                    }
                })}
            </Transition>
            <div class="buttons">
                <button type="button" id="rotate-keys" class="primary"
                    disabled=move || !enabled() || busy.get()
                    on:click=move |_| ask(Pending::Rotate(scope.get_untracked()))>
                    "Rotate Keys"
                </button>
                <button type="button" id="rotate-and-revoke" class="danger"
                    disabled=move || !enabled() || busy.get()
                    on:click=move |_| ask(Pending::RotateRevoke(scope.get_untracked()))>
                    "Rotate and revoke"
                </button>
            </div>
            <Show when=move || ready.get() && !allowed.get()>
                <p class="muted" id="viewer-note">"Your role is viewer: you can look at everything but change nothing."</p>
            </Show>
            <div id="action-status" role="status" aria-live="polite" aria-busy=move || busy.get().to_string()>
                {move || if busy.get() {
                    view! { <p class="progress"><span class="spinner" aria-hidden="true"></span>"Generating keys… RSA keys can take a few seconds."</p> }.into_any()
                } else {
                    match outcome.get() {
                        Some(Ok(m)) => view! { <p class="success">{m}</p> }.into_any(),
                        Some(Err(m)) => view! { <p class="error" role="alert">{m}</p> }.into_any(),
                        None => ().into_any(),
                    }
                }}
            </div>
        </section>

        <ConfirmDialog dialog pending confirm />

        <Transition fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                match keys.await {
                    Ok(page) => {
                        let next = page.next_rotation.clone();
                        view! {
                            <p class="muted">
                                {next.map(|n| format!("Next scheduled rotation: {n} UTC. "))}
                                "All times are UTC."
                            </p>
                            {view! { <Timeline page=page.clone() /> }.into_any()}
                            {page.algorithms.iter().map(|alg| {
                                let group: Vec<KeyView> = page.keys.iter().filter(|k| &k.alg == alg).cloned().collect();
                                view! { <KeyGroup alg=alg.clone() keys=group enabled=Signal::derive(enabled) busy ask=Callback::new(ask) /> }
                            }).collect_view()}
                            <RetiredGroups page />
                        }.into_any()
                    }
                    Err(e) => error_note(&e),
                }
            })}
        </Transition>
    }
}

/// Keys of algorithms that are no longer enabled (kept for audit).
#[component]
fn RetiredGroups(page: KeysPage) -> impl IntoView {
    let others: Vec<KeyView> = page
        .keys
        .iter()
        .filter(|k| !page.algorithms.contains(&k.alg))
        .cloned()
        .collect();
    (!others.is_empty()).then(|| {
        view! {
            <section class="card">
                <h2>"Algorithms no longer enabled"</h2>
                <KeyTable keys=others enabled=Signal::derive(|| false) busy=Signal::derive(|| false) ask=Callback::new(|_| ()) />
            </section>
        }
    })
}

#[component]
fn KeyGroup(
    alg: String,
    keys: Vec<KeyView>,
    enabled: Signal<bool>,
    busy: Signal<bool>,
    ask: Callback<Pending>,
) -> impl IntoView {
    let heading = format!("keys-{}", alg.to_lowercase());
    let (labelled_by, data_alg) = (heading.clone(), alg.clone());
    view! {
        <section class="card key-group" aria-labelledby=labelled_by data-alg=data_alg>
            <h2 id=heading>{alg}</h2>
            <KeyTable keys enabled busy ask />
        </section>
    }
}

#[component]
fn KeyTable(
    keys: Vec<KeyView>,
    enabled: Signal<bool>,
    busy: Signal<bool>,
    ask: Callback<Pending>,
) -> impl IntoView {
    let dash = |v: Option<String>| v.unwrap_or_else(|| "—".into());
    view! {
        <div class="table-wrap">
            <table class="keys stack">
                <thead>
                    <tr>
                        <th scope="col">"State"</th>
                        <th scope="col">"Key id"</th>
                        <th scope="col">"Created"</th>
                        <th scope="col">"Activated"</th>
                        <th scope="col">"Rotated"</th>
                        <th scope="col">"Revoked"</th>
                        <th scope="col">"Publication ends"</th>
                        <th scope="col">"Actions"</th>
                    </tr>
                </thead>
                <tbody>
                    {keys
                        .into_iter()
                        .map(|k| {
                            let badge = format!("badge {}", k.state);
                            let revocable = matches!(k.state.as_str(), "active" | "next" | "rotated");
                            let pending = Pending::Revoke { kid: k.kid.clone(), alg: k.alg.clone(), state: k.state.clone() };
                            let pem = format!("/config/jwks/{}/public.pem", k.kid);
                            let short = format!("{}…", k.kid.chars().take(12).collect::<String>());
                            let revoke_label = format!("Revoke key {}", k.kid);
                            let reason = k.revoke_reason.clone();
                            view! {
                                <tr data-kid=k.kid.clone() data-state=k.state.clone()>
                                    <td data-label="State">
                                        <span class=badge>{k.state.clone()}</span>
                                        {reason.map(|r| view! { <div class="muted small">{format!("Reason: {r}")}</div> })}
                                    </td>
                                    <td data-label="Key id">
                                        <code class="kid" title=k.kid.clone()>{short}</code>
                                        <div class="muted small held-in">{k.held_in.clone()}</div>
                                    </td>
                                    <td data-label="Created">{k.created_at}</td>
                                    <td data-label="Activated">{dash(k.activated_at)}</td>
                                    <td data-label="Rotated">{dash(k.rotated_at)}</td>
                                    <td data-label="Revoked">{dash(k.revoked_at)}</td>
                                    <td data-label="Publication ends">{dash(k.expires_at)}</td>
                                    <td data-label="Actions">
                                        <div class="row-actions">
                                        <JwkDetails kid=k.kid.clone() jwk=k.jwk pem />
                                        {revocable.then(|| view! {
                                            <button type="button" class="danger small revoke"
                                                aria-label=revoke_label
                                                disabled=move || !enabled.get() || busy.get()
                                                on:click=move |_| ask.run(pending.clone())>
                                                "Revoke"
                                            </button>
                                        })}
                                        </div>
                                    </td>
                                </tr>
                            }
                        })
                        .collect_view()}
                </tbody>
            </table>
        </div>
    }
    .into_any()
}

/// The public JWK behind a disclosure, with copy and PEM download.
#[component]
fn JwkDetails(kid: String, jwk: String, pem: String) -> impl IntoView {
    let ready = hydrated();
    let text = jwk.clone();
    view! {
        <details class="jwk">
            <summary>"Public JWK"</summary>
            <pre class="jwk-text" tabindex="0" aria-label=format!("Public JWK of {kid}")>{jwk}</pre>
            <div class="buttons">
                <CopyButton text label="Copy JWK" disabled=Signal::derive(move || !ready.get()) />
                <a class="button ghost small" href=pem download="">"Download PEM"</a>
            </div>
        </details>
    }
}

#[component]
fn ConfirmDialog(
    dialog: NodeRef<html::Dialog>,
    pending: RwSignal<Option<Pending>>,
    confirm: Callback<String>,
) -> impl IntoView {
    let reason = RwSignal::new(String::new());
    let needs_reason = move || {
        matches!(
            pending.get(),
            Some(Pending::RotateRevoke(_) | Pending::Revoke { .. })
        )
    };
    let close = move || {
        if let Some(d) = dialog.get() {
            d.close();
        }
        reason.set(String::new());
    };
    let scope_text = move |alg: &str| {
        if alg.is_empty() {
            "every enabled algorithm".to_string()
        } else {
            alg.to_string()
        }
    };
    let title = move || match pending.get() {
        Some(Pending::Rotate(_)) => "Rotate Keys?".to_string(),
        Some(Pending::RotateRevoke(_)) => "Rotate and revoke?".to_string(),
        Some(Pending::Revoke { .. }) => "Revoke this key?".to_string(),
        None => String::new(),
    };
    let body = move || match pending.get() {
        Some(Pending::Rotate(alg)) => format!(
            "For {}: the next key becomes active and signs new tokens, the active key is retired \
             but stays published until its retention ends, and a fresh next key is published.",
            scope_text(&alg)
        ),
        Some(Pending::RotateRevoke(alg)) => format!(
            "For {}: the active and next keys are revoked and leave the JWKS at once; tokens they \
             signed stop verifying. Fresh active and next keys take their place. Use this when a \
             key may be compromised.",
            scope_text(&alg)
        ),
        Some(Pending::Revoke { kid, alg, state }) => {
            let extra = if state == "active" {
                " It is the active key: the next key is promoted in the same step."
            } else {
                ""
            };
            format!(
                "{alg} key {kid} ({state}) leaves the JWKS at once and tokens it signed stop \
                 verifying.{extra}"
            )
        }
        None => String::new(),
    };
    view! {
        <dialog node_ref=dialog class="confirm" aria-labelledby="confirm-title" on:close=move |_| {
            pending.set(None);
            reason.set(String::new());
        }>
            <form on:submit=move |ev| {
                ev.prevent_default();
                if needs_reason() && reason.get_untracked().trim().is_empty() {
                    return;
                }
                confirm.run(reason.get_untracked());
                close();
            }>
                <h2 id="confirm-title">{title}</h2>
                <p>{body}</p>
                <Show when=needs_reason>
                    <label for="confirm-reason">"Reason (kept in the audit log)"</label>
                    <textarea id="confirm-reason" required=true maxlength="500" rows="3"
                        prop:value=reason on:input=move |ev| reason.set(event_target_value(&ev))></textarea>
                </Show>
                <div class="buttons">
                    <button type="button" class="ghost" on:click=move |_| close()>"Cancel"</button>
                    <button type="submit" id="confirm-action"
                        class=move || if needs_reason() { "danger" } else { "primary" }
                        disabled=move || needs_reason() && reason.get().trim().is_empty()>
                        {move || match pending.get() {
                            Some(Pending::Rotate(_)) => "Rotate Keys",
                            Some(Pending::RotateRevoke(_)) => "Rotate and revoke",
                            _ => "Revoke",
                        }}
                    </button>
                </div>
            </form>
        </dialog>
    }
}
