//! The automatic-rotation schedule: a 7-field cron expression, always in UTC.
//!
//! Parsing and fire times come from the `cron` crate. This type adds what Signet's
//! contract needs on top: exactly seven fields (so nobody mistakes a 5-field Unix
//! crontab for ours) and a schedule that fires at least once more.

use chrono::{DateTime, Utc};
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

impl CronSchedule {
    /// Parses a 7-field expression and checks that it fires at least once after `now`.
    pub fn parse_at(s: &str, now: DateTime<Utc>) -> Result<Self, CronError> {
        let s = s.trim();
        let fields = s.split_whitespace().count();
        if fields != 7 {
            return Err(CronError::FieldCount(fields));
        }
        let normalized = s.split_whitespace().collect::<Vec<_>>().join(" ");
        let inner =
            cron::Schedule::from_str(&normalized).map_err(|e| CronError::Invalid(e.to_string()))?;
        let schedule = Self { inner };
        if schedule.next_after(now).is_none() {
            return Err(CronError::NeverFires);
        }
        Ok(schedule)
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
    fn extra_whitespace_is_normalized() {
        let s = CronSchedule::parse("  0  30 3 1 * *   * ").unwrap();
        assert_eq!(s.as_str(), DEFAULT_ROTATION_CRON);
    }
}
