//! The REST API: scopes, every endpoint, and errors as JSON with the right status.

use crate::helpers::{BACKENDS, Backend, TestApp, run_signet, spawn_app};
use reqwest::StatusCode;
use serde_json::{Value, json};
use signet::server::accounts::tokens;
use signet::server::audit::Actor;

pub async fn token(app: &TestApp, name: &str, scopes: &[&str]) -> String {
    let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
    tokens::create(app.state.storage.as_ref(), name, &scopes, &Actor::cli())
        .await
        .unwrap()
}

pub async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = app.client.request(method, app.at(path)).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let value = res.json::<Value>().await.unwrap_or(Value::Null);
    assert_eq!(
        ct.as_deref(),
        Some("application/json"),
        "{path}: {status} answered JSON"
    );
    (status, value)
}

pub fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn tokens_and_scopes_are_enforced() {
    let app = spawn_app(Backend::Sqlite).await;
    let reader = token(&app, "reader", &["keys:read"]).await;

    let res = app.client.get(app.at("/api/v1/keys")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    let (s, b) = call(
        &app,
        reqwest::Method::GET,
        "/api/v1/keys",
        "sgt_0011223344556677_nope",
        None,
    )
    .await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    // A real id with a wrong secret is refused the same way.
    let forged = format!("{}x", &reader[..reader.len() - 1]);
    let (s, b) = call(&app, reqwest::Method::GET, "/api/v1/keys", &forged, None).await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");

    let (s, b) = call(&app, reqwest::Method::GET, "/api/v1/keys", &reader, None).await;
    assert_eq!(s, StatusCode::OK);
    let keys = b["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 4);
    for k in keys {
        for field in [
            "kid",
            "alg",
            "state",
            "created_at",
            "activated_at",
            "rotated_at",
            "revoked_at",
            "expires_at",
            "jwk",
        ] {
            assert!(k.get(field).is_some(), "key lacks {field}: {k}");
        }
        assert!(k["jwk"].get("d").is_none());
    }

    let (s, b) = call(
        &app,
        reqwest::Method::POST,
        "/api/v1/keys/rotate",
        &reader,
        Some(json!({})),
    )
    .await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "forbidden");
    let (s, b) = call(&app, reqwest::Method::GET, "/api/v1/events", &reader, None).await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "forbidden");
    let (s, b) = call(
        &app,
        reqwest::Method::POST,
        "/api/v1/sign",
        &reader,
        Some(json!({"claims": {}})),
    )
    .await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "forbidden");

    // /verify needs sign or keys:read; an audit-only token may not use it.
    let auditor = token(&app, "auditor", &["audit:read"]).await;
    let (s, b) = call(
        &app,
        reqwest::Method::POST,
        "/api/v1/verify",
        &auditor,
        Some(json!({"token": "x.y.z"})),
    )
    .await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(
        b["message"], "this token needs one of the scopes 'sign' or 'keys:read'",
        "{b}"
    );
    // A wrong method is a JSON 405, like every other API error.
    let (s, b) = call(&app, reqwest::Method::DELETE, "/api/v1/keys", &reader, None).await;
    assert_error(s, &b, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");

    // Token names are unique; scopes must be known.
    let dup = tokens::create(
        app.state.storage.as_ref(),
        "reader",
        &["sign".into()],
        &Actor::cli(),
    )
    .await;
    assert!(dup.unwrap_err().to_string().contains("already exists"));
    let bad = tokens::create(
        app.state.storage.as_ref(),
        "x",
        &["admin".into()],
        &Actor::cli(),
    )
    .await;
    assert!(bad.unwrap_err().to_string().contains("unknown scope"));
}

