//! `GET /.well-known/jwks.json` and `GET /.well-known/openid-configuration`.
//!
//! The JWKS is served from bytes precomputed at each change of the keys, with an ETag,
//! `304 Not Modified` on a matching `If-None-Match`, and CORS open to any origin (it is
//! public by nature). `?alg=` narrows it to one algorithm.

use crate::domain::Algorithm;
use crate::server::state::AppState;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;

/// Caches must have refreshed this long before the next key is promoted.
const PROMOTION_MARGIN_SECS: i64 = 60;

/// How long past `max-age` a cache may serve the JWKS while Signet is unreachable.
pub const STALE_IF_ERROR_SECS: i64 = 60;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route(
            "/.well-known/openid-configuration",
            get(openid_configuration),
        )
}

#[derive(Deserialize)]
struct JwksQuery {
    alg: Option<String>,
}

async fn jwks(
    State(state): State<AppState>,
    Query(query): Query<JwksQuery>,
    headers: HeaderMap,
) -> Response {
    let snapshot = state.keys.snapshot();
    let (body, etag) = match query.alg.as_deref() {
        None => (snapshot.jwks.clone(), snapshot.etag.clone()),
        Some(name) => match Algorithm::parse(name) {
            Ok(alg) => {
                let body = snapshot.jwks_by_alg.get(&alg).cloned().unwrap_or_default();
                (
                    body,
                    format!("{}-{}\"", snapshot.etag.trim_end_matches('"'), alg),
                )
            }
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(serde_json::json!({ "error": "invalid_alg", "message": e.to_string() })),
                )
                    .into_response();
            }
        },
    };
    let max_age = max_age_secs(&state);
    let mut response_headers = HeaderMap::new();
    response_headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    // Set here rather than by the UI's header middleware, which the hottest route skips.
    response_headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // stale-if-error stays short: a shared cache that cannot reach Signet must not go on
    // serving a key set (perhaps with a since-revoked key) for long past max-age.
    if let Ok(v) = HeaderValue::from_str(&format!(
        "public, max-age={max_age}, stale-if-error={STALE_IF_ERROR_SECS}"
    )) {
        response_headers.insert(header::CACHE_CONTROL, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        response_headers.insert(header::ETAG, v);
    }
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matches {
        return (StatusCode::NOT_MODIFIED, response_headers).into_response();
    }
    response_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    (StatusCode::OK, response_headers, body).into_response()
}

/// How long caches may keep the JWKS: up to the cap, and never past the next scheduled
/// promotion minus a margin, so a cached copy always holds the key that signs next.
fn max_age_secs(state: &AppState) -> i64 {
    let now = Utc::now();
    let cap = i64::try_from(state.config.jwks_max_age.as_secs()).unwrap_or(i64::MAX);
    let until_promotion = state
        .keys
        .next_rotation(now)
        .map(|t| (t - now).num_seconds() - PROMOTION_MARGIN_SECS)
        .unwrap_or(0);
    until_promotion.clamp(0, cap)
}

async fn openid_configuration(State(state): State<AppState>) -> impl IntoResponse {
    let issuer = state.config.issuer();
    let algs: Vec<&str> = state
        .config
        .algorithms
        .as_slice()
        .iter()
        .map(|a| a.as_str())
        .collect();
    (
        [
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        Json(serde_json::json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
            "id_token_signing_alg_values_supported": algs,
        })),
    )
}
