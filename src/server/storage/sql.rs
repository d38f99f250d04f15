//! The sqlx layer the shared queries are written against, and what differs per backend.
//!
//! sqlx binds `$1`-style parameters on SQLite as well as PostgreSQL, and both store the
//! same Rust types here, so every query is written once, generically over the database,
//! and runs on both. What differs in SQL (how a transaction takes its write lock, how the
//! audit head is locked, how other instances are told of a change, how the migrations
//! table is looked up) is a constant of the database's [`Dialect`]. What a backend does
//! on its own (opening its file or server, noticing a replaced file, listening for
//! changes) sits in its [`SqlBackend`] impl, in `sqlite.rs` and `postgres.rs`.
//!
//! Why the helper traits: generic code over `DB: sqlx::Database` needs sqlx's bounds
//! (`for<'q> String: Encode<'q, DB>`, `for<'c> &'c mut DB::Connection: Executor<'c>`, ...)
//! restated on every impl that uses it, because Rust does not carry where-clauses like
//! these from a trait to its users. Bounds on the database itself (supertraits) and on
//! its associated types are carried. So [`Bind`], [`Col`] and [`Run`] restate what sqlx
//! can do with the database (or its row type) as the subject; their blanket impls carry
//! sqlx's bounds, once; and [`Dialect`] lists, as supertraits, the capabilities the shared
//! code uses. Shared code then calls `.arg(v)`, `.exec(on)`, `.all(on)`, `.opt(on)` and
//! `.one(on)` ([`QueryExt`]) where it would call sqlx's `bind`, `execute` and `fetch_*`,
//! and `row.col(name)` / `row.at(index)` where it would call `try_get`. A query runs on
//! anything that can `Acquire` a connection: `&Pool` or `&mut Transaction`.
//!
//! Timestamps: PostgreSQL stores `TIMESTAMPTZ`; SQLite stores sqlx's RFC 3339 text
//! (`...:SS[.fff...]+00:00`, always UTC). Comparisons in the shared queries
//! (`expires_at > $2`, `at >= $4`) are then text comparisons on SQLite, which order
//! correctly because every value has the same offset and '+' sorts before '.', which
//! sorts before any digit.

use super::StorageError;
use crate::server::audit::AuditKeys;
use crate::server::config::Backend;
use chrono::{DateTime, Utc};
use sqlx::migrate::{Migrate, MigrateError, Migrator};
use sqlx::query::Query;
use sqlx::{
    Acquire, ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type,
};
use std::future::Future;

/// Where a query runs: a `&Pool` or a `&mut Transaction`, anything that can `Acquire` a
/// connection.
pub(super) trait On<'c, DB: Database>: Acquire<'c, Database = DB> + Send {}

impl<'c, DB: Database, A: Acquire<'c, Database = DB> + Send> On<'c, DB> for A {}

/// A query as the shared code builds it.
pub(super) type Q<'q, DB> = Query<'q, DB, <DB as Database>::Arguments<'q>>;

/// A transaction as the shared code opens it.
pub(super) type Tx<DB> = sqlx::Transaction<'static, DB>;

/// The database can bind a `T` into a query.
pub(super) trait Bind<'q, T>: Database {
    fn bind(query: Q<'q, Self>, value: T) -> Q<'q, Self>;
}

impl<'q, DB: Database, T> Bind<'q, T> for DB
where
    T: 'q + Encode<'q, DB> + Type<DB>,
{
    fn bind(query: Q<'q, Self>, value: T) -> Q<'q, Self> {
        query.bind(value)
    }
}

/// A row can decode a `T` from a column, by name or by position.
pub(super) trait Col<T> {
    fn col(&self, name: &str) -> Result<T, sqlx::Error>;
    fn at(&self, index: usize) -> Result<T, sqlx::Error>;
}

impl<R: Row, T> Col<T> for R
where
    T: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    for<'a> &'a str: ColumnIndex<R>,
    usize: ColumnIndex<R>,
{
    fn col(&self, name: &str) -> Result<T, sqlx::Error> {
        self.try_get(name)
    }

    fn at(&self, index: usize) -> Result<T, sqlx::Error> {
        self.try_get(index)
    }
}

/// The database can run a query where a connection can be acquired, and migrate a pool.
pub(super) trait Run: Database {
    fn execute<'q, 'c>(
        query: Q<'q, Self>,
        on: impl On<'c, Self>,
    ) -> impl Future<Output = Result<Self::QueryResult, sqlx::Error>> + Send;

    fn fetch_all<'q, 'c>(
        query: Q<'q, Self>,
        on: impl On<'c, Self>,
    ) -> impl Future<Output = Result<Vec<Self::Row>, sqlx::Error>> + Send;

    fn fetch_optional<'q, 'c>(
        query: Q<'q, Self>,
        on: impl On<'c, Self>,
    ) -> impl Future<Output = Result<Option<Self::Row>, sqlx::Error>> + Send;

    fn migrate<'a>(
        migrator: &'a Migrator,
        pool: &'a Pool<Self>,
    ) -> impl Future<Output = Result<(), MigrateError>> + Send;
}

