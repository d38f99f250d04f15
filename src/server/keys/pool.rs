//! Keys generated ahead of need, so a rotation's transaction does no generation.
//!
//! One thread generates and seals keys at the lowest CPU priority (SCHED_IDLE and nice
//! 19) until every enabled algorithm has `depth` keys waiting; rotations take them. An
//! RSA key costs 50-120 ms of CPU here: made at that priority it yields the core to the
//! threads serving requests the moment they have work. An empty pool is never waited
//! for: the rotation generates its own key at normal priority (a revocation or a first
//! start must not wait for idle CPU). Waiting keys are sealed with the active KEK exactly
//! like stored ones, so nothing unsealed is kept.

use super::KeyError;
use crate::domain::{Algorithm, KeyState, Kid, RsaBits};
use crate::server::crypto::kek::Kek;
use crate::server::crypto::{self};
use crate::server::storage::{NewKey, StorageError};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// A generated key, sealed and ready to store in any state.
pub struct SealedKey {
    pub kid: Kid,
    pub alg: Algorithm,
    pub public_jwk: String,
    pub sealed: Vec<u8>,
    pub kek_id: String,
}

impl SealedKey {
    /// Generates a key pair and seals its private half with `kek`. CPU-heavy for RSA:
    /// call it from a blocking thread.
    pub fn generate(alg: Algorithm, bits: RsaBits, kek: &Kek) -> Result<Self, KeyError> {
        let key = crypto::generate(alg, bits)?;
        let sealed = crypto::seal(kek.key_bytes(), &key.kid, &key.private)?;
        let public_jwk =
            serde_json::to_string(&key.jwk).map_err(|e| StorageError::Corrupt(e.to_string()))?;
        Ok(Self {
            kid: key.kid,
            alg,
            public_jwk,
            sealed,
            kek_id: kek.id().to_string(),
        })
    }

    pub fn into_new_key(self, state: KeyState) -> NewKey {
        NewKey {
            kid: self.kid,
            alg: self.alg,
            state,
            public_jwk: self.public_jwk,
            sealed: Some(self.sealed),
            kek_id: Some(self.kek_id),
            hsm_token: None,
            hsm_object: None,
        }
    }
}

/// The waiting keys and the thread that makes them.
pub struct KeyPool {
    waiting: Mutex<Waiting>,
    /// Woken when a key is taken (room to fill) or the pool stops.
    wake: Condvar,
    depth: usize,
    kek_id: String,
}

struct Waiting {
    keys: HashMap<Algorithm, VecDeque<SealedKey>>,
    stopped: bool,
}

impl KeyPool {
    /// Starts the generating thread for `algorithms`, `depth` keys each.
    pub fn start(
        depth: usize,
        algorithms: &[Algorithm],
        bits: RsaBits,
        kek: Kek,
    ) -> std::io::Result<Arc<Self>> {
        let pool = Arc::new(Self {
            waiting: Mutex::new(Waiting {
                keys: algorithms.iter().map(|&a| (a, VecDeque::new())).collect(),
                stopped: false,
            }),
            wake: Condvar::new(),
            depth,
            kek_id: kek.id().to_string(),
        });
        let filler = pool.clone();
        std::thread::Builder::new()
            .name("signet-keygen".into())
            .spawn(move || filler.fill(bits, &kek))?;
        Ok(pool)
    }

    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A waiting key of `alg` sealed with `kek_id`, if there is one.
    pub fn take(&self, alg: Algorithm, kek_id: &str) -> Option<SealedKey> {
        if kek_id != self.kek_id {
            return None;
        }
        let key = self.lock().keys.get_mut(&alg)?.pop_front();
        if key.is_some() {
            self.wake.notify_one();
        }
        key
    }

    /// How many keys of each algorithm are waiting.
    pub fn ready(&self) -> Vec<(Algorithm, usize)> {
        let waiting = self.lock();
        let mut ready: Vec<_> = waiting.keys.iter().map(|(a, k)| (*a, k.len())).collect();
        ready.sort();
        ready
    }

    /// Ends the generating thread (after the key it is making, if any).
    pub fn stop(&self) {
        self.lock().stopped = true;
        self.wake.notify_all();
    }

