//! Scheduled work, exactly once per slot across instances and restarts.
//!
//! Every instance runs two jobs: `rotation`, on the cron schedule stored in the database,
//! and `housekeeping`, every minute. A job's loop looks at its schedule, works out the
//! slot due now (the latest fire time after the last one handled), and does the work for
//! it. The work claims the slot: a compare-and-set on the job's row in `scheduler_slots`
//! that only moves forward. A rotation makes its claim in the same transaction as the
//! rotation, so of several instances reaching one slot exactly one rotates, and the
//! others (or a restarted one) find the slot taken. An instance that starts after slots
//! passed with nobody running catches up once, for the latest of them.
//!
//! The loop wakes at the next fire time, and at least once a second, so a schedule
//! changed through any instance, the API, the UI or the CLI takes effect everywhere
//! without a restart.

use crate::domain::CronSchedule;
use crate::domain::audit::{Level, kind};
use crate::server::audit::Actor;
use crate::server::audit::NewEvent;
use crate::server::config::Config;
use crate::server::keys::{KeyService, SLOT_ROTATION};
use crate::server::storage::{SlotClaim, Storage};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;

/// The housekeeping job's name in `scheduler_slots`.
pub const SLOT_HOUSEKEEPING: &str = "housekeeping";

/// Housekeeping runs at the start of every minute.
const HOUSEKEEPING_CRON: &str = "0 * * * * * *";

/// The longest a loop sleeps between two looks at its schedule.
pub const POLL: Duration = Duration::from_secs(1);

/// After a failure, the wait doubles from one second up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How many audit events one transaction deletes; a large backlog takes several.
const EVENT_PRUNE_BATCH: i64 = 10_000;

pub type JobError = Box<dyn std::error::Error + Send + Sync>;

/// Where the loop gets the time: the system clock, or a test's paused one.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// One kind of scheduled work, as the loop sees it.
#[async_trait]
pub trait Job: Send + Sync {
    fn name(&self) -> &'static str;

    /// The longest sleep between two looks. A job whose schedule can change while it runs
    /// looks every [`POLL`]; a fixed one may sleep until its next slot.
    fn poll(&self) -> Duration {
        POLL
    }

    /// The schedule in force, and the instant up to which every slot has been handled
    /// (the last claimed slot, or when the schedule took effect, whichever is later).
    async fn schedule(&self) -> Result<(CronSchedule, DateTime<Utc>), JobError>;

    /// Does the work of `due`, claiming its slot. `false` when another instance (or this
    /// one, before a restart) already had it.
    async fn run(&self, due: crate::domain::schedule::DueSlot) -> Result<bool, JobError>;
}

/// What one look at the schedule decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// How long to sleep before the next look.
    pub wait: Duration,
    /// The schedule has no fire time left.
    pub ran_out: bool,
}

