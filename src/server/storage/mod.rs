//! Storage: one trait, a SQLite and a PostgreSQL implementation.
//!
//! The rest of the server talks to `dyn Storage` only. Whatever differs between the two
//! engines (SQL dialect, how a file or a server goes away, how migrations are looked up)
//! stays inside the two implementations.

mod postgres;
mod shared;
mod sqlite;

use crate::domain::{Algorithm, Email, KeyInfo, KeyState, Kid, Role, Transition};
use crate::server::audit::{NewEvent, StoredEvent};
use crate::server::config::{Backend, DatabaseUrl};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
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

/// What a backend keeps to key the audit chain: the MAC keys (once the KEK is loaded)
/// and whether this process has already looked for old events to key.
#[derive(Debug, Default)]
pub struct AuditKeyState {
    keys: std::sync::RwLock<Option<Arc<crate::server::audit::AuditKeys>>>,
    looked: std::sync::atomic::AtomicBool,
}

impl AuditKeyState {
    fn set(&self, keys: crate::server::audit::AuditKeys) {
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(keys));
    }

    fn get(&self) -> Option<Arc<crate::server::audit::AuditKeys>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What keying the pre-existing audit chain did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedChain {
    /// How many old events were given their MAC.
    pub events: u64,
    pub kek_id: String,
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

/// A signing key as stored: metadata, public JWK, and the sealed private half (gone once
/// the key is revoked or expired).
#[derive(Clone)]
pub struct StoredKey {
    pub info: KeyInfo,
    pub public_jwk: String,
    pub sealed: Option<Vec<u8>>,
    pub kek_id: Option<String>,
    pub revoke_reason: Option<String>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("info", &self.info)
            .field("kek_id", &self.kek_id)
            .field("sealed", &self.sealed.as_ref().map(|_| "REDACTED"))
            .finish()
    }
}

/// A freshly generated key to insert, already sealed.
#[derive(Clone)]
pub struct NewKey {
    pub kid: Kid,
    pub alg: Algorithm,
    pub state: KeyState,
    pub public_jwk: String,
    pub sealed: Vec<u8>,
    pub kek_id: String,
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

/// Everything one lifecycle operation writes, in one transaction: state transitions (each
/// applied only if the key is still in its `from` state), new keys, and audit events.
/// With a `claim`, the change happens only if the slot is still free (`SlotTaken`).
#[derive(Clone)]
pub struct KeyChange {
    pub now: DateTime<Utc>,
    pub transitions: Vec<Transition>,
    pub new_keys: Vec<NewKey>,
    pub reason: Option<String>,
    pub events: Vec<NewEvent>,
    pub claim: Option<SlotClaim>,
}

impl KeyChange {
    /// Keys leave `active`/`next` before others enter them, so the one-active and one-next
    /// unique indexes hold at every statement, not only at commit.
    pub fn ordered_transitions(&self) -> Vec<&Transition> {
        let mut t: Vec<&Transition> = self.transitions.iter().collect();
        t.sort_by_key(|t| matches!(t.to, KeyState::Active | KeyState::Next));
        t
    }
}

/// A sealed private key re-wrapped under another KEK.
pub struct Resealed {
    pub kid: Kid,
    pub old_kek_id: String,
    pub sealed: Vec<u8>,
    pub kek_id: String,
}

/// An API token as stored (the secret itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenRow {
    pub id: String,
    pub name: String,
    pub secret_hash: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
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

/// What one pass of audit-log pruning did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrunedEvents {
    pub deleted: u64,
    /// Whether older events remain (the pass stopped at its batch size).
    pub more: bool,
}

/// Filters for reading the audit log, newest first, with keyset pagination.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub level: Option<String>,
    pub kind: Option<String>,
    pub actor: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Only events with a smaller id (the cursor of the previous page).
    pub before_id: Option<i64>,
    /// Only events with a larger id (what is new since the last look: the live tail).
    /// Without `before_id`, these come oldest first.
    pub after_id: Option<i64>,
    pub limit: i64,
}