impl<DB: Database> Run for DB
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    DB::Connection: Migrate,
{
    async fn execute<'q, 'c>(
        query: Q<'q, Self>,
        on: impl On<'c, Self>,
    ) -> Result<DB::QueryResult, sqlx::Error> {
        let mut conn = on.acquire().await?;
        query.execute(&mut *conn).await
    }

    async fn fetch_all<'q, 'c>(
        query: Q<'q, Self>,
        on: impl On<'c, Self>,
    ) -> Result<Vec<DB::Row>, sqlx::Error> {
        let mut conn = on.acquire().await?;
        query.fetch_all(&mut *conn).await
    }

    async fn fetch_optional<'q, 'c>(
        query: Q<'q, Self>,
        on: impl On<'c, Self>,
    ) -> Result<Option<DB::Row>, sqlx::Error> {
        let mut conn = on.acquire().await?;
        query.fetch_optional(&mut *conn).await
    }

    async fn migrate<'a>(migrator: &'a Migrator, pool: &'a Pool<Self>) -> Result<(), MigrateError> {
        migrator.run(pool).await
    }
}

/// Running a query through [`Run`], binding through [`Bind`]: the shared code's stand-ins
/// for sqlx's `bind`, `execute`, `fetch_all`, `fetch_optional` and `fetch_one`.
pub(super) trait QueryExt<'q, DB: Dialect>: Sized {
    fn arg<T>(self, value: T) -> Self
    where
        DB: Bind<'q, T>;

    /// Runs the statement; how many rows it changed.
    fn exec<'c>(self, on: impl On<'c, DB>)
    -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

    fn all<'c>(
        self,
        on: impl On<'c, DB>,
    ) -> impl Future<Output = Result<Vec<DB::Row>, sqlx::Error>> + Send;

    fn opt<'c>(
        self,
        on: impl On<'c, DB>,
    ) -> impl Future<Output = Result<Option<DB::Row>, sqlx::Error>> + Send;

    /// The one row the query returns; `RowNotFound` without one, as sqlx's `fetch_one`.
    fn one<'c>(
        self,
        on: impl On<'c, DB>,
    ) -> impl Future<Output = Result<DB::Row, sqlx::Error>> + Send {
        let row = self.opt(on);
        async move { row.await?.ok_or(sqlx::Error::RowNotFound) }
    }
}

impl<'q, DB: Dialect> QueryExt<'q, DB> for Q<'q, DB> {
    fn arg<T>(self, value: T) -> Self
    where
        DB: Bind<'q, T>,
    {
        DB::bind(self, value)
    }

    fn exec<'c>(
        self,
        on: impl On<'c, DB>,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send {
        let result = DB::execute(self, on);
        async move { Ok(DB::rows_affected(&result.await?)) }
    }

    fn all<'c>(
        self,
        on: impl On<'c, DB>,
    ) -> impl Future<Output = Result<Vec<DB::Row>, sqlx::Error>> + Send {
        DB::fetch_all(self, on)
    }

    fn opt<'c>(
        self,
        on: impl On<'c, DB>,
    ) -> impl Future<Output = Result<Option<DB::Row>, sqlx::Error>> + Send {
        DB::fetch_optional(self, on)
    }
}

