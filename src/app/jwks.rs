//! `/config/jwks`: every signing key, grouped by algorithm, with its state and timestamps.

use super::wire::KeyView;
use leptos::prelude::*;
use leptos_meta::Title;

#[server]
pub async fn list_keys() -> Result<Vec<KeyView>, ServerFnError> {
    use crate::server::AppState;
    let state = expect_context::<AppState>();
    let fmt = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    let snapshot = state.keys.snapshot();
    let mut infos: Vec<&crate::domain::KeyInfo> = snapshot.keys.iter().collect();
    // Per algorithm: active, next, then the rest newest first.
    infos.sort_by_key(|k| {
        let rank = match k.state {
            crate::domain::KeyState::Active => 0,
            crate::domain::KeyState::Next => 1,
            _ => 2,
        };
        (k.alg, rank, std::cmp::Reverse(k.created_at))
    });
    let keys = infos
        .into_iter()
        .map(|k| KeyView {
            kid: k.kid.to_string(),
            alg: k.alg.to_string(),
            state: k.state.to_string(),
            created_at: fmt(k.created_at),
            activated_at: k.activated_at.map(fmt),
            rotated_at: k.rotated_at.map(fmt),
            revoked_at: k.revoked_at.map(fmt),
            expires_at: k.expires_at.map(fmt),
        })
        .collect();
    Ok(keys)
}

#[component]
pub fn JwksPage() -> impl IntoView {
    let keys = Resource::new(|| (), |()| list_keys());
    view! {
        <Title text="JWKS" />
        <h1>"Config → JWKS"</h1>
        <p>
            "Each algorithm has one " <strong>"active"</strong> " key that signs and one "
            <strong>"next"</strong> " key, published ahead of its promotion. Rotated keys stay "
            "published until their retention ends. The public set is at "
            <a href="/.well-known/jwks.json">"/.well-known/jwks.json"</a> "."
        </p>
        <Suspense fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                match keys.await {
                    Ok(keys) => view! { <KeyTable keys /> }.into_any(),
                    Err(e) => view! { <p class="error" role="alert">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Suspense>
    }
}

#[component]
fn KeyTable(keys: Vec<KeyView>) -> impl IntoView {
    let dash = |v: Option<String>| v.unwrap_or_else(|| "—".into());
    view! {
        <div class="table-wrap">
            <table class="keys">
                <thead>
                    <tr>
                        <th scope="col">"Algorithm"</th>
                        <th scope="col">"State"</th>
                        <th scope="col">"Key id"</th>
                        <th scope="col">"Created"</th>
                        <th scope="col">"Activated"</th>
                        <th scope="col">"Rotated"</th>
                        <th scope="col">"Revoked"</th>
                        <th scope="col">"Publication ends"</th>
                    </tr>
                </thead>
                <tbody>
                    {keys
                        .into_iter()
                        .map(|k| {
                            let badge = format!("badge {}", k.state);
                            let (kid_attr, state_attr) = (k.kid.clone(), k.state.clone());
                            view! {
                                <tr data-kid=kid_attr data-state=state_attr>
                                    <td>{k.alg}</td>
                                    <td><span class=badge>{k.state}</span></td>
                                    <td><code class="kid">{k.kid}</code></td>
                                    <td>{k.created_at}</td>
                                    <td>{dash(k.activated_at)}</td>
                                    <td>{dash(k.rotated_at)}</td>
                                    <td>{dash(k.revoked_at)}</td>
                                    <td>{dash(k.expires_at)}</td>
                                </tr>
                            }
                        })
                        .collect_view()}
                </tbody>
            </table>
        </div>
    }
}
