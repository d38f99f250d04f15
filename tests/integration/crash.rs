//! Crash suite: the real `signet serve` is killed with SIGKILL at random points while
//! rotations, revocations and signing run through the API, at least 100 times per
//! backend, with RS256 besides EdDSA so that some kills land during RSA key generation.
//! After every restart it checks invariants 1, 2, 3 and 6 of docs/design.md, that no key was
//! lost and no key's state moved backwards, that `signet audit verify` passes, and that
//! every token issued before a kill verifies exactly while its key is `active` or
//! `rotated`.
//!
//! The run is seeded: `CRASH_SEED=<n>` replays a failure's decisions (the seed is printed
//! first). `CRASH_KILLS=<n>` changes the number of kills (default 100).

use crate::helpers::{Backend, ServeProcess, TestDb, cli_token, run_signet};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ALGS: [&str; 2] = ["EdDSA", "RS256"];
const TOKEN_TTL: u64 = 3600;
/// Tokens checked besides the new ones and those whose key changed, per restart.
const SAMPLE: usize = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_sqlite_survives_random_sigkills() {
    crash_suite(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_postgres_survives_random_sigkills() {
    crash_suite(Backend::Postgres).await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum St {
    Next,
    Active,
    Rotated,
    Expired,
    Revoked,
}

impl St {
    fn parse(s: &str) -> St {
        match s {
            "next" => St::Next,
            "active" => St::Active,
            "rotated" => St::Rotated,
            "expired" => St::Expired,
            "revoked" => St::Revoked,
            other => panic!("unknown key state {other:?}"),
        }
    }

    /// Whether a key seen in `self` may later be seen in `later` (several changes may
    /// lie between two looks).
    fn may_become(self, later: St) -> bool {
        use St::*;
        self == later
            || matches!(
                (self, later),
                (Next, Active | Rotated | Expired | Revoked)
                    | (Active, Rotated | Expired | Revoked)
                    | (Rotated, Expired | Revoked)
            )
    }
}

struct Tracked {
    alg: String,
    /// Every distinct state seen, in order.
    states: Vec<St>,
}

#[derive(Clone)]
struct Issued {
    token: String,
    kid: String,
    exp: i64,
}

/// What the workers of one round share with the test.
#[derive(Default)]
struct Shared {
    /// Rotations and revocations sent and not yet answered.
    in_flight: AtomicUsize,
    rotations_ok: AtomicUsize,
    revocations_ok: AtomicUsize,
    issued: Mutex<Vec<Issued>>,
    errors: Mutex<Vec<String>>,
}

#[derive(Default)]
struct Figures {
    kills: usize,
    kills_during_start: usize,
    kills_with_key_change_in_flight: usize,
    tokens_issued: usize,
    tokens_checked: usize,
    rotations_ok: usize,
    revocations_ok: usize,
}

struct Run {
    env: Vec<(String, String)>,
    log: std::path::PathBuf,
    secret: String,
    http: reqwest::Client,
    keys: BTreeMap<String, Tracked>,
    tokens: Vec<Issued>,
    /// Index into `tokens` of the first token not yet checked.
    checked_upto: usize,
    figures: Figures,
}

fn seed() -> u64 {
    std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
        })
}

async fn crash_suite(backend: Backend) {
    let seed = seed();
    let kills: usize = std::env::var("CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    eprintln!("crash suite {backend:?}: seed {seed} (replay with CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();

    let db = TestDb::new(backend).await;
    let mut env = db.env();
    env.push(("SIGNET_ALGORITHMS".into(), "EdDSA,RS256".into()));
    // Records of revoked keys are kept, so every kid ever seen must stay listed.
    env.push(("SIGNET_RETIRED_KEYS_CAP".into(), "100000".into()));
    let log = db.data_dir.path().join("serve.log");
    if backend == Backend::Postgres {
        let out = run_signet(&env, &["migrate"]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The first start (data directory, KEK file, first keys) runs to completion.
    let first = ServeProcess::start(&env, &[], log_file(&log)).await;
    let secret = cli_token(
        &env,
        "crash",
        &["keys:read", "keys:write", "sign", "audit:read"],
    )
    .await;
    let mut run = Run {
        env,
        log,
        secret,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        keys: BTreeMap::new(),
        tokens: Vec::new(),
        checked_upto: 0,
        figures: Figures::default(),
    };
    run.check(&first.url, &mut rng, false).await;
    let mut server = Some(first);

    for round in 0..kills {
        let url = server.as_ref().map(|s| s.url.clone()).unwrap();
        // Rotations, revocations and signing run until the kill.
        let shared = Arc::new(Shared::default());
        let kids: Vec<(String, St)> = run
            .keys
            .iter()
            .map(|(k, t)| (k.clone(), *t.states.last().unwrap()))
            .collect();
        let mut workers = Vec::new();
        for w in 0..2 {
            workers.push(tokio::spawn(change_keys(
                run.http.clone(),
                url.clone(),
                run.secret.clone(),
                StdRng::seed_from_u64(rng.random()),
                kids.clone(),
                shared.clone(),
                w,
            )));
        }
        workers.push(tokio::spawn(sign_tokens(
            run.http.clone(),
            url.clone(),
            run.secret.clone(),
            StdRng::seed_from_u64(rng.random()),
            shared.clone(),
        )));
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..600))).await;
        if shared.in_flight.load(Ordering::SeqCst) > 0 {
            run.figures.kills_with_key_change_in_flight += 1;
        }
        server.take().unwrap().sigkill().await;
        run.figures.kills += 1;
        for w in workers {
            w.abort();
            let _ = w.await;
        }
        let errors = std::mem::take(&mut *shared.errors.lock().unwrap());
        assert!(
            errors.is_empty(),
            "round {round} (seed {seed}): unexpected answers: {errors:?}\n{}",
            run.log_tail()
        );
        run.figures.rotations_ok += shared.rotations_ok.load(Ordering::SeqCst);
        run.figures.revocations_ok += shared.revocations_ok.load(Ordering::SeqCst);
        let new = std::mem::take(&mut *shared.issued.lock().unwrap());
        run.figures.tokens_issued += new.len();
        run.tokens.extend(new);

        // Now and then, a kill during startup (migrations, bootstrap, first snapshot).
        if rng.random_bool(0.1) {
            let mut child = ServeProcess::spawn(&run.env, &[], log_file(&run.log));
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
            child.start_kill().unwrap();
            child.wait().await.unwrap();
            run.figures.kills += 1;
            run.figures.kills_during_start += 1;
        }

        let next = ServeProcess::start(&run.env, &[], log_file(&run.log)).await;
        let last = round + 1 == kills;
        run.check(&next.url, &mut rng, last).await;
        server = Some(next);
    }
    server.take().unwrap().sigkill().await;

    let f = &run.figures;
    eprintln!(
        "crash suite {backend:?}: seed {seed}: {} kills ({} during startup, {} with a rotation or \
         revocation in flight), {} rotations and {} revocations answered, {} tokens issued, \
         {} token verifications checked, {} keys tracked, in {:.0?}",
        f.kills,
        f.kills_during_start,
        f.kills_with_key_change_in_flight,
        f.rotations_ok,
        f.revocations_ok,
        f.tokens_issued,
        f.tokens_checked,
        run.keys.len(),
        started.elapsed()
    );
    assert!(f.kills >= kills);
}

fn log_file(path: &std::path::Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}

/// Rotates (all, one algorithm, with revocation) and revokes random known keys.
#[allow(clippy::too_many_arguments)]
async fn change_keys(
    http: reqwest::Client,
    url: String,
    secret: String,
    mut rng: StdRng,
    kids: Vec<(String, St)>,
    shared: Arc<Shared>,
    worker: usize,
) {
    let revocable: Vec<&String> = kids
        .iter()
        .filter(|(_, s)| matches!(s, St::Next | St::Active | St::Rotated))
        .map(|(k, _)| k)
        .collect();
    loop {
        let roll = rng.random_range(0..100);
        let (path, body) = if roll < 40 || revocable.is_empty() {
            ("/api/v1/keys/rotate".to_string(), json!({}))
        } else if roll < 60 {
            let alg = ALGS[rng.random_range(0..ALGS.len())];
            ("/api/v1/keys/rotate".to_string(), json!({ "alg": alg }))
        } else if roll < 68 {
            (
                "/api/v1/keys/rotate".to_string(),
                json!({ "revoke": true, "reason": format!("crash drill {worker}") }),
            )
        } else {
            let kid = revocable[rng.random_range(0..revocable.len())];
            (
                format!("/api/v1/keys/{kid}/revoke"),
                json!({ "reason": "crash drill" }),
            )
        };
        let rotation = path.ends_with("/rotate");
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        let res = http
            .post(format!("{url}{path}"))
            .bearer_auth(&secret)
            .json(&body)
            .send()
            .await;
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        let Ok(res) = res else { continue };
        let status = res.status();
        if status == StatusCode::OK {
            let counter = if rotation {
                &shared.rotations_ok
            } else {
                &shared.revocations_ok
            };
            counter.fetch_add(1, Ordering::SeqCst);
        }
        // Refusals of a key already revoked (404 never: the kid exists) or a lost race
        // (503) are fine; anything else is not.
        if !matches!(
            status,
            StatusCode::OK | StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE
        ) {
            let text = res.text().await.unwrap_or_default();
            shared
                .errors
                .lock()
                .unwrap()
                .push(format!("POST {path} {body}: {status} {text}"));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..40))).await;
    }
}