/// A database the shared SQL runs on: the values it binds and decodes (supertraits), and
/// the few statements that differ between engines.
pub(super) trait Dialect:
    Run
    + for<'q> Bind<'q, &'q str>
    + for<'q> Bind<'q, &'q String>
    + for<'q> Bind<'q, String>
    + for<'q> Bind<'q, Option<&'q str>>
    + for<'q> Bind<'q, &'q Vec<u8>>
    + for<'q> Bind<'q, Option<&'q Vec<u8>>>
    + for<'q> Bind<'q, i64>
    + for<'q> Bind<'q, bool>
    + for<'q> Bind<'q, DateTime<Utc>>
    + for<'q> Bind<'q, Option<DateTime<Utc>>>
    + Database<
        Row: Col<String>
                 + Col<Option<String>>
                 + Col<i64>
                 + Col<Option<i64>>
                 + Col<i32>
                 + Col<bool>
                 + Col<Vec<u8>>
                 + Col<Option<Vec<u8>>>
                 + Col<DateTime<Utc>>
                 + Col<Option<DateTime<Utc>>>,
    >
{
    const BACKEND: Backend;
    /// The statement that opens a writing transaction.
    const BEGIN: &'static str;
    /// The statement that opens a reading transaction whose statements all see the same
    /// snapshot.
    const READ_SNAPSHOT: &'static str;
    /// The query that reads and locks the audit chain's head (`last_id`, `last_hash`).
    const LOCK_HEAD: &'static str;
    /// A query telling whether sqlx's migrations table exists yet.
    const MIGRATIONS_EXIST: &'static str;
    /// A statement run in the transaction after a key change, if the engine can tell
    /// other connections (delivered at commit).
    const NOTIFY: Option<&'static str>;
    /// The installation id, its creation time as text, and the schema version.
    const INSTANCE_INFO: &'static str;
    /// The engine's embedded migrations.
    const MIGRATOR: &'static Migrator;

    /// How many rows a statement changed (sqlx has no trait for it).
    fn rows_affected(result: &Self::QueryResult) -> u64;
}

/// What a backend keeps to key the audit chain (here, below `audit.rs`, because every
/// backend's [`Core`] holds it): the MAC keys (once the KEK is loaded)
/// and whether this process has already looked for old events to key.
#[derive(Debug, Default)]
pub struct AuditKeyState {
    keys: std::sync::RwLock<Option<std::sync::Arc<AuditKeys>>>,
    pub(super) looked: std::sync::atomic::AtomicBool,
}

impl AuditKeyState {
    pub(super) fn set(&self, keys: AuditKeys) {
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Some(std::sync::Arc::new(keys));
    }

    pub(super) fn get(&self) -> Option<std::sync::Arc<AuditKeys>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What every backend holds: its pool and the audit chain's keys.
pub(super) struct Core<DB: Database> {
    pub(super) pool: Pool<DB>,
    pub(super) audit: AuditKeyState,
}

impl<DB: Database> Core<DB> {
    pub(super) fn new(pool: Pool<DB>) -> Self {
        Self {
            pool,
            audit: AuditKeyState::default(),
        }
    }
}

/// A backend: its [`Core`] and what it does on its own. Every storage trait is
/// implemented once for all of them, in the file of its concern.
pub(super) trait SqlBackend: Send + Sync + 'static {
    type DB: Dialect;

    fn core(&self) -> &Core<Self::DB>;

    fn pool(&self) -> &Pool<Self::DB> {
        &self.core().pool
    }

    fn audit(&self) -> &AuditKeyState {
        &self.core().audit
    }

    /// Fails when the database this process uses is no longer the one configured; the
    /// readiness check asks before its query. Nothing to check by default.
    fn check_identity(&self) -> Result<(), StorageError> {
        Ok(())
    }

    /// See [`super::KeyStore::listen_key_changes`]. By default the backend never pushes,
    /// and the caller's polling covers it.
    fn listen_key_changes(
        &self,
        changed: tokio::sync::mpsc::Sender<()>,
    ) -> impl Future<Output = Result<(), StorageError>> + Send {
        async move {
            changed.closed().await;
            Ok(())
        }
    }
}

/// Opens a writing transaction ([`Dialect::BEGIN`]).
pub(super) async fn begin<B: SqlBackend>(backend: &B) -> Result<Tx<B::DB>, StorageError> {
    Ok(backend.pool().begin_with(<B::DB as Dialect>::BEGIN).await?)
}

/// Opens a reading transaction on one snapshot ([`Dialect::READ_SNAPSHOT`]).
pub(super) async fn read_snapshot<B: SqlBackend>(backend: &B) -> Result<Tx<B::DB>, StorageError> {
    Ok(backend
        .pool()
        .begin_with(<B::DB as Dialect>::READ_SNAPSHOT)
        .await?)
}
