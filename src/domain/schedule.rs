//! The automatic-rotation schedule: a 7-field cron expression, always in UTC.
//!
//! Parsing and fire times come from the `cron` crate. This type adds what Signet's
//! contract needs on top: exactly seven fields (so nobody mistakes a 5-field Unix
//! crontab for ours), a schedule that fires at least once more, and the slot arithmetic
//! of the scheduler: which fire time is due, and how many were missed.

use chrono::{DateTime, SubsecRound as _, Utc};
use std::{fmt, str::FromStr};

/// `sec min hour day_of_month month day_of_week year`.
#[derive(Clone, PartialEq)]
pub struct CronSchedule {
    inner: cron::Schedule,
}

pub const DEFAULT_ROTATION_CRON: &str = "0 30 3 1 * * *";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    #[error("expected 7 fields (sec min hour day_of_month month day_of_week year), found {0}")]
    FieldCount(usize),
    #[error("invalid cron expression: {0}")]
    Invalid(String),
    #[error("the schedule never fires again; automatic rotation cannot be switched off")]
    NeverFires,
}

/// The most missed slots a catch-up counts; beyond it, the count is reported as this.
pub const MAX_COUNTED_SLOTS: u64 = 10_000;

/// A scheduled slot that is due: the latest fire time not after now, and how many fire
/// times (this one included) passed since the last one handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueSlot {
    pub slot: DateTime<Utc>,
    /// 1 when the scheduler was on time; more after an outage (capped at
    /// [`MAX_COUNTED_SLOTS`]). However many, they give one rotation.
    pub missed: u64,
}

impl CronSchedule {
    /// Parses a 7-field expression and checks that it fires at least once after `now`.
    pub fn parse_at(s: &str, now: DateTime<Utc>) -> Result<Self, CronError> {
        let schedule = Self::parse_stored(s)?;
        if schedule.next_after(now).is_none() {
            return Err(CronError::NeverFires);
        }
        Ok(schedule)
    }

    /// Parses an expression that was valid when it was stored. It may have run out since
    /// (`... 2026` in 2027); the scheduler then has nothing to do, and says so.
    pub fn parse_stored(s: &str) -> Result<Self, CronError> {
        let s = s.trim();
        let fields = s.split_whitespace().count();
        if fields != 7 {
            return Err(CronError::FieldCount(fields));
        }
        let normalized = s.split_whitespace().collect::<Vec<_>>().join(" ");
        let inner =
            cron::Schedule::from_str(&normalized).map_err(|e| CronError::Invalid(e.to_string()))?;
        Ok(Self { inner })
    }

    /// The latest fire time at or before `t` (cron works in whole seconds).
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let second = t.trunc_subsecs(0);
        if self.inner.includes(second) {
            return Some(second);
        }
        self.inner.after(&second).next_back()
    }

    /// The slot due at `now`, given that every slot up to and including `handled` has
    /// been dealt with (the last claimed slot, or when this expression took effect).
    /// Several passed slots give one due slot: the latest.
    pub fn due(&self, handled: DateTime<Utc>, now: DateTime<Utc>) -> Option<DueSlot> {
        let slot = self.latest_at_or_before(now)?;
        if slot <= handled {
            return None;
        }
        // Count backwards from the due slot; an outage of a per-second schedule must not
        // make this walk millions of fire times.
        let earlier = self
            .inner
            .after(&slot)
            .rev()
            .take_while(|t| *t > handled)
            .take(MAX_COUNTED_SLOTS as usize - 1)
            .count() as u64;
        Some(DueSlot {
            slot,
            missed: earlier + 1,
        })
    }

    /// Parses against the current time.
    pub fn parse(s: &str) -> Result<Self, CronError> {
        Self::parse_at(s, Utc::now())
    }

    /// The first fire time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.inner.after(&t).next()
    }

    /// The next `n` fire times strictly after `t`.
    pub fn upcoming(&self, t: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        self.inner.after(&t).take(n).collect()
    }

    pub fn as_str(&self) -> &str {
        self.inner.source()
    }
}