/// Signs tokens with both algorithms; a token counts once its answer arrived whole.
async fn sign_tokens(
    http: reqwest::Client,
    url: String,
    secret: String,
    mut rng: StdRng,
    shared: Arc<Shared>,
) {
    loop {
        let alg = ALGS[rng.random_range(0..ALGS.len())];
        let n: u32 = rng.random();
        let res = http
            .post(format!("{url}/api/v1/sign"))
            .bearer_auth(&secret)
            .json(
                &json!({ "claims": { "sub": format!("crash-{n}") }, "alg": alg, "ttl": TOKEN_TTL }),
            )
            .send()
            .await;
        let Ok(res) = res else { continue };
        let status = res.status();
        let Ok(text) = res.text().await else { continue };
        if status != StatusCode::OK {
            shared
                .errors
                .lock()
                .unwrap()
                .push(format!("POST /sign {alg}: {status} {text}"));
            continue;
        }
        let body: Value = serde_json::from_str(&text).unwrap();
        shared.issued.lock().unwrap().push(Issued {
            token: body["token"].as_str().unwrap().to_string(),
            kid: body["kid"].as_str().unwrap().to_string(),
            exp: chrono::Utc::now().timestamp() + TOKEN_TTL as i64,
        });
        tokio::time::sleep(Duration::from_millis(rng.random_range(10..60))).await;
    }
}

