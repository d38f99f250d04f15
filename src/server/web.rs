//! What the admin UI needs beyond Leptos: security headers on every response, the
//! sign-in gate in front of the pages, the live event stream (server-sent events), the
//! audit export, and PEM downloads of public keys.

use crate::app::wire::EventView;
use crate::domain::{Kid, Role};
use crate::server::api::client_address;
use crate::server::audit::StoredEvent;
use crate::server::crypto::PublicJwk;
use crate::server::live;
use crate::server::session::{self, Denied};
use crate::server::state::AppState;
use crate::server::storage::{AdminRow, EventQuery};
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;
use tower_sessions::Session;

/// The UI's own routes (the session layer wraps them in `startup`).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/events/stream", get(stream_events))
        .route("/events/export", get(export_events))
        .route("/config/jwks/{kid}/public.pem", get(download_pem))
}

/// Headers for every response. HTML pages get a stricter CSP with a per-response script
/// nonce from the shell (`app::shell`); everything else may not be framed or run anything.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    let mut set = |name: header::HeaderName, value: &'static str| {
        if !h.contains_key(&name) {
            h.insert(name, HeaderValue::from_static(value));
        }
    };
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::REFERRER_POLICY, "no-referrer");
    set(header::X_FRAME_OPTIONS, "DENY");
    set(
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    );
    res
}

/// The CSP of an HTML page: scripts only from this site or carrying the nonce, wasm
/// allowed to compile, no inline styles, no framing.
pub fn page_csp(nonce: &str) -> String {
    format!(
        "default-src 'self'; script-src 'self' 'nonce-{nonce}' 'wasm-unsafe-eval'; \
         style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
         object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

/// The pages that need a signed-in admin: every page of the app but `/login`. (The UI's
/// other routes, such as the event stream, answer 401 themselves.)
const PRIVATE_PAGES: [&str; 6] = [
    "/",
    "/config/jwks",
    "/config/schedule",
    "/events",
    "/settings",
    "/account/password",
];

fn is_private_page(path: &str) -> bool {
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    PRIVATE_PAGES.contains(&path)
}

/// The password page an admin with a one-time password is sent to.
pub const PASSWORD_PAGE: &str = "/account/password";

/// Sends anonymous visitors of a page to `/login` (remembering where they were going),
/// admins holding a one-time password to the password page, and signed-in admins away
/// from `/login`. Server functions do their own checks; this only routes page loads.
pub async fn page_gate(
    State(state): State<AppState>,
    session: Session,
    req: Request,
    next: Next,
) -> Response {
    if req.method() != Method::GET {
        return next.run(req).await;
    }
    let path = req.uri().path().to_string();
    let private = is_private_page(&path);
    if !private && path != "/login" {
        return next.run(req).await;
    }
    let admin = match session::current(&session, state.storage.as_ref(), &state.config).await {
        Ok(admin) => admin,
        Err(_) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "The database is unavailable; try again.",
            )
                .into_response();
        }
    };
    match admin {
        None if private => {
            let target = req
                .uri()
                .path_and_query()
                .map_or(path.clone(), |p| p.to_string());
            let next_param =
                url::form_urlencoded::byte_serialize(target.as_bytes()).collect::<String>();
            Redirect::to(&format!("/login?next={next_param}")).into_response()
        }
        Some(a) if a.must_change_password && path != PASSWORD_PAGE => {
            Redirect::to(PASSWORD_PAGE).into_response()
        }
        Some(_) if path == "/login" => Redirect::to("/").into_response(),
        _ => next.run(req).await,
    }
}

/// The client address for the audit log, from the connection and trusted proxies.
pub fn source_of(
    state: &AppState,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
) -> Option<String> {
    peer.map(|p| client_address(p.ip(), headers, &state.config.trusted_proxies).to_string())
}

/// The signed-in admin with at least `role`, for the UI's plain HTTP routes (reads only).
async fn viewer(state: &AppState, session: &Session, role: Role) -> Result<AdminRow, Response> {
    let refuse = |status: StatusCode, d: Denied| (status, d.to_string()).into_response();
    match session::current(session, state.storage.as_ref(), &state.config).await {
        Ok(Some(a)) if a.must_change_password => {
            Err(refuse(StatusCode::FORBIDDEN, Denied::PasswordChange))
        }
        Ok(Some(a)) if a.role.allows(role) => Ok(a),
        Ok(Some(a)) => Err(refuse(StatusCode::FORBIDDEN, Denied::Role(a.role))),
        Ok(None) => Err(refuse(StatusCode::UNAUTHORIZED, Denied::SignedOut)),
        Err(d) => Err(refuse(StatusCode::SERVICE_UNAVAILABLE, d)),
    }
}

/// Filters of the events page, as query parameters.
#[derive(Debug, Default, Deserialize)]
pub struct EventFilter {
    pub level: Option<String>,
    pub kind: Option<String>,
    pub actor: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    /// Live tail: only events after this id.
    pub after: Option<i64>,
    /// Export: `csv` or `json`.
    pub format: Option<String>,
}

/// Reads a time filter: RFC 3339, or the `YYYY-MM-DDTHH:MM` of a datetime-local input,
/// taken as UTC.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    let t = text.trim();
    DateTime::parse_from_rfc3339(t)
        .map(|d| d.with_timezone(&Utc))
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M")
                .or_else(|_| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S"))
                .map(|n| n.and_utc())
        })
        .map_err(|_| format!("'{t}' is not a time (expected e.g. 2026-11-22T14:30, UTC)"))
}

