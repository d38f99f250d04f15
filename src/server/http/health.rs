//! `GET /health/live` and `GET /health/ready`.
//!
//! Liveness says the process answers HTTP at all. Readiness says this instance can do its
//! job: its database answers, its keys in memory are not behind the database's for more
//! than [`MAX_LAG`], and every enabled algorithm has an active key it can sign with. A
//! load balancer takes an instance out of rotation on 503. The reasons are short
//! sentences for anyone to read: a missing KEK by its id, never a driver error, a file
//! path or a host name.

use crate::server::keys::MAX_LAG;
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

fn pass(name: &'static str) -> Check {
    Check {
        name,
        ok: true,
        error: None,
    }
}

fn fail(name: &'static str, error: String) -> Check {
    Check {
        name,
        ok: false,
        error: Some(error),
    }
}

async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn ready(State(state): State<AppState>) -> Response {
    // A database that hangs must not hang the probe: answer within a bounded time. The
    // answer is the key version, which also tells whether this instance is behind.
    let probe = async {
        state.storage.ping().await?;
        state.storage.key_version().await
    };
    let version = tokio::time::timeout(Duration::from_secs(2), probe).await;
    let database = match &version {
        Ok(Ok(_)) => pass("database"),
        Ok(Err(e)) => {
            // The cause goes to the log; an anonymous caller only learns the outline.
            tracing::warn!(error = %e, "readiness: database check failed");
            fail("database", e.public_reason().into())
        }
        Err(_) => {
            tracing::warn!("readiness: the database did not answer within 2 s");
            fail("database", "database unreachable".into())
        }
    };
    if let Ok(Ok(version)) = version
        && version != state.keys.snapshot().version
    {
        // Behind the database: catch up now rather than wait for the watcher; a failure
        // is recorded as lag and reported below once it lasts.
        if let Err(e) = state.keys.reload_if_changed().await {
            tracing::warn!(error = %e, "readiness: cannot load the changed keys");
        }
    }
    let snapshot = state.keys.snapshot();
    let mut problems = snapshot.problems(state.config.algorithms.as_slice());
    if let Some(lag) = state.keys.lag_behind().filter(|l| *l >= MAX_LAG) {
        problems.push(format!(
            "the keys in memory are {} s behind the database (reloading them fails)",
            lag.as_secs()
        ));
    }
    let keys = if problems.is_empty() {
        pass("keys")
    } else {
        fail("keys", problems.join("; "))
    };
    let mut checks = vec![database, keys];
    // With a token: every active key on it must still be there, asked through the
    // session pool (which logs in again on a fresh session if the login was lost).
    if let Some(token) = state.keys.token().cloned() {
        let on_token: Vec<(String, String)> = snapshot
            .signers
            .values()
            .filter_map(|s| match &s.signer {
                crate::server::crypto::Signer::Token { id, .. } => {
                    Some((s.kid.to_string(), id.clone()))
                }
                _ => None,
            })
            .collect();
        let label = token.label().to_string();
        let probe = tokio::task::spawn_blocking(move || {
            for (kid, id) in on_token {
                match token.has(&id) {
                    Ok(true) => {}
                    Ok(false) => return Err(format!("holds no object for active key {kid}")),
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|_| Err("the check stopped".into()));
        checks.push(match probe {
            Ok(()) => pass("hsm"),
            Err(why) => fail("hsm", format!("token '{label}': {why}")),
        });
    }
    let ok = checks.iter().all(|c| c.ok);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // Reported, never failing: an overdue rotation is the scheduler's alarm, and taking
    // the instance out of the load balancer would not rotate anything.
    let rotation_overdue = crate::server::http::metrics::key_ages(&state.keys, chrono::Utc::now())
        .iter()
        .any(|(_, _, late)| *late);
    let report = Report {
        status: if ok { "ready" } else { "unavailable" },
        checks,
        rotation_overdue,
    };
    (status, Json(report)).into_response()
}
