//! The key service: the one business path for every lifecycle operation.
//!
//! Server functions, REST handlers, the CLI and housekeeping all call these methods. Each
//! operation asks the domain planner what changes, generates any fresh keys off the async
//! threads, seals them, and hands the storage one [`KeyChange`] to apply in a single
//! transaction with its audit events. When another writer got there first, the operation
//! re-reads the keys and plans again.
//!
//! The service also keeps the [`KeySnapshot`] every request reads, and replaces it when
//! the stored keys change.

use super::pool::SealedKey;
use super::{Counters, KeyError, KeyPool, KeySnapshot, SLOT_ROTATION, Schedule, ScheduleError};
use crate::domain::audit::{Level, Trigger, kind};
use crate::domain::lifecycle::{self, PlanError, Policy};
use crate::domain::schedule::DueSlot;
use crate::domain::{Algorithm, CronSchedule, KeyInfo, KeyState, Kid, Plan, Retention};
use crate::server::audit::{self, Actor, NewEvent};
use crate::server::config::{Config, KeyBackend};
use crate::server::crypto::kek::Keyring;
use crate::server::crypto::pkcs11::Token;
use crate::server::crypto::{self, CryptoError, Signer};
use crate::server::keys::jwt;
use crate::server::storage::{
    KeyChange, NewKey, Resealed, ScheduleRow, SlotClaim, Storage, StorageError, StoredKey,
};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

/// How many times an operation re-plans after losing a race before giving up.
const MAX_ATTEMPTS: usize = 5;

/// When a lifecycle operation plans and under which slot claim: by default now, with
/// none.
#[derive(Debug, Clone, Default)]
struct Run {
    /// The time to plan at, for housekeeping that expires keys as of one instant.
    at: Option<DateTime<Utc>>,
    /// The scheduled slot the change must claim in its transaction.
    claim: Option<SlotClaim>,
}

/// How long the in-memory keys may lag behind the database before the instance reports
/// itself not ready (the watcher normally catches up within half a second).
pub const MAX_LAG: std::time::Duration = std::time::Duration::from_secs(3);

/// The newest key version seen in the database while the snapshot was older, and since
/// when: an instance that cannot load the keys it knows changed must say so.
#[derive(Debug, Clone, Copy)]
struct Lag {
    version: i64,
    since: std::time::Instant,
}

pub struct KeyService {
    storage: Arc<dyn Storage>,
    keyring: Arc<Keyring>,
    config: Arc<Config>,
    /// `iss` of every token, computed once from `public_url`.
    issuer: Arc<str>,
    snapshot: RwLock<Arc<KeySnapshot>>,
    schedule: RwLock<Schedule>,
    /// The latest-`exp` value written to the database per key. Each write records a step
    /// ([`EXP_RECORD_STEP_SECS`]) beyond the token's `exp`, so steady signing writes about
    /// once a minute per key instead of once per token.
    recorded_exp: std::sync::Mutex<HashMap<Kid, DateTime<Utc>>>,
    /// The next scheduled rotation, cached: the JWKS handler needs it on every request and
    /// walking the cron expression each time would cost more than serving the bytes.
    next_rotation: RwLock<Option<DateTime<Utc>>>,
    /// Set while the database holds a newer key version than the snapshot.
    lag: std::sync::Mutex<Option<Lag>>,
    /// Keys generated ahead of need (`serve` only; see [`KeyService::start_pool`]).
    pool: OnceLock<Arc<KeyPool>>,
    /// The PKCS#11 token, when one is configured (`pkcs11_module`).
    token: Option<Arc<Token>>,
    /// What this process rotated and revoked, for `/metrics`.
    pub counters: Counters,
}

/// How many keys a plan revokes.
fn revoked_count(plan: &Plan) -> usize {
    plan.transitions
        .iter()
        .filter(|t| t.to == KeyState::Revoked && t.from != t.to)
        .count()
}

/// Granularity of the per-key latest-`exp` record: at most one write a minute per key.
const EXP_RECORD_STEP_SECS: i64 = 60;

impl KeyService {
    pub fn new(storage: Arc<dyn Storage>, keyring: Arc<Keyring>, config: Arc<Config>) -> Self {
        Self {
            storage,
            keyring,
            snapshot: RwLock::new(Arc::new(KeySnapshot::empty())),
            schedule: RwLock::new(Schedule {
                cron: config.rotation_cron.clone(),
                retention: config.retention,
                updated_at: None,
                cron_since: None,
            }),
            recorded_exp: std::sync::Mutex::new(HashMap::new()),
            next_rotation: RwLock::new(None),
            lag: std::sync::Mutex::new(None),
            counters: Default::default(),
            pool: OnceLock::new(),
            token: None,
            issuer: config.issuer().into(),
            config,
        }
    }

    /// Uses `token` for keys on a PKCS#11 token: to generate them (with `key_backend =
    /// "pkcs11"`), sign with them and destroy them.
    pub fn with_token(mut self, token: Option<Arc<Token>>) -> Self {
        self.token = token;
        self
    }

