//! `/config/schedule`: the rotation schedule and the retention of rotated keys.
//!
//! Expressions and durations are checked in the browser with the parsers the server uses
//! (`domain::CronSchedule`, `domain::Retention`), and again by the server on save, so
//! both sides always agree on what is valid.

use super::components::error_note;
use super::wire::{SchedulePreview, ScheduleView};
use super::{can_change, hydrated};
use crate::domain::{CronSchedule, Retention};
use leptos::prelude::*;
use leptos_meta::Title;

/// How many upcoming fire times the page shows.
#[cfg(feature = "ssr")]
const PREVIEW_COUNT: usize = 5;

#[cfg(feature = "ssr")]
fn format_times(times: Vec<chrono::DateTime<chrono::Utc>>) -> Vec<String> {
    times
        .into_iter()
        .map(crate::domain::time::format_utc)
        .collect()
}

#[cfg(feature = "ssr")]
async fn view_of(
    state: &crate::server::AppState,
    s: &crate::server::keys::Schedule,
) -> Result<ScheduleView, ServerFnError> {
    let last = state
        .keys
        .last_scheduled()
        .await
        .map_err(super::guard::internal)?;
    Ok(ScheduleView {
        expression: s.cron.to_string(),
        retention: s.retention.to_string(),
        max_token_ttl: state.config.max_token_ttl.to_string(),
        next: format_times(s.cron.upcoming(chrono::Utc::now(), PREVIEW_COUNT)),
        updated_at: s.updated_at.map(crate::domain::time::format_utc),
        last_scheduled: last.map(|(slot, instance)| {
            format!("{} (by {instance})", crate::domain::time::format_utc(slot))
        }),
    })
}

#[server(prefix = "/ui", endpoint = "current_schedule")]
pub async fn current_schedule() -> Result<ScheduleView, ServerFnError> {
    use super::guard::{Access, internal, require};
    let caller = require(crate::domain::Role::Viewer, Access::Read).await?;
    // Read from the database: another instance may have changed it.
    let schedule = caller.state.keys.load_schedule().await.map_err(internal)?;
    view_of(&caller.state, &schedule).await
}

#[server(prefix = "/ui", endpoint = "preview_schedule")]
pub async fn preview_schedule(expression: String) -> Result<SchedulePreview, ServerFnError> {
    use super::guard::{Access, require};
    require(crate::domain::Role::Viewer, Access::Read).await?;
    Ok(CronSchedule::parse(&expression)
        .map(|s| format_times(s.upcoming(chrono::Utc::now(), PREVIEW_COUNT)))
        .map_err(|e| e.to_string()))
}

/// Stores a new schedule and retention (a `schedule.changed` event).
#[server(prefix = "/ui", endpoint = "save_schedule")]
pub async fn save_schedule(
    expression: String,
    retention: String,
) -> Result<ScheduleView, ServerFnError> {
    use super::guard::{Access, internal, require};
    let caller = require(crate::domain::Role::Admin, Access::Change).await?;
    let retention = retention.trim();
    let retention = (!retention.is_empty()).then_some(retention);
    let schedule = caller
        .state
        .keys
        .set_schedule(&expression, retention, &caller.actor())
        .await
        .map_err(internal)?;
    view_of(&caller.state, &schedule).await
}

/// What is wrong with a proposed schedule, checked in the browser as the admin types.
fn problems(expression: &str, retention: &str, max_ttl: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Err(e) = CronSchedule::parse(expression) {
        out.push(e.to_string());
    }
    match Retention::parse(retention) {
        Err(e) => out.push(e.to_string()),
        Ok(r) => {
            if let Ok(max) = Retention::parse(max_ttl)
                && r <= max
            {
                out.push(format!(
                    "retention ({r}) must be longer than the maximum token lifetime ({max})"
                ));
            }
        }
    }
    out
}

#[component]
pub fn SchedulePage() -> impl IntoView {
    let save = ServerAction::<SaveSchedule>::new();
    let current = Resource::new(move || save.version().get(), |_| current_schedule());
    view! {
        <Title text="Schedule" />
        <h1>"Config → Schedule"</h1>
        <p class="lead">
            "Keys rotate automatically on a cron schedule in UTC. Automatic rotation cannot be "
            "switched off: a key that never rotates is a key whose compromise never ends. You can "
            "make it rarer, or rotate by hand at any time from Config → JWKS."
        </p>
        <p class="lead">
            "Every scheduled time rotates exactly once, however many instances run: the first to "
            "reach it records it with the rotation, and the others leave it. Times missed while "
            "no instance ran are made up once, at the next start. A change here reaches every "
            "instance within a second."
        </p>
        <Transition fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                match current.await {
                    Ok(s) => view! {
                        <section class="card">
                            <h2>"In force"</h2>
                            <dl class="facts">
                                <dt>"Schedule"</dt><dd><code id="current-cron">{s.expression.clone()}</code></dd>
                                <dt>"Retention of rotated keys"</dt><dd id="current-retention">{s.retention.clone()}</dd>
                                <dt>"Maximum token lifetime"</dt><dd>{s.max_token_ttl.clone()}" (retention must be longer)"</dd>
                                <dt>"Last changed"</dt><dd>{s.updated_at.clone().unwrap_or_else(|| "never".into())}</dd>
                                <dt>"Last scheduled rotation"</dt><dd id="last-scheduled">{s.last_scheduled.clone().unwrap_or_else(|| "none yet".into())}</dd>
                            </dl>
                            <h3>"Next rotations"</h3>
                            <TimeList times=s.next.clone() id="current-next" />
                        </section>
                        <EditForm current=s save />
                    }.into_any(),
                    Err(e) => error_note(&e),
                }
            })}
        </Transition>
    }
}

