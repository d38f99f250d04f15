//! The REST API under `/api/v1`, for bearer API tokens with scopes.
//!
//! Every error, including a malformed or oversized body, is JSON `{error, message}` with
//! the right status. Internal causes are logged, never sent.

use crate::domain::audit::Trigger;
use crate::domain::lifecycle::PlanError;
use crate::domain::{Algorithm, KeyState, Kid};
use crate::server::jwt::{self, SignError};
use crate::server::keys::{Actor, KeyError, ScheduleError};
use crate::server::state::AppState;
use crate::server::storage::{EventQuery, StorageError, UNAVAILABLE_MESSAGE};
use crate::server::tokens::{self, Principal};
use axum::extract::rejection::JsonRejection;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State,
};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};

/// Request bodies larger than this are refused with 413.
const MAX_BODY: usize = 64 * 1024;

/// Routes relative to `/api/v1`, where the caller nests them.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/keys", get(list_keys))
        .route("/keys/rotate", post(rotate))
        .route("/keys/{kid}/revoke", post(revoke))
        .route("/schedule", get(get_schedule).put(put_schedule))
        .route("/events", get(events))
        .route("/sign", post(sign))
        .route("/verify", post(verify))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

/// Every API failure.
#[derive(Debug)]
pub enum ApiError {
    Unauthorized,
    Forbidden(&'static str),
    BadRequest(&'static str, String),
    NotFound(String),
    Conflict(String),
    MethodNotAllowed,
    PayloadTooLarge,
    UnsupportedMediaType,
    /// 503: something this request needs is unavailable for now; the message says what.
    Unavailable(String),
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid API token is required (Authorization: Bearer ...)".to_string(),
            ),
            ApiError::Forbidden(scope) => (
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("this token lacks the '{scope}' scope"),
            ),
            ApiError::BadRequest(code, m) => (StatusCode::BAD_REQUEST, code, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method".to_string(),
            ),
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request bodies are limited to {MAX_BODY} bytes"),
            ),
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send JSON with Content-Type: application/json".to_string(),
            ),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "API request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the server log".to_string(),
                )
            }
        };
        let mut response =
            (status, Json(json!({ "error": code, "message": message }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Plan(PlanError::UnknownKid(kid)) => {
                ApiError::NotFound(format!("no key with id {kid}"))
            }
            KeyError::Plan(p @ PlanError::NotRevocable { .. }) => ApiError::Conflict(p.to_string()),
            KeyError::Plan(p @ PlanError::NotEnabled(_)) => {
                ApiError::BadRequest("invalid_alg", p.to_string())
            }
            KeyError::Busy => ApiError::Unavailable(KeyError::Busy.to_string()),
            KeyError::Storage(e) => e.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "API request: database unavailable");
            ApiError::Unavailable(UNAVAILABLE_MESSAGE.into())
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

/// JSON body extraction whose failures come back as [`ApiError`]s.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::UnsupportedMediaType),
            Err(JsonRejection::BytesRejection(r))
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError::PayloadTooLarge)
            }
            Err(JsonRejection::JsonSyntaxError(e)) => {
                Err(ApiError::BadRequest("malformed_json", e.body_text()))
            }
            Err(JsonRejection::JsonDataError(e)) => {
                Err(ApiError::BadRequest("invalid_body", e.body_text()))
            }
            Err(e) => Err(ApiError::BadRequest("invalid_body", e.body_text())),
        }
    }
}

/// An optional body: a request without a body (and without a JSON content type) gives
/// `None`; anything else must be valid JSON.
impl<S, T> axum::extract::OptionalFromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        let has_type = req.headers().contains_key(header::CONTENT_TYPE);
        let no_length = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0");
        let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
        if !has_type && no_length && !chunked {
            return Ok(None);
        }
        <ApiJson<T> as FromRequest<S>>::from_request(req, state)
            .await
            .map(Some)
    }
}

/// The authenticated caller and where the request came from.
pub struct Caller {
    principal: Principal,
    source: Option<String>,
}

impl Caller {
    fn require(&self, scope: &'static str) -> Result<(), ApiError> {
        if self.principal.has(scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(scope))
        }
    }

    fn actor(&self) -> Actor {
        Actor {
            name: format!("token:{}", self.principal.name),
            trigger: Trigger::Api,
            source: self.source.clone(),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized)?;
        let principal =
            tokens::authenticate(state.storage.as_ref(), &state.recent_tokens, token.trim())
                .await?
                .ok_or(ApiError::Unauthorized)?;
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        let source = peer
            .map(|peer| client_address(peer, &parts.headers, &state.config.trusted_proxies))
            .map(|ip| ip.to_string());
        Ok(Caller { principal, source })
    }
}