    /// The generating thread: the emptiest algorithm first, until all are full.
    fn fill(&self, bits: RsaBits, kek: &Kek) {
        lower_priority();
        loop {
            let alg = {
                let mut waiting = self.lock();
                loop {
                    if waiting.stopped {
                        return;
                    }
                    let emptiest = waiting
                        .keys
                        .iter()
                        .filter(|(_, k)| k.len() < self.depth)
                        .min_by_key(|(a, k)| (k.len(), **a))
                        .map(|(a, _)| *a);
                    match emptiest {
                        Some(alg) => break alg,
                        None => {
                            waiting = self
                                .wake
                                .wait(waiting)
                                .unwrap_or_else(|poisoned| poisoned.into_inner());
                        }
                    }
                }
            };
            match SealedKey::generate(alg, bits, kek) {
                Ok(key) => {
                    if let Some(keys) = self.lock().keys.get_mut(&alg) {
                        keys.push_back(key);
                    }
                }
                Err(e) => {
                    // Rotations still generate their own keys; try again later.
                    tracing::warn!(error = %e, %alg, "cannot generate a key ahead of need");
                    std::thread::sleep(std::time::Duration::from_secs(5));
                }
            }
        }
    }
}

/// The lowest CPU priority for the calling thread only: the SCHED_IDLE policy, which the
/// kernel preempts as soon as a normal thread wakes, and nice 19, which counts only where
/// the policy cannot be set (Linux applies a thread id's priority to that thread). In `bench/run` this did
/// not remove the rotation's effect on request latency on a saturated core; see the
/// design document.
fn lower_priority() {
    use thread_priority::unix::{
        NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
        thread_native_id,
    };
    if let Err(e) = set_thread_priority_and_policy(
        thread_native_id(),
        thread_priority::ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    ) {
        tracing::debug!(error = ?e, "cannot give the key generator the idle policy");
    }
    // After the policy: the thread-priority crate sets nice 0 along with it.
    let this = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(this), 19) {
        tracing::debug!(error = %e, "cannot lower the key generator's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn kek() -> Kek {
        crate::server::crypto::kek::Keyring::parse(
            "k1:HxwdHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=",
            "k1",
        )
        .expect("a valid KEK")
        .active()
        .clone()
    }

    /// The nice value and scheduling policy of this process's thread named `name`, from
    /// `/proc/self/task/*/stat` (fields 19 and 41).
    fn thread_priority_of(name: &str) -> Option<(i64, i64)> {
        // Threads of parallel tests may end during the scan: skip what cannot be read.
        for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            let dir = task.path();
            let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
                continue;
            };
            if comm.trim() != name {
                continue;
            }
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            // Fields after the command name, which is in parentheses: field 3 onwards.
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            return Some((fields.get(16)?.parse().ok()?, fields.get(38)?.parse().ok()?));
        }
        None
    }

    fn wait_full(pool: &KeyPool, depth: usize) {
        let start = Instant::now();
        while pool.ready().iter().any(|(_, n)| *n < depth) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "pool never filled"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn fills_each_algorithm_refills_what_is_taken_and_stops() {
        let pool = KeyPool::start(
            2,
            &[Algorithm::EdDSA, Algorithm::ES256],
            RsaBits::B2048,
            kek(),
        )
        .expect("thread starts");
        wait_full(&pool, 2);
        assert_eq!(
            pool.ready(),
            vec![(Algorithm::EdDSA, 2), (Algorithm::ES256, 2)]
        );

        let a = pool.take(Algorithm::EdDSA, "k1").expect("a waiting key");
        let b = pool.take(Algorithm::EdDSA, "k1").expect("a second one");
        assert_ne!(a.kid, b.kid);
        assert_eq!(a.alg, Algorithm::EdDSA);
        assert_eq!(a.kek_id, "k1");
        // Sealed under the KEK with the kid as associated data, like a stored key.
        let opened = crypto::open(kek().key_bytes(), &a.kid, &a.sealed).expect("opens");
        assert_eq!(opened.as_bytes().len(), 32);
        assert!(!a.public_jwk.contains("\"d\""));
        // Not for an algorithm it does not hold, nor under another KEK.
        assert!(pool.take(Algorithm::RS256, "k1").is_none());
        assert!(pool.take(Algorithm::ES256, "k2").is_none());

        wait_full(&pool, 2);
        // The generating thread runs at the lowest priority: SCHED_IDLE (policy 5) and
        // nice 19, read from the kernel's own account of the thread.
        let (nice, policy) = thread_priority_of("signet-keygen").expect("the thread runs");
        assert_eq!((nice, policy), (19, 5));
        pool.stop();
        // Stopped: what was taken is not made again.
        pool.take(Algorithm::ES256, "k1").expect("still there");
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            pool.ready(),
            vec![(Algorithm::EdDSA, 2), (Algorithm::ES256, 1)]
        );
    }
}
