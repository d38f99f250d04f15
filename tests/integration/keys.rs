//! The key lifecycle through the real server: JWKS, rotation, revocation, expiry,
//! concurrency, encryption at rest and the audit chain, on both backends.

use crate::helpers::{BACKENDS, Backend, TestApp, run_signet, spawn_app};
use chrono::{Duration, Utc};
use reqwest::StatusCode;
use signet::domain::{Algorithm, KeyState, Kid};
use signet::server::audit;
use signet::server::audit::Actor;
use std::collections::BTreeSet;

const PRIVATE_PARAMS: [&str; 6] = ["d", "p", "q", "dp", "dq", "qi"];

async fn jwks(app: &TestApp) -> serde_json::Value {
    let res = app.get("/.well-known/jwks.json").await;
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

fn kids_of(jwks: &serde_json::Value) -> BTreeSet<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

/// docs/design.md invariants 1, 2 and 6 against the database and the served JWKS.
async fn check_invariants(app: &TestApp) {
    let keys = app.state.storage.list_keys().await.unwrap();
    for alg in app.state.config.algorithms.as_slice() {
        let count = |s: KeyState| {
            keys.iter()
                .filter(|k| k.info.alg == *alg && k.info.state == s)
                .count()
        };
        assert_eq!(count(KeyState::Active), 1, "{alg}: exactly one active");
        assert_eq!(count(KeyState::Next), 1, "{alg}: exactly one next");
    }
    let now = Utc::now();
    let expected: BTreeSet<String> = keys
        .iter()
        .filter(|k| k.info.is_published(now))
        .map(|k| k.info.kid.to_string())
        .collect();
    let served = jwks(app).await;
    assert_eq!(
        kids_of(&served),
        expected,
        "JWKS is exactly next, active and unexpired rotated"
    );
    for key in served["keys"].as_array().unwrap() {
        for p in PRIVATE_PARAMS {
            assert!(key.get(p).is_none(), "JWKS carries private parameter {p}");
        }
    }
    for k in &keys {
        // Invariant 4: a rotated key stays published until every token it signed expired.
        if let (KeyState::Rotated, Some(end), Some(exp)) =
            (k.info.state, k.info.expires_at, k.info.last_token_exp)
        {
            assert!(
                end >= exp,
                "{} unpublished before its tokens expire",
                k.info.kid
            );
        }
        let has_private = k.sealed.is_some();
        assert_eq!(
            has_private,
            k.info.state.keeps_private_key(),
            "{}: private half",
            k.info.kid
        );
    }
    let (events, head_id, head_hash) = app.state.storage.audit_chain().await.unwrap();
    audit::verify_chain(&events, head_id, &head_hash).unwrap();
}

/// The newest events of one kind.
pub async fn events_of(app: &TestApp, kind: &str) -> Vec<signet::server::audit::StoredEvent> {
    app.state
        .storage
        .list_events(&signet::server::storage::EventQuery {
            kind: Some(kind.into()),
            limit: 50,
            ..Default::default()
        })
        .await
        .unwrap()
}

fn active_kid(app: &TestApp, alg: Algorithm) -> Kid {
    app.state.keys.snapshot().signers[&alg].kid.clone()
}

fn next_kid(app: &TestApp, alg: Algorithm) -> Kid {
    app.state
        .keys
        .snapshot()
        .keys
        .iter()
        .find(|k| k.alg == alg && k.state == KeyState::Next)
        .unwrap()
        .kid
        .clone()
}

#[tokio::test]
async fn jwks_publishes_active_and_next_with_caching_headers() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let res = app.get("/.well-known/jwks.json").await;
        assert_eq!(res.status(), StatusCode::OK);
        let h = res.headers().clone();
        assert_eq!(h["access-control-allow-origin"], "*");
        let cache = h["cache-control"].to_str().unwrap();
        assert!(cache.starts_with("public, max-age="), "{cache}");
        assert!(cache.contains("stale-if-error"), "{cache}");
        let max_age: i64 = cache["public, max-age=".len()..]
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!((0..=300).contains(&max_age), "{max_age}");
        let etag = h["etag"].to_str().unwrap().to_string();
        let body: serde_json::Value = res.json().await.unwrap();
        let keys = body["keys"].as_array().unwrap();
        assert_eq!(
            keys.len(),
            4,
            "{backend:?}: EdDSA and RS256, active and next"
        );
        for key in keys {
            assert_eq!(key["use"], "sig");
            assert!(["EdDSA", "RS256"].contains(&key["alg"].as_str().unwrap()));
        }
        check_invariants(&app).await;

        let not_modified = app
            .client
            .get(app.at("/.well-known/jwks.json"))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);

        let only: serde_json::Value = app
            .get("/.well-known/jwks.json?alg=EdDSA")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(only["keys"].as_array().unwrap().len(), 2);
        assert_eq!(
            app.get("/.well-known/jwks.json?alg=HS256").await.status(),
            400
        );

        let discovery: serde_json::Value = app
            .get("/.well-known/openid-configuration")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(discovery["issuer"], app.state.config.issuer());
        assert_eq!(
            discovery["jwks_uri"],
            format!("{}/.well-known/jwks.json", app.state.config.issuer())
        );
        assert_eq!(
            discovery["id_token_signing_alg_values_supported"],
            serde_json::json!(["EdDSA", "RS256"])
        );

        let ready: serde_json::Value = app.get("/health/ready").await.json().await.unwrap();
        assert_eq!(ready["checks"][1]["name"], "keys");
        assert_eq!(ready["checks"][1]["ok"], true);
        app.stop().await;
    }
}