/// The client's address for the audit log. `X-Forwarded-For` is believed only as far as
/// it was appended by trusted proxies: walking it from the right, the first address that
/// is not a trusted proxy is the client.
pub fn client_address(
    peer: IpAddr,
    headers: &axum::http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    forwarded
        .iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .or(forwarded.first())
        .copied()
        .unwrap_or(peer)
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such API endpoint".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Free text that ends up in the audit log or a query: bounded, and without control
/// characters (PostgreSQL refuses NUL in text; newlines would forge log lines).
fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.chars().count() > max {
        return Err(ApiError::BadRequest(
            "invalid_body",
            format!("{field} is longer than {max} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "invalid_body",
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(())
}

fn parse_alg(name: Option<&str>) -> Result<Option<Algorithm>, ApiError> {
    name.map(|a| {
        Algorithm::parse(a).map_err(|e| ApiError::BadRequest("invalid_alg", e.to_string()))
    })
    .transpose()
}

/// The `{"keys": [...]}` answer of `GET /keys`, also printed by `signet keys --json`.
pub fn keys_json(keys: &[crate::server::storage::StoredKey]) -> Value {
    let keys: Vec<Value> = keys
        .iter()
        .map(|k| {
            let jwk: Option<Value> = serde_json::from_str(&k.public_jwk).ok();
            let info = &k.info;
            json!({
                "kid": info.kid,
                "alg": info.alg,
                "state": info.state,
                "created_at": info.created_at,
                "activated_at": info.activated_at,
                "rotated_at": info.rotated_at,
                "revoked_at": info.revoked_at,
                "expires_at": info.expires_at,
                "jwk": jwk,
            })
        })
        .collect();
    json!({ "keys": keys })
}

async fn list_keys(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require("keys:read")?;
    Ok(Json(keys_json(&state.storage.list_keys().await?)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    alg: Option<String>,
    #[serde(default)]
    revoke: bool,
    reason: Option<String>,
}

fn changes_json(plan: &crate::domain::Plan) -> Vec<Value> {
    plan.transitions
        .iter()
        .map(|t| {
            if t.from == t.to {
                json!({ "kid": t.kid, "alg": t.alg, "created": t.to })
            } else {
                json!({ "kid": t.kid, "alg": t.alg, "from": t.from, "to": t.to })
            }
        })
        .collect()
}

async fn rotate(
    State(state): State<AppState>,
    caller: Caller,
    body: Option<ApiJson<RotateBody>>,
) -> Result<Json<Value>, ApiError> {
    caller.require("keys:write")?;
    let body = body.map(|ApiJson(b)| b).unwrap_or_default();
    let alg = parse_alg(body.alg.as_deref())?;
    if let Some(r) = &body.reason {
        check_text("reason", r, 500)?;
    }
    let reason = body.reason.filter(|r| !r.trim().is_empty());
    if body.revoke && reason.is_none() {
        return Err(ApiError::BadRequest(
            "missing_reason",
            "rotate with revoke needs a reason".into(),
        ));
    }
    let plan = state
        .keys
        .rotate(alg, body.revoke, reason, &caller.actor())
        .await?;
    Ok(Json(json!({ "changes": changes_json(&plan) })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    reason: String,
}

async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    kid: Result<Path<String>, axum::extract::rejection::PathRejection>,
    ApiJson(body): ApiJson<RevokeBody>,
) -> Result<Json<Value>, ApiError> {
    caller.require("keys:write")?;
    let Path(kid) = kid.map_err(|e| ApiError::BadRequest("invalid_kid", e.body_text()))?;
    check_text("reason", &body.reason, 500)?;
    let kid = Kid::parse(&kid).map_err(|e| ApiError::BadRequest("invalid_kid", e.to_string()))?;
    if body.reason.trim().is_empty() {
        return Err(ApiError::BadRequest(
            "missing_reason",
            "a revocation needs a reason".into(),
        ));
    }
    let plan = state
        .keys
        .revoke(&kid, body.reason, &caller.actor())
        .await?;
    Ok(Json(
        json!({ "revoked": kid, "changes": changes_json(&plan) }),
    ))
}

async fn schedule_json(state: &AppState) -> Result<Value, ApiError> {
    let s = state.keys.schedule();
    let next: Vec<DateTime<Utc>> = s.cron.upcoming(Utc::now(), 5);
    let last = state.keys.last_scheduled().await?;
    Ok(json!({
        "cron": s.cron.as_str(),
        "retention": s.retention.to_string(),
        "max_token_ttl": state.config.max_token_ttl.to_string(),
        "next_rotations": next,
        "updated_at": s.updated_at,
        "cron_since": s.cron_since,
        "last_scheduled_rotation": last.map(|(slot, instance)| json!({
            "slot": slot,
            "instance": instance,
        })),
    }))
}

async fn get_schedule(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require("keys:read")?;
    state.keys.load_schedule().await.map_err(|e| match e {
        ScheduleError::Storage(e) => e.into(),
        other => ApiError::Internal(other.to_string()),
    })?;
    Ok(Json(schedule_json(&state).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleBody {
    cron: String,
    retention: Option<String>,
}

async fn put_schedule(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<ScheduleBody>,
) -> Result<Json<Value>, ApiError> {
    caller.require("keys:write")?;
    match state
        .keys
        .set_schedule(&body.cron, body.retention.as_deref(), &caller.actor())
        .await
    {
        Ok(_) => Ok(Json(schedule_json(&state).await?)),
        Err(ScheduleError::Cron(e)) => Err(ApiError::BadRequest("invalid_cron", e.to_string())),
        Err(e @ (ScheduleError::Retention(_) | ScheduleError::TooShort { .. })) => {
            Err(ApiError::BadRequest("invalid_retention", e.to_string()))
        }
        Err(ScheduleError::Storage(e)) => Err(e.into()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventParams {
    level: Option<String>,
    kind: Option<String>,
    actor: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    limit: Option<i64>,
    cursor: Option<String>,
}

async fn events(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<EventParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require("audit:read")?;
    let Query(p) = params.map_err(|e| ApiError::BadRequest("invalid_query", e.body_text()))?;
    if let Some(level) = p
        .level
        .as_ref()
        .filter(|l| crate::domain::audit::Level::parse(l).is_none())
    {
        return Err(ApiError::BadRequest(
            "invalid_query",
            format!("unknown level '{level}'"),
        ));
    }
    for (field, value) in [("kind", &p.kind), ("actor", &p.actor)] {
        if let Some(v) = value {
            check_text(field, v, 200)
                .map_err(|_| ApiError::BadRequest("invalid_query", format!("invalid {field}")))?;
        }
    }
    let limit = p.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::BadRequest(
            "invalid_query",
            "limit must be between 1 and 500".into(),
        ));
    }
    let before_id = p
        .cursor
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| ApiError::BadRequest("invalid_query", "invalid cursor".into()))
        })
        .transpose()?;
    let query = EventQuery {
        level: p.level,
        kind: p.kind,
        actor: p.actor,
        since: p.since,
        until: p.until,
        before_id,
        after_id: None,
        limit: limit + 1,
    };
    let mut rows = state.storage.list_events(&query).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().map(|e| e.id.to_string())
    } else {
        None
    };
    Ok(Json(json!({ "events": rows, "next_cursor": next_cursor })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignBody {
    claims: Value,
    alg: Option<String>,
    ttl: Option<u64>,
}

async fn sign(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<SignBody>,
) -> Result<Json<Value>, ApiError> {
    caller.require("sign")?;
    let Value::Object(claims) = body.claims else {
        return Err(ApiError::BadRequest(
            "invalid_claims",
            "claims must be a JSON object".into(),
        ));
    };
    let alg = parse_alg(body.alg.as_deref())?;
    match state.keys.sign(claims, alg, body.ttl).await {
        Ok(s) => Ok(Json(
            json!({ "token": s.token, "kid": s.kid, "alg": s.alg }),
        )),
        Err(e @ SignError::ReservedClaim(_)) => {
            Err(ApiError::BadRequest("invalid_claims", e.to_string()))
        }
        Err(e @ SignError::NotEnabled(_)) => {
            Err(ApiError::BadRequest("invalid_alg", e.to_string()))
        }
        Err(e @ (SignError::TtlZero | SignError::TtlTooLong { .. })) => {
            Err(ApiError::BadRequest("invalid_ttl", e.to_string()))
        }
        Err(SignError::Unavailable(why)) => Err(ApiError::Unavailable(why)),
        Err(e @ SignError::NoActiveKey(_)) => Err(ApiError::Unavailable(e.to_string())),
        Err(e) => Err(ApiError::Internal(e.to_string())),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    token: String,
    audience: Option<String>,
}

async fn verify(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<VerifyBody>,
) -> Result<Json<Value>, ApiError> {
    if !caller.principal.has("sign") && !caller.principal.has("keys:read") {
        return Err(ApiError::Forbidden("sign"));
    }
    let snapshot = state.keys.snapshot();
    match jwt::verify(
        &snapshot,
        &state.config.issuer(),
        &body.token,
        body.audience.as_deref(),
    ) {
        jwt::Verified::Valid { kid, claims } => {
            let state_of = snapshot.keys.iter().find(|k| k.kid == kid).map(|k| k.state);
            Ok(Json(json!({
                "valid": true,
                "claims": claims,
                "kid": kid,
                "key_state": state_of.unwrap_or(KeyState::Active),
            })))
        }
        jwt::Verified::Invalid { reason } => Ok(Json(json!({ "valid": false, "reason": reason }))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.7, 10.0.0.2".parse().unwrap(),
        );
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let stranger: IpAddr = "192.0.2.1".parse().unwrap();
        // From a trusted proxy: the rightmost untrusted hop (a client could forge the rest).
        assert_eq!(
            client_address(proxy, &headers, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // From anyone else: the header is ignored.
        assert_eq!(client_address(stranger, &headers, &trusted), stranger);
        assert_eq!(client_address(proxy, &HeaderMap::new(), &trusted), proxy);
    }
}
