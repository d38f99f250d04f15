//! The REST API under `/api/v1`, for bearer API tokens with scopes.
//!
//! Every error, including a malformed or oversized body, is JSON `{error, message}` with
//! the right status. Internal causes are logged, never sent.

use super::client_ip::client_address;
use super::error::{ApiError, ApiJson, MAX_BODY, method_not_allowed, not_found};
use crate::domain::audit::{EventFilter, Trigger};
use crate::domain::{KeyState, Kid, Reason, TextError};
use crate::server::accounts::tokens::{self, Principal};
use crate::server::audit::Actor;
use crate::server::error::parse_alg;
use crate::server::events;
use crate::server::keys::jwt;
use crate::server::keys::listing::listing;
use crate::server::state::AppState;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use std::net::SocketAddr;

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

async fn list_keys(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require("keys:read")?;
    Ok(Json(listing(&state.storage.list_keys().await?)))
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
    let reason = Reason::parse_optional(body.reason.as_deref())?;
    if body.revoke && reason.is_none() {
        return Err(ApiError::BadRequest(
            "missing_reason",
            "rotate with revoke needs a reason".into(),
        ));
    }
    let plan = state
        .keys
        .rotate(
            alg,
            body.revoke,
            reason.map(Reason::into_string),
            &caller.actor(),
        )
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
    // A malformed reason is refused before a malformed kid, a missing one after.
    let reason = Reason::parse(&body.reason);
    if let Err(e) = &reason
        && !matches!(e, TextError::Empty(_))
    {
        return Err(e.clone().into());
    }
    let kid = Kid::parse(&kid).map_err(|e| ApiError::BadRequest("invalid_kid", e.to_string()))?;
    let reason = reason?.into_string();
    let plan = state.keys.revoke(&kid, reason, &caller.actor()).await?;
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
    state.keys.load_schedule().await?;
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
    state
        .keys
        .set_schedule(&body.cron, body.retention.as_deref(), &caller.actor())
        .await?;
    Ok(Json(schedule_json(&state).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventParams {
    level: Option<String>,
    kind: Option<String>,
    actor: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

async fn events(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<EventParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require("audit:read")?;
    let invalid = |message: String| ApiError::BadRequest("invalid_query", message);
    let Query(p) = params.map_err(|e| invalid(e.body_text()))?;
    let filter = EventFilter::parse(
        p.level.as_deref(),
        p.kind.as_deref(),
        p.actor.as_deref(),
        p.since.as_deref(),
        p.until.as_deref(),
    )
    .map_err(invalid)?;
    let limit = p.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(invalid("limit must be between 1 and 500".into()));
    }
    let before = p
        .cursor
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| invalid("invalid cursor".into()))
        })
        .transpose()?;
    let (rows, next) = events::page(state.storage.as_ref(), &filter, before, limit).await?;
    let next_cursor = next.map(|id| id.to_string());
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
) -> Result<Response, ApiError> {
    caller.require("sign")?;
    let Value::Object(claims) = body.claims else {
        return Err(ApiError::BadRequest(
            "invalid_claims",
            "claims must be a JSON object".into(),
        ));
    };
    let alg = parse_alg(body.alg.as_deref())?;
    let s = state.keys.sign(claims, alg, body.ttl).await?;
    Ok(Json(SignAnswer {
        alg: s.alg,
        kid: s.kid.as_str(),
        token: &s.token,
    })
    .into_response())
}

/// `/sign`'s answer, serialised straight from the signed token.
#[derive(serde::Serialize)]
struct SignAnswer<'a> {
    alg: crate::domain::Algorithm,
    kid: &'a str,
    token: &'a str,
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
        return Err(ApiError::ForbiddenAny(&["sign", "keys:read"]));
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
