//! The rotation schedule row, and the slots scheduled jobs claim so that only one
//! instance runs each firing.

use super::StorageError;
use super::audit::append_event_tx;
use super::sql::{Col as _, Dialect, QueryExt as _, SqlBackend, Tx, begin};
use crate::server::audit::NewEvent;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

#[async_trait]
pub trait ScheduleStore: Send + Sync {
    async fn get_schedule(&self) -> Result<Option<ScheduleRow>, StorageError>;

    /// Writes the schedule; with an event, in the same transaction. Without one (the
    /// first start seeding it), only if no schedule is stored yet.
    async fn put_schedule(
        &self,
        row: &ScheduleRow,
        event: Option<&NewEvent>,
    ) -> Result<(), StorageError>;

    /// The latest slot a scheduled job has claimed, and by which instance.
    async fn last_slot(&self, job: &str) -> Result<Option<(DateTime<Utc>, String)>, StorageError>;

    /// Claims a slot on its own (work that is idempotent and needs no shared
    /// transaction). `false` when this slot or a later one was already claimed.
    async fn claim_slot(&self, claim: &SlotClaim, at: DateTime<Utc>) -> Result<bool, StorageError>;
}

/// The stored rotation schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRow {
    pub cron: String,
    pub retention_secs: i64,
    pub updated_at: DateTime<Utc>,
    /// When `cron` took effect (changing only the retention leaves it alone).
    pub cron_since: DateTime<Utc>,
}

/// A scheduled job's claim on one slot (fire time). Claims only move forward: a slot at
/// or before the job's last claimed one is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotClaim {
    pub job: &'static str,
    pub slot: DateTime<Utc>,
    /// The instance claiming it, for the record.
    pub by: String,
}

/// Moves a job's claimed slot forward to `claim.slot`, inside `tx`. `false` (and nothing
/// written) when that slot or a later one is already claimed. On PostgreSQL the upsert
/// locks the job's row, so a competing claim waits for this transaction and then sees
/// its slot.
pub(super) async fn claim_slot_tx<DB: Dialect>(
    tx: &mut Tx<DB>,
    claim: &SlotClaim,
    at: DateTime<Utc>,
) -> Result<bool, StorageError> {
    let claimed = sqlx::query(
        "INSERT INTO scheduler_slots (job, last_slot, claimed_by, claimed_at) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (job) DO UPDATE SET last_slot = excluded.last_slot, \
           claimed_by = excluded.claimed_by, claimed_at = excluded.claimed_at \
         WHERE scheduler_slots.last_slot < excluded.last_slot",
    )
    .arg(claim.job)
    .arg(claim.slot)
    .arg(&claim.by)
    .arg(at)
    .exec(&mut *tx)
    .await?;
    Ok(claimed == 1)
}

#[async_trait]
impl<B: SqlBackend> ScheduleStore for B {
    async fn get_schedule(&self) -> Result<Option<ScheduleRow>, StorageError> {
        let row = sqlx::query(
            "SELECT cron, retention_secs, updated_at, cron_since FROM schedule WHERE id = 1",
        )
        .opt(self.pool())
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let updated_at = row.at(2)?;
        let cron_since: Option<DateTime<Utc>> = row.at(3)?;
        Ok(Some(ScheduleRow {
            cron: row.at(0)?,
            retention_secs: row.at(1)?,
            updated_at,
            cron_since: cron_since.unwrap_or(updated_at),
        }))
    }

    async fn put_schedule(
        &self,
        s: &ScheduleRow,
        event: Option<&NewEvent>,
    ) -> Result<(), StorageError> {
        let mut tx = begin(self).await?;
        let sql = if event.is_some() {
            "INSERT INTO schedule (id, cron, retention_secs, updated_at, cron_since) \
             VALUES (1, $1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET cron = $1, retention_secs = $2, \
               updated_at = $3, cron_since = $4"
        } else {
            "INSERT INTO schedule (id, cron, retention_secs, updated_at, cron_since) \
             VALUES (1, $1, $2, $3, $4) ON CONFLICT (id) DO NOTHING"
        };
        sqlx::query(sql)
            .arg(&s.cron)
            .arg(s.retention_secs)
            .arg(s.updated_at)
            .arg(s.cron_since)
            .exec(&mut tx)
            .await?;
        if let Some(event) = event {
            append_event_tx(self, &mut tx, event, s.updated_at).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn last_slot(&self, job: &str) -> Result<Option<(DateTime<Utc>, String)>, StorageError> {
        let row = sqlx::query("SELECT last_slot, claimed_by FROM scheduler_slots WHERE job = $1")
            .arg(job)
            .opt(self.pool())
            .await?;
        Ok(row
            .map(|row| Ok::<_, sqlx::Error>((row.at(0)?, row.at(1)?)))
            .transpose()?)
    }

    async fn claim_slot(&self, claim: &SlotClaim, at: DateTime<Utc>) -> Result<bool, StorageError> {
        let mut tx = begin(self).await?;
        let claimed = claim_slot_tx(&mut tx, claim, at).await?;
        tx.commit().await?;
        Ok(claimed)
    }
}
