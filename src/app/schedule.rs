//! `/config/schedule`: the rotation schedule, and a preview of a proposed expression.
//!
//! The expression is checked in the browser with the same parser the server uses
//! (`domain::CronSchedule`), and the preview button asks the server for the next fire
//! times, so both sides always agree on what is valid.

use super::wire::{SchedulePreview, ScheduleView};
use crate::domain::CronSchedule;
use leptos::prelude::*;
use leptos_meta::Title;

/// How many upcoming fire times the page shows.
#[cfg(feature = "ssr")]
const PREVIEW_COUNT: usize = 5;

#[cfg(feature = "ssr")]
fn format_times(times: Vec<chrono::DateTime<chrono::Utc>>) -> Vec<String> {
    times
        .into_iter()
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .collect()
}

#[server]
pub async fn current_schedule() -> Result<ScheduleView, ServerFnError> {
    use crate::server::AppState;
    let state = expect_context::<AppState>();
    let schedule = state.keys.schedule();
    Ok(ScheduleView {
        expression: schedule.cron.to_string(),
        retention: schedule.retention.to_string(),
        next: format_times(schedule.cron.upcoming(chrono::Utc::now(), PREVIEW_COUNT)),
    })
}

#[server]
pub async fn preview_schedule(expression: String) -> Result<SchedulePreview, ServerFnError> {
    Ok(CronSchedule::parse(&expression)
        .map(|s| format_times(s.upcoming(chrono::Utc::now(), PREVIEW_COUNT)))
        .map_err(|e| e.to_string()))
}

#[component]
pub fn SchedulePage() -> impl IntoView {
    let current = Resource::new(|| (), |()| current_schedule());
    view! {
        <Title text="Schedule" />
        <h1>"Config → Schedule"</h1>
        <p>
            "Keys rotate automatically on a cron schedule in UTC. Automatic rotation cannot be "
            "switched off: a key that never rotates is a key whose compromise never ends."
        </p>
        <Suspense fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                match current.await {
                    Ok(s) => view! {
                        <dl class="facts">
                            <dt>"Schedule"</dt><dd><code id="current-cron">{s.expression}</code></dd>
                            <dt>"Retention of rotated keys"</dt><dd>{s.retention}</dd>
                        </dl>
                        <h2>"Next rotations"</h2>
                        <TimeList times=s.next />
                    }.into_any(),
                    Err(e) => view! { <p class="error" role="alert">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Suspense>
        <PreviewForm />
    }
}

#[component]
fn TimeList(times: Vec<String>) -> impl IntoView {
    view! {
        <ol class="times">
            {times.into_iter().map(|t| view! { <li><time>{t}</time></li> }).collect_view()}
        </ol>
    }
}

#[component]
fn PreviewForm() -> impl IntoView {
    // Rendered disabled on the server; an Effect only runs in the browser, so the button
    // becomes usable exactly when the page has hydrated and a click can do something.
    let hydrated = RwSignal::new(false);
    Effect::new(move |_| hydrated.set(true));

    let expression = RwSignal::new(String::new());
    let preview = ServerAction::<PreviewSchedule>::new();
    // Checked locally as the user types, with the server's own parser.
    let local_error = move || {
        let text = expression.get();
        if text.trim().is_empty() {
            None
        } else {
            CronSchedule::parse(&text).err().map(|e| e.to_string())
        }
    };

    view! {
        <section class="card">
            <h2>"Preview an expression"</h2>
            <form on:submit=move |ev| {
                ev.prevent_default();
                preview.dispatch(PreviewSchedule { expression: expression.get_untracked() });
            }>
                <label for="cron-input">"Cron expression (sec min hour day-of-month month day-of-week year)"</label>
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
                <p id="cron-hint" class="hint" aria-live="polite">
                    {move || local_error().unwrap_or_default()}
                </p>
                <button
                    type="submit"
                    id="preview-button"
                    disabled=move || !hydrated.get() || preview.pending().get()
                >
                    "Preview"
                </button>
            </form>
            <div id="preview-result" aria-live="polite">
                {move || match preview.value().get() {
                    None => ().into_any(),
                    Some(Ok(Ok(times))) => view! {
                        <p>"Next fire times:"</p>
                        <TimeList times />
                    }.into_any(),
                    Some(Ok(Err(reason))) => view! {
                        <p class="error" role="alert">{reason}</p>
                    }.into_any(),
                    Some(Err(e)) => view! {
                        <p class="error" role="alert">{format!("The server could not be reached: {e}")}</p>
                    }.into_any(),
                }}
            </div>
        </section>
    }
}
