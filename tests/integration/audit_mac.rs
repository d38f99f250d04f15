//! The keyed audit chain, seen through the real `signet audit verify`: a rewrite with
//! every hash recomputed is caught, a KEK rotation keeps old events verifiable, a log
//! from before migration 0007 is keyed at the next start, and a wrong or missing KEK
//! makes verification fail. Both backends.

use crate::helpers::{BACKENDS, Backend, TestDb, run_signet, spawn_app_with};
use signet::domain::Algorithm;
use signet::domain::audit::kind;
use signet::server::audit::Actor;
use signet::server::audit::{self, StoredEvent};
use signet::server::config::Config;
use sqlx::Connection as _;

const K1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const K2: &str = "k2:HxwdHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=";
/// Another key under the id `k1`.
const K1_WRONG: &str = "k1:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

fn env_with_keks(db: &TestDb, keys: &str, active: &str) -> Vec<(String, String)> {
    let mut env = db.env();
    env.push(("SIGNET_ENC_KEYS".into(), keys.into()));
    env.push(("SIGNET_ENC_KEY_ACTIVE".into(), active.into()));
    env.push(("SIGNET_ALGORITHMS".into(), "EdDSA,ES256".into()));
    env
}

async fn verify(env: &[(String, String)]) -> (bool, String, String) {
    let out = run_signet(env, &["audit", "verify"]).await;
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Rewrites every event from `from_id` on as someone with database access but no KEK
/// would: new content for the first, every following hash and the head recomputed.
async fn rewrite_without_kek(db: &TestDb, events: &[StoredEvent], from_id: i64) {
    let mut prev = String::new();
    for e in events {
        let mut e = e.clone();
        if e.id < from_id {
            prev = e.hash.clone();
            continue;
        }
        if e.id == from_id {
            e.details = serde_json::json!({ "note": "nothing happened" });
            db.execute(&format!(
                "UPDATE audit_events SET details = '{}' WHERE id = {}",
                e.details, e.id
            ))
            .await
            .unwrap();
        }
        e.prev_hash = prev.clone();
        e.hash = e.expected_hash();
        db.execute(&format!(
            "UPDATE audit_events SET prev_hash = '{}', hash = '{}' WHERE id = {}",
            e.prev_hash, e.hash, e.id
        ))
        .await
        .unwrap();
        prev = e.hash.clone();
    }
    db.execute(&format!(
        "UPDATE audit_head SET last_hash = '{prev}' WHERE id = 1"
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn a_rewrite_with_recomputed_hashes_is_caught_by_audit_verify() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let env = env_with_keks(&db, K1, "k1");
        let config = Config::from_sources(None, env.clone()).unwrap();
        let app = spawn_app_with(db, config).await;
        for _ in 0..3 {
            app.state
                .keys
                .rotate(Some(Algorithm::EdDSA), false, None, &Actor::cli())
                .await
                .unwrap();
        }
        let (ok, stdout, stderr) = verify(&env).await;
        assert!(ok, "{backend:?}: {stderr}");
        assert!(stdout.contains("every event authenticated"), "{stdout}");

        let (events, _, _) = app.state.storage.audit_chain().await.unwrap();
        assert!(events.iter().all(|e| e.mac_kek.as_deref() == Some("k1")));
        rewrite_without_kek(&app.db, &events, 3).await;
        // The hash chain alone no longer tells.
        let (events, head_id, head_hash) = app.state.storage.audit_chain().await.unwrap();
        audit::verify_chain(&events, head_id, &head_hash).unwrap();

        let (ok, _, stderr) = verify(&env).await;
        assert!(!ok, "{backend:?}: the rewrite passed");
        assert!(
            stderr.contains("event 3 was altered") && stderr.contains("MAC does not match"),
            "{backend:?}: {stderr}"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn a_kek_rotation_keeps_old_and_new_events_verifiable() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let env1 = env_with_keks(&db, K1, "k1");
        let app = spawn_app_with(db, Config::from_sources(None, env1.clone()).unwrap()).await;
        app.state
            .keys
            .rotate(None, false, None, &Actor::cli())
            .await
            .unwrap();
        let db = app.stop().await;

        // k2 becomes active; k1 stays configured, as it must for the keys sealed under it.
        let env2 = env_with_keks(&db, &format!("{K1},{K2}"), "k2");
        let app = spawn_app_with(db, Config::from_sources(None, env2.clone()).unwrap()).await;
        let out = run_signet(&env2, &["rotate", "--alg", "EdDSA"]).await;
        assert!(out.status.success(), "{out:?}");
        let (events, _, _) = app.state.storage.audit_chain().await.unwrap();
        let keks: Vec<&str> = events.iter().filter_map(|e| e.mac_kek.as_deref()).collect();
        assert_eq!(keks.len(), events.len(), "every event has a MAC");
        assert!(keks.contains(&"k1") && keks.contains(&"k2"), "{keks:?}");
        assert_eq!(*keks.last().unwrap(), "k2", "new events use the active KEK");
        let first_k2 = events
            .iter()
            .find(|e| e.mac_kek.as_deref() == Some("k2"))
            .unwrap()
            .id;

        let (ok, stdout, stderr) = verify(&env2).await;
        assert!(ok, "{backend:?}: {stderr}");
        assert!(
            stdout.contains(&format!("{} events", events.len())),
            "{stdout}"
        );

        // Without k1, verify names the KEK it lacks (and fails).
        let only_k2 = env_with_keks(&app.db, K2, "k2");
        let (ok, _, stderr) = verify(&only_k2).await;
        assert!(!ok, "{backend:?}");
        assert!(
            stderr.contains("event 1 ") && stderr.contains("'k1', which is not configured"),
            "{backend:?}: {stderr}"
        );

        // Another key under the id k1: the old events do not verify; the new ones would.
        let wrong = env_with_keks(&app.db, &format!("{K1_WRONG},{K2}"), "k2");
        let (ok, _, stderr) = verify(&wrong).await;
        assert!(!ok, "{backend:?}");
        assert!(
            stderr.contains("event 1 was altered") && stderr.contains("MAC does not match"),
            "{backend:?}: {stderr}"
        );
        assert!(first_k2 > 1);
        app.stop().await;
    }
}

/// An event as a version before 0007 wrote it: hash-chained, no MAC.
struct OldEvent {
    id: i64,
    at: chrono::DateTime<chrono::Utc>,
    details: String,
    prev_hash: String,
    hash: String,
}

fn old_chain(n: i64) -> Vec<OldEvent> {
    let mut prev = String::new();
    (1..=n)
        .map(|id| {
            let at = audit::now();
            let details = serde_json::json!({ "i": id }).to_string();
            let hash = audit::chain_hash(
                &prev,
                id,
                at,
                "info",
                "schedule.changed",
                "old@example.com",
                "cli",
                None,
                "[]",
                None,
                &details,
            );
            let e = OldEvent {
                id,
                at,
                details,
                prev_hash: prev.clone(),
                hash: hash.clone(),
            };
            prev = hash;
            e
        })
        .collect()
}

const OLD_INSERT: &str = "INSERT INTO audit_events (id, at, level, kind, actor, trigger, source, \
     kids, reason, details, prev_hash, hash) \
     VALUES ($1, $2, 'info', 'schedule.changed', 'old@example.com', 'cli', NULL, '[]', NULL, $3, $4, $5)";

/// Migrates a fresh database only up to (not including) 0007, as a version before it
/// did, and writes `n` events the way that version wrote them.
async fn database_before_0007(db: &TestDb, n: i64) {
    let backend = if db.is_postgres() {
        "postgres"
    } else {
        "sqlite"
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    let mut migrator = sqlx::migrate::Migrator::new(dir).await.unwrap();
    migrator.migrations = migrator
        .migrations
        .iter()
        .filter(|m| m.version < 7)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    let chain = old_chain(n);
    let head = chain.last().map(|e| (e.id, e.hash.clone())).unwrap();
    macro_rules! write_old {
        ($conn:expr) => {{
            let mut c = $conn;
            migrator.run(&mut c).await.unwrap();
            for e in &chain {
                sqlx::query(OLD_INSERT)
                    .bind(e.id)
                    .bind(e.at)
                    .bind(&e.details)
                    .bind(&e.prev_hash)
                    .bind(&e.hash)
                    .execute(&mut c)
                    .await
                    .unwrap();
            }
            sqlx::query("UPDATE audit_head SET last_id = $1, last_hash = $2 WHERE id = 1")
                .bind(head.0)
                .bind(&head.1)
                .execute(&mut c)
                .await
                .unwrap();
        }};
    }
    if db.is_postgres() {
        write_old!(sqlx::PgConnection::connect(&db.url).await.unwrap());
    } else {
        std::fs::create_dir_all(db.sqlite_file().parent().unwrap()).unwrap();
        let options = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(&db.url)
            .unwrap()
            .create_if_missing(true);
        write_old!(
            sqlx::SqliteConnection::connect_with(&options)
                .await
                .unwrap()
        );
    }
}

#[tokio::test]
async fn a_log_from_before_0007_is_keyed_at_the_next_start_and_verifies() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        database_before_0007(&db, 5).await;
        let env = env_with_keks(&db, K1, "k1");
        let app = spawn_app_with(db, Config::from_sources(None, env.clone()).unwrap()).await;

        let (events, _, _) = app.state.storage.audit_chain().await.unwrap();
        assert!(
            events.iter().all(|e| e.mac_kek.as_deref() == Some("k1")),
            "{backend:?}: every event is keyed"
        );
        let keyed: Vec<&StoredEvent> = events
            .iter()
            .filter(|e| e.kind == kind::AUDIT_KEYED)
            .collect();
        assert_eq!(keyed.len(), 1, "{backend:?}: one audit.keyed event");
        assert_eq!(
            keyed[0].id, 6,
            "{backend:?}: written right after the old events"
        );
        assert_eq!(keyed[0].details["events"], 5);
        assert_eq!(keyed[0].details["kek"], "k1");
        let (ok, stdout, stderr) = verify(&env).await;
        assert!(ok, "{backend:?}: {stderr}");
        assert!(stdout.contains("every event authenticated"), "{stdout}");

        // A second start has nothing left to key.
        let db = app.stop().await;
        let app = spawn_app_with(db, Config::from_sources(None, env.clone()).unwrap()).await;
        let (again, _, _) = app.state.storage.audit_chain().await.unwrap();
        assert_eq!(
            again.iter().filter(|e| e.kind == kind::AUDIT_KEYED).count(),
            1
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn a_broken_log_from_before_0007_is_never_blessed_with_macs() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        database_before_0007(&db, 5).await;
        db.execute("UPDATE audit_events SET actor = 'mallory' WHERE id = 2")
            .await
            .unwrap();
        let env = env_with_keks(&db, K1, "k1");
        // The start goes on (a broken log must not stop revocations) but keys nothing.
        let app = spawn_app_with(db, Config::from_sources(None, env.clone()).unwrap()).await;
        let (events, _, _) = app.state.storage.audit_chain().await.unwrap();
        assert!(
            events.iter().filter(|e| e.id <= 5).all(|e| e.mac.is_none()),
            "{backend:?}: the old events got MACs"
        );
        assert!(events.iter().all(|e| e.kind != kind::AUDIT_KEYED));
        // Events written since are keyed; verify still reports the old edit first.
        assert!(events.iter().filter(|e| e.id > 5).all(|e| e.mac.is_some()));
        let (ok, _, stderr) = verify(&env).await;
        assert!(!ok, "{backend:?}");
        assert!(
            stderr.contains("event 2 was altered"),
            "{backend:?}: {stderr}"
        );
        app.stop().await;
    }
}

/// Events of the keyed chain whose MACs were removed are not "old": they are refused,
/// not keyed again.
#[tokio::test]
async fn stripping_the_macs_does_not_make_events_old() {
    let db = TestDb::new(Backend::Sqlite).await;
    let env = env_with_keks(&db, K1, "k1");
    let app = spawn_app_with(db, Config::from_sources(None, env.clone()).unwrap()).await;
    let db = app.stop().await;
    db.execute("UPDATE audit_events SET mac = NULL, mac_kek = NULL")
        .await
        .unwrap();
    let app = spawn_app_with(db, Config::from_sources(None, env.clone()).unwrap()).await;
    let (events, _, _) = app.state.storage.audit_chain().await.unwrap();
    assert!(events.iter().all(|e| e.kind != kind::AUDIT_KEYED));
    let (ok, _, stderr) = verify(&env).await;
    assert!(!ok);
    assert!(stderr.contains("event 1 has no MAC"), "{stderr}");
    app.stop().await;
}
