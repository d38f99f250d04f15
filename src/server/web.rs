//! What the admin UI needs beyond Leptos: security headers on every response, the
//! sign-in gate in front of the pages, the live event stream (server-sent events), the
//! audit export, and PEM downloads of public keys.

use crate::app::wire::EventView;
use crate::domain::{Kid, Role};
use crate::server::api::client_address;
use crate::server::audit::StoredEvent;
use crate::server::crypto::PublicJwk;
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
                "the database is unavailable",
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

/// How often the live tail looks for new events. Every instance writes to the same
/// database, so reading it catches events made anywhere.
const TAIL_EVERY: Duration = Duration::from_secs(1);
/// Rows per read of the live tail; a longer backlog is read in several rounds.
const TAIL_BATCH: i64 = 200;

/// `GET /events/stream`: server-sent events, one `audit` event per new audit row that
/// passes the filters, oldest first, each with its id (so a reconnecting browser's
/// `Last-Event-ID` resumes where it stopped). The session is checked again on every
/// poll, against the database, so a sign-out anywhere or an expired session ends the
/// stream.
async fn stream_events(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Query(filter): Query<EventFilter>,
) -> Response {
    if let Err(refused) = viewer(&state, &session, Role::Viewer).await {
        return refused;
    }
    let mut query = match filter.query(TAIL_BATCH) {
        Ok(q) => q,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let resumed = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    query.after_id = query.after_id.max(resumed);
    if query.after_id.is_none() {
        // Start from now: the page already shows what came before.
        let newest = state
            .storage
            .list_events(&EventQuery {
                limit: 1,
                ..Default::default()
            })
            .await
            .ok()
            .and_then(|v| v.first().map(|e| e.id))
            .unwrap_or(0);
        query.after_id = Some(newest);
    }
    let stream = futures_util::stream::unfold(
        (
            state,
            session,
            query,
            std::collections::VecDeque::<Event>::new(),
            false,
        ),
        |(state, session, mut query, mut pending, mut behind)| async move {
            loop {
                if let Some(event) = pending.pop_front() {
                    let next = (state, session, query, pending, behind);
                    return Some((Ok::<_, std::convert::Infallible>(event), next));
                }
                // A full batch means more may be waiting: read on without sleeping.
                if !behind {
                    tokio::time::sleep(TAIL_EVERY).await;
                }
                let signed_in = viewer(&state, &session, Role::Viewer).await.is_ok()
                    && session::still_stored(&session, state.storage.as_ref()).await;
                if !signed_in {
                    return None;
                }
                let Ok(rows) = state.storage.list_events(&query).await else {
                    behind = false;
                    continue;
                };
                // Oldest first (the query reads forward from `after_id`).
                behind = rows.len() as i64 == query.limit;
                if let Some(last) = rows.last() {
                    query.after_id = Some(last.id);
                }
                pending = rows
                    .iter()
                    .filter_map(|e| {
                        let json = serde_json::to_string(&event_view(e)).ok()?;
                        Some(
                            Event::default()
                                .event("audit")
                                .id(e.id.to_string())
                                .data(json),
                        )
                    })
                    .collect();
            }
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// Rows per database read while exporting.
const EXPORT_PAGE: i64 = 1000;

/// `GET /events/export?format=csv|json`: the filtered view, every page of it, streamed
/// newest first so memory stays flat however many rows match.
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
            query.before_id = rows.last().map(|e| e.id);
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
                "the database is unavailable",
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
