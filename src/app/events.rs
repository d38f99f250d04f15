//! `/events`: the audit log, newest first, with filters, keyset pagination ("Load older
//! events" asks for ids below the last one shown, so every page costs the same however
//! deep), a live tail over server-sent events, and CSV/JSON export of the filtered view.

use super::components::{error_note, failure};
use super::hydrated;
use super::wire::{EventFilterView, EventPage, EventView};
use crate::domain::audit::{Level, kind};
use leptos::prelude::*;
use leptos_meta::Title;

/// Rows per page.
#[cfg(feature = "ssr")]
pub const PAGE_SIZE: i64 = 50;

#[server(prefix = "/ui", endpoint = "list_events_page")]
pub async fn list_events_page(
    filter: EventFilterView,
    cursor: Option<i64>,
) -> Result<EventPage, ServerFnError> {
    use super::guard::{Access, internal, refuse, require};
    use crate::domain::audit::EventFilter;
    use axum::http::StatusCode;
    let caller = require(crate::domain::Role::Viewer, Access::Read).await?;
    let filter = EventFilter::parse(
        Some(&filter.level),
        Some(&filter.kind),
        Some(&filter.actor),
        Some(&filter.since),
        Some(&filter.until),
    )
    .map_err(|e| refuse(StatusCode::BAD_REQUEST, e))?;
    let storage = caller.state.storage.as_ref();
    let (rows, next_cursor) = crate::server::events::page(storage, &filter, cursor, PAGE_SIZE)
        .await
        .map_err(internal)?;
    Ok(EventPage {
        next_cursor,
        events: rows.iter().map(EventView::from).collect(),
    })
}