#[tokio::test]
async fn rotation_promotes_the_prepublished_next_key() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let before = jwks(&app).await;
        let old_active = active_kid(&app, Algorithm::EdDSA);
        let next = next_kid(&app, Algorithm::EdDSA);
        assert!(
            kids_of(&before).contains(next.as_str()),
            "next key is published before it signs"
        );

        app.state
            .keys
            .rotate(None, false, None, &Actor::cli())
            .await
            .unwrap();

        assert_eq!(active_kid(&app, Algorithm::EdDSA), next);
        let after = jwks(&app).await;
        assert!(
            kids_of(&after).contains(old_active.as_str()),
            "rotated key stays published"
        );
        assert_eq!(kids_of(&after).len(), 6);
        check_invariants(&app).await;

        let events = events_of(&app, "keys.rotated").await;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].level, "notice");
        assert_eq!(events[0].trigger, "cli");
        assert!(events[0].kids.contains(&old_active.to_string()));
        app.stop().await;
    }
}

#[tokio::test]
async fn revocation_removes_the_key_from_the_jwks_at_once() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let active = active_kid(&app, Algorithm::RS256);
        let next = next_kid(&app, Algorithm::RS256);
        app.state
            .keys
            .revoke(&active, "leaked in a log".into(), &Actor::cli())
            .await
            .unwrap();
        assert!(!kids_of(&jwks(&app).await).contains(active.as_str()));
        assert_eq!(
            active_kid(&app, Algorithm::RS256),
            next,
            "next promoted in the same change"
        );
        check_invariants(&app).await;

        // A revoked key cannot be revoked again; an unknown one is not found.
        let again = app
            .state
            .keys
            .revoke(&active, "again".into(), &Actor::cli())
            .await;
        assert!(again.unwrap_err().to_string().contains("already revoked"));
        let rows = app.state.storage.list_keys().await.unwrap();
        let revoked = rows.iter().find(|k| k.info.kid == active).unwrap();
        assert_eq!(revoked.revoke_reason.as_deref(), Some("leaked in a log"));
        assert!(revoked.sealed.is_none(), "private half destroyed");

        // Rotate and revoke: both the active and the next key go.
        let active = active_kid(&app, Algorithm::EdDSA);
        let next = next_kid(&app, Algorithm::EdDSA);
        app.state
            .keys
            .rotate(
                Some(Algorithm::EdDSA),
                true,
                Some("suspected compromise".into()),
                &Actor::cli(),
            )
            .await
            .unwrap();
        let served = kids_of(&jwks(&app).await);
        assert!(!served.contains(active.as_str()) && !served.contains(next.as_str()));
        check_invariants(&app).await;
        app.stop().await;
    }
}