    /// The configured token, if any.
    pub fn token(&self) -> Option<&Arc<Token>> {
        self.token.as_ref()
    }

    /// Signs `claims` with the active key of `alg` (default: the first enabled algorithm)
    /// for `ttl` seconds (default: five minutes, or the maximum if shorter).
    pub async fn sign(
        &self,
        claims: serde_json::Map<String, serde_json::Value>,
        alg: Option<Algorithm>,
        ttl: Option<u64>,
    ) -> Result<jwt::Signed, jwt::SignError> {
        let alg = alg.unwrap_or(self.enabled()[0]);
        if !self.enabled().contains(&alg) {
            return Err(jwt::SignError::NotEnabled(alg));
        }
        let max = self.config.max_token_ttl.as_secs();
        let ttl = ttl.unwrap_or(max.min(300));
        if ttl == 0 {
            return Err(jwt::SignError::TtlZero);
        }
        if ttl > max {
            return Err(jwt::SignError::TtlTooLong { ttl, max });
        }
        let snapshot = self.snapshot();
        if let Some(lag) = self.lag_behind() {
            // A newer key state exists that this instance could not load: the key it holds
            // may have been rotated or revoked meanwhile.
            return Err(jwt::SignError::Unavailable(format!(
                "the keys changed in the database {} s ago and this instance could not load \
                 them yet; try again",
                lag.as_secs()
            )));
        }
        if !snapshot.signers.contains_key(&alg)
            && let Some(why) = snapshot.unavailable.get(&alg)
        {
            return Err(jwt::SignError::Unavailable(why.clone()));
        }
        let now = Utc::now();
        let slow = snapshot
            .signers
            .get(&alg)
            .is_some_and(|s| s.signer.is_slow());
        let signed = if slow {
            // A signature with a large RSA key takes a millisecond or more: keep it off the
            // async threads. Faster ones run here, as the handoff would cost about as much.
            // Signatures on a token wait here for one of its sessions, so the blocking pool
            // never holds more threads than the token has sessions.
            let token = match snapshot.signers.get(&alg).map(|s| &s.signer) {
                Some(Signer::Token { token, .. }) => Some(token.clone()),
                _ => None,
            };
            let _session = match &token {
                Some(token) => Some(token.permits().acquire().await),
                None => None,
            };
            let issuer = self.issuer.clone();
            tokio::task::spawn_blocking(move || {
                jwt::sign(&snapshot, &issuer, claims, alg, ttl, now)
            })
            .await
            .map_err(|_| jwt::SignError::Crypto(CryptoError::Sign))??
        } else {
            jwt::sign(&snapshot, &self.issuer, claims, alg, ttl, now)?
        };
        self.note_token_exp(&signed.kid, signed.exp).await;
        Ok(signed)
    }

    /// Keeps the database's latest-`exp` per key close to the truth (invariant 4 of
    /// docs/design.md then holds even if retention is shortened while tokens are out).
    async fn note_token_exp(&self, kid: &Kid, exp: DateTime<Utc>) {
        let due = {
            let Ok(mut seen) = self.recorded_exp.lock() else {
                return;
            };
            match seen.get(kid) {
                // Already covered by what the database holds.
                Some(recorded) if exp <= *recorded => false,
                _ => {
                    seen.insert(
                        kid.clone(),
                        exp + chrono::Duration::seconds(EXP_RECORD_STEP_SECS),
                    );
                    true
                }
            }
        };
        if due {
            // Recorded a step ahead, so tokens signed in the next minute are covered too.
            let ahead = exp + chrono::Duration::seconds(EXP_RECORD_STEP_SECS);
            if let Err(e) = self.storage.record_token_exp(kid, ahead).await {
                tracing::warn!(error = %e, %kid, "cannot record token expiry");
            }
        }
    }

    pub fn policy(&self) -> Policy {
        Policy::new(self.schedule().retention, self.config.max_token_ttl)
    }

    /// The next scheduled rotation after now (recomputed once the cached one has passed).
    pub fn next_rotation(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if let Ok(cached) = self.next_rotation.read()
            && let Some(t) = *cached
            && t > now
        {
            return Some(t);
        }
        let next = self.schedule().cron.next_after(now);
        if let Ok(mut slot) = self.next_rotation.write() {
            *slot = next;
        }
        next
    }