#[component]
pub fn EventsPage() -> impl IntoView {
    let ready = hydrated();
    // What the form holds, and what was last applied.
    let draft = RwSignal::new(EventFilterView::default());
    let applied = RwSignal::new(EventFilterView::default());
    let first = Resource::new(move || applied.get(), |f| list_events_page(f, None));

    // Pages loaded with "Load older events", and events that arrived live.
    let older = RwSignal::new(Vec::<EventView>::new());
    let older_cursor = RwSignal::new(None::<Option<i64>>);
    let live = RwSignal::new(Vec::<EventView>::new());
    let tail_on = RwSignal::new(true);
    let tail_state = RwSignal::new("connecting");

    let more = ServerAction::<ListEventsPage>::new();
    Effect::new(move |_| {
        if let Some(Ok(page)) = more.value().get() {
            older.update(|v| v.extend(page.events));
            older_cursor.set(Some(page.next_cursor));
        }
    });
    let cursor = move || match older_cursor.get() {
        Some(c) => c,
        None => first.get().and_then(Result::ok).and_then(|p| p.next_cursor),
    };
    let apply = move || {
        older.set(Vec::new());
        older_cursor.set(None);
        live.set(Vec::new());
        applied.set(draft.get_untracked());
    };

    live_tail(applied, first, live, tail_on, tail_state);

    let export = move |format: &str| {
        let qs = applied.get().query_string();
        if qs.is_empty() {
            format!("/events/export?format={format}")
        } else {
            format!("/events/export?format={format}&{qs}")
        }
    };

    view! {
        <Title text="Events" />
        <h1>"Events"</h1>
        <p class="lead">"The audit log: every change, who made it, from where. Each event is hash-chained to the one before; " <code>"signet audit verify"</code> " checks the chain."</p>
        <form class="card filters" id="event-filters" on:submit=move |ev| { ev.prevent_default(); apply(); }>
            <div class="filter-grid">
                <div>
                    <label for="f-level">"Level"</label>
                    <select id="f-level" prop:value=move || draft.get().level
                        on:change=move |ev| draft.update(|d| d.level = event_target_value(&ev))>
                        <option value="">"Any"</option>
                        {Level::ALL.iter().map(|l| view! { <option value=l.as_str()>{l.as_str()}</option> }).collect_view()}
                    </select>
                </div>
                <div>
                    <label for="f-kind">"Kind"</label>
                    <select id="f-kind" prop:value=move || draft.get().kind
                        on:change=move |ev| draft.update(|d| d.kind = event_target_value(&ev))>
                        <option value="">"Any"</option>
                        {kind::ALL.iter().map(|k| view! { <option value=*k>{*k}</option> }).collect_view()}
                    </select>
                </div>
                <div>
                    <label for="f-actor">"Actor"</label>
                    <input id="f-actor" placeholder="e.g. ops@example.com, token:ci, scheduler"
                        prop:value=move || draft.get().actor
                        on:input=move |ev| draft.update(|d| d.actor = event_target_value(&ev)) />
                </div>
                <div>
                    <label for="f-since">"From (UTC)"</label>
                    <input id="f-since" type="datetime-local" prop:value=move || draft.get().since
                        on:input=move |ev| draft.update(|d| d.since = event_target_value(&ev)) />
                </div>
                <div>
                    <label for="f-until">"Until (UTC)"</label>
                    <input id="f-until" type="datetime-local" prop:value=move || draft.get().until
                        on:input=move |ev| draft.update(|d| d.until = event_target_value(&ev)) />
                </div>
            </div>
            <div class="buttons">
                <button type="submit" id="apply-filters" class="primary" disabled=move || !ready.get()>"Apply filters"</button>
                <button type="button" class="ghost" disabled=move || !ready.get() on:click=move |_| {
                    draft.set(EventFilterView::default());
                    apply();
                }>"Clear"</button>
                <a class="button ghost" id="export-csv" href=move || export("csv") download="">"Export CSV"</a>
                <a class="button ghost" id="export-json" href=move || export("json") download="">"Export JSON"</a>
                <label class="inline">
                    <input type="checkbox" id="live-tail" prop:checked=tail_on disabled=move || !ready.get()
                        on:change=move |ev| tail_on.set(event_target_checked(&ev)) />
                    " Live tail "
                    <span class="muted small" id="tail-state">{move || if tail_on.get() && ready.get() { tail_state.get() } else { "off" }}</span>
                </label>
            </div>
        </form>

        <div class="table-wrap">
            <table class="events stack" aria-label="Audit events, newest first">
                <thead>
                    <tr>
                        <th scope="col">"Time"</th>
                        <th scope="col">"Level"</th>
                        <th scope="col">"Kind"</th>
                        <th scope="col">"Actor"</th>
                        <th scope="col">"Via"</th>
                        <th scope="col">"Keys"</th>
                        <th scope="col">"Reason and details"</th>
                    </tr>
                </thead>
                <tbody id="live-rows">
                    <For each=move || live.get() key=|e| e.id children=|e| view! { <EventRow event=e fresh=true /> } />
                </tbody>
                <Transition fallback=|| view! { <tbody><tr><td colspan="7">"Loading…"</td></tr></tbody> }>
                    {move || Suspend::new(async move {
                        match first.await {
                            Ok(page) if page.events.is_empty() => view! {
                                <tbody><tr><td colspan="7" class="muted" id="no-events">"No events match these filters."</td></tr></tbody>
                            }.into_any(),
                            Ok(page) => view! {
                                <tbody id="first-rows">
                                    {page.events.into_iter().map(|e| view! { <EventRow event=e fresh=false /> }).collect_view()}
                                </tbody>
                            }.into_any(),
                            Err(e) => view! {
                                <tbody><tr><td colspan="7">{error_note(&e)}</td></tr></tbody>
                            }.into_any(),
                        }
                    })}
                </Transition>
                <tbody id="older-rows">
                    <For each=move || older.get() key=|e| e.id children=|e| view! { <EventRow event=e fresh=false /> } />
                </tbody>
            </table>
        </div>
        <div class="buttons pager">
            <button type="button" id="load-older" class="ghost"
                disabled=move || !ready.get() || more.pending().get() || cursor().is_none()
                on:click=move |_| {
                    more.dispatch(ListEventsPage { filter: applied.get_untracked(), cursor: cursor() });
                }>
                {move || if more.pending().get() { "Loading…" } else { "Load older events" }}
            </button>
            {move || failure(more.value().get())}
        </div>
    }
}