#[tokio::test]
async fn expiry_retires_rotated_keys_after_retention() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let old = active_kid(&app, Algorithm::EdDSA);
        app.state
            .keys
            .rotate(Some(Algorithm::EdDSA), false, None, &Actor::cli())
            .await
            .unwrap();
        assert_eq!(app.state.keys.expire(Utc::now()).await.unwrap(), 0);
        let later = Utc::now() + Duration::days(31);
        assert_eq!(app.state.keys.expire(later).await.unwrap(), 1);
        assert_eq!(app.state.keys.expire(later).await.unwrap(), 0, "idempotent");
        let rows = app.state.storage.list_keys().await.unwrap();
        let expired = rows.iter().find(|k| k.info.kid == old).unwrap();
        assert_eq!(expired.info.state, KeyState::Expired);
        assert!(expired.sealed.is_none());
        assert!(!kids_of(&jwks(&app).await).contains(old.as_str()));
        check_invariants(&app).await;
        app.stop().await;
    }
}

#[tokio::test]
async fn concurrent_rotations_each_apply_cleanly() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let events_before = app.state.storage.audit_chain().await.unwrap().0.len();
        // Invariant 3: readers during the rotations never see zero or two active keys.
        let reader = {
            let storage = app.state.storage.clone();
            tokio::spawn(async move {
                let mut reads = 0;
                for _ in 0..200 {
                    let keys = storage.list_keys().await.unwrap();
                    for state in [KeyState::Active, KeyState::Next] {
                        let n = keys
                            .iter()
                            .filter(|k| k.info.alg == Algorithm::EdDSA && k.info.state == state)
                            .count();
                        assert_eq!(n, 1, "a reader saw {n} {state} keys");
                    }
                    reads += 1;
                    tokio::task::yield_now().await;
                }
                reads
            })
        };
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let keys = app.state.keys.clone();
                tokio::spawn(async move {
                    keys.rotate(Some(Algorithm::EdDSA), false, None, &Actor::cli())
                        .await
                })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => ok += 1,
                Err(e) => assert!(e.to_string().contains("try again"), "{backend:?}: {e}"),
            }
        }
        assert!(ok >= 1, "{backend:?}");
        let rows = app.state.storage.list_keys().await.unwrap();
        let rotated = rows
            .iter()
            .filter(|k| k.info.alg == Algorithm::EdDSA && k.info.state == KeyState::Rotated)
            .count();
        assert_eq!(
            rotated, ok,
            "{backend:?}: one rotated key per successful rotation"
        );
        assert_eq!(reader.await.unwrap(), 200);
        // Invariant 6: one audit event per applied rotation, no more, no less.
        let events_after = app.state.storage.audit_chain().await.unwrap().0.len();
        assert_eq!(events_after - events_before, ok, "{backend:?}");
        check_invariants(&app).await;
        app.stop().await;
    }
}

#[tokio::test]
async fn the_database_refuses_a_second_active_or_next_key() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let rows = app.state.storage.list_keys().await.unwrap();
        let next = rows
            .iter()
            .find(|k| k.info.state == KeyState::Next && k.info.alg == Algorithm::EdDSA)
            .unwrap();
        let sql = format!(
            "UPDATE signing_keys SET state = 'active' WHERE kid = '{}'",
            next.info.kid
        );
        assert!(
            app.db.execute(&sql).await.is_err(),
            "{backend:?}: two active keys accepted"
        );
        let sql = format!(
            "UPDATE signing_keys SET state = 'next' WHERE kid = '{}'",
            active_kid(&app, Algorithm::EdDSA)
        );
        assert!(
            app.db.execute(&sql).await.is_err(),
            "{backend:?}: two next keys accepted"
        );
        check_invariants(&app).await;
        app.stop().await;
    }
}

