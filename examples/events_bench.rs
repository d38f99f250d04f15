//! The events page over a million audit events: seeds 1,000,000 rows into a fresh SQLite
//! file and a fresh PostgreSQL database, then times the queries the page makes (through
//! the same `Storage::list_events` the server functions call): the newest page, a page
//! half a million rows deep (keyset cursor), and filtered pages. Prints figures; asserts
//! nothing. Run by `bench/events`.
//!
//! The seeded rows are inserted in bulk with SQL, not through the hash chain, so
//! `signet audit verify` would reject these databases; they exist only for timing.

use signet::server::config::DatabaseUrl;
use signet::server::storage::{self, EventQuery, Storage};
use sqlx::Connection as _;
use std::time::{Duration, Instant};

const ROWS: i64 = 1_000_000;
const RUNS: usize = 25;

/// Kinds, levels and actors in rough production proportions: many sign-ins, few
/// revocations (1 in 100), so a filter on a rare kind has to skip most of the table.
const SEED_SQLITE: &str = "
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000)
INSERT INTO audit_events (id, at, level, kind, actor, trigger, source, kids, reason, details, prev_hash, hash)
SELECT i,
       strftime('%Y-%m-%dT%H:%M:%f+00:00', '2025-01-01', '+' || (i * 30) || ' seconds'),
       CASE WHEN i % 100 = 0 THEN 'critical' WHEN i % 10 = 0 THEN 'warning' ELSE 'info' END,
       CASE WHEN i % 100 = 0 THEN 'keys.revoked' WHEN i % 3 = 0 THEN 'keys.rotated' ELSE 'admin.login' END,
       'admin' || (i % 20) || '@example.com', 'ui', '10.0.0.1', '[]', NULL, '{}', '', ''
FROM n";

const SEED_POSTGRES: &str = "
INSERT INTO audit_events (id, at, level, kind, actor, trigger, source, kids, reason, details, prev_hash, hash)
SELECT i,
       TIMESTAMPTZ '2025-01-01 00:00:00+00' + make_interval(secs => i * 30),
       CASE WHEN i % 100 = 0 THEN 'critical' WHEN i % 10 = 0 THEN 'warning' ELSE 'info' END,
       CASE WHEN i % 100 = 0 THEN 'keys.revoked' WHEN i % 3 = 0 THEN 'keys.rotated' ELSE 'admin.login' END,
       'admin' || (i % 20) || '@example.com', 'ui', '10.0.0.1', '[]', NULL, '{}', '', ''
FROM generate_series(1, 1000000) AS i";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn time(storage: &dyn Storage, name: &str, query: EventQuery) {
    let mut samples = Vec::with_capacity(RUNS);
    let mut rows = 0;
    for _ in 0..RUNS {
        let start = Instant::now();
        rows = storage.list_events(&query).await.expect("query").len();
        samples.push(start.elapsed());
    }
    samples.sort();
    println!(
        "  {name:<44} rows {rows:>3}   median {:>7.2} ms   p95 {:>7.2} ms",
        ms(samples[RUNS / 2]),
        ms(samples[RUNS * 95 / 100])
    );
}