    pub fn schedule(&self) -> Schedule {
        self.schedule
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Reads the stored schedule, seeding it from the configuration on first start.
    pub async fn load_schedule(&self) -> Result<Schedule, ScheduleError> {
        let stored = match self.storage.get_schedule().await? {
            Some(row) => row,
            None => {
                let now = audit::now();
                let row = ScheduleRow {
                    cron: self.config.rotation_cron.to_string(),
                    retention_secs: self.config.retention.as_secs() as i64,
                    updated_at: now,
                    cron_since: now,
                };
                self.storage.put_schedule(&row, None).await?;
                self.storage.get_schedule().await?.unwrap_or(row)
            }
        };
        let schedule = Schedule::from_row(&stored)?;
        if let Ok(mut slot) = self.schedule.write() {
            if *slot != schedule
                && let Ok(mut next) = self.next_rotation.write()
            {
                *next = None;
            }
            *slot = schedule.clone();
        }
        Ok(schedule)
    }

    /// The latest slot the scheduler rotated for, and the instance that did it.
    pub async fn last_scheduled(&self) -> Result<Option<(DateTime<Utc>, String)>, StorageError> {
        self.storage.last_slot(SLOT_ROTATION).await
    }

    /// Validates and stores a new schedule, with a `schedule.changed` event.
    pub async fn set_schedule(
        &self,
        cron: &str,
        retention: Option<&str>,
        actor: &Actor,
    ) -> Result<Schedule, ScheduleError> {
        let old = self.load_schedule().await?;
        let cron = CronSchedule::parse(cron)?;
        let retention = match retention {
            Some(r) => Retention::parse(r)?,
            None => old.retention,
        };
        if retention <= self.config.max_token_ttl {
            return Err(ScheduleError::TooShort {
                retention,
                max_ttl: self.config.max_token_ttl,
            });
        }
        let now = audit::now();
        let ev = event(
            Level::Notice,
            kind::SCHEDULE_CHANGED,
            actor,
            Vec::new(),
            None,
            serde_json::json!({
                "old": { "cron": old.cron.as_str(), "retention": old.retention.to_string() },
                "new": { "cron": cron.as_str(), "retention": retention.to_string() },
            }),
        );
        let row = ScheduleRow {
            cron: cron.to_string(),
            retention_secs: retention.as_secs() as i64,
            updated_at: now,
            // A new expression owes nothing for slots before it; a retention change
            // leaves the expression's start alone.
            cron_since: match old.cron_since {
                Some(since) if old.cron.as_str() == cron.as_str() => since,
                _ => now,
            },
        };
        self.storage.put_schedule(&row, Some(&ev)).await?;
        self.load_schedule().await
    }

    pub fn enabled(&self) -> &[Algorithm] {
        self.config.algorithms.as_slice()
    }

    /// The current in-memory view. Cheap: clones an `Arc`.
    pub fn snapshot(&self) -> Arc<KeySnapshot> {
        self.snapshot
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Gives every enabled algorithm its active and next key (first start, or a newly
    /// enabled algorithm). Safe to run from several instances at once.
    pub async fn bootstrap(&self, actor: &Actor) -> Result<usize, KeyError> {
        self.load_schedule().await.map_err(|e| match e {
            ScheduleError::Storage(e) => KeyError::Storage(e),
            other => KeyError::Storage(StorageError::Corrupt(format!("stored schedule: {other}"))),
        })?;
        let enabled = self.enabled().to_vec();
        let created = self
            .execute(
                Run::default(),
                |keys, _| Ok(lifecycle::plan_bootstrap(keys, &enabled)),
                |plan, kids| {
                    vec![event(
                        Level::Info,
                        kind::KEYS_CREATED,
                        actor,
                        kids,
                        None,
                        serde_json::json!({ "algorithms": enabled_names(&plan.generate) }),
                    )]
                },
            )
            .await?;
        self.reload().await?;
        Ok(created.map_or(0, |p| p.generate.len()))
    }

    /// Rotates one algorithm, or all enabled ones. With `revoke`, the old active and next
    /// keys are revoked instead of retired (suspected compromise).
    pub async fn rotate(
        &self,
        alg: Option<Algorithm>,
        revoke: bool,
        reason: Option<String>,
        actor: &Actor,
    ) -> Result<Plan, KeyError> {
        let algs = match alg {
            Some(a) if !self.enabled().contains(&a) => {
                return Err(PlanError::NotEnabled(a).into());
            }
            Some(a) => vec![a],
            None => self.enabled().to_vec(),
        };
        let policy = self.policy();
        let plan = self
            .execute(
                Run::default(),
                |keys, now| {
                    let mut plan = Plan::default();
                    for &a in &algs {
                        let p = if revoke {
                            lifecycle::plan_rotate_and_revoke(keys, a)?
                        } else {
                            lifecycle::plan_rotate(keys, a, now, policy)?
                        };
                        plan.merge(p);
                    }
                    Ok(plan)
                },
                |plan, kids| {
                    let mut events = Vec::new();
                    if revoke {
                        events.push(event(
                            Level::Critical,
                            kind::KEYS_REVOKED,
                            actor,
                            kids,
                            reason.clone(),
                            serde_json::json!({ "operation": "rotate_and_revoke", "algorithms": alg_names(&algs) }),
                        ));
                    } else {
                        events.push(event(
                            self.config.rotation_event_level,
                            kind::KEYS_ROTATED,
                            actor,
                            kids,
                            reason.clone(),
                            serde_json::json!({ "algorithms": alg_names(&algs) }),
                        ));
                    }
                    events.extend(early_expiry_events(plan, actor));
                    events
                },
            )
            .await?;
        self.reload_after_change().await;
        let plan = plan.unwrap_or_default();
        self.counters.rotated(actor.trigger);
        self.counters.revoked(revoked_count(&plan));
        Ok(plan)
    }

    /// The scheduled rotation of every enabled algorithm for `due`, claiming its slot in
    /// the same transaction. `Ok(None)` when the slot was already handled: by another
    /// instance, or by this one before a restart.
    pub async fn rotate_scheduled(
        &self,
        due: DueSlot,
        instance: &str,
    ) -> Result<Option<Plan>, KeyError> {
        // A cheap look first, so instances that lost the race do not generate keys.
        if let Some((last, _)) = self.storage.last_slot(SLOT_ROTATION).await?
            && last >= due.slot
        {
            return Ok(None);
        }
        let actor = Actor::scheduler();
        let algs = self.enabled().to_vec();
        let policy = self.policy();
        let claim = SlotClaim {
            job: SLOT_ROTATION,
            slot: due.slot,
            by: instance.to_string(),
        };
        let slot = due.slot.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let result = self
            .execute(
                Run {
                    at: None,
                    claim: Some(claim),
                },
                |keys, now| {
                    let mut plan = Plan::default();
                    for &a in &algs {
                        let p = lifecycle::plan_rotate(keys, a, now, policy)?;
                        plan.merge(p);
                    }
                    Ok(plan)
                },
                |plan, kids| {
                    let mut events = vec![event(
                        self.config.rotation_event_level,
                        kind::KEYS_ROTATED,
                        &actor,
                        kids,
                        None,
                        serde_json::json!({
                            "algorithms": alg_names(&algs),
                            "slot": slot,
                            "missed_slots": due.missed,
                            "instance": instance,
                        }),
                    )];
                    events.extend(early_expiry_events(plan, &actor));
                    events
                },
            )
            .await;
        match result {
            Ok(Some(plan)) => {
                self.reload_after_change().await;
                self.counters.rotated(Trigger::Scheduler);
                Ok(Some(plan))
            }
            Ok(None) => Ok(None),
            Err(KeyError::SlotTaken) => {
                self.counters.slot_lost();
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Housekeeping: deletes the records of revoked and expired keys beyond the cap.
    /// Idempotent; any instance may run it at any time.
    pub async fn prune_retired(&self) -> Result<usize, KeyError> {
        let ev = event(
            Level::Info,
            kind::KEYS_PRUNED,
            &Actor::scheduler(),
            Vec::new(),
            Some(format!(
                "more than {} revoked or expired key records per algorithm",
                self.config.retired_keys_cap
            )),
            serde_json::json!({ "keep": self.config.retired_keys_cap }),
        );
        let pruned = self
            .storage
            .prune_retired_keys(self.config.retired_keys_cap, &ev)
            .await?;
        if !pruned.is_empty() {
            self.reload_after_change().await;
        }
        Ok(pruned.len())
    }

    /// Revokes one key. Revoking the active key promotes the next one in the same
    /// transaction.
    pub async fn revoke(&self, kid: &Kid, reason: String, actor: &Actor) -> Result<Plan, KeyError> {
        let policy = self.policy();
        let plan = self
            .execute(
                Run::default(),
                |keys, now| Ok(lifecycle::plan_revoke(keys, kid, now, policy)?),
                |_, kids| {
                    vec![event(
                        Level::Warning,
                        kind::KEYS_REVOKED,
                        actor,
                        kids,
                        Some(reason.clone()),
                        serde_json::json!({ "operation": "revoke", "kid": kid.as_str() }),
                    )]
                },
            )
            .await?;
        self.reload_after_change().await;
        let plan = plan.unwrap_or_default();
        self.counters.revoked(revoked_count(&plan));
        Ok(plan)
    }

    /// Housekeeping: retires rotated keys whose publication has ended, destroying their
    /// private halves. Idempotent; any instance may run it at any time.
    pub async fn expire(&self, now: DateTime<Utc>) -> Result<usize, KeyError> {
        let actor = Actor::scheduler();
        let policy = self.policy();
        let plan = self
            .execute(
                Run {
                    at: Some(now),
                    claim: None,
                },
                |keys, now| {
                    let mut plan = lifecycle::plan_expiry(keys, now, policy);
                    // Still over the cap is no news here; rotations report it.
                    plan.over_cap.clear();
                    Ok(plan)
                },
                |plan, _| {
                    let ended: Vec<String> = plan
                        .transitions
                        .iter()
                        .filter(|t| !t.early)
                        .map(|t| t.kid.to_string())
                        .collect();
                    let mut events = Vec::new();
                    if !ended.is_empty() {
                        events.push(event(
                            Level::Info,
                            kind::KEYS_EXPIRED,
                            &actor,
                            ended,
                            None,
                            serde_json::json!({}),
                        ));
                    }
                    events.extend(early_expiry_events(plan, &actor));
                    events
                },
            )
            .await?;
        self.reload_if_changed().await?;
        Ok(plan.map_or(0, |p| p.transitions.len()))
    }

    /// Re-wraps every stored private key under the active KEK. Returns how many changed.
    pub async fn reencrypt(&self, actor: &Actor) -> Result<usize, KeyError> {
        let active = self.keyring.active();
        let mut resealed = Vec::new();
        for key in self.storage.list_keys().await? {
            let (Some(sealed), Some(kek_id)) = (&key.sealed, &key.kek_id) else {
                continue;
            };
            if kek_id == active.id() {
                continue;
            }
            let private = self.open(&key.info.kid, kek_id, sealed)?;
            resealed.push(Resealed {
                kid: key.info.kid.clone(),
                old_kek_id: kek_id.clone(),
                sealed: crypto::seal(active.key_bytes(), &key.info.kid, &private)?,
                kek_id: active.id().to_string(),
            });
        }
        if resealed.is_empty() {
            return Ok(0);
        }
        let ev = event(
            Level::Notice,
            kind::KEYS_REENCRYPTED,
            actor,
            resealed.iter().map(|r| r.kid.to_string()).collect(),
            None,
            serde_json::json!({ "kek": active.id() }),
        );
        self.storage.reseal_keys(&resealed, &ev).await?;
        Ok(resealed.len())
    }

    /// Rebuilds the in-memory snapshot from the database.
    pub async fn reload(&self) -> Result<(), KeyError> {
        let version = self.storage.key_version().await?;
        let keys = self.storage.list_keys().await?;
        let snapshot =
            KeySnapshot::build(version, keys, &self.snapshot(), |k| self.open_signer(k))?;
        for problem in snapshot
            .problems(self.enabled())
            .iter()
            .chain(&snapshot.damaged)
        {
            tracing::warn!(version, "keys loaded with a problem: {problem}");
        }
        if let Ok(mut slot) = self.snapshot.write() {
            *slot = Arc::new(snapshot);
        }
        if let Ok(mut lag) = self.lag.lock()
            && lag.is_some_and(|l| l.version <= version)
        {
            *lag = None;
        }
        Ok(())
    }

    /// Reloads after this process committed a change. The change stands even if the
    /// reload fails (the watcher retries within half a second), so a failure here is logged
    /// rather than reported: a caller told "error" would retry and rotate twice.
    async fn reload_after_change(&self) {
        if let Err(e) = self.reload().await {
            tracing::warn!(error = %e, "keys changed, but reloading them failed; the watcher retries");
        }
    }

    /// Reloads only when another writer (this process, another instance, the CLI) changed
    /// the keys. Returns whether it reloaded. A failed reload of a version known to be
    /// newer leaves this instance lagging: it stops signing and, after [`MAX_LAG`], reports
    /// itself not ready.
    pub async fn reload_if_changed(&self) -> Result<bool, KeyError> {
        let version = self.storage.key_version().await?;
        if version == self.snapshot().version {
            return Ok(false);
        }
        if let Err(e) = self.reload().await {
            if let Ok(mut lag) = self.lag.lock() {
                let since = lag.map_or_else(std::time::Instant::now, |l| l.since);
                *lag = Some(Lag { version, since });
            }
            return Err(e);
        }
        Ok(true)
    }

    /// How long the snapshot has been behind a key version this instance saw in the
    /// database but could not load; `None` when it is current as far as it knows.
    pub fn lag_behind(&self) -> Option<std::time::Duration> {
        self.lag
            .lock()
            .ok()
            .and_then(|lag| lag.map(|l| l.since.elapsed()))
    }

    /// Opens and parses the private half of an active key; for a key on a token, checks
    /// that this instance has that token.
    fn open_signer(&self, key: &StoredKey) -> Result<Signer, KeyError> {
        if let Some(label) = &key.hsm_token {
            let id = key.hsm_object.clone().ok_or_else(|| {
                StorageError::Corrupt(format!("active key {} names no token object", key.info.kid))
            })?;
            return match &self.token {
                Some(token) if token.label() == label => Ok(Signer::Token {
                    token: token.clone(),
                    alg: key.info.alg,
                    id,
                }),
                Some(token) => Err(KeyError::TokenMissing(format!(
                    "key {} lives on token '{label}', but this instance has token '{}' \
                     (pkcs11_token)",
                    key.info.kid,
                    token.label()
                ))),
                None => Err(KeyError::TokenMissing(format!(
                    "key {} lives on token '{label}', but no PKCS#11 token is configured \
                     (pkcs11_module)",
                    key.info.kid
                ))),
            };
        }
        let (Some(sealed), Some(kek_id)) = (&key.sealed, &key.kek_id) else {
            return Err(StorageError::Corrupt(format!(
                "active key {} has no private key",
                key.info.kid
            ))
            .into());
        };
        let private = self.open(&key.info.kid, kek_id, sealed)?;
        Ok(Signer::parse(key.info.alg, &private)?)
    }

    fn open(&self, kid: &Kid, kek_id: &str, sealed: &[u8]) -> Result<crypto::PrivateKey, KeyError> {
        let kek = self
            .keyring
            .get(kek_id)
            .ok_or_else(|| KeyError::MissingKek(kid.clone(), kek_id.to_string()))?;
        Ok(crypto::open(kek.key_bytes(), kid, sealed)?)
    }

    /// Plans against the stored keys, generates and seals fresh keys, and applies the
    /// change in one transaction (with the slot claim of `run`, if any); on a lost race,
    /// starts over. `None` when the plan was empty (nothing to do).
    async fn execute<P, E>(&self, run: Run, plan: P, events: E) -> Result<Option<Plan>, KeyError>
    where
        P: Fn(&[KeyInfo], DateTime<Utc>) -> Result<Plan, KeyError>,
        E: Fn(&Plan, Vec<String>) -> Vec<NewEvent>,
    {
        for _ in 0..MAX_ATTEMPTS {
            let now = run.at.unwrap_or_else(audit::now);
            let stored = self.storage.list_keys().await?;
            let keys: Vec<KeyInfo> = stored.iter().map(|k| k.info.clone()).collect();
            let plan = plan(&keys, now)?;
            if plan.is_empty() {
                return Ok(None);
            }
            let new_keys = self.generate(&plan.generate).await?;
            #[cfg(debug_assertions)]
            fault_after_token_generation(&new_keys).await;
            let kids = plan
                .transitions
                .iter()
                .map(|t| t.kid.to_string())
                .chain(new_keys.iter().map(|k| k.kid.to_string()))
                .collect();
            let events = events(&plan, kids);
            let change = KeyChange {
                now,
                transitions: plan.transitions.clone(),
                reason: events.first().and_then(|e| e.reason.clone()),
                events,
                new_keys,
                claim: run.claim.clone(),
            };
            let applied = self.storage.apply_key_change(&change).await;
            if applied.is_ok() {
                // The rows no longer name the token objects of keys that just ended.
                let ended = plan
                    .transitions
                    .iter()
                    .filter(|t| matches!(t.to, KeyState::Revoked | KeyState::Expired))
                    .filter_map(|t| stored.iter().find(|k| k.info.kid == t.kid))
                    .filter_map(|k| k.hsm_object.clone());
                self.destroy_objects(ended.collect()).await;
            } else {
                self.discard_generated(&applied, &change.new_keys).await;
            }
            match applied {
                Ok(()) => {
                    tracing::info!(
                        transitions = change.transitions.len(),
                        created = change.new_keys.len(),
                        "keys changed"
                    );
                    return Ok(Some(plan_with_kids(plan, &change.new_keys)));
                }
                Err(StorageError::Conflict) => {
                    tracing::debug!("key change lost a race; planning again");
                    continue;
                }
                Err(StorageError::SlotTaken) => return Err(KeyError::SlotTaken),
                Err(e) => return Err(e.into()),
            }
        }
        Err(KeyError::Busy)
    }

    /// Generates and seals keys: taken from the pool where it has them, otherwise on
    /// blocking threads at normal priority (RSA generation takes long; a revocation or a
    /// first start must not wait for idle CPU).
    async fn generate(&self, wanted: &[(Algorithm, KeyState)]) -> Result<Vec<NewKey>, KeyError> {
        if self.config.key_backend == KeyBackend::Pkcs11 {
            return self.generate_on_token(wanted).await;
        }
        let mut out = Vec::with_capacity(wanted.len());
        let kek = self.keyring.active().clone();
        for &(alg, state) in wanted {
            if let Some(key) = self.pool.get().and_then(|p| p.take(alg, kek.id())) {
                out.push(key.into_new_key(state));
                continue;
            }
            let bits = self.config.rsa_bits;
            let kek = kek.clone();
            let key = tokio::task::spawn_blocking(move || SealedKey::generate(alg, bits, &kek))
                .await
                .map_err(|_| CryptoError::Generate(alg))??;
            out.push(key.into_new_key(state));
        }
        Ok(out)
    }

    /// Generates keys on the token (on blocking threads: a module call may wait on a
    /// device). If one fails, the ones already made are destroyed again.
    async fn generate_on_token(
        &self,
        wanted: &[(Algorithm, KeyState)],
    ) -> Result<Vec<NewKey>, KeyError> {
        let token = self.token.clone().ok_or_else(|| {
            KeyError::TokenMissing("key_backend is pkcs11, but no token is open".into())
        })?;
        let mut out: Vec<NewKey> = Vec::with_capacity(wanted.len());
        for &(alg, state) in wanted {
            let bits = self.config.rsa_bits;
            let t = token.clone();
            let made = tokio::task::spawn_blocking(move || t.generate(alg, bits))
                .await
                .map_err(|_| CryptoError::Generate(alg))
                .and_then(|r| r);
            let key = match made {
                Ok(key) => key,
                Err(e) => {
                    self.destroy_objects(out.iter().filter_map(|k| k.hsm_object.clone()).collect())
                        .await;
                    return Err(e.into());
                }
            };
            let public_jwk = serde_json::to_string(&key.jwk)
                .map_err(|e| StorageError::Corrupt(e.to_string()))?;
            let kid = key.jwk.thumbprint();
            out.push(NewKey {
                kid,
                alg,
                state,
                public_jwk,
                sealed: None,
                kek_id: None,
                hsm_token: Some(token.label().to_string()),
                hsm_object: Some(key.id),
            });
        }
        Ok(out)
    }

    /// After a change did not apply: destroys the token objects generated for it that no
    /// row names. A conflict or a taken slot rolled back for certain; after any other
    /// error the commit may still have happened (a connection lost during COMMIT), so the
    /// rows are read again first, and if they cannot be, the objects are left to the
    /// orphan sweep.
    async fn discard_generated(&self, applied: &Result<(), StorageError>, new_keys: &[NewKey]) {
        let generated: Vec<String> = new_keys
            .iter()
            .filter_map(|k| k.hsm_object.clone())
            .collect();
        if generated.is_empty() {
            return;
        }
        let unused = match applied {
            Err(StorageError::Conflict | StorageError::SlotTaken) => generated,
            _ => match self.storage.list_keys().await {
                Ok(stored) => generated
                    .into_iter()
                    .filter(|id| !stored.iter().any(|k| k.hsm_object.as_ref() == Some(id)))
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "a key change failed and the keys cannot be read; the orphan sweep will destroy what it generated");
                    return;
                }
            },
        };
        self.destroy_objects(unused).await;
    }

    /// Destroys token objects no row refers to any more. A failure is logged, not
    /// returned: the change it follows stands, and housekeeping finds the object later.
    /// Returns the ids it destroyed.
    async fn destroy_objects(&self, ids: Vec<String>) -> Vec<String> {
        if ids.is_empty() {
            return ids;
        }
        let Some(token) = self.token.clone() else {
            tracing::warn!(
                objects = ids.len(),
                "keys on a PKCS#11 token ended, but no token is configured to destroy them"
            );
            return Vec::new();
        };
        let done = tokio::task::spawn_blocking(move || {
            ids.into_iter()
                .filter(|id| match token.destroy(id) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(error = %e, object = %id, "cannot destroy a token object");
                        false
                    }
                })
                .collect()
        })
        .await;
        done.unwrap_or_else(|_| {
            tracing::warn!("destroying token objects stopped early");
            Vec::new()
        })
    }

    /// Housekeeping (and start): destroys the objects Signet made on the token that no key
    /// refers to, once they are older than `pkcs11_orphan_grace`: left by a crash between
    /// generation and commit, or by a destruction that failed after a key ended. Writes
    /// `keys.orphans_destroyed`. Safe on every instance at once (destroying an object
    /// that is already gone is not an error).
    pub async fn destroy_orphans(&self, now: DateTime<Utc>) -> Result<usize, KeyError> {
        let Some(token) = self.token.clone() else {
            return Ok(0);
        };
        // The keys first, the objects after: an object made and committed in between is
        // younger than the grace period, so it is left alone.
        let live: std::collections::HashSet<String> = self
            .storage
            .list_keys()
            .await?
            .into_iter()
            .filter(|k| k.hsm_token.as_deref() == Some(token.label()))
            .filter_map(|k| k.hsm_object)
            .collect();
        let grace = i64::try_from(self.config.pkcs11_orphan_grace.as_secs()).unwrap_or(i64::MAX);
        let t = token.clone();
        let objects = tokio::task::spawn_blocking(move || t.objects())
            .await
            .map_err(|_| CryptoError::Hsm("listing the token's objects stopped".into()))??;
        // Only this installation's objects, and only once they are old enough: a younger
        // one may belong to a change still in flight on another instance.
        let (orphans, young): (Vec<_>, Vec<_>) = objects
            .into_iter()
            .filter(|o| !live.contains(&o.id))
            .filter_map(|o| Some((o.made_by(token.installation())?, o.id)))
            .partition(|(made, _)| now.timestamp() - made >= grace);
        if !young.is_empty() {
            tracing::info!(
                count = young.len(),
                token = token.label(),
                "unreferenced token objects younger than pkcs11_orphan_grace kept (a key \
                 change may still be committing them)"
            );
        }
        let orphans: Vec<String> = orphans.into_iter().map(|(_, id)| id).collect();
        if orphans.is_empty() {
            return Ok(0);
        }
        let destroyed = self.destroy_objects(orphans).await;
        if destroyed.is_empty() {
            return Ok(0);
        }
        let ev = event(
            Level::Warning,
            kind::KEYS_ORPHANS_DESTROYED,
            &Actor::scheduler(),
            Vec::new(),
            Some(format!(
                "objects on token '{}' that no key refers to (a key change that never \
                 committed, or a destruction that failed)",
                token.label()
            )),
            serde_json::json!({ "token": token.label(), "objects": destroyed }),
        );
        self.storage.append_event(&ev).await?;
        tracing::warn!(
            count = destroyed.len(),
            token = token.label(),
            "orphaned token objects destroyed"
        );
        Ok(destroyed.len())
    }

    /// Starts generating `key_pool` keys per enabled algorithm ahead of need, at low
    /// priority (once; `serve` calls it). Not with `key_backend = "pkcs11"`: keys made on a
    /// token ahead of need would outlive an exit as orphans.
    pub fn start_pool(&self) -> std::io::Result<()> {
        if self.config.key_backend == KeyBackend::Pkcs11 {
            return Ok(());
        }
        if self.config.key_pool == 0 || self.pool.get().is_some() {
            return Ok(());
        }
        let pool = KeyPool::start(
            self.config.key_pool,
            self.enabled(),
            self.config.rsa_bits,
            self.keyring.active().clone(),
        )?;
        if let Err(extra) = self.pool.set(pool) {
            extra.stop();
        }
        Ok(())
    }

    /// Stops the pool's generating thread (at shutdown).
    pub fn stop_pool(&self) {
        if let Some(pool) = self.pool.get() {
            pool.stop();
        }
    }

    /// How many keys of each enabled algorithm wait in the pool (empty without one).
    pub fn pool_ready(&self) -> Vec<(Algorithm, usize)> {
        self.pool.get().map(|p| p.ready()).unwrap_or_default()
    }
}

/// Fault injection for the tests, in debug builds only, once keys were generated on the
/// token and before they are committed:
/// - `SIGNET_FAULT=abort-after-token-generation` aborts the process, as a crash would;
/// - `SIGNET_FAULT=pause-after-token-generation:<path>` waits until the file `<path>`
///   exists (at most a minute), as a slow commit would, so another instance can run its
///   orphan sweep meanwhile.
#[cfg(debug_assertions)]
async fn fault_after_token_generation(new_keys: &[NewKey]) {
    if !new_keys.iter().any(|k| k.hsm_object.is_some()) {
        return;
    }
    let fault = std::env::var("SIGNET_FAULT").unwrap_or_default();
    if fault == "abort-after-token-generation" {
        eprintln!("signet: SIGNET_FAULT: aborting after generating keys on the token");
        std::process::abort();
    }
    if let Some(path) = fault.strip_prefix("pause-after-token-generation:") {
        eprintln!("signet: SIGNET_FAULT: pausing after generating keys on the token");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !std::path::Path::new(path).exists() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// The plan as applied, with the transitions of generated keys made explicit so callers
/// can report the new kids.
fn plan_with_kids(mut plan: Plan, new_keys: &[NewKey]) -> Plan {
    plan.transitions
        .extend(new_keys.iter().map(|k| lifecycle::Transition {
            kid: k.kid.clone(),
            alg: k.alg,
            from: k.state,
            to: k.state,
            expires_at: None,
            early: false,
        }));
    plan
}

fn alg_names(algs: &[Algorithm]) -> Vec<&'static str> {
    algs.iter().map(|a| a.as_str()).collect()
}

fn enabled_names(generate: &[(Algorithm, KeyState)]) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = generate.iter().map(|(a, _)| a.as_str()).collect();
    names.dedup();
    names
}

/// Warnings about the rotated-keys cap: keys it retires early, and algorithms left over
/// it because tokens signed under their oldest keys are still valid (invariant 4 wins).
fn early_expiry_events(plan: &Plan, actor: &Actor) -> Vec<NewEvent> {
    let mut events = Vec::new();
    let early: Vec<String> = plan
        .transitions
        .iter()
        .filter(|t| t.early)
        .map(|t| t.kid.to_string())
        .collect();
    if !early.is_empty() {
        events.push(event(
            Level::Warning,
            kind::KEYS_EXPIRED_EARLY,
            actor,
            early,
            Some("more rotated keys than the cap; the oldest stop being published early".into()),
            serde_json::json!({}),
        ));
    }
    for (alg, published) in &plan.over_cap {
        events.push(event(
            Level::Warning,
            kind::KEYS_OVER_CAP,
            actor,
            Vec::new(),
            Some(format!(
                "{published} rotated {alg} keys stay published, more than the cap, because \
                 tokens they signed are still valid; the oldest leave once those expire"
            )),
            serde_json::json!({ "alg": alg.as_str(), "published_rotated": published }),
        ));
    }
    events
}

fn event(
    level: Level,
    kind: &'static str,
    actor: &Actor,
    kids: Vec<String>,
    reason: Option<String>,
    details: serde_json::Value,
) -> NewEvent {
    NewEvent::new(level, kind, actor)
        .kids(kids)
        .reason(reason)
        .details(details)
}