impl Run {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(40);
        format!("server log (last lines):\n{}", lines[from..].join("\n"))
    }

    async fn get(&self, url: &str) -> (StatusCode, Value) {
        let res = self
            .http
            .get(url)
            .bearer_auth(&self.secret)
            .send()
            .await
            .unwrap();
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Every check of one restart. `all` checks every token issued so far, not a sample.
    async fn check(&mut self, url: &str, rng: &mut StdRng, all: bool) {
        // Readiness first: the server must come back whole.
        let mut ready = StatusCode::SERVICE_UNAVAILABLE;
        for _ in 0..50 {
            ready = self
                .http
                .get(format!("{url}/health/ready"))
                .send()
                .await
                .unwrap()
                .status();
            if ready == StatusCode::OK {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            ready,
            StatusCode::OK,
            "not ready after restart\n{}",
            self.log_tail()
        );

        let (status, body) = self.get(&format!("{url}/api/v1/keys")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let listed = body["keys"].as_array().unwrap().clone();
        let by_kid: HashMap<String, &Value> = listed
            .iter()
            .map(|k| (k["kid"].as_str().unwrap().to_string(), k))
            .collect();

        // Invariant 1 (and 3, as far as a reader after a crash can see): exactly one
        // active and one next key per enabled algorithm.
        for alg in ALGS {
            for (state, want) in [("active", 1), ("next", 1)] {
                let n = listed
                    .iter()
                    .filter(|k| k["alg"] == alg && k["state"] == state)
                    .count();
                assert_eq!(n, want, "{alg} has {n} {state} keys: {body}");
            }
        }

        // No key lost, no state backwards.
        for (kid, tracked) in &self.keys {
            let Some(k) = by_kid.get(kid) else {
                panic!("key {kid} ({}) was lost: {body}", tracked.alg);
            };
            let now = St::parse(k["state"].as_str().unwrap());
            let before = *tracked.states.last().unwrap();
            assert!(
                before.may_become(now),
                "key {kid} moved back from {before:?} to {now:?}"
            );
        }
        let mut changed_kids = BTreeSet::new();
        for k in &listed {
            let kid = k["kid"].as_str().unwrap().to_string();
            let now = St::parse(k["state"].as_str().unwrap());
            let tracked = self.keys.entry(kid.clone()).or_insert_with(|| Tracked {
                alg: k["alg"].as_str().unwrap().to_string(),
                states: Vec::new(),
            });
            if tracked.states.last() != Some(&now) {
                tracked.states.push(now);
                changed_kids.insert(kid);
            }
        }

        // Invariant 2: the JWKS is exactly the public halves of next, active and rotated
        // keys (retention is 30 days here, so no rotated key has run out).
        let jwks = self
            .http
            .get(format!("{url}/.well-known/jwks.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(jwks.status(), StatusCode::OK);
        let jwks: Value = jwks.json().await.unwrap();
        let mut published = BTreeMap::new();
        for jwk in jwks["keys"].as_array().unwrap() {
            for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
                assert!(
                    jwk.get(private).is_none(),
                    "private {private} in JWKS: {jwk}"
                );
            }
            let kid = jwk["kid"].as_str().unwrap().to_string();
            assert!(
                published.insert(kid.clone(), jwk.clone()).is_none(),
                "{kid} twice in the JWKS"
            );
        }
        let expected: BTreeMap<String, Value> = listed
            .iter()
            .filter(|k| matches!(k["state"].as_str(), Some("next" | "active" | "rotated")))
            .map(|k| (k["kid"].as_str().unwrap().to_string(), k["jwk"].clone()))
            .collect();
        assert_eq!(
            published.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "JWKS kids differ from next+active+rotated"
        );
        assert_eq!(
            published, expected,
            "JWKS entries differ from the keys' public JWKs"
        );

        // Invariant 6: every state change has its event, naming the kid.
        let events = self.all_events(url).await;
        let mut naming: HashMap<&str, Vec<&str>> = HashMap::new();
        for e in &events {
            let kind = e["kind"].as_str().unwrap();
            if !kind.starts_with("keys.") || kind == "keys.pruned" || kind == "keys.reencrypted" {
                continue;
            }
            let ids: BTreeSet<&str> = e["kids"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            for kid in ids {
                naming.entry(kid).or_default().push(kind);
            }
        }
        for (kid, tracked) in &self.keys {
            let kinds = naming.get(kid.as_str()).cloned().unwrap_or_default();
            let state = *tracked.states.last().unwrap();
            assert!(
                !kinds.is_empty(),
                "key {kid} ({state:?}) is named by no event"
            );
            // One event per state seen at least (its creation is the first).
            assert!(
                kinds.len() >= tracked.states.len(),
                "key {kid} went through {:?} but only {kinds:?} name it",
                tracked.states
            );
            let has = |k: &str| kinds.contains(&k);
            match state {
                St::Revoked => assert!(
                    has("keys.revoked"),
                    "{kid} revoked without an event: {kinds:?}"
                ),
                St::Expired => assert!(
                    has("keys.expired") || has("keys.expired_early"),
                    "{kid} expired without an event: {kinds:?}"
                ),
                // Created, then rotated out: two events at least, one a rotation.
                St::Rotated => assert!(
                    kinds.len() >= 2 && (has("keys.rotated") || has("keys.revoked")),
                    "{kid} rotated without its events: {kinds:?}"
                ),
                St::Next | St::Active => {}
            }
        }

        // The hash chain.
        let out = run_signet(&self.env, &["audit", "verify"]).await;
        assert!(
            out.status.success(),
            "audit verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        // Tokens: the new ones, those whose key changed, and a sample of the rest (all of
        // them on the last restart).
        let mut to_check: BTreeSet<usize> = (self.checked_upto..self.tokens.len()).collect();
        for (i, t) in self.tokens.iter().enumerate() {
            if all || changed_kids.contains(&t.kid) {
                to_check.insert(i);
            }
        }
        if self.checked_upto > 0 {
            for _ in 0..SAMPLE {
                to_check.insert(rng.random_range(0..self.checked_upto));
            }
        }
        self.checked_upto = self.tokens.len();
        let now = chrono::Utc::now().timestamp();
        for i in to_check {
            let t = self.tokens[i].clone();
            let state = self
                .keys
                .get(&t.kid)
                .and_then(|k| k.states.last().copied())
                .unwrap_or_else(|| panic!("token signed by {} which no listing shows", t.kid));
            let res = self
                .http
                .post(format!("{url}/api/v1/verify"))
                .bearer_auth(&self.secret)
                .json(&json!({ "token": t.token }))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            let v: Value = res.json().await.unwrap();
            self.figures.tokens_checked += 1;
            match state {
                St::Active | St::Rotated => {
                    assert_eq!(
                        v["valid"], true,
                        "a token of {state:?} key {} is refused: {v}",
                        t.kid
                    );
                    assert_eq!(v["kid"], t.kid.as_str());
                }
                St::Revoked => assert_eq!(
                    v["valid"], false,
                    "a token of revoked key {} still verifies: {v}",
                    t.kid
                ),
                // Invariant 4: no key leaves the JWKS while a token it signed is valid.
                St::Expired => assert!(
                    t.exp <= now,
                    "key {} expired while its token is valid for {} s more: {v}",
                    t.kid,
                    t.exp - now
                ),
                St::Next => panic!("token signed by a next key {}", t.kid),
            }
        }
    }

    /// Every audit event, newest first, through the API's keyset pages.
    async fn all_events(&self, url: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = match &cursor {
                Some(c) => format!("{url}/api/v1/events?limit=500&cursor={c}"),
                None => format!("{url}/api/v1/events?limit=500"),
            };
            let (status, body) = self.get(&page).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            out.extend(body["events"].as_array().unwrap().iter().cloned());
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        out
    }
}
