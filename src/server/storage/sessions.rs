//! Sign-in sessions, and the counters and locks that throttle failed sign-ins.

use super::StorageError;
use super::sql::{Col as _, QueryExt as _, SqlBackend};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

#[async_trait]
pub trait SessionStore: Send + Sync {
    /// A session record (JSON) that has not expired.
    async fn load_session(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StorageError>;

    /// Inserts a session record (`create`; an existing id is left alone and `false`
    /// returned, so the caller picks another id) or updates one that still exists.
    async fn save_session(
        &self,
        id: &str,
        record: &str,
        expires_at: DateTime<Utc>,
        create: bool,
    ) -> Result<bool, StorageError>;

    async fn delete_session(&self, id: &str) -> Result<(), StorageError>;

    /// Deletes expired sessions and stale sign-in counters; returns the sessions deleted.
    async fn prune_sessions(&self, now: DateTime<Utc>) -> Result<u64, StorageError>;

    /// Counts a failed sign-in under `key` and returns the failures in the current window
    /// (which starts afresh when the last one began before `window_start`).
    async fn count_login_failure(
        &self,
        key: &str,
        now: DateTime<Utc>,
        window_start: DateTime<Utc>,
    ) -> Result<i64, StorageError>;

    async fn lock_login(&self, key: &str, until: DateTime<Utc>) -> Result<(), StorageError>;

    /// The latest lock among `keys`, if any is still locked at `now`.
    async fn login_locked_until(
        &self,
        keys: &[String],
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StorageError>;

    async fn clear_login_failures(&self, key: &str) -> Result<(), StorageError>;

    /// Deletes every sign-in counter and lock whose key starts with `prefix`.
    async fn clear_login_failures_with_prefix(&self, prefix: &str) -> Result<(), StorageError>;

    /// Takes back one counted attempt (a sign-in that turned out right).
    async fn forgive_login_failure(&self, key: &str) -> Result<(), StorageError>;
}

/// Runs a statement whose one parameter is a session id or a sign-in key.
async fn execute_for<B: SqlBackend>(backend: &B, sql: &str, key: &str) -> Result<(), StorageError> {
    sqlx::query(sql).arg(key).exec(backend.pool()).await?;
    Ok(())
}

#[async_trait]
impl<B: SqlBackend> SessionStore for B {
    async fn load_session(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StorageError> {
        let row = sqlx::query("SELECT record FROM sessions WHERE id = $1 AND expires_at > $2")
            .arg(id)
            .arg(now)
            .opt(self.pool())
            .await?;
        Ok(row.map(|row| row.at(0)).transpose()?)
    }

    async fn save_session(
        &self,
        id: &str,
        record: &str,
        expires_at: DateTime<Utc>,
        create: bool,
    ) -> Result<bool, StorageError> {
        let sql = if create {
            "INSERT INTO sessions (id, record, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO NOTHING"
        } else {
            // Only a session that still exists is updated: a request that loaded it
            // before a sign-out must not bring it back.
            "UPDATE sessions SET record = $2, expires_at = $3 WHERE id = $1"
        };
        let done = sqlx::query(sql)
            .arg(id)
            .arg(record)
            .arg(expires_at)
            .exec(self.pool())
            .await?;
        Ok(done == 1)
    }

    async fn delete_session(&self, id: &str) -> Result<(), StorageError> {
        execute_for(self, "DELETE FROM sessions WHERE id = $1", id).await
    }

    async fn prune_sessions(&self, now: DateTime<Utc>) -> Result<u64, StorageError> {
        let gone = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
            .arg(now)
            .exec(self.pool())
            .await?;
        sqlx::query(
            "DELETE FROM login_throttle WHERE window_start < $1 \
               AND (locked_until IS NULL OR locked_until < $2)",
        )
        .arg(now - chrono::Duration::days(1))
        .arg(now)
        .exec(self.pool())
        .await?;
        Ok(gone)
    }

    async fn count_login_failure(
        &self,
        key: &str,
        now: DateTime<Utc>,
        window_start: DateTime<Utc>,
    ) -> Result<i64, StorageError> {
        // One statement, so parallel attempts cannot lose a count.
        let row = sqlx::query(
            "INSERT INTO login_throttle (key, failures, window_start) VALUES ($1, 1, $2) \
             ON CONFLICT (key) DO UPDATE SET \
               failures = CASE WHEN login_throttle.window_start < $3 THEN 1 \
                               ELSE login_throttle.failures + 1 END, \
               window_start = CASE WHEN login_throttle.window_start < $3 THEN $2 \
                                   ELSE login_throttle.window_start END \
             RETURNING failures",
        )
        .arg(key)
        .arg(now)
        .arg(window_start)
        .one(self.pool())
        .await?;
        let failures: i32 = row.at(0)?;
        Ok(i64::from(failures))
    }

    async fn lock_login(&self, key: &str, until: DateTime<Utc>) -> Result<(), StorageError> {
        sqlx::query("UPDATE login_throttle SET locked_until = $1 WHERE key = $2")
            .arg(until)
            .arg(key)
            .exec(self.pool())
            .await?;
        Ok(())
    }

    async fn login_locked_until(
        &self,
        keys: &[String],
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StorageError> {
        let mut latest = None;
        for key in keys {
            let row = sqlx::query(
                "SELECT locked_until FROM login_throttle WHERE key = $1 AND locked_until > $2",
            )
            .arg(key)
            .arg(now)
            .opt(self.pool())
            .await?;
            let until: Option<Option<DateTime<Utc>>> = row.map(|row| row.at(0)).transpose()?;
            latest = latest.max(until.flatten());
        }
        Ok(latest)
    }

    async fn clear_login_failures(&self, key: &str) -> Result<(), StorageError> {
        execute_for(self, "DELETE FROM login_throttle WHERE key = $1", key).await
    }

    async fn clear_login_failures_with_prefix(&self, prefix: &str) -> Result<(), StorageError> {
        // Not LIKE: an email may hold '_' or '%'.
        let sql = "DELETE FROM login_throttle WHERE substr(key, 1, length($1)) = $1";
        execute_for(self, sql, prefix).await
    }

    async fn forgive_login_failure(&self, key: &str) -> Result<(), StorageError> {
        let sql = "UPDATE login_throttle SET failures = failures - 1 \
                   WHERE key = $1 AND failures > 0";
        execute_for(self, sql, key).await
    }
}