async fn run(label: &str, storage: &dyn Storage) {
    println!("{label}: {ROWS} events");
    let page = |q: EventQuery| EventQuery { limit: 51, ..q };
    time(storage, "newest page", page(EventQuery::default())).await;
    time(
        storage,
        "page 10,000 (cursor at id 500,000)",
        page(EventQuery {
            before_id: Some(500_000),
            ..Default::default()
        }),
    )
    .await;
    time(
        storage,
        "kind = keys.revoked (1 %), newest page",
        page(EventQuery {
            kind: Some("keys.revoked".into()),
            ..Default::default()
        }),
    )
    .await;
    time(
        storage,
        "kind = keys.revoked, cursor at id 500,000",
        page(EventQuery {
            kind: Some("keys.revoked".into()),
            before_id: Some(500_000),
            ..Default::default()
        }),
    )
    .await;
    time(
        storage,
        "level = critical + actor, newest page",
        page(EventQuery {
            level: Some("critical".into()),
            actor: Some("admin0@example.com".into()),
            ..Default::default()
        }),
    )
    .await;
    time(
        storage,
        "actor = admin7@example.com, newest page",
        page(EventQuery {
            actor: Some("admin7@example.com".into()),
            ..Default::default()
        }),
    )
    .await;
    let since = chrono::DateTime::parse_from_rfc3339("2025-06-01T00:00:00Z")
        .expect("time")
        .with_timezone(&chrono::Utc);
    let until = chrono::DateTime::parse_from_rfc3339("2025-06-02T00:00:00Z")
        .expect("time")
        .with_timezone(&chrono::Utc);
    time(
        storage,
        "one day (2,880 rows), newest page",
        page(EventQuery {
            since: Some(since),
            until: Some(until),
            ..Default::default()
        }),
    )
    .await;
    // The second page of that day: a keyset cursor in (at, id), from the id of the
    // 51st event of the first page.
    let first = storage
        .list_events(&page(EventQuery {
            since: Some(since),
            until: Some(until),
            ..Default::default()
        }))
        .await
        .expect("query");
    time(
        storage,
        "one day, page 2 (cursor from page 1)",
        page(EventQuery {
            since: Some(since),
            until: Some(until),
            before_id: first.last().map(|e| e.id),
            ..Default::default()
        }),
    )
    .await;
    // The same day with one filter each: a rare kind, a rare level, one actor of twenty.
    let one_filter = [
        (
            "one day + kind = keys.revoked",
            EventQuery {
                kind: Some("keys.revoked".into()),
                ..Default::default()
            },
        ),
        (
            "one day + level = critical",
            EventQuery {
                level: Some("critical".into()),
                ..Default::default()
            },
        ),
        (
            "one day + actor = admin7@example.com",
            EventQuery {
                actor: Some("admin7@example.com".into()),
                ..Default::default()
            },
        ),
    ];
    for (name, filter) in one_filter {
        let query = EventQuery {
            since: Some(since),
            until: Some(until),
            ..filter
        };
        time(storage, name, page(query)).await;
    }
    time(
        storage,
        "since 2025-06-01 (open-ended), newest page",
        page(EventQuery {
            since: Some(since),
            ..Default::default()
        }),
    )
    .await;
    time(
        storage,
        "until 2025-06-01, page at id 200,000",
        page(EventQuery {
            until: Some(since),
            before_id: Some(200_000),
            ..Default::default()
        }),
    )
    .await;
    time(
        storage,
        "live tail: after the newest id",
        EventQuery {
            after_id: Some(ROWS),
            limit: 200,
            ..Default::default()
        },
    )
    .await;
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");

    let url = DatabaseUrl::parse(&format!(
        "sqlite://{}",
        dir.path().join("events.db").display()
    ))
    .expect("url");
    let sqlite = storage::connect(&url).await.expect("sqlite");
    sqlite.migrate().await.expect("migrate");
    let start = Instant::now();
    let mut conn = sqlx::SqliteConnection::connect(url.as_str())
        .await
        .expect("connect");
    sqlx::query(SEED_SQLITE)
        .execute(&mut conn)
        .await
        .expect("seed");
    sqlx::query("ANALYZE")
        .execute(&mut conn)
        .await
        .expect("analyze");
    drop(conn);
    println!("SQLite seeded in {:.1} s", start.elapsed().as_secs_f64());
    run("SQLite", sqlite.as_ref()).await;
    sqlite.close().await;

    let admin_url = std::env::var("PG_TEST_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("signet_events_bench_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create database");
    let mut pg_url = url::Url::parse(&admin_url).expect("url");
    pg_url.set_path(&name);
    let url = DatabaseUrl::parse(pg_url.as_str()).expect("url");
    let pg = storage::connect(&url).await.expect("postgres");
    pg.migrate().await.expect("migrate");
    let start = Instant::now();
    let mut conn = sqlx::PgConnection::connect(url.as_str())
        .await
        .expect("connect");
    sqlx::query(SEED_POSTGRES)
        .execute(&mut conn)
        .await
        .expect("seed");
    sqlx::query("ANALYZE audit_events")
        .execute(&mut conn)
        .await
        .expect("analyze");
    drop(conn);
    println!(
        "PostgreSQL seeded in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    run("PostgreSQL", pg.as_ref()).await;
    pg.close().await;
    let _ = sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await;
}
