//! Automatic rotation and housekeeping with real `signet serve` processes: two instances
//! on one database with a per-second cron, restarts across slots, live schedule changes
//! through the CLI, and the housekeeping passes racing each other. Both backends.

use crate::helpers::{BACKENDS, Backend, TestDb, run_signet, signet_command, spawn_app_with};
use chrono::{DateTime, Utc};
use signet::domain::KeyState;
use signet::domain::audit::kind;
use signet::server::audit::{self, StoredEvent};
use signet::server::config::Config;
use signet::server::scheduler::housekeeping_pass;
use signet::server::storage::{EventQuery, Storage};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// A `signet serve` process.
struct Instance {
    child: Child,
    url: String,
    log: std::path::PathBuf,
}

impl Instance {
    /// Starts `signet serve` and waits until it prints its URL.
    async fn start(env: &[(String, String)], name: &str, dir: &std::path::Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut child = signet_command(env)
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn signet serve");
        let stdout = child.stdout.take().unwrap();
        let line = tokio::task::spawn_blocking(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let read = reader.read_line(&mut line).map(|_| line);
            // Keep draining (the first-admin banner) so the pipe never fills.
            std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
            read
        })
        .await
        .unwrap()
        .unwrap();
        let url = match line.trim().strip_prefix("Signet is running at ") {
            Some(url) => url.to_string(),
            None => panic!(
                "{name} did not start: {line:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        };
        Self { child, url, log }
    }

    async fn metric(&self, name: &str) -> Option<f64> {
        let body = reqwest::get(format!("{}/metrics", self.url))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
    }

    /// SIGTERM, then waits for a clean exit.
    async fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(
            std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            status.success(),
            "exit after SIGTERM: {status:?}\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The environment of a test instance: fast algorithms (the test is about coordination,
/// not RSA key generation) and a given schedule.
fn env_with(db: &TestDb, cron: &str) -> Vec<(String, String)> {
    let mut env = db.env();
    env.push(("SIGNET_ALGORITHMS".into(), "EdDSA,ES256".into()));
    env.push(("SIGNET_ROTATION_CRON".into(), cron.into()));
    env
}

async fn open_storage(db: &TestDb) -> Arc<dyn Storage> {
    open_keyed(&db.config()).await
}

/// Another process's storage on the same database, with the KEK (and so the audit
/// chain's MAC keys) the way every command opens it.
async fn open_keyed(config: &Config) -> Arc<dyn Storage> {
    signet::server::startup::open(config, Default::default())
        .await
        .unwrap()
        .0
}

/// A scheduled rotation as its event records it.
#[derive(Debug, Clone)]
struct Scheduled {
    at: DateTime<Utc>,
    slot: DateTime<Utc>,
    missed: i64,
    instance: String,
}

async fn scheduled_rotations(storage: &dyn Storage) -> Vec<Scheduled> {
    let mut events: Vec<StoredEvent> = Vec::new();
    let mut before_id = None;
    loop {
        let page = storage
            .list_events(&EventQuery {
                kind: Some(kind::KEYS_ROTATED.into()),
                before_id,
                limit: 200,
                ..Default::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        before_id = Some(last.id);
        events.extend(page);
    }
    let mut out: Vec<Scheduled> = events
        .into_iter()
        .filter(|e| e.trigger == "scheduler")
        .map(|e| Scheduled {
            at: e.at,
            slot: DateTime::parse_from_rfc3339(e.details["slot"].as_str().unwrap())
                .unwrap()
                .with_timezone(&Utc),
            missed: e.details["missed_slots"].as_i64().unwrap(),
            instance: e.details["instance"].as_str().unwrap().to_string(),
        })
        .collect();
    out.sort_by_key(|s| s.slot);
    out
}

/// Every slot of a `step`-second schedule from the first rotation to the last is covered
/// exactly once: no slot twice, and each rotation's missed count is exactly the slots
/// since the previous one.
fn assert_each_slot_once(rotations: &[Scheduled], step: i64) {
    let slots: BTreeSet<_> = rotations.iter().map(|r| r.slot).collect();
    assert_eq!(
        slots.len(),
        rotations.len(),
        "a slot rotated twice: {rotations:#?}"
    );
    for pair in rotations.windows(2) {
        let gap = (pair[1].slot - pair[0].slot).num_seconds();
        assert_eq!(gap % step, 0, "{pair:#?}");
        assert_eq!(
            pair[1].missed,
            gap / step,
            "the rotation for {} must account for every slot since {}",
            pair[1].slot,
            pair[0].slot
        );
    }
}

/// How many keys of each algorithm are in `state`, read straight from the database.
async fn count_in_state(storage: &dyn Storage, state: KeyState) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for k in storage.list_keys().await.unwrap() {
        if k.info.state == state {
            *counts.entry(k.info.alg.to_string()).or_default() += 1;
        }
    }
    counts
}

/// The server's state on a test database, without its background tasks: the test is the
/// only one running housekeeping and scheduled rotations.
struct Quiet {
    state: signet::server::AppState,
    db: TestDb,
}

impl Quiet {
    async fn new(db: TestDb, config: Config) -> Self {
        let app = signet::server::Application::build(
            config,
            signet::server::ServeOptions { migrate: true },
        )
        .await
        .unwrap();
        Self {
            state: app.state().clone(),
            db,
        }
    }

    async fn stop(self) {
        self.state.storage.close().await;
    }
}

async fn events_of(storage: &dyn Storage, kind: &str) -> Vec<StoredEvent> {
    storage
        .list_events(&EventQuery {
            kind: Some(kind.into()),
            limit: 200,
            ..Default::default()
        })
        .await
        .unwrap()
}

/// Rewrites the audit log as if events up to `upto_id` had been written `days` ago,
/// re-hashing the whole chain and re-computing its MACs (with the KEK) so it verifies:
/// a history that is really old.
async fn backdate_events(app: &Quiet, upto_id: i64, days: i64) {
    rewrite_events(app, upto_id, days, true).await;
    verify_chain(app.state.storage.as_ref()).await;
}

/// The rewrite of [`backdate_events`]; without `with_kek`, as someone with database
/// access but no KEK would: hashes recomputed, the MACs left as they were.
async fn rewrite_events(app: &Quiet, upto_id: i64, days: i64, with_kek: bool) {
    let (mut events, _, _) = app.state.storage.audit_chain().await.unwrap();
    let keys = audit::AuditKeys::new((*app.state.keyring).clone());
    let at = audit::now() - chrono::Duration::days(days);
    let mut prev = events[0].prev_hash.clone();
    for e in &mut events {
        if e.id <= upto_id {
            e.at = at;
        }
        e.prev_hash = prev.clone();
        e.hash = e.expected_hash();
        prev = e.hash.clone();
        let (kek, mac) = keys.sign(&e.hash);
        let (kek, mac) = if with_kek {
            (kek, mac)
        } else {
            (e.mac_kek.clone().unwrap(), e.mac.clone().unwrap())
        };
        let literal = e.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, false);
        app.db
            .execute(&format!(
                "UPDATE audit_events SET at = '{literal}', prev_hash = '{}', hash = '{}', \
                 mac = '{mac}', mac_kek = '{kek}' WHERE id = {}",
                e.prev_hash, e.hash, e.id
            ))
            .await
            .unwrap();
    }
    app.db
        .execute(&format!(
            "UPDATE audit_head SET last_hash = '{prev}' WHERE id = 1"
        ))
        .await
        .unwrap();
}

async fn verify_chain(storage: &dyn Storage) -> usize {
    let (events, head_id, head_hash) = storage.audit_chain().await.unwrap();
    audit::verify_chain(&events, head_id, &head_hash).unwrap()
}

/// Two instances, a per-second schedule set through the CLI while they run, at least
/// ten seconds: exactly one rotation per slot and never two active keys.
async fn two_instances_rotate_each_slot_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let env = env_with(&db, "0 30 3 1 * * *");
    if backend == Backend::Postgres {
        let out = run_signet(&env, &["migrate"]).await;
        assert!(out.status.success(), "{out:?}");
    }
    let dir = db.data_dir.path().to_path_buf();
    let a = Instance::start(&env, "a", &dir).await;
    let b = Instance::start(&env, "b", &dir).await;
    let storage = open_storage(&db).await;

    // The schedule changes through the CLI, a third process; both servers follow.
    let out = run_signet(&env, &["schedule", "set", "* * * * * * *"]).await;
    assert!(out.status.success(), "{out:?}");
    let changed = Utc::now();
    let per_second_since = storage.get_schedule().await.unwrap().unwrap().cron_since;
    for instance in [&a, &b] {
        let mut next = None;
        for _ in 0..40 {
            next = instance
                .metric("signet_next_rotation_timestamp_seconds")
                .await;
            if next.is_some_and(|t| t <= (Utc::now().timestamp() + 2) as f64) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let next = next.unwrap();
        assert!(
            next <= (Utc::now().timestamp() + 2) as f64,
            "{} still expects the monthly rotation: {next}",
            instance.url
        );
    }

    // At least ten seconds of per-second slots; the database is read all along.
    let mut reads = 0;
    let until = changed + chrono::Duration::seconds(12);
    while Utc::now() < until {
        for (alg, n) in count_in_state(storage.as_ref(), KeyState::Active).await {
            assert_eq!(n, 1, "{alg} has {n} active keys");
        }
        reads += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Back to monthly through the CLI again; once the last slot stops moving, the
    // counters are final.
    let out = run_signet(&env, &["schedule", "set", "0 30 3 1 * * *"]).await;
    assert!(out.status.success(), "{out:?}");
    let mut last = storage.last_slot("rotation").await.unwrap();
    loop {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let now = storage.last_slot("rotation").await.unwrap();
        if now == last {
            break;
        }
        last = now;
    }
    let rotations_a = a
        .metric("signet_rotations_total{trigger=\"scheduler\"}")
        .await
        .unwrap();
    let rotations_b = b
        .metric("signet_rotations_total{trigger=\"scheduler\"}")
        .await
        .unwrap();
    let mut lost = 0.0;
    for instance in [&a, &b] {
        lost += instance
            .metric("signet_scheduler_slots_lost_total")
            .await
            .unwrap();
    }
    a.stop().await;
    b.stop().await;

    let rotations = scheduled_rotations(storage.as_ref()).await;
    assert_each_slot_once(&rotations, 1);
    let (first, last) = (rotations[0].slot, rotations[rotations.len() - 1].slot);
    let slots = (last - first).num_seconds() + 1;
    assert!(
        slots >= 10,
        "only {slots} slots rotated for: {rotations:#?}"
    );
    // The change never rotates at once: the first slot is the first after it took
    // effect, and owes nothing before.
    assert!(rotations[0].slot > per_second_since, "{rotations:#?}");
    assert_eq!(rotations[0].missed, 1, "{rotations:#?}");
    let by_instance = rotations.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.instance.clone()).or_insert(0) += 1;
        m
    });
    assert_eq!(
        rotations_a + rotations_b,
        rotations.len() as f64,
        "the instances' counters add up to the rotations"
    );
    let late: Vec<_> = rotations
        .iter()
        .map(|r| (r.at - r.slot).num_milliseconds())
        .collect();
    eprintln!(
        "{backend:?}: {} rotations for {slots} slots ({:.2} per slot), {} active-key reads, \
         by instance {by_instance:?}, prepared but lost in the transaction {lost}, \
         caught-up slots {}, rotation after its slot: median {} ms, max {} ms",
        rotations.len(),
        rotations.len() as f64 / slots as f64,
        reads,
        rotations.iter().filter(|r| r.missed > 1).count(),
        median(&late),
        late.iter().max().unwrap(),
    );

    for state in [KeyState::Active, KeyState::Next] {
        for (alg, n) in count_in_state(storage.as_ref(), state).await {
            assert_eq!(n, 1, "{alg}: {n} keys {state}");
        }
    }
    let (_, claimed_by) = storage.last_slot("rotation").await.unwrap().unwrap();
    assert!(by_instance.contains_key(&claimed_by));
    verify_chain(storage.as_ref()).await;
    storage.close().await;
}

fn median(values: &[i64]) -> i64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    v[v.len() / 2]
}

