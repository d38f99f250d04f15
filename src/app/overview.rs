//! `/`: what this installation is and how it is set up.

use super::wire::InstanceView;
use leptos::prelude::*;
use leptos_meta::Title;

#[server(prefix = "/ui", endpoint = "instance_status")]
pub async fn instance_status() -> Result<InstanceView, ServerFnError> {
    use super::guard::{Access, require};
    let state = require(crate::domain::Role::Viewer, Access::Read)
        .await?
        .state;
    let info = state.storage.instance_info().await.map_err(|e| {
        tracing::error!(error = %e, "cannot read instance info");
        ServerFnError::new("the database is unavailable")
    })?;
    Ok(InstanceView {
        version: env!("CARGO_PKG_VERSION").to_string(),
        backend: state.storage.backend().to_string(),
        installation_id: info.installation_id,
        installed_at: info.created_at,
        schema_version: info.schema_version,
        issuer: state.config.issuer(),
        algorithms: state.config.algorithms.to_string(),
    })
}

#[component]
pub fn OverviewPage() -> impl IntoView {
    let status = Resource::new(|| (), |()| instance_status());
    view! {
        <Title text="Overview" />
        <h1>"Overview"</h1>
        <Suspense fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                match status.await {
                    Ok(s) => view! {
                        <dl class="facts">
                            <dt>"Issuer"</dt><dd><code>{s.issuer}</code></dd>
                            <dt>"Algorithms"</dt><dd>{s.algorithms}</dd>
                            <dt>"Database"</dt><dd>{s.backend}", schema version "{s.schema_version}</dd>
                            <dt>"Installation"</dt><dd><code>{s.installation_id}</code>" since "{s.installed_at}</dd>
                            <dt>"Signet version"</dt><dd>{s.version}</dd>
                        </dl>
                    }.into_any(),
                    Err(e) => view! { <p class="error" role="alert">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Suspense>
    }
}