/// Runs `job` until the task is aborted.
pub async fn run(job: &dyn Job, clock: &dyn Clock) {
    let mut failures: u32 = 0;
    let mut warned_ran_out = false;
    loop {
        let wait = match step(job, clock).await {
            Ok(step) => {
                failures = 0;
                if step.ran_out && !warned_ran_out {
                    tracing::warn!(
                        job = job.name(),
                        "the schedule has no fire time left; set a new one"
                    );
                }
                warned_ran_out = step.ran_out;
                step.wait
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                // 1, 2, 4, 8, 16, then 30 seconds.
                let wait = POLL
                    .saturating_mul(1 << (failures - 1).min(5))
                    .min(MAX_BACKOFF);
                tracing::warn!(
                    job = job.name(),
                    error = %e,
                    retry_in_secs = wait.as_secs(),
                    "scheduled work failed; it will be retried"
                );
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// One look: does the due work, if any, and says how long to sleep.
pub async fn step(job: &dyn Job, clock: &dyn Clock) -> Result<Step, JobError> {
    let (cron, handled) = job.schedule().await?;
    if let Some(due) = cron.due(handled, clock.now()) {
        let ran = job.run(due).await?;
        tracing::debug!(job = job.name(), slot = %due.slot, missed = due.missed, ran, "slot handled");
    }
    let now = clock.now();
    Ok(match cron.next_after(now) {
        Some(next) => Step {
            wait: (next - now).to_std().unwrap_or_default().min(job.poll()),
            ran_out: false,
        },
        None => Step {
            wait: POLL,
            ran_out: true,
        },
    })
}

/// Names this process in slot claims and events: host and process id.
pub fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string());
    format!("{host}:{}", std::process::id())
}

/// The cron schedule's rotations.
pub struct Rotation {
    pub keys: Arc<KeyService>,
    pub storage: Arc<dyn Storage>,
    pub instance: String,
}

#[async_trait]
impl Job for Rotation {
    fn name(&self) -> &'static str {
        SLOT_ROTATION
    }

    async fn schedule(&self) -> Result<(CronSchedule, DateTime<Utc>), JobError> {
        // Reading it here also keeps this instance's copy (metrics, retention of manual
        // rotations) current when another instance changed it.
        let schedule = self.keys.load_schedule().await?;
        let since = schedule.cron_since.unwrap_or_else(Utc::now);
        let last = self.storage.last_slot(SLOT_ROTATION).await?;
        let handled = last.map_or(since, |(slot, _)| slot.max(since));
        Ok((schedule.cron, handled))
    }

    async fn run(&self, due: crate::domain::schedule::DueSlot) -> Result<bool, JobError> {
        // The instance that claims a slot rotates the algorithms it is configured for;
        // instances configured differently would leave some unrotated.
        let enabled = self.keys.enabled();
        let mut foreign: Vec<String> = self
            .keys
            .snapshot()
            .keys
            .iter()
            .filter(|k| k.state == crate::domain::KeyState::Active && !enabled.contains(&k.alg))
            .map(|k| k.alg.to_string())
            .collect();
        foreign.sort();
        foreign.dedup();
        if !foreign.is_empty() {
            tracing::warn!(
                algorithms = foreign.join(","),
                "the database has active keys of algorithms this instance does not enable; \
                 give every instance the same SIGNET_ALGORITHMS or they are not rotated on schedule"
            );
        }
        match self.keys.rotate_scheduled(due, &self.instance).await? {
            Some(plan) => {
                tracing::info!(
                    slot = %due.slot,
                    missed_slots = due.missed,
                    transitions = plan.transitions.len(),
                    "scheduled rotation"
                );
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// Every minute, on one instance: expiry, pruning, sessions, old audit events.
pub struct Housekeeping {
    pub keys: Arc<KeyService>,
    pub storage: Arc<dyn Storage>,
    pub config: Arc<Config>,
    pub instance: String,
}

#[async_trait]
impl Job for Housekeeping {
    fn name(&self) -> &'static str {
        SLOT_HOUSEKEEPING
    }

    /// Its schedule never changes: it sleeps until the next minute.
    fn poll(&self) -> Duration {
        Duration::from_secs(60)
    }

    async fn schedule(&self) -> Result<(CronSchedule, DateTime<Utc>), JobError> {
        let cron = CronSchedule::parse_stored(HOUSEKEEPING_CRON)?;
        // Never run before: the last minute is due, so a fresh instance cleans up at once.
        let handled = match self.storage.last_slot(SLOT_HOUSEKEEPING).await? {
            Some((slot, _)) => slot,
            None => Utc::now() - chrono::Duration::seconds(61),
        };
        Ok((cron, handled))
    }

    async fn run(&self, due: crate::domain::schedule::DueSlot) -> Result<bool, JobError> {
        let claim = SlotClaim {
            job: SLOT_HOUSEKEEPING,
            slot: due.slot,
            by: self.instance.clone(),
        };
        // Every pass is idempotent, so claiming first and working after is safe: a pass
        // cut short is done again next minute.
        if !self.storage.claim_slot(&claim, Utc::now()).await? {
            return Ok(false);
        }
        let report =
            housekeeping_pass(&self.keys, self.storage.as_ref(), &self.config, Utc::now()).await?;
        if report != HousekeepingReport::default() {
            tracing::info!(?report, "housekeeping");
        }
        Ok(true)
    }
}

/// What one housekeeping pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HousekeepingReport {
    pub keys_expired: usize,
    pub keys_pruned: usize,
    pub sessions_deleted: u64,
    pub events_deleted: u64,
    pub orphans_destroyed: usize,
}

/// One housekeeping pass as of `now`. Each part is idempotent and safe to run from every
/// instance at once; a failing part does not stop the others, and the first error is
/// returned after all ran.
pub async fn housekeeping_pass(
    keys: &KeyService,
    storage: &dyn Storage,
    config: &Config,
    now: DateTime<Utc>,
) -> Result<HousekeepingReport, JobError> {
    let mut report = HousekeepingReport::default();
    let mut first_error: Option<JobError> = None;
    // Each failure is logged where it happens; the first is also returned.
    let mut keep = |part: &str, e: JobError| {
        tracing::error!(part, error = %e, "housekeeping step failed");
        if first_error.is_none() {
            first_error = Some(e);
        }
    };
    match keys.expire(now).await {
        Ok(n) => report.keys_expired = n,
        Err(e) => keep("expiry of rotated keys", e.into()),
    }
    match keys.prune_retired().await {
        Ok(n) => report.keys_pruned = n,
        Err(e) => keep("pruning of retired keys", e.into()),
    }
    match keys.destroy_orphans(now).await {
        Ok(n) => report.orphans_destroyed = n,
        Err(e) => keep("destroying orphaned token objects", e.into()),
    }
    match storage.prune_sessions(now).await {
        Ok(n) => report.sessions_deleted = n,
        Err(e) => keep("pruning of sessions", e.into()),
    }
    let before = now - chrono::Duration::seconds(config.event_retention.as_secs() as i64);
    let ev = NewEvent::new(Level::Info, kind::AUDIT_PRUNED, &Actor::scheduler())
        .reason(Some(format!(
            "audit events older than the event retention ({})",
            config.event_retention
        )))
        .details(serde_json::Value::Null);
    loop {
        match storage.prune_events(before, EVENT_PRUNE_BATCH, &ev).await {
            Ok(pruned) => {
                report.events_deleted += pruned.deleted;
                if !pruned.more {
                    break;
                }
            }
            Err(e) => {
                keep("pruning of audit events", e.into());
                break;
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

#[cfg(test)]
mod tests {
    //! The loop against a paused tokio clock and an in-memory claim, standing in for the
    //! database's compare-and-set. The real claim is tested with real processes in
    //! `tests/integration/scheduler.rs`.

    use super::*;
    use crate::domain::schedule::DueSlot;
    use chrono::TimeZone as _;
    use std::sync::Mutex;

    struct PausedClock {
        base: DateTime<Utc>,
        start: tokio::time::Instant,
    }

    impl PausedClock {
        fn at(base: DateTime<Utc>) -> Arc<Self> {
            Arc::new(Self {
                base,
                start: tokio::time::Instant::now(),
            })
        }
    }

    impl Clock for PausedClock {
        fn now(&self) -> DateTime<Utc> {
            self.base + chrono::Duration::from_std(self.start.elapsed()).unwrap_or_default()
        }
    }

    /// What instances share: the schedule with when it took effect, the last claimed
    /// slot, and every run, by instance.
    struct Shared {
        schedule: Mutex<(CronSchedule, DateTime<Utc>)>,
        last: Mutex<Option<DateTime<Utc>>>,
        runs: Mutex<Vec<(usize, DueSlot)>>,
        looks: std::sync::atomic::AtomicUsize,
    }

    impl Shared {
        fn new(cron: &str, since: DateTime<Utc>) -> Arc<Self> {
            Arc::new(Self {
                schedule: Mutex::new((CronSchedule::parse_stored(cron).unwrap(), since)),
                last: Mutex::new(None),
                runs: Mutex::new(Vec::new()),
                looks: Default::default(),
            })
        }

        fn runs(&self) -> Vec<(usize, DueSlot)> {
            self.runs.lock().unwrap().clone()
        }

        fn slots(&self) -> Vec<(DateTime<Utc>, u64)> {
            self.runs()
                .into_iter()
                .map(|(_, d)| (d.slot, d.missed))
                .collect()
        }
    }

    struct MemJob {
        shared: Arc<Shared>,
        instance: usize,
        poll: Duration,
    }

    #[async_trait]
    impl Job for MemJob {
        fn name(&self) -> &'static str {
            "test"
        }

        fn poll(&self) -> Duration {
            self.poll
        }

        async fn schedule(&self) -> Result<(CronSchedule, DateTime<Utc>), JobError> {
            self.shared
                .looks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (cron, since) = self.shared.schedule.lock().unwrap().clone();
            let last = *self.shared.last.lock().unwrap();
            Ok((cron, last.map_or(since, |l| l.max(since))))
        }

        async fn run(&self, due: DueSlot) -> Result<bool, JobError> {
            // The work takes a while (key generation), so instances overlap.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut last = self.shared.last.lock().unwrap();
            if last.is_some_and(|l| l >= due.slot) {
                return Ok(false);
            }
            *last = Some(due.slot);
            self.shared.runs.lock().unwrap().push((self.instance, due));
            Ok(true)
        }
    }

    fn t(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, h, m, s).unwrap()
    }

    fn start(
        shared: &Arc<Shared>,
        clock: &Arc<PausedClock>,
        instance: usize,
    ) -> tokio::task::JoinHandle<()> {
        let job = MemJob {
            shared: shared.clone(),
            instance,
            poll: POLL,
        };
        let clock = clock.clone();
        tokio::spawn(async move { run(&job, clock.as_ref()).await })
    }

    #[tokio::test(start_paused = true)]
    async fn two_instances_handle_every_slot_exactly_once() {
        let shared = Shared::new("*/10 * * * * * *", t(10, 0, 5));
        let clock = PausedClock::at(t(10, 0, 5));
        let a = start(&shared, &clock, 0);
        let b = start(&shared, &clock, 1);
        tokio::time::sleep(Duration::from_secs(60) + Duration::from_millis(500)).await;
        a.abort();
        b.abort();
        let expected: Vec<_> = (1..=6)
            .map(|i| (t(10, 0, 5) + chrono::Duration::seconds(10 * i - 5), 1))
            .collect();
        assert_eq!(shared.slots(), expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_after_missed_slots_catches_up_once() {
        let shared = Shared::new("*/10 * * * * * *", t(10, 0, 5));
        *shared.last.lock().unwrap() = Some(t(10, 0, 10));
        // Down from just after 10:00:10 until 10:01:03: five slots passed.
        let clock = PausedClock::at(t(10, 1, 3));
        let a = start(&shared, &clock, 0);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(shared.slots(), vec![(t(10, 1, 0), 5)]);
        // A second instance starting now finds nothing owed.
        let b = start(&shared, &clock, 1);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(shared.slots(), vec![(t(10, 1, 0), 5)]);
        // And the schedule goes on as usual.
        tokio::time::sleep(Duration::from_secs(2)).await;
        a.abort();
        b.abort();
        assert_eq!(shared.slots(), vec![(t(10, 1, 0), 5), (t(10, 1, 10), 1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_with_nothing_missed_does_nothing() {
        let shared = Shared::new("*/10 * * * * * *", t(10, 0, 5));
        *shared.last.lock().unwrap() = Some(t(10, 0, 10));
        let clock = PausedClock::at(t(10, 0, 12));
        let a = start(&shared, &clock, 0);
        tokio::time::sleep(Duration::from_secs(7)).await;
        a.abort();
        assert_eq!(shared.slots(), vec![]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_schedule_applies_without_restart_and_owes_nothing_before_it() {
        let shared = Shared::new("*/10 * * * * * *", t(10, 0, 5));
        let clock = PausedClock::at(t(10, 0, 5));
        let a = start(&shared, &clock, 0);
        let b = start(&shared, &clock, 1);
        tokio::time::sleep(Duration::from_millis(21_500)).await;
        assert_eq!(shared.slots(), vec![(t(10, 0, 10), 1), (t(10, 0, 20), 1)]);
        // At 10:00:26.5, every 7th second from now on (:28, :35, :42 ...; :21 is not owed).
        *shared.schedule.lock().unwrap() = (
            CronSchedule::parse_stored("*/7 * * * * * *").unwrap(),
            clock.now(),
        );
        tokio::time::sleep(Duration::from_secs(17)).await;
        a.abort();
        b.abort();
        assert_eq!(
            shared.slots(),
            vec![
                (t(10, 0, 10), 1),
                (t(10, 0, 20), 1),
                (t(10, 0, 28), 1),
                (t(10, 0, 35), 1),
                (t(10, 0, 42), 1),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fixed_schedule_sleeps_until_its_slot_instead_of_polling() {
        let shared = Shared::new("0 * * * * * *", t(10, 0, 0));
        let clock = PausedClock::at(t(10, 0, 0));
        let job = MemJob {
            shared: shared.clone(),
            instance: 0,
            poll: Duration::from_secs(60),
        };
        let clock_for_task = clock.clone();
        let task = tokio::spawn(async move { run(&job, clock_for_task.as_ref()).await });
        tokio::time::sleep(Duration::from_secs(185)).await;
        task.abort();
        assert_eq!(
            shared.slots(),
            vec![(t(10, 1, 0), 1), (t(10, 2, 0), 1), (t(10, 3, 0), 1)]
        );
        // A look at start and one per minute, not one per second.
        let looks = shared.looks.load(std::sync::atomic::Ordering::Relaxed);
        assert!(looks <= 5, "{looks} looks in three minutes");
    }

    #[tokio::test(start_paused = true)]
    async fn a_schedule_that_ran_out_sleeps_and_does_nothing() {
        let shared = Shared::new("0 0 0 1 1 * 2020", t(10, 0, 0));
        let clock = PausedClock::at(t(10, 0, 0));
        let job = MemJob {
            shared: shared.clone(),
            instance: 0,
            poll: POLL,
        };
        let step = step(&job, clock.as_ref()).await.unwrap();
        assert_eq!(
            step,
            Step {
                wait: POLL,
                ran_out: true
            }
        );
        assert!(shared.runs().is_empty());
    }
}