#[tokio::test]
async fn two_instances_rotate_each_slot_once_sqlite() {
    two_instances_rotate_each_slot_once(Backend::Sqlite).await;
}

#[tokio::test]
async fn two_instances_rotate_each_slot_once_postgres() {
    two_instances_rotate_each_slot_once(Backend::Postgres).await;
}

/// Waits until the scheduler has rotated for a slot after `after`.
async fn wait_for_rotation_after(storage: &dyn Storage, after: DateTime<Utc>) -> Scheduled {
    for _ in 0..200 {
        if let Some(r) = scheduled_rotations(storage)
            .await
            .into_iter()
            .find(|r| r.slot > after)
        {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no scheduled rotation after {after}");
}

/// An instance down across two slots catches up once when it starts, for the latest;
/// restarting again owes nothing.
async fn a_restart_across_slots_catches_up_once(backend: Backend) {
    const STEP: i64 = 4;
    let db = TestDb::new(backend).await;
    let env = env_with(&db, &format!("*/{STEP} * * * * * *"));
    if backend == Backend::Postgres {
        assert!(run_signet(&env, &["migrate"]).await.status.success());
    }
    let dir = db.data_dir.path().to_path_buf();
    let storage = open_storage(&db).await;

    let a = Instance::start(&env, "a", &dir).await;
    let first = wait_for_rotation_after(storage.as_ref(), DateTime::UNIX_EPOCH).await;
    a.stop().await;
    assert_eq!(first.missed, 1);

    // Down while the next two slots pass.
    let restart = first.slot + chrono::Duration::seconds(2 * STEP + 1);
    tokio::time::sleep((restart - Utc::now()).to_std().unwrap_or_default()).await;
    let started = Utc::now();
    let a = Instance::start(&env, "a-again", &dir).await;
    let caught_up = wait_for_rotation_after(storage.as_ref(), first.slot).await;
    assert!(
        caught_up.missed >= 2,
        "one rotation for the missed slots: {caught_up:?}"
    );
    assert!(
        caught_up.slot <= started,
        "the catch-up is for a slot that passed while down: {caught_up:?}"
    );
    let next_regular = caught_up.slot + chrono::Duration::seconds(STEP);
    assert!(
        caught_up.at < next_regular,
        "caught up at start, not at the next slot: {caught_up:?}"
    );

    // Restart at once: the slot just handled is not handled again.
    a.stop().await;
    let a = Instance::start(&env, "a-third", &dir).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let regular = wait_for_rotation_after(storage.as_ref(), caught_up.slot).await;
    a.stop().await;
    assert_eq!(
        regular.missed,
        (regular.slot - caught_up.slot).num_seconds() / STEP
    );

    let rotations = scheduled_rotations(storage.as_ref()).await;
    assert_each_slot_once(&rotations, STEP);
    assert_eq!(
        rotations.iter().filter(|r| r.missed > 1).count(),
        1,
        "exactly one catch-up: {rotations:#?}"
    );
    verify_chain(storage.as_ref()).await;
    storage.close().await;
}

#[tokio::test]
async fn a_restart_across_slots_catches_up_once_sqlite() {
    a_restart_across_slots_catches_up_once(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_restart_across_slots_catches_up_once_postgres() {
    a_restart_across_slots_catches_up_once(Backend::Postgres).await;
}

/// Two instances that both prepared the rotation for one slot (both passed the cheap
/// look, both generated keys): the claim in the transaction lets exactly one through.
#[tokio::test]
async fn the_claim_in_the_transaction_lets_one_of_two_prepared_rotations_through() {
    use signet::domain::schedule::DueSlot;
    use signet::server::keys::KeyService;
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let mut env = db.env();
        env.push(("SIGNET_ALGORITHMS".into(), "EdDSA,ES256".into()));
        let config = Config::from_sources(None, env).unwrap();
        let app = Quiet::new(db, config.clone()).await;
        let other_storage = open_keyed(&config).await;
        let other = KeyService::new(
            other_storage.clone(),
            app.state.keyring.clone(),
            Arc::new(config.clone()),
        );
        other.reload().await.unwrap();
        for round in 0..5 {
            let due = DueSlot {
                slot: Utc::now() + chrono::Duration::seconds(round),
                missed: 1,
            };
            let (a, b) = tokio::join!(
                app.state.keys.rotate_scheduled(due, "a"),
                other.rotate_scheduled(due, "b"),
            );
            let rotated = [a.unwrap(), b.unwrap()]
                .iter()
                .filter(|p| p.is_some())
                .count();
            assert_eq!(rotated, 1, "{backend:?} round {round}");
            for state in [KeyState::Active, KeyState::Next] {
                let counts = count_in_state(app.state.storage.as_ref(), state).await;
                assert!(counts.values().all(|n| *n == 1), "{counts:?}");
            }
        }
        let lost = app.state.keys.counters.slots_lost() + other.counters.slots_lost();
        // Each round both passed the look before either committed, so the database's
        // claim is what decided, not the look.
        assert!(
            lost >= 1,
            "{backend:?}: the transaction's claim was never exercised"
        );
        let rotations = scheduled_rotations(app.state.storage.as_ref()).await;
        assert_eq!(rotations.len(), 5);
        verify_chain(app.state.storage.as_ref()).await;
        other_storage.close().await;
        app.stop().await;
    }
}

#[tokio::test]
async fn the_schedule_cli_shows_and_refuses_bad_input_without_change() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let env = db.env();
        // `schedule show` only reads: the database must exist (SQLite) and be migrated.
        assert!(run_signet(&env, &["migrate"]).await.status.success());
        let shown = run_signet(&env, &["schedule"]).await;
        assert!(shown.status.success(), "{shown:?}");
        let text = String::from_utf8_lossy(&shown.stdout);
        assert!(text.contains("cron:      0 30 3 1 * * *"), "{text}");
        assert!(text.contains("last scheduled rotation: none yet"), "{text}");
        assert_eq!(text.matches("next:").count(), 5, "{text}");

        for bad in [
            vec!["schedule", "set", "0 30 3 1 * *"],
            vec!["schedule", "set", "0 0 0 30 2 * *"],
            vec!["schedule", "set", "0 0 0 1 1 * 2020"],
            vec!["schedule", "set", "* * * * * * *", "--retention", "10m"],
        ] {
            let out = run_signet(&env, &bad).await;
            assert_eq!(out.status.code(), Some(1), "{bad:?}: {out:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.lines().any(|l| l.starts_with("signet: ")), "{err}");
        }
        let storage = open_storage(&db).await;
        let changes = storage
            .list_events(&EventQuery {
                kind: Some(kind::SCHEDULE_CHANGED.into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(changes.is_empty(), "refused input changed nothing");

        // Seven separate arguments work too.
        let out = run_signet(
            &env,
            &[
                "schedule",
                "set",
                "0",
                "0",
                "4",
                "*",
                "*",
                "Mon",
                "*",
                "--retention",
                "2w",
            ],
        )
        .await;
        assert!(out.status.success(), "{out:?}");
        let changes = storage
            .list_events(&EventQuery {
                kind: Some(kind::SCHEDULE_CHANGED.into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].trigger, "cli");
        assert_eq!(changes[0].details["old"]["cron"], "0 30 3 1 * * *");
        assert_eq!(changes[0].details["new"]["cron"], "0 0 4 * * Mon *");
        assert_eq!(changes[0].details["new"]["retention"], "2w");
        let row = storage.get_schedule().await.unwrap().unwrap();
        assert_eq!(row.cron, "0 0 4 * * Mon *");
        assert_eq!(row.cron_since, row.updated_at);
        storage.close().await;
    }
}

/// A configuration with a small cap on retired key records.
fn capped_config(db: &TestDb, cap: usize) -> Config {
    let mut env = db.env();
    env.push(("SIGNET_RETIRED_KEYS_CAP".into(), cap.to_string()));
    Config::from_sources(None, env).unwrap()
}

#[tokio::test]
async fn housekeeping_prunes_retired_keys_beyond_the_cap_once_from_two_instances() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let config = capped_config(&db, 2);
        let a = Quiet::new(db, config.clone()).await;
        let actor = signet::server::audit::Actor::cli();
        // Each rotate-and-revoke revokes the active and the next key of both algorithms.
        for _ in 0..3 {
            a.state
                .keys
                .rotate(None, true, Some("drill".into()), &actor)
                .await
                .unwrap();
        }
        let revoked_before = count_in_state(a.state.storage.as_ref(), KeyState::Revoked).await;
        assert!(
            revoked_before.values().all(|n| *n == 6),
            "{revoked_before:?}"
        );
        let all_before = a.state.storage.list_keys().await.unwrap();

        // A second instance on the same database; both run housekeeping at once.
        let b_config = capped_config(&a.db, 2);
        let b_storage = open_keyed(&b_config).await;
        let b_keys = signet::server::keys::KeyService::new(
            b_storage.clone(),
            a.state.keyring.clone(),
            Arc::new(b_config.clone()),
        );
        b_keys.reload().await.unwrap();
        let now = Utc::now();
        let (ra, rb) = tokio::join!(
            housekeeping_pass(
                &a.state.keys,
                a.state.storage.as_ref(),
                &a.state.config,
                now
            ),
            housekeeping_pass(&b_keys, b_storage.as_ref(), &b_config, now),
        );
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert_eq!(
            ra.keys_pruned + rb.keys_pruned,
            8,
            "{backend:?}: {ra:?} {rb:?}"
        );

        let after = a.state.storage.list_keys().await.unwrap();
        let revoked = count_in_state(a.state.storage.as_ref(), KeyState::Revoked).await;
        assert!(revoked.values().all(|n| *n == 2), "{revoked:?}");
        // The newest two of each algorithm are the ones kept.
        for alg in a.state.config.algorithms.as_slice() {
            let mut of_alg: Vec<_> = all_before
                .iter()
                .filter(|k| k.info.alg == *alg && k.info.state == KeyState::Revoked)
                .collect();
            of_alg.sort_by_key(|k| (k.info.revoked_at, k.info.kid.to_string()));
            let newest: BTreeSet<_> = of_alg
                .iter()
                .rev()
                .take(2)
                .map(|k| k.info.kid.clone())
                .collect();
            let kept: BTreeSet<_> = after
                .iter()
                .filter(|k| k.info.alg == *alg && k.info.state == KeyState::Revoked)
                .map(|k| k.info.kid.clone())
                .collect();
            assert_eq!(kept, newest);
        }
        // Active and next were not touched; one event names the eight records.
        for state in [KeyState::Active, KeyState::Next] {
            assert!(
                count_in_state(a.state.storage.as_ref(), state)
                    .await
                    .values()
                    .all(|n| *n == 1)
            );
        }
        let pruned = events_of(a.state.storage.as_ref(), kind::KEYS_PRUNED).await;
        let named: usize = pruned.iter().map(|e| e.kids.len()).sum();
        assert_eq!(named, 8);
        let distinct: BTreeSet<_> = pruned.iter().flat_map(|e| e.kids.clone()).collect();
        assert_eq!(distinct.len(), 8, "no record pruned twice");

        // Idempotent: another pass finds nothing.
        let again = housekeeping_pass(
            &a.state.keys,
            a.state.storage.as_ref(),
            &a.state.config,
            now,
        )
        .await
        .unwrap();
        assert_eq!(again.keys_pruned, 0);
        assert_eq!(
            events_of(a.state.storage.as_ref(), kind::KEYS_PRUNED)
                .await
                .len(),
            pruned.len()
        );
        // The running instance reloaded: the UI's key list no longer has them.
        assert_eq!(a.state.keys.snapshot().keys.len(), after.len());
        verify_chain(a.state.storage.as_ref()).await;
        b_storage.close().await;
        a.stop().await;
    }
}

#[tokio::test]
async fn housekeeping_prunes_old_events_and_the_chain_still_verifies() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let config = db.config();
        let app = Quiet::new(db, config).await;
        let actor = signet::server::audit::Actor::cli();
        for _ in 0..3 {
            app.state
                .keys
                .rotate(None, false, None, &actor)
                .await
                .unwrap();
        }
        let (events, _, _) = app.state.storage.audit_chain().await.unwrap();
        assert!(events.len() >= 4);
        let old = events[2].id;
        // The first three events are made 100 days old.
        backdate_events(&app, old, 100).await;

        // Two instances' passes at once delete them once, with one record of it.
        let now = Utc::now();
        let storage_b = open_keyed(&app.state.config).await;
        let (ra, rb) = tokio::join!(
            housekeeping_pass(
                &app.state.keys,
                app.state.storage.as_ref(),
                &app.state.config,
                now
            ),
            housekeeping_pass(&app.state.keys, storage_b.as_ref(), &app.state.config, now),
        );
        assert_eq!(ra.unwrap().events_deleted + rb.unwrap().events_deleted, 3);
        let pruned = events_of(app.state.storage.as_ref(), kind::AUDIT_PRUNED).await;
        assert_eq!(pruned.len(), 1);
        assert_eq!(pruned[0].details["deleted"], 3);
        assert_eq!(pruned[0].details["first_kept_id"], old + 1);
        let (events, _, _) = app.state.storage.audit_chain().await.unwrap();
        assert_eq!(events[0].id, old + 1);
        // The CLI's verification accepts the cut the record names.
        let env = app.db.env();
        let out = run_signet(&env, &["audit", "verify"]).await;
        assert!(out.status.success(), "{out:?}");

        // 100 days from now, everything written so far is older than the retention:
        // what is left is newer than the cut (the pass's own expiry of the rotated keys,
        // dated then) and the record of the deletion, and the chain still verifies.
        let later = now + chrono::Duration::days(100);
        let report = housekeeping_pass(
            &app.state.keys,
            app.state.storage.as_ref(),
            &app.state.config,
            later,
        )
        .await
        .unwrap();
        assert!(
            report.events_deleted >= (events.len() - 1) as u64,
            "{report:?}"
        );
        let cut = later - chrono::Duration::days(90);
        let (left, _, _) = app.state.storage.audit_chain().await.unwrap();
        let record = left.last().unwrap();
        assert!(
            left[..left.len() - 1].iter().all(|e| e.at >= cut),
            "{left:#?}"
        );
        assert_eq!(record.kind, kind::AUDIT_PRUNED);
        assert_eq!(record.details["first_kept_id"], left[0].id);
        verify_chain(app.state.storage.as_ref()).await;

        // Removing the oldest rows by hand is still caught.
        app.state
            .keys
            .rotate(None, false, None, &actor)
            .await
            .unwrap();
        let (first, second) = (left[0].id, left[1].id);
        app.db
            .execute(&format!("DELETE FROM audit_events WHERE id = {first}"))
            .await
            .unwrap();
        let out = run_signet(&env, &["audit", "verify"]).await;
        assert!(!out.status.success(), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&format!("event {second} ")),
            "{out:?}"
        );
        storage_b.close().await;
        app.stop().await;
    }
}

/// A backlog is deleted in batches, each its own transaction and record; the chain
/// verifies after every one, anchored by the latest record.
#[tokio::test]
async fn event_pruning_in_batches_keeps_the_chain_verifiable_after_each() {
    use signet::server::audit::NewEvent;
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let config = db.config();
        let app = Quiet::new(db, config).await;
        let actor = signet::server::audit::Actor::cli();
        for _ in 0..3 {
            app.state
                .keys
                .rotate(None, false, None, &actor)
                .await
                .unwrap();
        }
        let (events, _, _) = app.state.storage.audit_chain().await.unwrap();
        let old = events[events.len() - 2].id;
        backdate_events(&app, old, 200).await;
        let record = NewEvent {
            level: signet::domain::audit::Level::Info,
            kind: kind::AUDIT_PRUNED,
            actor: "scheduler".into(),
            trigger: signet::domain::audit::Trigger::Scheduler,
            source: None,
            kids: Vec::new(),
            reason: None,
            details: serde_json::Value::Null,
        };
        let before = Utc::now() - chrono::Duration::days(90);
        let mut passes = 0;
        let mut deleted = 0;
        loop {
            let pruned = app
                .state
                .storage
                .prune_events(before, 2, &record)
                .await
                .unwrap();
            passes += 1;
            deleted += pruned.deleted;
            assert!(pruned.deleted <= 2);
            verify_chain(app.state.storage.as_ref()).await;
            if !pruned.more {
                break;
            }
        }
        assert_eq!(deleted, old as u64, "{backend:?}");
        assert_eq!(passes, (old as usize).div_ceil(2));
        // Nothing more is due: another call changes nothing and records nothing.
        let records = events_of(app.state.storage.as_ref(), kind::AUDIT_PRUNED)
            .await
            .len();
        assert_eq!(records, passes);
        let again = app
            .state
            .storage
            .prune_events(before, 2, &record)
            .await
            .unwrap();
        assert_eq!(again.deleted, 0);
        assert_eq!(
            events_of(app.state.storage.as_ref(), kind::AUDIT_PRUNED)
                .await
                .len(),
            records
        );
        app.stop().await;
    }
}