impl EventFilter {
    /// The storage query of these filters. Empty fields mean "any".
    pub fn query(&self, limit: i64) -> Result<EventQuery, String> {
        let some = |v: &Option<String>| {
            v.as_ref()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        let level = some(&self.level);
        if let Some(l) = &level
            && crate::domain::audit::Level::parse(l).is_none()
        {
            return Err(format!("unknown level '{l}'"));
        }
        for v in [&self.kind, &self.actor].into_iter().flatten() {
            if v.chars().count() > 254 || v.chars().any(char::is_control) {
                return Err("filters must be short plain text".into());
            }
        }
        let time = |v: &Option<String>| some(v).map(|s| parse_time(&s)).transpose();
        Ok(EventQuery {
            level,
            kind: some(&self.kind),
            actor: some(&self.actor),
            since: time(&self.since)?,
            until: time(&self.until)?,
            before_id: None,
            after_id: self.after,
            limit,
        })
    }
}

/// A time as the UI shows it.
pub fn utc_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// An event as the UI shows it.
pub fn event_view(e: &StoredEvent) -> EventView {
    EventView {
        id: e.id,
        at: utc_time(e.at),
        level: e.level.clone(),
        kind: e.kind.clone(),
        actor: e.actor.clone(),
        trigger: e.trigger.clone(),
        source: e.source.clone(),
        kids: e.kids.clone(),
        reason: e.reason.clone(),
        details: if e.details.as_object().is_some_and(|o| o.is_empty()) {
            String::new()
        } else {
            e.details.to_string()
        },
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
/// poller (`live`), which reads the database once a second for every stream together;
/// a stream reads by itself only to catch up. The session is checked every 10 s and at
/// once after a sign-out or similar event, so a sign-out anywhere or an expired session
/// ends the stream; so does the server's shutdown. At most `live::PER_SESSION` streams
/// per session and `live::PER_INSTANCE` per instance: beyond, 429.
async fn stream_events(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Query(filter): Query<EventFilter>,
) -> Response {
    if let Err(refused) = viewer(&state, &session, Role::Viewer).await {
        return refused;
    }
    let mut query = match filter.query(live::BATCH) {
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
    slot: live::Slot,
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
                Batch(live::Batch),
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
                && let Ok(json) = serde_json::to_string(&event_view(e))
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
            && session::still_stored(&self.session, self.state.storage.as_ref()).await
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
    Query(filter): Query<EventFilter>,
) -> Response {
    if let Err(refused) = viewer(&state, &session, Role::Viewer).await {
        return refused;
    }
    let query = match filter.query(EXPORT_PAGE) {
        Ok(q) => q,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let csv = match filter.format.as_deref().unwrap_or("csv") {
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

/// `GET /config/jwks/{kid}/public.pem`: a key's public half as a PEM file.
async fn download_pem(
    State(state): State<AppState>,
    session: Session,
    Path(kid): Path<String>,
) -> Response {
    if let Err(refused) = viewer(&state, &session, Role::Viewer).await {
        return refused;
    }
    let Ok(kid) = Kid::parse(&kid) else {
        return (StatusCode::BAD_REQUEST, "not a key id").into_response();
    };
    let keys = match state.storage.list_keys().await {
        Ok(keys) => keys,
        Err(e) => {
            tracing::error!(error = %e, "cannot list keys");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "The database is unavailable; try again.",
            )
                .into_response();
        }
    };
    let Some(key) = keys.iter().find(|k| k.info.kid == kid) else {
        return (StatusCode::NOT_FOUND, format!("no key with id {kid}")).into_response();
    };
    let pem = serde_json::from_str::<PublicJwk>(&key.public_jwk)
        .map_err(|_| ())
        .and_then(|jwk| crate::server::pem::public_pem(&jwk).map_err(|_| ()));
    match pem {
        Ok(pem) => (
            [
                (header::CONTENT_TYPE, "application/x-pem-file".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{}-{kid}.pem\"", key.info.alg),
                ),
            ],
            pem,
        )
            .into_response(),
        Err(()) => {
            tracing::error!(%kid, "stored public key cannot be written as PEM");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "this key cannot be written as PEM",
            )
                .into_response()
        }
    }
}

/// The peer address of a request, when the server was started with connect info.
pub fn peer(parts: &axum::http::request::Parts) -> Option<SocketAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| *a)
}

/// Server functions answer a request whose arguments do not decode (a missing field, a
/// wrong type, a body that is not a form) with 500 and the decoder's text. That is the
/// client's mistake: make it a 400 with a plain message, like every other bad input.
pub async fn bad_arguments_are_400(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    if response.status() != StatusCode::INTERNAL_SERVER_ERROR {
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "Internal error.").into_response();
    };
    let text = String::from_utf8_lossy(&bytes);
    let argument_error = ["Args|", "Deserialization|", "MissingArg|"]
        .iter()
        .any(|p| text.starts_with(p));
    if argument_error {
        return (
            StatusCode::BAD_REQUEST,
            "The request's arguments are missing or malformed.",
        )
            .into_response();
    }
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_pages_are_everything_but_login() {
        for p in [
            "/",
            "/config/jwks",
            "/config/schedule",
            "/events",
            "/settings",
            "/account/password",
        ] {
            assert!(is_private_page(p), "{p}");
        }
        for p in [
            "/login",
            "/eventsx",
            "/favicon.svg",
            "/pkg/signet.js",
            "/.well-known/jwks.json",
        ] {
            assert!(!is_private_page(p), "{p}");
        }
    }

    #[test]
    fn time_filters_accept_rfc3339_and_datetime_local() {
        assert_eq!(
            parse_time("2026-11-22T14:30").unwrap().to_rfc3339(),
            "2026-11-22T14:30:00+00:00"
        );
        assert_eq!(
            parse_time("2026-11-22T15:30:00+01:00")
                .unwrap()
                .to_rfc3339(),
            "2026-11-22T14:30:00+00:00"
        );
        assert!(parse_time("yesterday").is_err());
    }

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