impl EventQuery {
    /// Whether an event passes the filters (ids and limit aside); the live tail applies
    /// the same filters to events as they arrive.
    pub fn matches(&self, e: &StoredEvent) -> bool {
        self.level.as_ref().is_none_or(|l| *l == e.level)
            && self.kind.as_ref().is_none_or(|k| *k == e.kind)
            && self.actor.as_ref().is_none_or(|a| *a == e.actor)
            && self.since.is_none_or(|t| e.at >= t)
            && self.until.is_none_or(|t| e.at < t)
    }
}

/// An admin account as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminRow {
    pub id: String,
    pub email: Email,
    pub role: Role,
    /// An argon2id PHC string.
    pub password_hash: String,
    /// Set for a generated one-time password: the admin must choose a new one first.
    pub must_change_password: bool,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub last_login_at: Option<DateTime<Utc>>,
    /// Sessions that began before this are over (password reset, disabling).
    pub sessions_valid_after: DateTime<Utc>,
    /// When a generated one-time password stops working (none for a chosen password).
    pub password_expires_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for AdminRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminRow")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("role", &self.role)
            .field("password_hash", &"REDACTED")
            .field("must_change_password", &self.must_change_password)
            .field("disabled_at", &self.disabled_at)
            .field("password_expires_at", &self.password_expires_at)
            .finish_non_exhaustive()
    }
}

/// A change to an admin account, with the event that records it.
#[derive(Debug, Clone)]
pub enum AdminChange {
    /// A new password hash; `must_change` for a generated one-time password. With
    /// `end_sessions`, every session begun before the change is over. `expires_at`: when
    /// a one-time password stops working.
    Password {
        hash: String,
        must_change: bool,
        end_sessions: bool,
        expires_at: Option<DateTime<Utc>>,
    },
    Disabled(bool),
    SignedIn,
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

    /// Every key, in creation order.
    async fn list_keys(&self) -> Result<Vec<StoredKey>, StorageError>;

    /// Applies a lifecycle change atomically. Fails with `Conflict`, changing nothing, when
    /// a key is no longer in the state the plan expected.
    async fn apply_key_change(&self, change: &KeyChange) -> Result<(), StorageError>;

    /// Replaces sealed private keys (KEK rotation), with its audit event, atomically.
    async fn reseal_keys(&self, keys: &[Resealed], event: &NewEvent) -> Result<(), StorageError>;

    /// Records the latest `exp` of a token signed with a key (only ever moves forward).
    async fn record_token_exp(&self, kid: &Kid, exp: DateTime<Utc>) -> Result<(), StorageError>;

    /// A counter bumped by every key change; other processes poll it.
    async fn key_version(&self) -> Result<i64, StorageError>;

    /// Sends on `changed` whenever another connection reports a key change, for backends
    /// that can push (PostgreSQL NOTIFY). Returns when it cannot listen any more; the
    /// default never pushes, and the caller's polling covers it.
    async fn listen_key_changes(
        &self,
        changed: tokio::sync::mpsc::Sender<()>,
    ) -> Result<(), StorageError> {
        changed.closed().await;
        Ok(())
    }

    async fn list_events(&self, query: &EventQuery) -> Result<Vec<StoredEvent>, StorageError>;

    /// Stores a new API token with its audit event. `Conflict` if the name is taken.
    async fn create_api_token(
        &self,
        token: &ApiTokenRow,
        event: &NewEvent,
    ) -> Result<(), StorageError>;

    async fn find_api_token(&self, id: &str) -> Result<Option<ApiTokenRow>, StorageError>;

    async fn get_schedule(&self) -> Result<Option<ScheduleRow>, StorageError>;

    /// The latest slot a scheduled job has claimed, and by which instance.
    async fn last_slot(&self, job: &str) -> Result<Option<(DateTime<Utc>, String)>, StorageError>;

