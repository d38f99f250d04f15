//! The audit log for the admin UI: the live tail as server-sent events and the filtered
//! export (CSV or JSON), both behind the UI's session.

use super::ui::viewer;
use crate::domain::Role;
use crate::domain::audit::{EventFilter, EventView};
use crate::server::accounts::sessions::{self, Denied};
use crate::server::audit::StoredEvent;
use crate::server::events;
use crate::server::state::AppState;
use crate::server::storage::EventQuery;
use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;
use serde::Deserialize;
use std::time::Duration;
use tower_sessions::Session;

/// The UI's audit routes (the session layer wraps them in `http::router`).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/events/stream", get(stream_events))
        .route("/events/export", get(export_events))
}

/// The query parameters of the stream and the export: the events page's filters, and
/// what each route adds.
#[derive(Debug, Default, Deserialize)]
struct EventParams {
    level: Option<String>,
    kind: Option<String>,
    actor: Option<String>,
    since: Option<String>,
    until: Option<String>,
    /// Only events after this id (the live tail's position; the export oldest first).
    after: Option<i64>,
    /// Export: `csv` or `json`.
    format: Option<String>,
}

impl EventParams {
    /// The storage query of these filters, or why they are not acceptable.
    fn query(&self, limit: i64) -> Result<EventQuery, String> {
        let filter = EventFilter::parse(
            self.level.as_deref(),
            self.kind.as_deref(),
            self.actor.as_deref(),
            self.since.as_deref(),
            self.until.as_deref(),
        )?;
        let mut query = events::query(&filter, limit);
        query.after_id = self.after;
        Ok(query)
    }
}

/// How often an open stream checks that its session still stands (besides at once when
/// an event that may end sessions arrives: a sign-out, a password reset, a disabling).
const SESSION_CHECK_EVERY: Duration = Duration::from_secs(10);

/// Event kinds after which every stream checks its session at once.
const SESSION_ENDING: [&str; 4] = [
    crate::domain::audit::kind::ADMIN_LOGOUT,
    crate::domain::audit::kind::ADMIN_DISABLED,
    crate::domain::audit::kind::ADMIN_PASSWORD_RESET,
    crate::domain::audit::kind::ADMIN_PASSWORD_CHANGED,
];

