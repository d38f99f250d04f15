//! The database itself: which engine, whether it answers, its migrations, what identifies
//! the installation, and closing the pool.

use super::StorageError;
use super::sql::{Col as _, Dialect, QueryExt as _, Run, SqlBackend};
use crate::server::config::Backend;
use async_trait::async_trait;
use sqlx::migrate::Migrator;

#[async_trait]
pub trait Lifecycle: Send + Sync {
    fn backend(&self) -> Backend;

    /// Succeeds when the database answers a query; the readiness check.
    async fn ping(&self) -> Result<(), StorageError>;

    /// Migrations this binary carries that the database has not applied yet. Fails if the
    /// database was migrated by a newer binary or an applied migration has changed.
    async fn pending_migrations(&self) -> Result<Vec<PendingMigration>, StorageError>;

    /// Applies every pending migration; returns how many were applied.
    async fn migrate(&self) -> Result<usize, StorageError>;

    async fn instance_info(&self) -> Result<InstanceInfo, StorageError>;

    /// Closes the pool, waiting for connections in use to be returned.
    async fn close(&self);
}

/// A migration known to this binary but not yet applied to the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingMigration {
    pub version: i64,
    pub description: String,
}

/// What identifies the installation behind the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    pub installation_id: String,
    pub created_at: String,
    pub schema_version: i64,
}

/// A migration row as both engines record it in `_sqlx_migrations`.
struct AppliedMigration {
    version: i64,
    checksum: Vec<u8>,
    success: bool,
}

/// Compares what the database has applied with what this binary carries.
fn compare_migrations(
    migrator: &Migrator,
    applied: &[AppliedMigration],
) -> Result<Vec<PendingMigration>, StorageError> {
    for row in applied {
        if !row.success {
            return Err(StorageError::DirtyMigration(row.version));
        }
        match migrator.iter().find(|m| m.version == row.version) {
            None => return Err(StorageError::NewerSchema(row.version)),
            Some(m) if *m.checksum != *row.checksum => {
                return Err(StorageError::ChangedMigration(row.version));
            }
            Some(_) => {}
        }
    }
    Ok(migrator
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .filter(|m| !applied.iter().any(|a| a.version == m.version))
        .map(|m| PendingMigration {
            version: m.version,
            description: m.description.to_string(),
        })
        .collect())
}

#[async_trait]
impl<B: SqlBackend> Lifecycle for B {
    fn backend(&self) -> Backend {
        <B::DB as Dialect>::BACKEND
    }

    async fn ping(&self) -> Result<(), StorageError> {
        self.check_identity()?;
        sqlx::query("SELECT 1").exec(self.pool()).await?;
        Ok(())
    }

    async fn pending_migrations(&self) -> Result<Vec<PendingMigration>, StorageError> {
        let exists: bool = sqlx::query(<B::DB as Dialect>::MIGRATIONS_EXIST)
            .one(self.pool())
            .await?
            .at(0)?;
        let mut applied = Vec::new();
        if exists {
            let rows = sqlx::query(
                "SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version",
            )
            .all(self.pool())
            .await?;
            for row in rows {
                applied.push(AppliedMigration {
                    version: row.at(0)?,
                    checksum: row.at(1)?,
                    success: row.at(2)?,
                });
            }
        }
        compare_migrations(<B::DB as Dialect>::MIGRATOR, &applied)
    }

    async fn migrate(&self) -> Result<usize, StorageError> {
        let pending = self.pending_migrations().await?.len();
        // On PostgreSQL sqlx takes an advisory lock, so instances migrating at once do
        // not collide.
        <B::DB as Run>::migrate(<B::DB as Dialect>::MIGRATOR, self.pool()).await?;
        Ok(pending)
    }

    async fn instance_info(&self) -> Result<InstanceInfo, StorageError> {
        let row = sqlx::query(<B::DB as Dialect>::INSTANCE_INFO)
            .one(self.pool())
            .await?;
        Ok(InstanceInfo {
            installation_id: row.col("installation_id")?,
            created_at: row.col("created_at")?,
            schema_version: row.col("schema_version")?,
        })
    }

    async fn close(&self) {
        self.pool().close().await;
    }
}