    /// Claims a slot on its own (work that is idempotent and needs no shared
    /// transaction). `false` when this slot or a later one was already claimed.
    async fn claim_slot(&self, claim: &SlotClaim, at: DateTime<Utc>) -> Result<bool, StorageError>;

    /// Deletes the records of `revoked` and of `expired` keys beyond the newest `keep` of
    /// each state per algorithm, with `event` (its kids filled in) in the same
    /// transaction. Returns the kids deleted; none, and no event, when nothing was over.
    async fn prune_retired_keys(
        &self,
        keep: usize,
        event: &NewEvent,
    ) -> Result<Vec<String>, StorageError>;

    /// Deletes up to `batch` of the oldest audit events, those before the first event at
    /// or after `before`. The same transaction appends `event` with details naming where
    /// the chain now starts (`first_kept_id`, and `anchor`, the hash that event follows),
    /// so `audit verify` still proves nothing else was removed.
    async fn prune_events(
        &self,
        before: DateTime<Utc>,
        batch: i64,
        event: &NewEvent,
    ) -> Result<PrunedEvents, StorageError>;

    /// Writes the schedule; with an event, in the same transaction. Without one (the
    /// first start seeding it), only if no schedule is stored yet.
    async fn put_schedule(
        &self,
        row: &ScheduleRow,
        event: Option<&NewEvent>,
    ) -> Result<(), StorageError>;

    /// Appends one event on its own (sign-ins, sign-outs: changes with no other row).
    async fn append_event(&self, event: &NewEvent) -> Result<(), StorageError>;

    /// Every API token, newest first.
    async fn list_api_tokens(&self) -> Result<Vec<ApiTokenRow>, StorageError>;

    /// Marks a token revoked, with its event. `false` if there is no such live token.
    async fn revoke_api_token(
        &self,
        id: &str,
        at: DateTime<Utc>,
        event: &NewEvent,
    ) -> Result<bool, StorageError>;

    async fn count_admins(&self) -> Result<i64, StorageError>;

    /// Every admin, by email.
    async fn list_admins(&self) -> Result<Vec<AdminRow>, StorageError>;

    async fn find_admin(&self, id: &str) -> Result<Option<AdminRow>, StorageError>;

    async fn find_admin_by_email(&self, email: &Email) -> Result<Option<AdminRow>, StorageError>;

    /// Stores a new admin with its event. `Conflict` if the email is taken. With
    /// `only_if_none`, does nothing and returns `false` when any admin exists (the first
    /// start, which several instances may race through).
    async fn create_admin(
        &self,
        admin: &AdminRow,
        only_if_none: bool,
        event: &NewEvent,
    ) -> Result<bool, StorageError>;

    /// Applies a change to an admin, with its event. `false` if there is no such admin.
    async fn change_admin(
        &self,
        id: &str,
        change: &AdminChange,
        at: DateTime<Utc>,
        event: &NewEvent,
    ) -> Result<bool, StorageError>;

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

    /// The whole chain in id order and the head (last id, last hash), for verification.
    async fn audit_chain(&self) -> Result<(Vec<StoredEvent>, i64, String), StorageError> {
        let log = self.audit_log().await?;
        Ok((log.events, log.head_id, log.head_hash))
    }

    /// The whole log with its head and where the keyed chain begins, from one snapshot.
    async fn audit_log(&self) -> Result<crate::server::audit::AuditLog, StorageError>;

    /// Gives the storage the MAC keys of the audit chain (derived from the KEKs). Until
    /// then, appending an event fails with `NoAuditKey`; reading never needs them.
    fn set_audit_keys(&self, keys: crate::server::audit::AuditKeys);

    /// Gives the events from before the chain was keyed their MACs, in one transaction
    /// with an `audit.keyed` event, after checking their hash chain. `None` when there is
    /// nothing to key; `Corrupt` (nothing written) when the chain is broken, which is
    /// never blessed with MACs. Writers do this by themselves before their first event.
    async fn key_audit_chain(&self) -> Result<Option<KeyedChain>, StorageError>;

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
