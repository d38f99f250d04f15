//! `GET /metrics`: Prometheus text exposition of the key lifecycle.
//!
//! Gauges are computed from the in-memory snapshot and schedule at scrape time; counters
//! count what this process did (Prometheus sums them across instances).

use crate::domain::{Algorithm, KeyState};
use crate::server::crypto::pkcs11::Token;
use crate::server::keys::KeyService;
use crate::server::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use chrono::{DateTime, Utc};
use std::fmt::Write as _;

/// A PKCS#11 token metric: name, type, help, and how to read it off the token.
type HsmMetric = (&'static str, &'static str, &'static str, fn(&Token) -> u64);

/// How much later than one schedule period an active key may be before it counts as
/// overdue: a slow instance start or a brief outage is not an alarm.
pub const OVERDUE_MARGIN_SECS: i64 = 3600;

pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

/// Per enabled algorithm: the active key's age, and whether it is older than one period
/// of the schedule plus [`OVERDUE_MARGIN_SECS`].
pub fn key_ages(keys: &KeyService, now: DateTime<Utc>) -> Vec<(Algorithm, i64, bool)> {
    let upcoming = keys.schedule().cron.upcoming(now, 2);
    let period = match upcoming.as_slice() {
        [a, b] => (*b - *a).num_seconds(),
        // One fire time left: the active key is due for it, and none after.
        [_] => i64::MAX / 2,
        // A schedule that ran out rotates no more: every active key is overdue once it is
        // older than the margin.
        _ => 0,
    };
    let snapshot = keys.snapshot();
    keys.enabled()
        .iter()
        .filter_map(|alg| {
            let active = snapshot
                .keys
                .iter()
                .find(|k| k.alg == *alg && k.state == KeyState::Active)?;
            let age = (now - active.activated_at.unwrap_or(active.created_at)).num_seconds();
            Some((*alg, age, age > period.saturating_add(OVERDUE_MARGIN_SECS)))
        })
        .collect()
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let now = Utc::now();
    let keys = &state.keys;
    let mut out = String::new();
    let ages = key_ages(keys, now);

    out.push_str("# HELP signet_next_rotation_timestamp_seconds When the schedule rotates the keys next (Unix time).\n");
    out.push_str("# TYPE signet_next_rotation_timestamp_seconds gauge\n");
    if let Some(next) = keys.next_rotation(now) {
        let _ = writeln!(
            out,
            "signet_next_rotation_timestamp_seconds {}",
            next.timestamp()
        );
    }
    out.push_str("# HELP signet_key_age_seconds How long the active key of each algorithm has been signing.\n");
    out.push_str("# TYPE signet_key_age_seconds gauge\n");
    for (alg, age, _) in &ages {
        let _ = writeln!(out, "signet_key_age_seconds{{alg=\"{alg}\"}} {age}");
    }
    out.push_str(
        "# HELP signet_key_pool_ready Keys generated ahead of need, waiting for a rotation.\n",
    );
    out.push_str("# TYPE signet_key_pool_ready gauge\n");
    for (alg, ready) in keys.pool_ready() {
        let _ = writeln!(out, "signet_key_pool_ready{{alg=\"{alg}\"}} {ready}");
    }
    // Each with a sample only when a token is configured.
    let token = keys.token();
    let label = token.map(|t| t.label().replace(['\\', '"', '\n'], "_"));
    let hsm_metrics: [HsmMetric; 3] = [
        (
            "signet_hsm_errors_total",
            "counter",
            "Operations the PKCS#11 module refused (with a token configured).",
            Token::errors,
        ),
        (
            "signet_hsm_sessions_open",
            "gauge",
            "PKCS#11 sessions open (at most one per core).",
            |t| t.sessions_open() as u64,
        ),
        (
            "signet_hsm_reconnects_total",
            "counter",
            "Times the PKCS#11 module was initialised again and found the token.",
            Token::reconnects,
        ),
    ];
    for (name, kind, help, value) in hsm_metrics {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        if let (Some(token), Some(label)) = (token, &label) {
            let _ = writeln!(out, "{name}{{token=\"{label}\"}} {}", value(token));
        }
    }
    out.push_str("# HELP signet_rotation_overdue 1 when an active key is older than the schedule's period plus a margin.\n");
    out.push_str("# TYPE signet_rotation_overdue gauge\n");
    let overdue = ages.iter().any(|(_, _, late)| *late);
    let _ = writeln!(out, "signet_rotation_overdue {}", u8::from(overdue));
    out.push_str("# HELP signet_rotations_total Rotations this process carried out, by trigger.\n");
    out.push_str("# TYPE signet_rotations_total counter\n");
    for (trigger, n) in keys.counters.rotations() {
        let _ = writeln!(out, "signet_rotations_total{{trigger=\"{trigger}\"}} {n}");
    }
    out.push_str("# HELP signet_revoked_keys_total Keys this process revoked.\n");
    out.push_str("# TYPE signet_revoked_keys_total counter\n");
    let _ = writeln!(
        out,
        "signet_revoked_keys_total {}",
        keys.counters.revoked_keys()
    );
    out.push_str("# HELP signet_scheduler_slots_lost_total Scheduled rotations this process prepared but another instance had claimed first.\n");
    out.push_str("# TYPE signet_scheduler_slots_lost_total counter\n");
    let _ = writeln!(
        out,
        "signet_scheduler_slots_lost_total {}",
        keys.counters.slots_lost()
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}
