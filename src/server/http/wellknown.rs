//! `GET /.well-known/jwks.json` and `GET /.well-known/openid-configuration`.
//!
//! The JWKS is served from bytes precomputed at each change of the keys, with an ETag,
//! `304 Not Modified` on a matching `If-None-Match`, and CORS open to any origin (it is
//! public by nature). `?alg=` narrows it to one algorithm.

use crate::domain::Algorithm;
use crate::server::keys::KeyService;
use crate::server::state::AppState;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use std::sync::{Arc, RwLock};

/// Caches must have refreshed this long before the next key is promoted.
const PROMOTION_MARGIN_SECS: i64 = 60;

/// How long past `max-age` a cache may serve the JWKS while Signet is unreachable.
pub const STALE_IF_ERROR_SECS: i64 = 60;

pub fn router(state: &AppState) -> Router<AppState> {
    let jwks = Arc::new(Jwks {
        keys: state.keys.clone(),
        cap: i64::try_from(state.config.jwks_max_age.as_secs()).unwrap_or(i64::MAX),
        cache_control: RwLock::new(None),
    });
    Router::new()
        .route(
            "/.well-known/jwks.json",
            get(move |request: Request| {
                let jwks = jwks.clone();
                async move { jwks.answer(&request) }
            }),
        )
        .route(
            "/.well-known/openid-configuration",
            get(openid_configuration),
        )
}

/// The JWKS endpoint: everything but the `Cache-Control` countdown comes precomputed
/// with the key snapshot, and that header is computed at most once a second.
struct Jwks {
    keys: Arc<KeyService>,
    /// `jwks_max_age` in seconds.
    cap: i64,
    cache_control: RwLock<Option<CacheControl>>,
}

/// A `Cache-Control` value, and the span in which it holds.
#[derive(Clone)]
struct CacheControl {
    value: HeaderValue,
    /// The next promotion it was computed for (a schedule change changes it).
    promotion: Option<DateTime<Utc>>,
    /// Unix second from which `value` is too long (exclusive end of its validity).
    until: i64,
}

impl Jwks {
    /// Takes the whole request, so nothing of it is cloned: only the query and
    /// `If-None-Match` are read.
    fn answer(&self, request: &Request) -> Response {
        let snapshot = self.keys.snapshot();
        let alg = match request.uri().query().map(alg_param) {
            None | Some(None) => None,
            Some(Some(name)) => {
                match Algorithm::parse(&name) {
                    Ok(alg) => Some(alg),
                    Err(e) => {
                        return (
                        StatusCode::BAD_REQUEST,
                        Json(serde_json::json!({ "error": "invalid_alg", "message": e.to_string() })),
                    )
                        .into_response();
                    }
                }
            }
        };
        let published = snapshot.jwks_for(alg);
        let matches = request
            .headers()
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .map(str::trim)
                    .any(|t| t.as_bytes() == published.etag.as_bytes() || t == "*")
            });
        let mut headers = HeaderMap::with_capacity(6);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        // Set here rather than by the UI's header middleware, which the hottest route skips.
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(header::CACHE_CONTROL, self.cache_control(Utc::now()));
        headers.insert(header::ETAG, published.etag.clone());
        if matches {
            return (StatusCode::NOT_MODIFIED, headers).into_response();
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        (headers, published.body.clone()).into_response()
    }

    /// The `Cache-Control` value at `now`, from the cache while it holds.
    fn cache_control(&self, now: DateTime<Utc>) -> HeaderValue {
        let promotion = self.keys.next_rotation(now);
        if let Ok(cached) = self.cache_control.read()
            && let Some(c) = cached.as_ref()
            && c.promotion == promotion
            && now.timestamp() < c.until
        {
            return c.value.clone();
        }
        let fresh = cache_control(now, promotion, self.cap);
        if let Ok(mut slot) = self.cache_control.write() {
            *slot = Some(fresh.clone());
        }
        fresh.value
    }
}

/// The last `alg` in a query string, decoded (`None` if there is none).
fn alg_param(query: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .filter(|(name, _)| name == "alg")
        .map(|(_, value)| value.into_owned())
        .last()
}