/// An installation from before the scheduler (schema 4, a schedule set two months ago)
/// upgrades without a rotation: the old version had no scheduler, so no slot is owed.
#[tokio::test]
async fn upgrading_to_the_scheduler_owes_no_rotation() {
    use sqlx::migrate::Migrator;
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let dir = match backend {
            Backend::Sqlite => "migrations/sqlite",
            Backend::Postgres => "migrations/postgres",
        };
        let mut before = Migrator::new(std::path::Path::new(dir)).await.unwrap();
        before.migrations = before
            .migrations
            .iter()
            .filter(|m| m.version <= 4)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        let set_at = (Utc::now() - chrono::Duration::days(60))
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, false);
        let seed = format!(
            "INSERT INTO schedule (id, cron, retention_secs, updated_at) \
             VALUES (1, '0 30 3 1 * * *', 2592000, '{set_at}')"
        );
        match backend {
            Backend::Sqlite => {
                std::fs::create_dir_all(db.sqlite_file().parent().unwrap()).unwrap();
                let options =
                    <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(&db.url)
                        .unwrap()
                        .create_if_missing(true);
                let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
                before.run(&pool).await.unwrap();
                sqlx::query(&seed).execute(&pool).await.unwrap();
                pool.close().await;
            }
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
                before.run(&pool).await.unwrap();
                sqlx::query(&seed).execute(&pool).await.unwrap();
                pool.close().await;
            }
        }
        let config = db.config();
        let app = spawn_app_with(db, config).await;
        // Two scheduler looks at least.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(
            scheduled_rotations(app.state.storage.as_ref())
                .await
                .is_empty(),
            "{backend:?}: the upgrade rotated"
        );
        let row = app.state.storage.get_schedule().await.unwrap().unwrap();
        assert!(
            row.cron_since > Utc::now() - chrono::Duration::minutes(1),
            "{row:?}"
        );
        assert_eq!(row.cron, "0 30 3 1 * * *");
        app.stop().await;
    }
}

