//! Liveness, readiness, and the pages the server renders.

use crate::helpers::{BACKENDS, Backend, signed_in, spawn_app};
use reqwest::StatusCode;
use signet::domain::Role;

#[tokio::test]
async fn live_and_ready_answer_on_both_backends() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let live = app.get("/health/live").await;
        assert_eq!(live.status(), StatusCode::OK, "{backend:?}");

        let ready = app.get("/health/ready").await;
        assert_eq!(ready.status(), StatusCode::OK, "{backend:?}");
        let body: serde_json::Value = ready.json().await.unwrap();
        assert_eq!(body["status"], "ready");
        assert_eq!(body["checks"][0]["name"], "database");
        assert_eq!(body["checks"][0]["ok"], true);
        app.stop().await;
    }
}

#[tokio::test]
async fn ready_turns_503_when_sqlite_file_goes_away() {
    let app = spawn_app(Backend::Sqlite).await;
    assert_eq!(app.get("/health/ready").await.status(), StatusCode::OK);

    std::fs::remove_file(app.db.sqlite_file()).expect("remove database file");

    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["checks"][0]["ok"], false);
    assert!(
        body["checks"][0]["error"]
            .as_str()
            .unwrap()
            .contains("removed or replaced"),
        "{body}"
    );
    // Anonymous callers learn the outline only, never the file's path.
    let file = app.db.sqlite_file().display().to_string();
    assert!(!body.to_string().contains(&file), "{body}");
    // Liveness is about the process, not the database.
    assert_eq!(app.get("/health/live").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn ready_turns_503_when_postgres_database_goes_away() {
    let app = spawn_app(Backend::Postgres).await;
    assert_eq!(app.get("/health/ready").await.status(), StatusCode::OK);

    app.db.drop_now().await;

    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["checks"][0]["ok"], false, "{body}");
    assert_eq!(app.get("/health/live").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn pages_render_on_the_server_with_navigation() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut ui = signed_in(&app, "viewer@example.com", Role::Viewer).await;
    for (path, heading) in [
        ("/", "Overview"),
        ("/config/jwks", "Config → JWKS"),
        ("/config/schedule", "Config → Schedule"),
        ("/events", "Events"),
        ("/settings", "Settings"),
    ] {
        let res = ui.get(path).await;
        assert_eq!(res.status, StatusCode::OK, "{path}");
        let html = res.body;
        // `<!>` marks where a text node ends, for hydration (erased views emit it).
        assert!(
            html.replace("<!>", "")
                .contains(&format!("<h1>{heading}</h1>")),
            "{path}: {html}"
        );
        // The shell: navigation and the hydration script.
        assert!(html.contains(r#"href="/config/jwks""#), "{path}");
        assert!(html.contains(r#"href="/config/schedule""#), "{path}");
        assert!(html.contains(r#"href="/events""#), "{path}");
        assert!(html.contains("/pkg/signet.js"), "{path}");
    }
}

#[tokio::test]
async fn overview_shows_the_installation_from_the_database() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let info = app.state.storage.instance_info().await.unwrap();
        assert_eq!(info.installation_id.len(), 32);
        let mut ui = signed_in(&app, "viewer@example.com", Role::Viewer).await;
        let html = ui.get("/").await.body;
        assert!(html.contains(&info.installation_id), "{backend:?}: {html}");
        app.stop().await;
    }
}

#[tokio::test]
async fn unknown_page_is_a_real_404() {
    let app = spawn_app(Backend::Sqlite).await;
    let res = app.get("/no/such/page").await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert!(res.text().await.unwrap().contains("Not found"));
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing in:\n{text}"))
}

#[tokio::test]
async fn metrics_show_the_schedule_key_ages_and_what_was_rotated() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let res = app.get("/metrics").await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        let text = res.text().await.unwrap();
        let next = metric(&text, "signet_next_rotation_timestamp_seconds");
        assert!(next > chrono::Utc::now().timestamp() as f64, "{text}");
        assert!(metric(&text, "signet_key_age_seconds{alg=\"EdDSA\"}") < 60.0);
        assert!(metric(&text, "signet_key_age_seconds{alg=\"RS256\"}") < 60.0);
        assert_eq!(metric(&text, "signet_rotation_overdue"), 0.0);
        assert_eq!(metric(&text, "signet_rotations_total{trigger=\"ui\"}"), 0.0);

        // Rotate from the UI and revoke from the UI: the counters move.
        let mut ui = signed_in(&app, "ops@example.com", Role::Admin).await;
        assert_eq!(ui.call("rotate_keys", "alg=").await.status, 200);
        let kid = app
            .state
            .keys
            .snapshot()
            .keys
            .iter()
            .find(|k| k.state == signet::domain::KeyState::Next)
            .unwrap()
            .kid
            .to_string();
        let revoked = ui
            .call("revoke_key", &format!("kid={kid}&reason=drill"))
            .await;
        assert_eq!(revoked.status, 200, "{}", revoked.body);
        let text = app.get("/metrics").await.text().await.unwrap();
        assert_eq!(
            metric(&text, "signet_rotations_total{trigger=\"ui\"}"),
            1.0,
            "{text}"
        );
        assert_eq!(metric(&text, "signet_revoked_keys_total"), 1.0, "{text}");

        // An active key older than a schedule period (a month here) is overdue; readiness
        // reports it without failing.
        let old = if app.db.is_postgres() {
            "UPDATE signing_keys SET activated_at = '2000-01-01T00:00:00Z' WHERE state = 'active' AND alg = 'EdDSA'"
        } else {
            "UPDATE signing_keys SET activated_at = '2000-01-01T00:00:00+00:00' WHERE state = 'active' AND alg = 'EdDSA'"
        };
        app.db.execute(old).await.unwrap();
        app.state.keys.reload().await.unwrap();
        let text = app.get("/metrics").await.text().await.unwrap();
        assert_eq!(
            metric(&text, "signet_rotation_overdue"),
            1.0,
            "{backend:?}: {text}"
        );
        assert!(metric(&text, "signet_key_age_seconds{alg=\"EdDSA\"}") > 8.0e8);
        let ready = app.get("/health/ready").await;
        assert_eq!(ready.status(), StatusCode::OK);
        let body: serde_json::Value = ready.json().await.unwrap();
        assert_eq!(body["rotation_overdue"], true, "{body}");
    }
}

/// A stored expression that has run out (a past year) is loaded, rotates no more, and is
/// reported: no next rotation, and overdue once the active key is older than the margin.
#[tokio::test]
async fn a_schedule_that_ran_out_is_reported_as_overdue() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let two_hours_ago = (chrono::Utc::now() - chrono::Duration::hours(2)).to_rfc3339();
        app.db
            .execute(&format!(
                "UPDATE signing_keys SET activated_at = '{two_hours_ago}' WHERE state = 'active'"
            ))
            .await
            .unwrap();
        app.state.keys.reload().await.unwrap();
        let text = app.get("/metrics").await.text().await.unwrap();
        assert_eq!(metric(&text, "signet_rotation_overdue"), 0.0, "{text}");

        // Written behind Signet's back, as an old version or an operator could have.
        app.db
            .execute("UPDATE schedule SET cron = '0 0 0 1 1 * 2020'")
            .await
            .unwrap();
        // The scheduler reads the schedule every second.
        let mut text = String::new();
        for _ in 0..50 {
            text = app.get("/metrics").await.text().await.unwrap();
            if !has_next_rotation(&text) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(!has_next_rotation(&text), "{backend:?}: {text}");
        assert_eq!(metric(&text, "signet_rotation_overdue"), 1.0, "{text}");
        let body: serde_json::Value = app.get("/health/ready").await.json().await.unwrap();
        assert_eq!(body["rotation_overdue"], true, "{body}");
        assert_eq!(body["status"], "ready");
        app.stop().await;
    }
}

fn has_next_rotation(text: &str) -> bool {
    text.lines()
        .any(|l| l.starts_with("signet_next_rotation_timestamp_seconds "))
}