#[tokio::test]
async fn rotate_revoke_and_events_through_the_api_on_both_backends() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let admin = token(&app, "ops", &["keys:read", "keys:write", "audit:read"]).await;
        let post = reqwest::Method::POST;

        let (s, b) = call(
            &app,
            post.clone(),
            "/api/v1/keys/rotate",
            &admin,
            Some(json!({"alg": "EdDSA"})),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{backend:?}: {b}");
        assert_eq!(b["changes"].as_array().unwrap().len(), 3, "{b}");

        // An empty body rotates everything.
        let res = app
            .client
            .post(app.at("/api/v1/keys/rotate"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);

        let (s, b) = call(
            &app,
            post.clone(),
            "/api/v1/keys/rotate",
            &admin,
            Some(json!({"alg": "HS256"})),
        )
        .await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_alg");
        let (s, b) = call(
            &app,
            post.clone(),
            "/api/v1/keys/rotate",
            &admin,
            Some(json!({"alg": "ES256"})),
        )
        .await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_alg");
        let (s, b) = call(
            &app,
            post.clone(),
            "/api/v1/keys/rotate",
            &admin,
            Some(json!({"revoke": true})),
        )
        .await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "missing_reason");
        let (s, b) = call(
            &app,
            post.clone(),
            "/api/v1/keys/rotate",
            &admin,
            Some(json!({"colour": "red"})),
        )
        .await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_body");

        let active = app.state.keys.snapshot().signers[&signet::domain::Algorithm::RS256]
            .kid
            .to_string();
        let path = format!("/api/v1/keys/{active}/revoke");
        // Text with control characters is refused (PostgreSQL cannot even store NUL).
        let (s, b) = call(
            &app,
            post.clone(),
            &path,
            &admin,
            Some(json!({"reason": "a\u{0}b"})),
        )
        .await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_body");
        let (s, b) = call(
            &app,
            reqwest::Method::GET,
            "/api/v1/events?actor=%00",
            &admin,
            None,
        )
        .await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_query");
        let (s, b) = call(
            &app,
            post.clone(),
            &path,
            &admin,
            Some(json!({"reason": "test"})),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let jwks: Value = app
            .get("/.well-known/jwks.json")
            .await
            .json()
            .await
            .unwrap();
        assert!(!jwks.to_string().contains(&active));
        let (s, b) = call(
            &app,
            post.clone(),
            &path,
            &admin,
            Some(json!({"reason": "again"})),
        )
        .await;
        assert_error(s, &b, StatusCode::CONFLICT, "conflict");
        let unknown = format!("/api/v1/keys/{}/revoke", "A".repeat(43));
        let (s, b) = call(
            &app,
            post.clone(),
            &unknown,
            &admin,
            Some(json!({"reason": "x"})),
        )
        .await;
        assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
        let (s, b) = call(
            &app,
            post.clone(),
            "/api/v1/keys/not-a-kid/revoke",
            &admin,
            Some(json!({"reason": "x"})),
        )
        .await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_kid");

        // Events: newest first, filters, keyset pagination.
        let (s, b) = call(
            &app,
            reqwest::Method::GET,
            "/api/v1/events?kind=keys.rotated",
            &admin,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let events = b["events"].as_array().unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0]["actor"], "token:ops");
        assert_eq!(events[0]["trigger"], "api");
        assert!(events[0]["id"].as_i64() > events[1]["id"].as_i64());
        let (_, page1) = call(
            &app,
            reqwest::Method::GET,
            "/api/v1/events?limit=2",
            &admin,
            None,
        )
        .await;
        let cursor = page1["next_cursor"].as_str().unwrap().to_string();
        let (_, page2) = call(
            &app,
            reqwest::Method::GET,
            &format!("/api/v1/events?limit=2&cursor={cursor}"),
            &admin,
            None,
        )
        .await;
        let last_of_1 = page1["events"][1]["id"].as_i64().unwrap();
        assert!(page2["events"][0]["id"].as_i64().unwrap() < last_of_1);
        let (s, b) = call(
            &app,
            reqwest::Method::GET,
            "/api/v1/events?level=loud",
            &admin,
            None,
        )
        .await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_query");
        let (s, b) = call(
            &app,
            reqwest::Method::GET,
            "/api/v1/events?limit=0",
            &admin,
            None,
        )
        .await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_query");
        app.stop().await;
    }
}

