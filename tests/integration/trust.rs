//! Promises that must hold when something goes wrong: an instance that cannot open a key
//! still follows the database's key states, bursts of rotations never unpublish a key
//! with live tokens, and verification follows RFC 8725. Both backends.

use crate::api::{assert_error, call, token};
use crate::helpers::{BACKENDS, Backend, TestApp, TestDb, run_signet, spawn_app, spawn_app_with};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use signet::domain::KeyState;
use signet::server::config::Config;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const K1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const K2: &str = "k2:HxwdHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=";

fn with_keks(db: &TestDb, keys: &str, active: &str) -> Vec<(String, String)> {
    let mut env = db.env();
    env.push(("SIGNET_ENC_KEYS".into(), keys.into()));
    env.push(("SIGNET_ENC_KEY_ACTIVE".into(), active.into()));
    env
}

async fn published_kids(app: &TestApp) -> BTreeSet<String> {
    let jwks: Value = app
        .get("/.well-known/jwks.json")
        .await
        .json()
        .await
        .unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

async fn sign(app: &TestApp, token: &str, alg: &str, ttl: u64) -> (StatusCode, Value) {
    call(
        app,
        Method::POST,
        "/api/v1/sign",
        token,
        Some(json!({"claims": {"sub": "svc"}, "alg": alg, "ttl": ttl})),
    )
    .await
}

async fn verify(app: &TestApp, token: &str, jwt: &str) -> Value {
    let (s, v) = call(
        app,
        Method::POST,
        "/api/v1/verify",
        token,
        Some(json!({ "token": jwt })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

/// Defect 1: a server with KEK k1, and a CLI given k1,k2 with k2 active that rotates and
/// revokes. The server follows the database within a second although it cannot open the
/// new keys, and says why it cannot sign.
async fn a_revocation_made_under_another_kek_reaches_this_instance(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server_env = with_keks(&db, K1, "k1");
    let cli_env = with_keks(&db, &format!("{K1},{K2}"), "k2");
    let config = Config::from_sources(None, server_env.clone()).unwrap();
    let app = spawn_app_with(db, config).await;
    let api = token(&app, "svc", &["sign", "keys:read"]).await;

    let old = published_kids(&app).await;
    assert_eq!(old.len(), 4, "{backend:?}");
    let mut issued = Vec::new();
    for alg in ["EdDSA", "RS256"] {
        let (s, b) = sign(&app, &api, alg, 600).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(
            verify(&app, &api, b["token"].as_str().unwrap()).await["valid"],
            true
        );
        issued.push(b["token"].as_str().unwrap().to_string());
    }

    let out = run_signet(&cli_env, &["rotate", "--revoke", "--reason", "drill"]).await;
    assert!(out.status.success(), "{out:?}");
    let revoked_at = Instant::now();

    // Within a second: none of the four old kids is published any more.
    let fresh = loop {
        let now = published_kids(&app).await;
        if now.is_disjoint(&old) {
            break now;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "{backend:?}: revoked kids still published after 1 s: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "{backend:?}: JWKS followed the revocation in {:?}",
        revoked_at.elapsed()
    );
    assert_eq!(fresh.len(), 4, "{backend:?}: the new active and next keys");

    // Tokens signed with the revoked keys are refused.
    for jwt in &issued {
        let v = verify(&app, &api, jwt).await;
        assert_eq!(v["valid"], false, "{backend:?}: {v}");
        assert_eq!(v["reason"], "key revoked", "{backend:?}: {v}");
    }

    // Signing is refused with the reason, never done with a revoked key.
    for alg in ["EdDSA", "RS256"] {
        let (s, b) = sign(&app, &api, alg, 60).await;
        assert_error(s, &b, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        let message = b["message"].as_str().unwrap();
        assert!(message.contains("'k2'"), "{backend:?}: {message}");
    }
    let ready = app.get("/health/ready").await;
    assert_eq!(
        ready.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "{backend:?}"
    );
    let body = ready.text().await.unwrap();
    assert!(body.contains("'k2'"), "{backend:?}: {body}");

    // Read-only commands need no KEK: neither k2 nor any at all (and create none).
    for env in [server_env.clone(), app.db.env()] {
        let out = run_signet(&env, &["keys"]).await;
        assert!(out.status.success(), "{backend:?}: {out:?}");
        let listed = String::from_utf8_lossy(&out.stdout);
        for kid in old.iter().chain(fresh.iter()) {
            assert!(listed.contains(kid.as_str()), "{backend:?}: {listed}");
        }
        let out = run_signet(&env, &["schedule", "show"]).await;
        assert!(out.status.success(), "{backend:?}: {out:?}");
    }
    assert!(
        !app.db.data_dir.path().join("signet.kek").exists(),
        "{backend:?}: a read-only command created a KEK"
    );

    // Once the missing KEK is configured here, this instance signs again.
    let db = app.stop().await;
    let config = Config::from_sources(None, cli_env.clone()).unwrap();
    let app = spawn_app_with(db, config).await;
    assert_eq!(app.get("/health/ready").await.status(), StatusCode::OK);
    let (s, b) = sign(&app, &api, "EdDSA", 60).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(fresh.contains(b["kid"].as_str().unwrap()));
    app.stop().await;
}

#[tokio::test]
async fn a_revocation_made_under_another_kek_reaches_this_instance_sqlite() {
    a_revocation_made_under_another_kek_reaches_this_instance(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_revocation_made_under_another_kek_reaches_this_instance_postgres() {
    a_revocation_made_under_another_kek_reaches_this_instance(Backend::Postgres).await;
}

/// Defect 1: keys this instance knows changed but cannot load leave it refusing to sign at
/// once and not ready after a few seconds; it recovers by itself.
#[tokio::test]
async fn an_instance_that_cannot_load_changed_keys_stops_signing_and_reports_it() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let api = token(&app, "svc", &["sign"]).await;
        assert_eq!(sign(&app, &api, "EdDSA", 60).await.0, StatusCode::OK);
        // A row no Signet would write, and a version bump announcing it.
        app.db
            .execute("UPDATE signing_keys SET alg = 'HS256' WHERE state = 'next' AND alg = 'EdDSA'")
            .await
            .unwrap();
        app.db
            .execute("UPDATE key_version SET version = version + 1")
            .await
            .unwrap();
        let start = Instant::now();
        loop {
            let (s, b) = sign(&app, &api, "EdDSA", 60).await;
            if s == StatusCode::SERVICE_UNAVAILABLE {
                assert!(
                    b["message"].as_str().unwrap().contains("could not load"),
                    "{b}"
                );
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "{backend:?}: still signing"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let not_ready = loop {
            let res = app.get("/health/ready").await;
            if res.status() == StatusCode::SERVICE_UNAVAILABLE {
                break res.text().await.unwrap();
            }
            assert!(
                start.elapsed() < Duration::from_secs(6),
                "{backend:?}: still ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(not_ready.contains("behind the database"), "{not_ready}");
        eprintln!(
            "{backend:?}: not ready {:?} after the bad row",
            start.elapsed()
        );

        // Repaired: ready and signing again without a restart.
        app.db
            .execute("UPDATE signing_keys SET alg = 'EdDSA' WHERE alg = 'HS256'")
            .await
            .unwrap();
        app.db
            .execute("UPDATE key_version SET version = version + 1")
            .await
            .unwrap();
        let start = Instant::now();
        while app.get("/health/ready").await.status() != StatusCode::OK {
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "{backend:?}: no recovery"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(sign(&app, &api, "EdDSA", 60).await.0, StatusCode::OK);
        app.stop().await;
    }
}

/// Defect 2: a burst of rotations (twelve clicks on Rotate Keys) never unpublishes the key
/// of a token that is still valid; the JWKS exceeds the cap instead, with a warning.
#[tokio::test]
async fn a_burst_of_rotations_keeps_every_live_token_verifiable() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let api = token(&app, "ops", &["sign", "keys:write", "audit:read"]).await;
        let (_, first) = sign(&app, &api, "EdDSA", 3600).await;
        let mut tokens = vec![first];
        for _ in 0..12 {
            let (s, b) = call(
                &app,
                Method::POST,
                "/api/v1/keys/rotate",
                &api,
                Some(json!({"alg": "EdDSA"})),
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{b}");
            let (s, t) = sign(&app, &api, "EdDSA", 3600).await;
            assert_eq!(s, StatusCode::OK, "{t}");
            tokens.push(t);
        }
        let published = published_kids(&app).await;
        for t in &tokens {
            let kid = t["kid"].as_str().unwrap();
            assert!(published.contains(kid), "{backend:?}: {kid} unpublished");
            let v = verify(&app, &api, t["token"].as_str().unwrap()).await;
            assert_eq!(v["valid"], true, "{backend:?}: {v}");
        }
        let keys = app.state.storage.list_keys().await.unwrap();
        let rotated = keys
            .iter()
            .filter(|k| k.info.state == KeyState::Rotated && k.info.alg.as_str() == "EdDSA")
            .count();
        assert_eq!(
            rotated, 12,
            "{backend:?}: the cap of 8 yields to live tokens"
        );
        assert!(keys.iter().all(|k| k.info.state != KeyState::Expired));
        let (_, events) = call(
            &app,
            Method::GET,
            "/api/v1/events?kind=keys.over_cap",
            &api,
            None,
        )
        .await;
        let warnings = events["events"].as_array().unwrap();
        assert_eq!(warnings.len(), 4, "{backend:?}: rotations 9 to 12 warn");
        assert!(warnings.iter().all(|e| e["level"] == "warning"));
        app.stop().await;
    }
}

/// Defect 8: RFC 8725 section 3.9, and a JWKS that shared caches cannot keep for long.
#[tokio::test]
async fn verify_needs_the_audience_of_a_token_that_has_one() {
    let app = spawn_app(Backend::Sqlite).await;
    let api = token(&app, "svc", &["sign"]).await;
    let (_, b) = call(
        &app,
        Method::POST,
        "/api/v1/sign",
        &api,
        Some(json!({"claims": {"sub": "a", "aud": "billing"}, "ttl": 60})),
    )
    .await;
    let jwt = b["token"].as_str().unwrap();
    let v = verify(&app, &api, jwt).await;
    assert_eq!(v["valid"], false, "{v}");
    assert!(v["reason"].as_str().unwrap().contains("audience"), "{v}");
    let (_, v) = call(
        &app,
        Method::POST,
        "/api/v1/verify",
        &api,
        Some(json!({"token": jwt, "audience": "billing"})),
    )
    .await;
    assert_eq!(v["valid"], true, "{v}");

    let res = app.get("/.well-known/jwks.json").await;
    let cache = res.headers()["cache-control"].to_str().unwrap().to_string();
    let field = |name: &str| -> i64 {
        cache
            .split(", ")
            .find_map(|p| p.strip_prefix(&format!("{name}=")))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(field("max-age") <= 300, "{cache}");
    assert!(field("stale-if-error") <= 60, "{cache}");
    app.stop().await;
}

/// The status of a `/sign` call made with `token` against a server at `base`.
async fn sign_status(http: &reqwest::Client, base: &str, token: &str) -> StatusCode {
    http.post(format!("{base}/api/v1/sign"))
        .bearer_auth(token)
        .json(&json!({"claims": {"sub": "svc"}, "alg": "EdDSA", "ttl": 60}))
        .send()
        .await
        .expect("request reaches the server")
        .status()
}

/// API tokens are authenticated from memory once the database accepted them, and a
/// revocation made anywhere still takes effect on every instance within a second: here
/// a second instance (the real binary, same database) and this one, both having used the
/// token, and the revocation written by neither of their request paths.
async fn a_token_revoked_anywhere_stops_working_everywhere_within_a_second(backend: Backend) {
    use crate::helpers::{ServeProcess, cli_token};
    let app = spawn_app(backend).await;
    let log = app.db.data_dir.path().join("other.log");
    let other = ServeProcess::start(
        &app.db.env(),
        &[],
        std::fs::File::create(&log).expect("log file"),
    )
    .await;
    let doomed = cli_token(&app.db.env(), "doomed", &["sign"]).await;
    let kept = cli_token(&app.db.env(), "kept", &["sign"]).await;
    let http = reqwest::Client::new();
    for base in [app.url.as_str(), other.url.as_str()] {
        for t in [&doomed, &kept] {
            for _ in 0..3 {
                assert_eq!(
                    sign_status(&http, base, t).await,
                    StatusCode::OK,
                    "{backend:?}"
                );
            }
        }
    }

    let id = doomed
        .strip_prefix("sgt_")
        .and_then(|r| r.split_once('_'))
        .map(|(id, _)| id.to_string())
        .expect("a token id");
    assert!(
        signet::server::accounts::tokens::revoke(
            app.state.storage.as_ref(),
            &id,
            &signet::server::audit::Actor::cli()
        )
        .await
        .expect("revoked")
    );
    let revoked = Instant::now();
    for base in [app.url.as_str(), other.url.as_str()] {
        loop {
            let sent = Instant::now();
            let status = sign_status(&http, base, &doomed).await;
            if status == StatusCode::UNAUTHORIZED {
                eprintln!(
                    "{backend:?}: {base} refused the revoked token after {:?}",
                    revoked.elapsed()
                );
                break;
            }
            assert_eq!(status, StatusCode::OK, "{backend:?}");
            assert!(
                sent.duration_since(revoked) < Duration::from_secs(1),
                "{backend:?}: {base} still accepted a token revoked {:?} before the request",
                sent.duration_since(revoked)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The other token is untouched, and the revoked one stays refused.
        assert_eq!(sign_status(&http, base, &kept).await, StatusCode::OK);
        assert_eq!(
            sign_status(&http, base, &doomed).await,
            StatusCode::UNAUTHORIZED
        );
    }
    other.sigkill().await;
    app.stop().await;
}

#[tokio::test]
async fn a_token_revoked_anywhere_stops_working_everywhere_within_a_second_sqlite() {
    a_token_revoked_anywhere_stops_working_everywhere_within_a_second(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_token_revoked_anywhere_stops_working_everywhere_within_a_second_postgres() {
    a_token_revoked_anywhere_stops_working_everywhere_within_a_second(Backend::Postgres).await;
}