/// `GET /events/stream`: server-sent events, one `audit` event per new audit row that
/// passes the filters, oldest first, each with its id (so a reconnecting browser's
/// `Last-Event-ID` resumes where it stopped). New rows come from the instance's shared
/// poller ([`events`]), which reads the database once a second for every stream together;
/// a stream reads by itself only to catch up. The session is checked every 10 s and at
/// once after a sign-out or similar event, so a sign-out anywhere or an expired session
/// ends the stream; so does the server's shutdown. At most `events::PER_SESSION` streams
/// per session and `events::PER_INSTANCE` per instance: beyond, 429.
async fn stream_events(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Query(params): Query<EventParams>,
) -> Response {
    if let Err(refused) = viewer(&state, &session, Role::Viewer).await {
        return refused;
    }
    let mut query = match params.query(events::BATCH) {
        Ok(q) => q,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let Some(session_id) = session.id() else {
        return (StatusCode::UNAUTHORIZED, Denied::SignedOut.to_string()).into_response();
    };
    let slot = match state
        .tail
        .open(&crate::server::crypto::sha256_hex(&session_id.to_string()))
    {
        Ok(slot) => slot,
        Err(full) => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, "10")],
                axum::Json(serde_json::json!({
                    "error": "too_many_streams",
                    "message": full.to_string(),
                })),
            )
                .into_response();
        }
    };
    let resumed = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    query.after_id = query.after_id.max(resumed);
    // Without a position, start from now: the page already shows what came before.
    if query.after_id.is_none() {
        match state.tail.newest().await {
            Some(id) => query.after_id = Some(id),
            None => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Denied::Unavailable.to_string(),
                )
                    .into_response();
            }
        }
    }
    let tail = TailStream {
        state,
        session,
        query,
        slot,
        pending: std::collections::VecDeque::new(),
        // Always once: what came between this position and where the poller starts
        // broadcasting is read here.
        catching_up: true,
        check_at: tokio::time::Instant::now() + SESSION_CHECK_EVERY,
    };
    let stream = futures_util::stream::unfold(tail, |mut tail| async move {
        let event = tail.next().await?;
        Some((Ok::<_, std::convert::Infallible>(event), tail))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// One open live tail: its filters and position, its place among the open streams, and
/// what it has yet to send.
struct TailStream {
    state: AppState,
    session: Session,
    /// The filters; `after_id` is the last event this stream has accounted for.
    query: EventQuery,
    slot: events::Slot,
    pending: std::collections::VecDeque<Event>,
    /// Reading the database itself: at the start from an earlier id, or after falling
    /// behind the broadcast.
    catching_up: bool,
    check_at: tokio::time::Instant,
}

impl TailStream {
    /// The next event to send; `None` ends the stream.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if *self.slot.closed.borrow() {
                return None;
            }
            if self.catching_up {
                if !self.slot.poller_started().await {
                    return None;
                }
                match self.state.storage.list_events(&self.query).await {
                    Ok(rows) => {
                        self.catching_up = rows.len() as i64 == self.query.limit;
                        self.take(&rows);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the live tail cannot catch up");
                        self.catching_up = false;
                    }
                }
                continue;
            }
            enum Woke {
                Closed,
                Check,
                Batch(events::Batch),
                Lagged,
            }
            let woke = tokio::select! {
                _ = self.slot.closed.wait_for(|c| *c) => Woke::Closed,
                () = tokio::time::sleep_until(self.check_at) => Woke::Check,
                batch = self.slot.batches.recv() => match batch {
                    Ok(batch) => Woke::Batch(batch),
                    // Fell behind the broadcast: read what was missed from the database.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Woke::Lagged,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => Woke::Closed,
                },
            };
            match woke {
                Woke::Closed => return None,
                Woke::Check => {
                    if !self.signed_in().await {
                        return None;
                    }
                }
                Woke::Batch(batch) => {
                    self.take(&batch);
                    if batch
                        .iter()
                        .any(|e| SESSION_ENDING.contains(&e.kind.as_str()))
                        && !self.signed_in().await
                    {
                        return None;
                    }
                }
                Woke::Lagged => self.catching_up = true,
            }
        }
    }

    /// Queues the rows (oldest first) that are new to this stream and pass its filters.
    fn take(&mut self, rows: &[StoredEvent]) {
        let after = self.query.after_id.unwrap_or(0);
        for e in rows.iter().filter(|e| e.id > after) {
            if self.query.matches(e)
                && let Ok(json) = serde_json::to_string(&EventView::from(e))
            {
                self.pending.push_back(
                    Event::default()
                        .event("audit")
                        .id(e.id.to_string())
                        .data(json),
                );
            }
            self.query.after_id = Some(e.id);
        }
    }

    async fn signed_in(&mut self) -> bool {
        self.check_at = tokio::time::Instant::now() + SESSION_CHECK_EVERY;
        viewer(&self.state, &self.session, Role::Viewer)
            .await
            .is_ok()
            && sessions::still_stored(&self.session, self.state.storage.as_ref()).await
    }
}

/// Rows per database read while exporting.
const EXPORT_PAGE: i64 = 1000;