#[tokio::test]
async fn reencrypt_moves_every_key_to_the_active_kek() {
    const K1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const K2: &str = "k2:HxwdHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=";
    let db = crate::helpers::TestDb::new(Backend::Sqlite).await;
    let env = |keys: &str, active: &str| {
        let mut e = db.env();
        e.push(("SIGNET_ENC_KEYS".into(), keys.into()));
        e.push(("SIGNET_ENC_KEY_ACTIVE".into(), active.into()));
        e
    };
    // Keys created under k1 (any command that writes bootstraps them).
    let out = run_signet(&env(K1, "k1"), &["reencrypt"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // k2 becomes active: old rows still open with k1, and reencrypt moves them all.
    let both = format!("{K1},{K2}");
    let out = run_signet(&env(&both, "k2"), &["reencrypt"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("4 key(s) re-encrypted"));
    let out = run_signet(&env(&both, "k2"), &["reencrypt"]).await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0 key(s)"),
        "idempotent"
    );
    // Without k1 at all, the server still opens every key.
    let config = signet::server::config::Config::from_sources(None, env(K2, "k2")).unwrap();
    let app = crate::helpers::spawn_app_with(db, config).await;
    let rows = app.state.storage.list_keys().await.unwrap();
    assert!(rows.iter().all(|k| k.kek_id.as_deref() == Some("k2")));
    check_invariants(&app).await;
    let events = events_of(&app, "keys.reencrypted").await;
    assert_eq!(events.len(), 1);
}

#[tokio::test]
async fn private_keys_are_sealed_at_rest_and_bound_to_their_kid() {
    let app = spawn_app(Backend::Sqlite).await;
    let rows = app.state.storage.list_keys().await.unwrap();
    // Unseal with the KEK, then look for the plaintext in the database files.
    let mut secrets = Vec::new();
    for k in &rows {
        let kek = app.state.keyring.get(k.kek_id.as_deref().unwrap()).unwrap();
        let private = signet::server::crypto::open(
            kek.key_bytes(),
            &k.info.kid,
            k.sealed.as_deref().unwrap(),
        )
        .unwrap();
        secrets.push(private.as_bytes().to_vec());
    }
    let mut files = Vec::new();
    for suffix in ["", "-wal"] {
        let path = format!("{}{suffix}", app.db.sqlite_file().display());
        if let Ok(bytes) = std::fs::read(&path) {
            files.push(bytes);
        }
    }
    assert!(!files.is_empty());
    for secret in &secrets {
        let probe = &secret[secret.len() - 32..];
        for bytes in &files {
            assert!(
                !bytes.windows(probe.len()).any(|w| w == probe),
                "private key bytes in the clear"
            );
        }
    }

    // A sealed key copied onto another row does not open there.
    // Both active, so the server must open both when it loads its signers.
    let active: Vec<_> = rows
        .iter()
        .filter(|k| k.info.state == KeyState::Active)
        .collect();
    let (a, b) = (active[0], active[1]);
    let kek = app.state.keyring.get(a.kek_id.as_deref().unwrap()).unwrap();
    assert!(
        signet::server::crypto::open(kek.key_bytes(), &b.info.kid, a.sealed.as_deref().unwrap())
            .is_err()
    );
    use sqlx::Connection as _;
    let mut c = sqlx::SqliteConnection::connect(&app.db.url).await.unwrap();
    sqlx::query("UPDATE signing_keys SET private_sealed = (SELECT private_sealed FROM signing_keys WHERE kid = $1) WHERE kid = $2")
        .bind(a.info.kid.as_str())
        .bind(b.info.kid.as_str())
        .execute(&mut c)
        .await
        .unwrap();
    // A process loading the keys afresh still loads them (the JWKS follows the database),
    // but that algorithm cannot sign, and says why.
    let fresh = signet::server::keys::KeyService::new(
        app.state.storage.clone(),
        app.state.keyring.clone(),
        app.state.config.clone(),
    );
    fresh.reload().await.unwrap();
    let snapshot = fresh.snapshot();
    assert!(!snapshot.signers.contains_key(&b.info.alg));
    let why = &snapshot.unavailable[&b.info.alg];
    assert!(why.contains("could not be opened"), "{why}");
    assert!(snapshot.signers.contains_key(&a.info.alg));
}

#[tokio::test]
async fn cli_changes_reach_the_running_server_within_a_second() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let before = kids_of(&jwks(&app).await);
        // `keys --json` prints the same shape as GET /api/v1/keys.
        let out = run_signet(&app.db.env(), &["keys", "--json"]).await;
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let listed_kids: BTreeSet<String> = listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(listed_kids, before, "{backend:?}");
        assert!(listed["keys"][0]["jwk"]["kty"].is_string());
        let out = run_signet(&app.db.env(), &["rotate", "--alg", "EdDSA"]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let start = std::time::Instant::now();
        loop {
            let now = kids_of(&jwks(&app).await);
            if now != before {
                assert_eq!(now.len(), before.len() + 1);
                break;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(1),
                "{backend:?}: not seen within 1 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        check_invariants(&app).await;
        app.stop().await;
    }
}

#[tokio::test]
async fn audit_verify_finds_edited_and_deleted_rows() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        for _ in 0..3 {
            app.state
                .keys
                .rotate(Some(Algorithm::EdDSA), false, None, &Actor::cli())
                .await
                .unwrap();
        }
        let env = app.db.env();
        let out = run_signet(&env, &["audit", "verify"]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // keys.created and admin.created at the first start, then three rotations.
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("5 events"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );

        app.db
            .execute("UPDATE audit_events SET actor = 'mallory' WHERE id = 2")
            .await
            .unwrap();
        let out = run_signet(&env, &["audit", "verify"]).await;
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("event 2 was altered"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        app.db
            .execute("DELETE FROM audit_events WHERE id = 2")
            .await
            .unwrap();
        let out = run_signet(&env, &["audit", "verify"]).await;
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("event 3 does not follow"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn a_rotated_key_leaves_the_jwks_when_its_retention_ends() {
    let db = crate::helpers::TestDb::new(Backend::Sqlite).await;
    let mut env = db.env();
    env.push(("SIGNET_RETENTION".into(), "3s".into()));
    env.push(("SIGNET_MAX_TOKEN_TTL".into(), "1s".into()));
    let config = signet::server::config::Config::from_sources(None, env).unwrap();
    let app = crate::helpers::spawn_app_with(db, config).await;
    let old = active_kid(&app, Algorithm::EdDSA);
    app.state
        .keys
        .rotate(Some(Algorithm::EdDSA), false, None, &Actor::cli())
        .await
        .unwrap();
    assert!(kids_of(&jwks(&app).await).contains(old.as_str()));
    // A key stays published for the token lifetime plus a five-minute margin, whatever
    // the retention: pretend it was rotated long ago, with its publication ending in 2 s.
    let end = (chrono::Utc::now() + chrono::Duration::seconds(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, false);
    let long_ago = (chrono::Utc::now() - chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, false);
    app.db
        .execute(&format!(
            "UPDATE signing_keys SET rotated_at = '{long_ago}', expires_at = '{end}' \
             WHERE kid = '{old}'"
        ))
        .await
        .unwrap();
    app.db
        .execute("UPDATE key_version SET version = version + 1")
        .await
        .unwrap();
    let rotated_at = std::time::Instant::now();
    // The watcher expires it when its time comes, not at the next minute's housekeeping.
    while kids_of(&jwks(&app).await).contains(old.as_str()) {
        assert!(
            rotated_at.elapsed() < std::time::Duration::from_secs(6),
            "still published well after its retention"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(rotated_at.elapsed() >= std::time::Duration::from_secs(2));
    check_invariants(&app).await;
}

#[tokio::test]
async fn a_postgres_dump_holds_no_private_key_in_the_clear() {
    let app = spawn_app(Backend::Postgres).await;
    let dump = std::process::Command::new("pg_dump")
        .args(["--data-only", "--dbname", &app.db.url])
        .output()
        .expect("pg_dump (PostgreSQL's client) runs");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dump = String::from_utf8_lossy(&dump.stdout).to_lowercase();
    assert!(dump.contains("signing_keys"), "the dump has the keys table");
    for k in app.state.storage.list_keys().await.unwrap() {
        let kek = app.state.keyring.get(k.kek_id.as_deref().unwrap()).unwrap();
        let private = signet::server::crypto::open(
            kek.key_bytes(),
            &k.info.kid,
            k.sealed.as_deref().unwrap(),
        )
        .unwrap();
        let tail = &private.as_bytes()[private.as_bytes().len() - 16..];
        let hex: String = tail.iter().map(|b| format!("{b:02x}")).collect();
        assert!(
            !dump.contains(&hex),
            "{}: private bytes in the dump",
            k.info.kid
        );
    }
}

#[tokio::test]
async fn more_than_eight_rotated_keys_expire_the_oldest_early_with_a_warning() {
    for backend in BACKENDS {
        let db = crate::helpers::TestDb::new(backend).await;
        let mut env = db.env();
        env.push(("SIGNET_ALGORITHMS".into(), "EdDSA".into()));
        env.push(("SIGNET_ROTATION_EVENT_LEVEL".into(), "warning".into()));
        let config = signet::server::config::Config::from_sources(None, env).unwrap();
        let app = crate::helpers::spawn_app_with(db, config).await;
        let first = active_kid(&app, Algorithm::EdDSA);
        for _ in 0..8 {
            app.state
                .keys
                .rotate(None, false, None, &Actor::cli())
                .await
                .unwrap();
        }
        // The cap only retires keys whose tokens can no longer be valid: these eight were
        // rotated hours ago (token lifetime 1 h), the first one longest ago.
        let ago = |hours| {
            (chrono::Utc::now() - chrono::Duration::hours(hours))
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
        };
        app.db
            .execute(&format!(
                "UPDATE signing_keys SET rotated_at = '{}' WHERE state = 'rotated'",
                ago(2)
            ))
            .await
            .unwrap();
        app.db
            .execute(&format!(
                "UPDATE signing_keys SET rotated_at = '{}' WHERE kid = '{first}'",
                ago(3)
            ))
            .await
            .unwrap();
        app.state
            .keys
            .rotate(None, false, None, &Actor::cli())
            .await
            .unwrap();
        let rows = app.state.storage.list_keys().await.unwrap();
        let rotated = rows
            .iter()
            .filter(|k| k.info.state == KeyState::Rotated)
            .count();
        assert_eq!(
            rotated, 8,
            "{backend:?}: at most 8 rotated keys stay published"
        );
        let oldest = rows.iter().find(|k| k.info.kid == first).unwrap();
        assert_eq!(oldest.info.state, KeyState::Expired);
        assert!(!kids_of(&jwks(&app).await).contains(first.as_str()));
        let early = events_of(&app, "keys.expired_early").await;
        assert_eq!(early.len(), 1, "{backend:?}");
        assert_eq!(early[0].level, "warning");
        assert_eq!(early[0].kids, vec![first.to_string()]);
        // The configured level applies to rotation events.
        let rotations = events_of(&app, "keys.rotated").await;
        assert_eq!(rotations.len(), 9);
        assert!(rotations.iter().all(|e| e.level == "warning"));
        check_invariants(&app).await;
        app.stop().await;
    }
}