/// Pruning never deletes across a break: re-anchoring the rest would hide the tampering.
#[tokio::test]
async fn pruning_refuses_to_delete_across_a_broken_chain() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let config = db.config();
        let app = Quiet::new(db, config).await;
        let actor = signet::server::audit::Actor::cli();
        for _ in 0..2 {
            app.state
                .keys
                .rotate(None, false, None, &actor)
                .await
                .unwrap();
        }
        backdate_events(&app, 2, 100).await;
        app.db
            .execute("UPDATE audit_events SET reason = 'nothing to see' WHERE id = 2")
            .await
            .unwrap();
        let (before, _, _) = app.state.storage.audit_chain().await.unwrap();
        let result = housekeeping_pass(
            &app.state.keys,
            app.state.storage.as_ref(),
            &app.state.config,
            Utc::now(),
        )
        .await;
        let err = result.expect_err("pruning across an edited event must fail");
        assert!(err.to_string().contains("audit chain is broken"), "{err}");
        let (after, _, _) = app.state.storage.audit_chain().await.unwrap();
        assert_eq!(
            after, before,
            "{backend:?}: nothing deleted, nothing recorded"
        );
        let out = run_signet(&app.db.env(), &["audit", "verify"]).await;
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("event 2 was altered"),
            "{out:?}"
        );
        app.stop().await;
    }
}

/// Pruning checks the MACs of what it deletes, too: old events rewritten with their
/// hashes recomputed, by someone without the KEK, are not deleted and re-anchored.
#[tokio::test]
async fn pruning_refuses_events_rewritten_without_the_kek() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let config = db.config();
        let app = Quiet::new(db, config).await;
        let actor = signet::server::audit::Actor::cli();
        for _ in 0..2 {
            app.state
                .keys
                .rotate(None, false, None, &actor)
                .await
                .unwrap();
        }
        rewrite_events(&app, 2, 100, false).await;
        let (before, _, _) = app.state.storage.audit_chain().await.unwrap();
        let result = housekeeping_pass(
            &app.state.keys,
            app.state.storage.as_ref(),
            &app.state.config,
            Utc::now(),
        )
        .await;
        let err = result.expect_err("pruning events with bad MACs must fail");
        let message = err.to_string();
        assert!(message.contains("audit chain is broken"), "{message}");
        assert!(message.contains("MAC does not match"), "{message}");
        let (after, _, _) = app.state.storage.audit_chain().await.unwrap();
        assert_eq!(
            after, before,
            "{backend:?}: nothing deleted, nothing recorded"
        );
    }
}
