//! Storage: one trait, a SQLite and a PostgreSQL implementation.
//!
//! The rest of the server talks to `dyn Storage` only. Whatever differs between the two
//! engines (SQL dialect, how a file or a server goes away, how migrations are looked up)
//! stays inside the two implementations.

mod postgres;
mod sqlite;

use crate::server::config::{Backend, DatabaseUrl};
use async_trait::async_trait;
use sqlx::migrate::Migrator;
use std::sync::Arc;

pub use postgres::PostgresStorage;
pub use sqlite::SqliteStorage;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error(
        "the database has migration {0}, which this version of Signet does not know; \
         it was migrated by a newer Signet"
    )]
    NewerSchema(i64),
    #[error("migration {0} was changed after it was applied (checksum mismatch)")]
    ChangedMigration(i64),
    #[error("migration {0} failed earlier and left the database dirty; fix it by hand")]
    DirtyMigration(i64),
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

#[async_trait]
pub trait Storage: Send + Sync + 'static {
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

/// Opens the database a URL names. For SQLite this creates the file (and its directory)
/// when missing; for PostgreSQL the database must exist.
pub async fn connect(url: &DatabaseUrl) -> Result<Arc<dyn Storage>, StorageError> {
    Ok(match url.backend() {
        Backend::Sqlite => Arc::new(SqliteStorage::connect(url).await?),
        Backend::Postgres => Arc::new(PostgresStorage::connect(url).await?),
    })
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