#[component]
fn EventRow(event: EventView, fresh: bool) -> impl IntoView {
    let level = format!("level level-{}", event.level);
    let kids = event
        .kids
        .iter()
        .map(|k| format!("{}…", k.chars().take(10).collect::<String>()))
        .collect::<Vec<_>>()
        .join(" ");
    let kids_title = event.kids.join(" ");
    let kind_attr = event.kind.clone();
    let via = match &event.source {
        Some(s) => format!("{} · {s}", event.trigger),
        None => event.trigger.clone(),
    };
    view! {
        <tr class:fresh=fresh data-id=event.id.to_string() data-kind=kind_attr>
            <td class="nowrap" data-label="Time"><time>{event.at}</time></td>
            <td data-label="Level"><span class=level>{event.level.clone()}</span></td>
            <td class="kind" data-label="Kind"><code>{event.kind}</code></td>
            <td class="actor" data-label="Actor">{event.actor}</td>
            <td class="muted" data-label="Via">{via}</td>
            <td data-label="Keys"><code class="kid" title=kids_title>{kids}</code></td>
            <td class="details" data-label="Details">
                {event.reason.map(|r| view! { <div>{format!("Reason: {r}")}</div> })}
                {(!event.details.is_empty()).then(|| view! { <code class="small">{event.details}</code> })}
            </td>
        </tr>
    }
}

/// Keeps an `EventSource` open on `/events/stream` for the applied filters, prepending
/// what arrives to `live`. Reopened when the filters change; closed when the page goes.
#[allow(unused_variables)]
fn live_tail(
    applied: RwSignal<EventFilterView>,
    first: Resource<Result<EventPage, ServerFnError>>,
    live: RwSignal<Vec<EventView>>,
    on: RwSignal<bool>,
    state: RwSignal<&'static str>,
) {
    #[cfg(feature = "hydrate")]
    {
        use wasm_bindgen::JsCast as _;
        use wasm_bindgen::closure::Closure;

        type Open = (
            web_sys::EventSource,
            Vec<Closure<dyn FnMut(web_sys::Event)>>,
        );
        // Browser objects live in the arena's thread-local storage; the handle is Copy.
        let current = StoredValue::new_local(None::<Open>);
        let close = move || {
            current.try_update_value(|open| {
                if let Some((source, _closures)) = open.take() {
                    source.close();
                }
            });
        };
        on_cleanup(close);

        Effect::new(move |_| {
            let filter = applied.get();
            let enabled = on.get();
            // Wait for the first page so the tail starts right after what it shows.
            let Some(Ok(page)) = first.get() else { return };
            close();
            if !enabled {
                return;
            }
            let after = page.events.first().map_or(0, |e| e.id);
            let qs = filter.query_string();
            let url = if qs.is_empty() {
                format!("/events/stream?after={after}")
            } else {
                format!("/events/stream?{qs}&after={after}")
            };
            let Ok(source) = web_sys::EventSource::new(&url) else {
                state.set("unavailable");
                return;
            };
            state.set("connecting");
            let on_audit = Closure::<dyn FnMut(web_sys::Event)>::new(move |ev: web_sys::Event| {
                let Some(msg) = ev.dyn_ref::<web_sys::MessageEvent>() else {
                    return;
                };
                let Some(text) = msg.data().as_string() else {
                    return;
                };
                if let Ok(event) = serde_json::from_str::<EventView>(&text) {
                    live.update(|v| {
                        if !v.iter().any(|e| e.id == event.id) {
                            v.insert(0, event);
                        }
                    });
                }
            });
            let on_open = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| state.set("live"));
            let on_error =
                Closure::<dyn FnMut(web_sys::Event)>::new(move |_| state.set("reconnecting"));
            let _ =
                source.add_event_listener_with_callback("audit", on_audit.as_ref().unchecked_ref());
            let _ =
                source.add_event_listener_with_callback("open", on_open.as_ref().unchecked_ref());
            let _ =
                source.add_event_listener_with_callback("error", on_error.as_ref().unchecked_ref());
            current.set_value(Some((source, vec![on_audit, on_open, on_error])));
        });
    }
}
