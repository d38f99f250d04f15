//! Outage suite: PostgreSQL stops for 30 s under a running server. Throughout, the JWKS
//! answers 200 with the same bytes, liveness stays 200, readiness is 503 with the short
//! "database unreachable", and every admin action (API and UI) gets the clear 503;
//! tokens authenticated just before keep signing and verifying from memory. Once
//! PostgreSQL is back, the server is ready again within a few seconds, without a restart,
//! and a rotation works.
//!
//! The PostgreSQL server is the test's own (`PgServer`): stopping it cannot disturb the
//! other tests on the machine's shared cluster.

use crate::helpers::{Backend, PgServer, TestDb, api_token, signed_in, spawn_app_on};
use reqwest::StatusCode;
use serde_json::{Value, json};
use signet::domain::Role;
use signet::server::ServeOptions;
use std::time::{Duration, Instant};

const OUTAGE: Duration = Duration::from_secs(30);
/// The longest an admin action may take to answer 503 during the outage.
const MAX_ADMIN_ANSWER: Duration = Duration::from_secs(10);
/// The longest the JWKS and the health endpoints may take.
const MAX_PROBE_ANSWER: Duration = Duration::from_secs(3);
const UNAVAILABLE: &str = "the database is unavailable; try again";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_gives_clear_503s_and_recovers_without_restart() {
    let pg = PgServer::start_new();
    let db = TestDb::new_on(Backend::Postgres, &pg.admin_url()).await;
    let app = spawn_app_on(db, ServeOptions { migrate: true })
        .await
        .unwrap_or_else(|(e, _)| panic!("server starts: {e}"));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let ops = api_token(
        &app,
        "ops",
        &["keys:read", "keys:write", "sign", "audit:read"],
    )
    .await;
    // Never used before the outage, so nothing about it can be in memory.
    let cold = api_token(&app, "cold", &["keys:read", "keys:write"]).await;
    let mut ui = signed_in(&app, "ops@example.com", Role::Admin).await;

    let post = |path: &str, token: &str, body: Value| {
        http.post(app.at(path))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    // Used just before the outage: /sign and /verify may keep working from memory.
    let signed: Value = post(
        "/api/v1/sign",
        &ops,
        json!({ "claims": { "sub": "before" } }),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let before_token = signed["token"].as_str().unwrap().to_string();
    let next_kid = app
        .state
        .keys
        .snapshot()
        .keys
        .iter()
        .find(|k| k.state == signet::domain::KeyState::Next)
        .unwrap()
        .kid
        .to_string();
    let jwks_before = http
        .get(app.at("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(app.get("/health/ready").await.status(), StatusCode::OK);

    pg.stop_immediate();
    let outage_started = Instant::now();
    let mut admin_refusals = 0u32;
    let mut signed_during = 0u32;
    let mut rounds = 0u32;
    // The public endpoints are probed on their own, so slow admin answers cannot thin
    // out the probes.
    let probes = tokio::spawn(probe_public(
        http.clone(),
        app.url.clone(),
        jwks_before.to_vec(),
        pg.port,
        outage_started + OUTAGE,
    ));
    let mut slowest = Slowest::default();
    while outage_started.elapsed() < OUTAGE {
        rounds += 1;
        // Admin actions through the API: the clear 503, with a warm token and a cold one.
        let calls: Vec<(reqwest::Method, String, &str, Option<Value>)> = vec![
            (
                reqwest::Method::POST,
                "/api/v1/keys/rotate".into(),
                &ops,
                Some(json!({})),
            ),
            (
                reqwest::Method::POST,
                "/api/v1/keys/rotate".into(),
                &cold,
                Some(json!({})),
            ),
            (
                reqwest::Method::POST,
                format!("/api/v1/keys/{next_kid}/revoke"),
                &ops,
                Some(json!({ "reason": "outage drill" })),
            ),
            (
                reqwest::Method::PUT,
                "/api/v1/schedule".into(),
                &ops,
                Some(json!({ "cron": "0 0 4 * * * *" })),
            ),
            (reqwest::Method::GET, "/api/v1/keys".into(), &cold, None),
        ];
        for (method, path, token, body) in calls {
            let mut req = http
                .request(method.clone(), app.at(&path))
                .bearer_auth(token);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let started = Instant::now();
            let res = req.send().await.unwrap();
            slowest.note(&format!("{method} {path}"), started.elapsed());
            let status = res.status();
            let answer: Value = res.json().await.unwrap_or(Value::Null);
            assert_eq!(
                status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{method} {path} during the outage: {answer}"
            );
            assert_eq!(
                answer,
                json!({ "error": "unavailable", "message": UNAVAILABLE }),
                "{method} {path}"
            );
            admin_refusals += 1;
        }

        // The same from the UI.
        for (name, body) in [
            ("rotate_keys", "alg=".to_string()),
            ("revoke_key", format!("kid={next_kid}&reason=outage")),
            (
                "save_schedule",
                "expression=0+0+4+*+*+*+*&retention=40d".to_string(),
            ),
        ] {
            let started = Instant::now();
            let a = ui.call(name, &body).await;
            slowest.note(&format!("UI {name}"), started.elapsed());
            assert_eq!(
                a.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "UI {name}: {}",
                a.body
            );
            assert!(
                a.body.to_lowercase().contains(UNAVAILABLE),
                "UI {name} does not say it: {}",
                a.body
            );
            admin_refusals += 1;
        }

        // A token authenticated within the last minute still signs and verifies.
        let s = post(
            "/api/v1/sign",
            &ops,
            json!({ "claims": { "sub": "during" } }),
        )
        .await
        .unwrap();
        assert_eq!(s.status(), StatusCode::OK, "sign during the outage");
        signed_during += 1;
        let v: Value = post("/api/v1/verify", &ops, json!({ "token": before_token }))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["valid"], true, "verify during the outage: {v}");

        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let outage = outage_started.elapsed();
    let (jwks_answers, slowest_probe) = probes.await.unwrap();
    eprintln!(
        "outage suite: {rounds} rounds in {outage:.1?}, {jwks_answers} JWKS answers; slowest \
         admin answer {:?} ({}), slowest probe {slowest_probe:?}",
        slowest.took, slowest.what
    );
    // A clear 503 is a quick one: clients and load balancers must not hang on it.
    assert!(
        slowest.took < MAX_ADMIN_ANSWER,
        "{} took {:?} to answer during the outage",
        slowest.what,
        slowest.took
    );
    assert!(
        jwks_answers >= 50,
        "only {jwks_answers} JWKS answers in {outage:?}"
    );

    pg.start();
    let restarted = Instant::now();
    let recovery = loop {
        let ready = http.get(app.at("/health/ready")).send().await.unwrap();
        if ready.status() == StatusCode::OK {
            break restarted.elapsed();
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(20),
            "not ready 20 s after PostgreSQL returned: {}",
            ready.text().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        recovery < Duration::from_secs(5),
        "ready again only after {recovery:?}"
    );

    // Changes work again, from the API and the UI, and the JWKS follows them.
    let rotated = post("/api/v1/keys/rotate", &ops, json!({})).await.unwrap();
    assert_eq!(
        rotated.status(),
        StatusCode::OK,
        "{}",
        rotated.text().await.unwrap()
    );
    let answer = ui.call("rotate_keys", "alg=").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let cold_keys = http
        .get(app.at("/api/v1/keys"))
        .bearer_auth(&cold)
        .send()
        .await
        .unwrap();
    assert_eq!(cold_keys.status(), StatusCode::OK);
    let jwks_after = http
        .get(app.at("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_ne!(jwks_after, jwks_before, "the JWKS follows the rotations");

    eprintln!(
        "outage suite: PostgreSQL down for {outage:.1?}: {jwks_answers} JWKS answers (all 200, \
         same bytes), {admin_refusals} admin actions refused with 503, {signed_during} tokens \
         signed from memory, in {rounds} rounds; ready again {recovery:.2?} after PostgreSQL \
         returned; slowest answer {:?} ({})",
        slowest.took, slowest.what
    );
    drop(app);
    drop(pg);
}

/// The slowest request seen.
#[derive(Default)]
struct Slowest {
    what: String,
    took: Duration,
}

impl Slowest {
    fn note(&mut self, what: &str, took: Duration) {
        if took > self.took {
            self.what = what.to_string();
            self.took = took;
        }
    }
}

/// Until `until`: the JWKS answers 200 with the same bytes, liveness 200, readiness 503
/// with the short reason and nothing of the driver's error. Returns the number of JWKS
/// answers and the slowest probe.
async fn probe_public(
    http: reqwest::Client,
    base: String,
    jwks_before: Vec<u8>,
    port: u16,
    until: Instant,
) -> (u32, Duration) {
    let public = async {
        let mut answers = 0u32;
        let mut slowest = Duration::ZERO;
        while Instant::now() < until {
            let started = Instant::now();
            let jwks = http
                .get(format!("{base}/.well-known/jwks.json"))
                .send()
                .await
                .unwrap();
            assert_eq!(jwks.status(), StatusCode::OK, "JWKS during the outage");
            assert_eq!(
                jwks.bytes().await.unwrap().to_vec(),
                jwks_before,
                "JWKS bytes changed"
            );
            answers += 1;
            let live = http
                .get(format!("{base}/health/live"))
                .send()
                .await
                .unwrap();
            assert_eq!(live.status(), StatusCode::OK);
            let took = started.elapsed();
            slowest = slowest.max(took);
            assert!(took < MAX_PROBE_ANSWER, "JWKS and liveness took {took:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (answers, slowest)
    };
    let readiness = async {
        let mut slowest = Duration::ZERO;
        while Instant::now() < until {
            let started = Instant::now();
            let ready = http
                .get(format!("{base}/health/ready"))
                .send()
                .await
                .unwrap();
            assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
            let text = ready.text().await.unwrap();
            let body: Value = serde_json::from_str(&text).unwrap();
            let database = body["checks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == "database")
                .unwrap_or_else(|| panic!("no database check: {body}"));
            assert_eq!(database["ok"], false, "{body}");
            assert_eq!(database["error"], "database unreachable", "{body}");
            // Nothing of the driver's error, the address or the host reaches a stranger.
            for leak in [
                port.to_string().as_str(),
                "127.0.0.1",
                "postgres",
                "refused",
                "os error",
                "sqlx",
                "pool",
            ] {
                assert!(!text.contains(leak), "readiness leaks {leak:?}: {text}");
            }
            let took = started.elapsed();
            slowest = slowest.max(took);
            assert!(took < MAX_PROBE_ANSWER, "readiness took {took:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        slowest
    };
    let ((answers, slowest_public), slowest_ready) = tokio::join!(public, readiness);
    (answers, slowest_public.max(slowest_ready))
}