/// How long caches may keep the JWKS: up to the cap, and never past the next scheduled
/// promotion minus a margin, so a cached copy always holds the key that signs next.
///
/// The value is computed for the end of the current second, so serving it anywhere in
/// that second never reaches past the promotion; while the countdown is above the cap,
/// the value holds until the countdown reaches it.
fn cache_control(now: DateTime<Utc>, promotion: Option<DateTime<Utc>>, cap: i64) -> CacheControl {
    let second_end = now.timestamp().saturating_add(1);
    let (max_age, until) = match promotion {
        // The schedule ran out: nothing may be cached until it changes.
        None => (0, i64::MAX),
        Some(t) => {
            let countdown = t.timestamp() - second_end - PROMOTION_MARGIN_SECS;
            if countdown >= cap {
                // `cap` holds while `t - 1 - margin - s >= cap`, i.e. up to this second.
                (cap, t.timestamp() - PROMOTION_MARGIN_SECS - cap)
            } else {
                (countdown.max(0), second_end)
            }
        }
    };
    // stale-if-error stays short: a shared cache that cannot reach Signet must not go on
    // serving a key set (perhaps with a since-revoked key) for long past max-age.
    let value = HeaderValue::from_str(&format!(
        "public, max-age={max_age}, stale-if-error={STALE_IF_ERROR_SECS}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("no-store"));
    CacheControl {
        value,
        promotion,
        until,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(secs: i64, millis: u32) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, millis * 1_000_000)
            .single()
            .expect("valid time")
    }

    /// The rule the cache must never exceed: seconds to the promotion, minus the margin,
    /// clamped to the cap, at the exact instant of the request.
    fn exact(now: DateTime<Utc>, promotion: DateTime<Utc>, cap: i64) -> i64 {
        ((promotion - now).num_seconds() - PROMOTION_MARGIN_SECS).clamp(0, cap)
    }

    fn max_age(c: &CacheControl) -> i64 {
        let v = c.value.to_str().expect("ascii");
        v.split(", ")
            .find_map(|p| p.strip_prefix("max-age="))
            .and_then(|n| n.parse().ok())
            .expect("a max-age")
    }

    #[test]
    fn a_cached_value_never_reaches_past_the_promotion_anywhere_in_its_span() {
        let promotion = at(10_000, 250);
        let cap = 300;
        // From far before the promotion to past it, every 100 ms: the value computed at
        // one instant and served until `until` is never longer than the exact rule.
        let mut now = at(9_000, 0);
        while now < at(10_100, 0) {
            let c = cache_control(now, Some(promotion), cap);
            assert!(
                c.until > now.timestamp(),
                "it holds at least where computed"
            );
            let mut later = now;
            while later.timestamp() < c.until.min(now.timestamp() + 5) {
                assert!(
                    max_age(&c) <= exact(later, promotion, cap),
                    "computed at {now}, served at {later}: {} > {}",
                    max_age(&c),
                    exact(later, promotion, cap)
                );
                later += chrono::Duration::milliseconds(100);
            }
            // And it is at most a second or two short of the exact rule.
            assert!(exact(now, promotion, cap) - max_age(&c) <= 2);
            now += chrono::Duration::milliseconds(100);
        }
    }

    #[test]
    fn the_cap_holds_until_the_countdown_reaches_it() {
        let promotion = at(10_000, 0);
        let c = cache_control(at(1_000, 0), Some(promotion), 300);
        assert_eq!(max_age(&c), 300);
        assert_eq!(c.until, 10_000 - PROMOTION_MARGIN_SECS - 300);
        // The last second with the cap, then the countdown, a second at a time.
        let last = cache_control(at(c.until - 1, 999), Some(promotion), 300);
        assert_eq!(max_age(&last), 300);
        let next = cache_control(at(c.until, 0), Some(promotion), 300);
        assert_eq!(max_age(&next), 299);
        assert_eq!(next.until, c.until + 1);
    }

    #[test]
    fn no_promotion_means_no_caching_and_a_passed_one_means_zero() {
        let none = cache_control(at(5_000, 0), None, 300);
        assert_eq!(max_age(&none), 0);
        assert_eq!(none.until, i64::MAX);
        let soon = cache_control(at(5_000, 0), Some(at(5_030, 0)), 300);
        assert_eq!(max_age(&soon), 0);
        assert_eq!(
            none.value.to_str().ok(),
            Some("public, max-age=0, stale-if-error=60")
        );
    }

    #[test]
    fn the_alg_parameter_is_decoded_and_the_last_one_counts() {
        assert_eq!(alg_param("alg=RS256"), Some("RS256".into()));
        assert_eq!(alg_param("x=1&alg=Ed%44SA"), Some("EdDSA".into()));
        assert_eq!(alg_param("alg=RS256&alg=ES256"), Some("ES256".into()));
        assert_eq!(alg_param("other=1"), None);
        assert_eq!(alg_param("alg="), Some(String::new()));
    }
}
