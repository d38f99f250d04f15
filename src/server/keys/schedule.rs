//! The rotation schedule in force, and what changing it can fail with.

use crate::domain::retention::RetentionError;
use crate::domain::schedule::CronError;
use crate::domain::{CronSchedule, Retention};
use crate::server::storage::{ScheduleRow, StorageError};
use chrono::{DateTime, Utc};

/// The scheduler job whose slots are the cron schedule's fire times.
pub const SLOT_ROTATION: &str = "rotation";

/// The rotation schedule in force: stored in the database, seeded from the config.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub cron: CronSchedule,
    pub retention: Retention,
    pub updated_at: Option<DateTime<Utc>>,
    /// When `cron` took effect; slots before it are not owed.
    pub cron_since: Option<DateTime<Utc>>,
}

impl Schedule {
    /// The schedule as stored. Valid when stored; it may have run out since, which the
    /// scheduler reports.
    pub fn from_row(row: &ScheduleRow) -> Result<Self, ScheduleError> {
        Ok(Self {
            cron: CronSchedule::parse_stored(&row.cron)
                .map_err(|e| ScheduleError::Stored(e.to_string()))?,
            retention: Retention::from_secs(u64::try_from(row.retention_secs).unwrap_or(0)),
            updated_at: Some(row.updated_at),
            cron_since: Some(row.cron_since),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("invalid cron expression: {0}")]
    Cron(#[from] CronError),
    #[error("invalid retention: {0}")]
    Retention(#[from] RetentionError),
    #[error("retention ({retention}) must be longer than the maximum token lifetime ({max_ttl})")]
    TooShort {
        retention: Retention,
        max_ttl: Retention,
    },
    /// The stored schedule no longer parses: a fault of the stored data, not of a request.
    #[error("the stored schedule is damaged: {0}")]
    Stored(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}
