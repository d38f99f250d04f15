//! What this process rotated and revoked, for `/metrics`. The key service counts; the
//! metrics endpoint reads.

use crate::domain::audit::Trigger;
use std::sync::atomic::{AtomicU64, Ordering};

/// Rotations by trigger and revoked keys, since this process started.
#[derive(Debug, Default)]
pub struct Counters {
    rotations: [AtomicU64; 4],
    revoked_keys: AtomicU64,
    slots_lost: AtomicU64,
}

const TRIGGERS: [Trigger; 4] = [Trigger::Ui, Trigger::Api, Trigger::Cli, Trigger::Scheduler];

impl Counters {
    pub fn rotated(&self, trigger: Trigger) {
        if let Some(i) = TRIGGERS.iter().position(|t| *t == trigger) {
            self.rotations[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn revoked(&self, keys: usize) {
        self.revoked_keys.fetch_add(keys as u64, Ordering::Relaxed);
    }

    /// A scheduled rotation this process prepared, whose slot another instance claimed
    /// first: its transaction changed nothing.
    pub fn slot_lost(&self) {
        self.slots_lost.fetch_add(1, Ordering::Relaxed);
    }

    /// Rotations so far, per trigger.
    pub fn rotations(&self) -> impl Iterator<Item = (Trigger, u64)> + '_ {
        TRIGGERS
            .iter()
            .zip(&self.rotations)
            .map(|(t, n)| (*t, n.load(Ordering::Relaxed)))
    }

    pub fn revoked_keys(&self) -> u64 {
        self.revoked_keys.load(Ordering::Relaxed)
    }

    pub fn slots_lost(&self) -> u64 {
        self.slots_lost.load(Ordering::Relaxed)
    }
}