/// `GET /events/export?format=csv|json`: the filtered view, every page of it, streamed
/// newest first (oldest first from `after=ID`) so memory stays flat however many rows
/// match.
async fn export_events(
    State(state): State<AppState>,
    session: Session,
    Query(params): Query<EventParams>,
) -> Response {
    if let Err(refused) = viewer(&state, &session, Role::Viewer).await {
        return refused;
    }
    let query = match params.query(EXPORT_PAGE) {
        Ok(q) => q,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let csv = match params.format.as_deref().unwrap_or("csv") {
        "csv" => true,
        "json" => false,
        other => {
            return (
                StatusCode::BAD_REQUEST,
                format!("unknown format '{other}' (csv or json)"),
            )
                .into_response();
        }
    };
    let header_line = if csv {
        "id,at,level,kind,actor,trigger,source,kids,reason,details\n".to_string()
    } else {
        "[".to_string()
    };
    let forward = query.after_id.is_some();
    let first = futures_util::stream::once(async move { Ok::<_, std::io::Error>(header_line) });
    let pages = futures_util::stream::unfold(
        (state, query, false, false),
        move |(state, mut query, done, mut wrote_any)| async move {
            if done {
                return None;
            }
            let rows = match state.storage.list_events(&query).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::error!(error = %e, "audit export failed");
                    return Some((
                        Err(std::io::Error::other("export failed")),
                        (state, query, true, wrote_any),
                    ));
                }
            };
            let last_page = (rows.len() as i64) < query.limit;
            // With `after=` the export reads forward, oldest first; otherwise backward,
            // newest first. Each page continues where the last one ended, in the same
            // direction, so no row comes twice and none is skipped.
            if forward {
                query.after_id = rows.last().map(|e| e.id).or(query.after_id);
            } else {
                query.before_id = rows.last().map(|e| e.id);
            }
            let mut chunk = String::new();
            for e in &rows {
                if csv {
                    chunk.push_str(&csv_line(e));
                } else {
                    if wrote_any {
                        chunk.push(',');
                    }
                    chunk.push('\n');
                    chunk.push_str(&serde_json::to_string(e).unwrap_or_default());
                    wrote_any = true;
                }
            }
            if last_page && !csv {
                chunk.push_str("\n]\n");
            }
            Some((Ok(chunk), (state, query, last_page, wrote_any)))
        },
    );
    use futures_util::StreamExt as _;
    let body = Body::from_stream(first.chain(pages));
    let (mime, ext) = if csv {
        ("text/csv; charset=utf-8", "csv")
    } else {
        ("application/json", "json")
    };
    let name = format!(
        "signet-events-{}.{ext}",
        Utc::now().format("%Y%m%dT%H%M%SZ")
    );
    (
        [
            (header::CONTENT_TYPE, mime.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        body,
    )
        .into_response()
}

/// One CSV record (RFC 4180). Cells that a spreadsheet would run as a formula get a
/// leading apostrophe (OWASP's CSV-injection advice): actors and reasons are user text.
fn csv_line(e: &StoredEvent) -> String {
    let cell = |s: &str| {
        let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
            format!("'{s}")
        } else {
            s.to_string()
        };
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s
        }
    };
    let fields = [
        e.id.to_string(),
        e.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        e.level.clone(),
        e.kind.clone(),
        e.actor.clone(),
        e.trigger.clone(),
        e.source.clone().unwrap_or_default(),
        e.kids.join(" "),
        e.reason.clone().unwrap_or_default(),
        e.details.to_string(),
    ];
    let mut line = fields.iter().map(|f| cell(f)).collect::<Vec<_>>().join(",");
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    #[test]
    fn csv_cells_are_quoted_and_formulas_defused() {
        let e = StoredEvent {
            id: 7,
            at: DateTime::from_timestamp(0, 0).unwrap(),
            level: "notice".into(),
            kind: "keys.revoked".into(),
            actor: "=cmd|' /C calc'!A0".into(),
            trigger: "ui".into(),
            source: None,
            kids: vec!["a".into(), "b".into()],
            reason: Some("leaked, \"maybe\"".into()),
            details: serde_json::json!({}),
            prev_hash: String::new(),
            hash: String::new(),
            mac: None,
            mac_kek: None,
        };
        assert_eq!(
            csv_line(&e),
            "7,1970-01-01T00:00:00.000000Z,notice,keys.revoked,'=cmd|' /C calc'!A0,ui,,a b,\"leaked, \"\"maybe\"\"\",{}\n"
        );
    }
}