impl Default for CronSchedule {
    fn default() -> Self {
        let inner = cron::Schedule::from_str(DEFAULT_ROTATION_CRON)
            .unwrap_or_else(|e| unreachable!("the default cron expression is valid: {e}"));
        Self { inner }
    }
}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CronSchedule({:?})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn default_fires_monthly_at_0330() {
        let s = CronSchedule::default();
        let next = s.upcoming(at(2026, 11, 22, 0, 0, 0), 2);
        assert_eq!(
            next,
            vec![at(2026, 12, 1, 3, 30, 0), at(2027, 1, 1, 3, 30, 0)]
        );
    }

    #[test]
    fn requires_seven_fields() {
        assert_eq!(
            CronSchedule::parse("30 3 1 * *"),
            Err(CronError::FieldCount(5))
        );
        assert_eq!(
            CronSchedule::parse("0 30 3 1 * *"),
            Err(CronError::FieldCount(6))
        );
        assert_eq!(CronSchedule::parse(""), Err(CronError::FieldCount(0)));
    }

    #[test]
    fn rejects_garbage_fields() {
        assert!(matches!(
            CronSchedule::parse("0 61 3 1 * * *"),
            Err(CronError::Invalid(_))
        ));
        assert!(matches!(
            CronSchedule::parse("x y z 1 * * *"),
            Err(CronError::Invalid(_))
        ));
    }

    #[test]
    fn rejects_schedules_that_never_fire() {
        let now = at(2026, 11, 22, 0, 0, 0);
        assert_eq!(
            CronSchedule::parse_at("0 0 0 1 1 * 2020", now),
            Err(CronError::NeverFires)
        );
        assert_eq!(
            CronSchedule::parse_at("0 0 0 30 2 * *", now),
            Err(CronError::NeverFires)
        );
    }

    #[test]
    fn latest_fire_time_includes_the_present_second() {
        let s = CronSchedule::parse_stored("*/10 * * * * * *").unwrap();
        let t = at(2026, 11, 22, 10, 0, 20);
        assert_eq!(s.latest_at_or_before(t), Some(t));
        let later = t + chrono::Duration::milliseconds(999);
        assert_eq!(s.latest_at_or_before(later), Some(t));
        assert_eq!(
            s.latest_at_or_before(t + chrono::Duration::seconds(9)),
            Some(t)
        );
        assert_eq!(
            s.latest_at_or_before(t - chrono::Duration::seconds(1)),
            Some(at(2026, 11, 22, 10, 0, 10))
        );
        let default = CronSchedule::default();
        assert_eq!(
            default.latest_at_or_before(at(2026, 11, 22, 0, 0, 0)),
            Some(at(2026, 11, 1, 3, 30, 0))
        );
    }

    #[test]
    fn nothing_is_due_before_the_first_slot_after_handled() {
        let s = CronSchedule::parse_stored("*/10 * * * * * *").unwrap();
        let handled = at(2026, 11, 22, 10, 0, 20);
        assert_eq!(s.due(handled, handled), None);
        assert_eq!(s.due(handled, at(2026, 11, 22, 10, 0, 29)), None);
        // A schedule set between two slots: the earlier one is not owed.
        assert_eq!(
            s.due(at(2026, 11, 22, 10, 0, 25), at(2026, 11, 22, 10, 0, 29)),
            None
        );
    }

    #[test]
    fn the_due_slot_is_the_latest_with_the_missed_count() {
        let s = CronSchedule::parse_stored("*/10 * * * * * *").unwrap();
        let handled = at(2026, 11, 22, 10, 0, 20);
        assert_eq!(
            s.due(handled, at(2026, 11, 22, 10, 0, 30)),
            Some(DueSlot {
                slot: at(2026, 11, 22, 10, 0, 30),
                missed: 1
            })
        );
        // Down from 10:00:21 to 10:01:05: slots :30, :40, :50, 1:00 passed; one is due.
        assert_eq!(
            s.due(handled, at(2026, 11, 22, 10, 1, 5)),
            Some(DueSlot {
                slot: at(2026, 11, 22, 10, 1, 0),
                missed: 4
            })
        );
    }

    #[test]
    fn a_long_outage_counts_up_to_the_cap() {
        let s = CronSchedule::parse_stored("* * * * * * *").unwrap();
        let due = s
            .due(at(2026, 1, 1, 0, 0, 0), at(2026, 11, 22, 0, 0, 0))
            .unwrap();
        assert_eq!(due.slot, at(2026, 11, 22, 0, 0, 0));
        assert_eq!(due.missed, MAX_COUNTED_SLOTS);
    }

    #[test]
    fn a_schedule_that_ran_out_loads_but_is_never_due_again() {
        let s = CronSchedule::parse_stored("0 0 0 1 1 * 2020").unwrap();
        let now = at(2026, 11, 22, 0, 0, 0);
        assert_eq!(s.next_after(now), None);
        assert_eq!(s.due(at(2020, 1, 1, 0, 0, 0), now), None);
        // Unless the last handled slot is older than its one fire time.
        assert_eq!(
            s.due(at(2019, 6, 1, 0, 0, 0), now).map(|d| d.slot),
            Some(at(2020, 1, 1, 0, 0, 0))
        );
    }

    #[test]
    fn extra_whitespace_is_normalized() {
        let s = CronSchedule::parse("  0  30 3 1 * *   * ").unwrap();
        assert_eq!(s.as_str(), DEFAULT_ROTATION_CRON);
    }
}