#[component]
fn TimeList(times: Vec<String>, #[prop(optional)] id: &'static str) -> impl IntoView {
    view! {
        <ol class="times" id=id>
            {times.into_iter().map(|t| view! { <li><time>{t}</time></li> }).collect_view()}
        </ol>
    }
}

#[component]
fn EditForm(current: ScheduleView, save: ServerAction<SaveSchedule>) -> impl IntoView {
    let ready = hydrated();
    let allowed = can_change();
    let expression = RwSignal::new(current.expression.clone());
    let retention = RwSignal::new(current.retention.clone());
    let max_ttl = current.max_token_ttl.clone();
    let preview = ServerAction::<PreviewSchedule>::new();
    let local = {
        let max_ttl = max_ttl.clone();
        move || problems(&expression.get(), &retention.get(), &max_ttl)
    };
    let local_for_button = local.clone();
    let local_for_submit = local.clone();

    view! {
        <section class="card">
            <h2>"Change"</h2>
            <form id="schedule-form" on:submit=move |ev| {
                ev.prevent_default();
                if !local_for_submit().is_empty() {
                    return;
                }
                save.dispatch(SaveSchedule {
                    expression: expression.get_untracked(),
                    retention: retention.get_untracked(),
                });
            }>
                <label for="cron-input">"Cron expression (sec min hour day-of-month month day-of-week year, UTC)"</label>
                <input
                    id="cron-input"
                    name="expression"
                    placeholder="0 30 3 1 * * *"
                    spellcheck="false"
                    autocomplete="off"
                    prop:value=expression
                    on:input=move |ev| expression.set(event_target_value(&ev))
                    aria-describedby="cron-hint"
                />
                <label for="retention-input">{format!("Retention of rotated keys (e.g. 30d, 12h; longer than {max_ttl})")}</label>
                <input
                    id="retention-input"
                    name="retention"
                    spellcheck="false"
                    autocomplete="off"
                    prop:value=retention
                    on:input=move |ev| retention.set(event_target_value(&ev))
                    aria-describedby="cron-hint"
                />
                <div id="cron-hint" class="hint" aria-live="polite">
                    {move || local().into_iter().map(|p| view! { <p>{p}</p> }).collect_view()}
                </div>
                <div class="buttons">
                    <button
                        type="button"
                        id="preview-button"
                        class="ghost"
                        disabled=move || !ready.get() || preview.pending().get()
                        on:click=move |_| {
                            preview.dispatch(PreviewSchedule { expression: expression.get_untracked() });
                        }
                    >
                        "Preview"
                    </button>
                    <button
                        type="submit"
                        id="save-schedule"
                        class="primary"
                        disabled=move || !ready.get() || !allowed.get() || save.pending().get() || !local_for_button().is_empty()
                    >
                        "Save schedule"
                    </button>
                </div>
            </form>
            <div id="preview-result" aria-live="polite">
                {move || match preview.value().get() {
                    None => ().into_any(),
                    Some(Ok(Ok(times))) => view! {
                        <p>"Next fire times of this expression:"</p>
                        <TimeList times />
                    }.into_any(),
                    Some(Ok(Err(reason))) => view! {
                        <p class="error" role="alert">{reason}</p>
                    }.into_any(),
                    Some(Err(e)) => error_note(&e),
                }}
            </div>
            <div id="save-result" role="status" aria-live="polite">
                {move || match save.value().get() {
                    Some(Ok(_)) => view! { <p class="success">"Schedule saved."</p> }.into_any(),
                    Some(Err(e)) => error_note(&e),
                    None => ().into_any(),
                }}
            </div>
        </section>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_browser_check_matches_the_server_rules() {
        assert!(problems("0 30 3 1 * * *", "30d", "1h").is_empty());
        assert_eq!(problems("0 30 3 1 * *", "30d", "1h").len(), 1);
        assert_eq!(
            problems("0 30 3 1 * * *", "1h", "1h"),
            ["retention (1h) must be longer than the maximum token lifetime (1h)"]
        );
        assert_eq!(problems("nope", "soon", "1h").len(), 2);
    }
}
