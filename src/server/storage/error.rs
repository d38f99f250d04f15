//! What can go wrong in storage, and which failures mean "the database is unavailable".

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The SQLite file this process opened was deleted or replaced underneath it.
    #[error("database file {} was removed or replaced", .0.display())]
    FileReplaced(std::path::PathBuf),
    #[error(
        "the database has migration {0}, which this version of Signet does not know; \
         it was migrated by a newer Signet"
    )]
    NewerSchema(i64),
    #[error("migration {0} was changed after it was applied (checksum mismatch)")]
    ChangedMigration(i64),
    #[error("migration {0} failed earlier and left the database dirty; fix it by hand")]
    DirtyMigration(i64),
    /// Another writer changed the keys between planning and applying.
    #[error("the keys changed concurrently; try again")]
    Conflict,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Another instance already claimed this scheduled slot (or a later one).
    #[error("the scheduled slot was already handled")]
    SlotTaken,
    /// Audit events are authenticated with a key derived from the KEK; a process without
    /// one cannot write them.
    #[error("audit events cannot be written without a key-encryption key")]
    NoAuditKey,
}

/// What callers tell a client when the database cannot be reached.
pub const UNAVAILABLE_MESSAGE: &str = "the database is unavailable; try again";

impl StorageError {
    /// Whether the database could not be reached or could not take the work right now
    /// (down, restarting, out of connections, locked), as opposed to refusing a query.
    /// Such failures are answered with 503 and [`UNAVAILABLE_MESSAGE`], not 500.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StorageError::Unavailable(_) | StorageError::FileReplaced(_) => true,
            StorageError::Database(e) => sqlx_unavailable(e),
            _ => false,
        }
    }

    /// A short account of an unreachable database for anyone to read (readiness): no
    /// driver error, path or host name.
    pub fn public_reason(&self) -> &'static str {
        match self {
            StorageError::FileReplaced(_) => "database file removed or replaced",
            _ => "database unreachable",
        }
    }
}

fn sqlx_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            if db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some()
            {
                // Connection exceptions (class 08), shutting down or starting (57P01 to
                // 57P03), too many connections (53300), the database dropped (3D000).
                code.starts_with("08")
                    || matches!(
                        code.as_ref(),
                        "57P01" | "57P02" | "57P03" | "53300" | "3D000"
                    )
            } else {
                // SQLite's primary result code: busy, locked, I/O error, cannot open.
                code.parse::<i64>()
                    .is_ok_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 14))
            }
        }
        _ => false,
    }
}

/// A unique-index violation means another writer got there first: a `Conflict`, which
/// callers retry or report, not a database failure.
pub(super) fn unique_is_conflict(e: sqlx::Error) -> StorageError {
    match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StorageError::Conflict,
        other => other.into(),
    }
}

pub(super) fn corrupt(what: &str, value: &str) -> StorageError {
    StorageError::Corrupt(format!("{what} '{value}'"))
}
