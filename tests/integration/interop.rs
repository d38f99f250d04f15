//! Tokens from `POST /api/v1/sign` verify in independent clients against the live JWKS:
//! Python PyJWT (`PyJWKClient`) and node `jose` (`createRemoteJWKSet`). The clients come
//! from `end2end/` (`./dev test` installs them); a missing client fails the test.

use crate::helpers::{Backend, TestApp, TestDb, spawn_app_with};
use serde_json::{Value, json};
use signet::domain::{Algorithm, Kid};
use signet::server::audit::Actor;
use std::path::PathBuf;
use std::process::Command;

const ALGS: [&str; 6] = ["EdDSA", "RS256", "RS384", "RS512", "PS256", "ES256"];

fn end2end() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("end2end")
}

/// Runs a verifier and returns one result per token.
fn run_verifier(client: &str, app: &TestApp, tokens: &[String]) -> Vec<Value> {
    let jwks = app.at("/.well-known/jwks.json");
    verify_with(client, &jwks, &app.state.config.issuer(), tokens)
}

/// Runs a verifier (`pyjwt`, or `jose` for anything else) against the JWKS at `jwks`
/// and returns one result per token.
pub fn verify_with(client: &str, jwks: &str, issuer: &str, tokens: &[String]) -> Vec<Value> {
    let mut cmd = match client {
        "pyjwt" => {
            let python = std::env::var("INTEROP_PYTHON")
                .map(PathBuf::from)
                .unwrap_or_else(|_| end2end().join(".venv/bin/python"));
            let mut c = Command::new(python);
            c.arg(end2end().join("interop/verify_pyjwt.py"));
            c
        }
        _ => {
            let mut c = Command::new("node");
            c.arg(end2end().join("interop/verify_jose.mjs"));
            c
        }
    };
    let out = cmd
        .arg(jwks)
        .arg(issuer)
        .args(tokens)
        .output()
        .unwrap_or_else(|e| panic!("{client} cannot run ({e}); run ./dev test to install it"));
    assert!(
        out.status.success(),
        "{client} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn sign(app: &TestApp, token: &str, alg: &str) -> (String, Kid) {
    let res: Value = app
        .client
        .post(app.at("/api/v1/sign"))
        .bearer_auth(token)
        .json(&json!({"claims": {"sub": format!("user-{alg}")}, "alg": alg, "ttl": 300}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        res["token"].as_str().unwrap().to_string(),
        serde_json::from_value(res["kid"].clone()).unwrap(),
    )
}

// Multi-threaded: the verifiers block this thread while the server answers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_verify_in_pyjwt_and_jose_across_rotation_and_revocation() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut env = db.env();
    env.push(("SIGNET_ALGORITHMS".into(), ALGS.join(",")));
    let config = signet::server::config::Config::from_sources(None, env).unwrap();
    let app = spawn_app_with(db, config).await;
    let secret = signet::server::accounts::tokens::create(
        app.state.storage.as_ref(),
        "interop",
        &["sign".to_string()],
        &Actor::cli(),
    )
    .await
    .unwrap();

    let mut tokens = Vec::new();
    let mut kids = Vec::new();
    for alg in ALGS {
        let (t, kid) = sign(&app, &secret, alg).await;
        tokens.push(t);
        kids.push(kid);
    }
    for client in ["pyjwt", "jose"] {
        let results = run_verifier(client, &app, &tokens);
        for (alg, r) in ALGS.iter().zip(&results) {
            assert_eq!(r["valid"], true, "{client} {alg}: {r}");
            assert_eq!(r["sub"], format!("user-{alg}"));
        }
    }

    // After a rotation the old tokens still verify: their keys stay published.
    app.state
        .keys
        .rotate(None, false, None, &Actor::cli())
        .await
        .unwrap();
    for client in ["pyjwt", "jose"] {
        for (alg, r) in ALGS.iter().zip(run_verifier(client, &app, &tokens)) {
            assert_eq!(r["valid"], true, "{client} {alg} after rotation: {r}");
        }
    }

    // After revocation they fail, in both clients, at once.
    for kid in &kids {
        app.state
            .keys
            .revoke(kid, "interop test".into(), &Actor::cli())
            .await
            .unwrap();
    }
    for client in ["pyjwt", "jose"] {
        for (alg, r) in ALGS.iter().zip(run_verifier(client, &app, &tokens)) {
            assert_eq!(r["valid"], false, "{client} {alg} after revocation: {r}");
        }
    }
    // And tokens from the new active keys verify.
    let (fresh, _) = sign(&app, &secret, Algorithm::ES256.as_str()).await;
    for client in ["pyjwt", "jose"] {
        assert_eq!(
            run_verifier(client, &app, std::slice::from_ref(&fresh))[0]["valid"],
            true
        );
    }
}
