//! PostgreSQL storage: for several instances behind a load balancer.

use super::StorageError;
use super::sql::{Core, Dialect, SqlBackend};
use crate::server::config::{Backend, DatabaseUrl};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgQueryResult};
use std::str::FromStr as _;
use std::time::Duration;

static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

pub struct PostgresStorage {
    core: Core<sqlx::Postgres>,
}

impl PostgresStorage {
    pub async fn connect(url: &DatabaseUrl) -> Result<Self, StorageError> {
        let options = PgConnectOptions::from_str(url.as_str())?.application_name("signet");
        let pool = PgPoolOptions::new()
            .max_connections(10)
            // Readiness must answer quickly when the server is gone, not hang.
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(options)
            .await?;
        Ok(Self {
            core: Core::new(pool),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.core.pool
    }
}

impl SqlBackend for PostgresStorage {
    type DB = sqlx::Postgres;

    fn core(&self) -> &Core<sqlx::Postgres> {
        &self.core
    }

    async fn listen_key_changes(
        &self,
        changed: tokio::sync::mpsc::Sender<()>,
    ) -> Result<(), StorageError> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.core.pool).await?;
        listener.listen("signet_keys").await?;
        loop {
            // `recv` reconnects by itself after a dropped connection.
            listener.recv().await?;
            if changed.send(()).await.is_err() {
                return Ok(());
            }
        }
    }
}

impl Dialect for sqlx::Postgres {
    const BACKEND: Backend = Backend::Postgres;
    const BEGIN: &'static str = "BEGIN";
    const READ_SNAPSHOT: &'static str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
    // The head row is locked FOR UPDATE, serializing appenders.
    const LOCK_HEAD: &'static str =
        "SELECT last_id, last_hash FROM audit_head WHERE id = 1 FOR UPDATE";
    const MIGRATIONS_EXIST: &'static str = "SELECT to_regclass('_sqlx_migrations') IS NOT NULL";
    // Delivered at commit: tells the other instances to reload their keys.
    const NOTIFY: Option<&'static str> = Some("SELECT pg_notify('signet_keys', '')");
    const INSTANCE_INFO: &'static str = "SELECT installation_id, \
         to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS created_at, \
         (SELECT MAX(version) FROM _sqlx_migrations WHERE success) AS schema_version \
         FROM instance WHERE id = 1";
    const MIGRATOR: &'static Migrator = &MIGRATOR;

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }
}