#[tokio::test]
async fn schedule_is_validated_and_stored() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let admin = token(&app, "ops", &["keys:read", "keys:write", "audit:read"]).await;
        let (s, b) = call(&app, reqwest::Method::GET, "/api/v1/schedule", &admin, None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(b["cron"], "0 30 3 1 * * *");
        assert_eq!(b["next_rotations"].as_array().unwrap().len(), 5);

        let put = reqwest::Method::PUT;
        for (body, code) in [
            (json!({"cron": "0 30 3 1 *"}), "invalid_cron"),
            (json!({"cron": "0 0 0 30 2 * *"}), "invalid_cron"),
            (
                json!({"cron": "0 0 4 * * Sun *", "retention": "30m"}),
                "invalid_retention",
            ),
            (
                json!({"cron": "0 0 4 * * Sun *", "retention": "soon"}),
                "invalid_retention",
            ),
        ] {
            let (s, b) = call(&app, put.clone(), "/api/v1/schedule", &admin, Some(body)).await;
            assert_error(s, &b, StatusCode::BAD_REQUEST, code);
        }
        let (_, unchanged) =
            call(&app, reqwest::Method::GET, "/api/v1/schedule", &admin, None).await;
        assert_eq!(
            unchanged["cron"], "0 30 3 1 * * *",
            "a refused change stores nothing"
        );

        let (s, b) = call(
            &app,
            put.clone(),
            "/api/v1/schedule",
            &admin,
            Some(json!({"cron": "0 0 4 * * Sun *", "retention": "14d"})),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["cron"], "0 0 4 * * Sun *");
        assert_eq!(b["retention"], "2w");
        let (_, events) = call(
            &app,
            reqwest::Method::GET,
            "/api/v1/events?kind=schedule.changed",
            &admin,
            None,
        )
        .await;
        let ev = &events["events"][0];
        assert_eq!(ev["details"]["old"]["cron"], "0 30 3 1 * * *");
        assert_eq!(ev["details"]["new"]["cron"], "0 0 4 * * Sun *");
        app.stop().await;
    }
}

