//! `GET /health/live` and `GET /health/ready`.
//!
//! Liveness says the process answers HTTP at all. Readiness says this instance can do its
//! job: its database answers, and every enabled algorithm has an active key loaded (so
//! the JWKS is built and tokens can be signed). A load balancer takes an instance out of rotation on 503.

use crate::server::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::time::Duration;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
}

#[derive(Serialize)]
struct Check {
    name: &'static str,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct Report {
    status: &'static str,
    checks: Vec<Check>,
    rotation_overdue: bool,
}

async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn ready(State(state): State<AppState>) -> Response {
    // A database that hangs must not hang the probe: answer within a bounded time.
    let database = match tokio::time::timeout(Duration::from_secs(2), state.storage.ping()).await {
        Ok(Ok(())) => Check {
            name: "database",
            ok: true,
            error: None,
        },
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: database check failed");
            Check {
                name: "database",
                ok: false,
                error: Some(e.to_string()),
            }
        }
        Err(_) => Check {
            name: "database",
            ok: false,
            error: Some("no answer within 2 s".into()),
        },
    };
    let keys = if state
        .keys
        .snapshot()
        .complete(state.config.algorithms.as_slice())
    {
        Check {
            name: "keys",
            ok: true,
            error: None,
        }
    } else {
        Check {
            name: "keys",
            ok: false,
            error: Some("not every enabled algorithm has an active key loaded".into()),
        }
    };
    let checks = vec![database, keys];
    let ok = checks.iter().all(|c| c.ok);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // Reported, never failing: an overdue rotation is the scheduler's alarm, and taking
    // the instance out of the load balancer would not rotate anything.
    let rotation_overdue = crate::server::metrics::key_ages(&state.keys, chrono::Utc::now())
        .iter()
        .any(|(_, _, late)| *late);
    let report = Report {
        status: if ok { "ready" } else { "unavailable" },
        checks,
        rotation_overdue,
    };
    (status, Json(report)).into_response()
}
