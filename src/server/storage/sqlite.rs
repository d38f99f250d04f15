//! SQLite storage: the zero-configuration default, one file under the data directory.

use super::StorageError;
use super::sql::{Core, Dialect, SqlBackend};
use crate::server::config::{Backend, DatabaseUrl};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteQueryResult,
    SqliteSynchronous,
};
use std::path::PathBuf;
use std::str::FromStr as _;
use std::time::Duration;

static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

pub struct SqliteStorage {
    core: Core<sqlx::Sqlite>,
    file: PathBuf,
    /// Device and inode of the file when it was opened. Open connections keep working on
    /// a deleted or replaced file, so readiness compares these to notice that the
    /// database the service writes to is no longer the one at the configured path.
    identity: Option<(u64, u64)>,
}

impl SqliteStorage {
    pub async fn connect(url: &DatabaseUrl) -> Result<Self, StorageError> {
        let file = url
            .sqlite_file()
            .ok_or_else(|| StorageError::Unavailable("not a SQLite file URL".into()))?;
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::server::files::create_private_dir_all(dir).map_err(|e| {
                StorageError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        // Mode 0600 before SQLite sees it, so its -wal and -shm are created 0600 too.
        crate::server::files::prepare_private_db(&file).map_err(|e| {
            StorageError::Unavailable(format!("cannot create {}: {e}", file.display()))
        })?;
        let options = SqliteConnectOptions::from_str(url.as_str())?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            // Several processes may share the file (CLI next to a server): wait for locks
            // rather than failing at once.
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        // An existing -wal or -shm that SQLite reused keeps its mode: tighten it now.
        crate::server::files::tighten_db_files(&file).map_err(|e| {
            StorageError::Unavailable(format!("cannot restrict {}: {e}", file.display()))
        })?;
        let identity = file_identity(&file);
        Ok(Self {
            core: Core::new(pool),
            file,
            identity,
        })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.core.pool
    }
}

#[cfg(unix)]
fn file_identity(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_identity(_path: &std::path::Path) -> Option<(u64, u64)> {
    None
}

impl SqlBackend for SqliteStorage {
    type DB = sqlx::Sqlite;

    fn core(&self) -> &Core<sqlx::Sqlite> {
        &self.core
    }

    fn check_identity(&self) -> Result<(), StorageError> {
        if self.identity.is_some() && file_identity(&self.file) != self.identity {
            return Err(StorageError::FileReplaced(self.file.clone()));
        }
        Ok(())
    }
}

impl Dialect for sqlx::Sqlite {
    const BACKEND: Backend = Backend::Sqlite;
    // BEGIN IMMEDIATE takes the write lock up front: two processes on one file then
    // queue on busy_timeout instead of failing when a read lock cannot be upgraded.
    const BEGIN: &'static str = "BEGIN IMMEDIATE";
    const READ_SNAPSHOT: &'static str = "BEGIN";
    // Every writer holds the file's write lock (BEGIN IMMEDIATE), which serializes
    // appenders already.
    const LOCK_HEAD: &'static str = "SELECT last_id, last_hash FROM audit_head WHERE id = 1";
    const MIGRATIONS_EXIST: &'static str = "SELECT EXISTS (SELECT 1 FROM sqlite_master \
         WHERE type = 'table' AND name = '_sqlx_migrations')";
    const NOTIFY: Option<&'static str> = None;
    const INSTANCE_INFO: &'static str = "SELECT installation_id, created_at, \
         (SELECT MAX(version) FROM _sqlx_migrations WHERE success) AS schema_version \
         FROM instance WHERE id = 1";
    const MIGRATOR: &'static Migrator = &MIGRATOR;

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }
}