#[tokio::test]
async fn sign_and_verify_every_algorithm() {
    let db = crate::helpers::TestDb::new(Backend::Sqlite).await;
    let mut env = db.env();
    env.push((
        "SIGNET_ALGORITHMS".into(),
        "EdDSA,RS256,RS384,RS512,PS256,ES256".into(),
    ));
    let config = signet::server::config::Config::from_sources(None, env).unwrap();
    let app = crate::helpers::spawn_app_with(db, config).await;
    let signer = token(&app, "svc", &["sign"]).await;
    let post = reqwest::Method::POST;
    for alg in ["EdDSA", "RS256", "RS384", "RS512", "PS256", "ES256"] {
        let (s, b) = call(
            &app,
            post.clone(),
            "/api/v1/sign",
            &signer,
            Some(json!({"claims": {"sub": "alice", "aud": "api"}, "alg": alg, "ttl": 60})),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{alg}: {b}");
        assert_eq!(b["alg"], alg);
        let token_text = b["token"].as_str().unwrap().to_string();
        let (s, v) = call(
            &app,
            post.clone(),
            "/api/v1/verify",
            &signer,
            Some(json!({"token": token_text, "audience": "api"})),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["valid"], true, "{alg}: {v}");
        assert_eq!(v["claims"]["sub"], "alice");
        assert_eq!(v["claims"]["iss"], app.state.config.issuer());
        assert_eq!(v["kid"], b["kid"]);
        let (_, v) = call(
            &app,
            post.clone(),
            "/api/v1/verify",
            &signer,
            Some(json!({"token": token_text, "audience": "other"})),
        )
        .await;
        assert_eq!(v["valid"], false);
        assert_eq!(v["reason"], "wrong audience");
        // A flipped signature byte fails.
        let mut tampered = token_text.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        let (_, v) = call(
            &app,
            post.clone(),
            "/api/v1/verify",
            &signer,
            Some(json!({"token": tampered})),
        )
        .await;
        assert_eq!(v["valid"], false, "{alg}");
    }

    for (body, code) in [
        (json!({"claims": {"exp": 1}}), "invalid_claims"),
        (json!({"claims": "alice"}), "invalid_claims"),
        (json!({"claims": {}, "ttl": 7200}), "invalid_ttl"),
        (json!({"claims": {}, "ttl": 0}), "invalid_ttl"),
        (json!({"claims": {}, "alg": "none"}), "invalid_alg"),
        (json!({"claims": {}, "extra": 1}), "invalid_body"),
    ] {
        let (s, b) = call(
            &app,
            post.clone(),
            "/api/v1/sign",
            &signer,
            Some(body.clone()),
        )
        .await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, code);
    }

    // Malformed JSON, a wrong content type, an oversized body.
    let res = app
        .client
        .post(app.at("/api/v1/sign"))
        .bearer_auth(&signer)
        .header("content-type", "application/json")
        .body("{\"claims\":")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"],
        "malformed_json"
    );
    let res = app
        .client
        .post(app.at("/api/v1/sign"))
        .bearer_auth(&signer)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let big = json!({"claims": {"blob": "x".repeat(100_000)}});
    let (s, b) = call(&app, post.clone(), "/api/v1/sign", &signer, Some(big)).await;
    assert_error(s, &b, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    // An audience check needs an audience: a token without `aud` fails it.
    let (_, b) = call(
        &app,
        post.clone(),
        "/api/v1/sign",
        &signer,
        Some(json!({"claims": {"sub": "no-aud"}})),
    )
    .await;
    let (_, v) = call(
        &app,
        post.clone(),
        "/api/v1/verify",
        &signer,
        Some(json!({"token": b["token"], "audience": "api"})),
    )
    .await;
    assert_eq!(v["valid"], false, "{v}");
    // A token that is not valid yet (nbf in the future) fails.
    let (_, b) = call(
        &app,
        post.clone(),
        "/api/v1/sign",
        &signer,
        Some(json!({"claims": {"nbf": chrono::Utc::now().timestamp() + 3600}})),
    )
    .await;
    let (_, v) = call(
        &app,
        post.clone(),
        "/api/v1/verify",
        &signer,
        Some(json!({"token": b["token"]})),
    )
    .await;
    assert_eq!(v["valid"], false, "{v}");
    assert_eq!(v["reason"], "token not yet valid");

    let (s, b) = call(&app, reqwest::Method::GET, "/api/v1/nothing", &signer, None).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");

    // After a rotation an old token still verifies; after revocation it does not.
    let (_, b) = call(
        &app,
        post.clone(),
        "/api/v1/sign",
        &signer,
        Some(json!({"claims": {"sub": "bob"}, "alg": "EdDSA"})),
    )
    .await;
    let old = b["token"].as_str().unwrap().to_string();
    let kid: signet::domain::Kid = serde_json::from_value(b["kid"].clone()).unwrap();
    app.state
        .keys
        .rotate(None, false, None, &Actor::cli())
        .await
        .unwrap();
    let (_, v) = call(
        &app,
        post.clone(),
        "/api/v1/verify",
        &signer,
        Some(json!({"token": old})),
    )
    .await;
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["key_state"], "rotated");
    app.state
        .keys
        .revoke(&kid, "test".into(), &Actor::cli())
        .await
        .unwrap();
    let (_, v) = call(
        &app,
        post.clone(),
        "/api/v1/verify",
        &signer,
        Some(json!({"token": old})),
    )
    .await;
    assert_eq!(v["valid"], false);
    assert_eq!(v["reason"], "key revoked");

    // The latest exp is recorded for the key that signed.
    let rows = app.state.storage.list_keys().await.unwrap();
    assert!(
        rows.iter()
            .find(|k| k.info.kid == kid)
            .unwrap()
            .info
            .last_token_exp
            .is_some()
    );
}

#[tokio::test]
async fn token_create_cli_prints_only_the_secret() {
    let app = spawn_app(Backend::Sqlite).await;
    let out = run_signet(
        &app.db.env(),
        &[
            "token",
            "create",
            "deploy-bot",
            "--scope",
            "sign",
            "keys:read",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let secret = stdout.trim();
    assert_eq!(stdout.lines().count(), 1);
    assert!(secret.starts_with("sgt_"));
    let (s, _) = call(&app, reqwest::Method::GET, "/api/v1/keys", secret, None).await;
    assert_eq!(s, StatusCode::OK);
    let out = run_signet(&app.db.env(), &["token", "create", "x", "--scope", "root"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown scope"));
}
