//! PostgreSQL storage: for several instances behind a load balancer.

use super::{InstanceInfo, StorageError};
use crate::server::config::{Backend, DatabaseUrl};
use sqlx::Row as _;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::str::FromStr as _;
use std::time::Duration;

static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

pub struct PostgresStorage {
    pool: PgPool,
    audit: super::AuditKeyState,
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
            pool,
            audit: Default::default(),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

// The head row is locked FOR UPDATE, serializing appenders; NOTIFY (delivered at
// commit) tells the other instances to reload their keys.
super::shared::storage_impl! {
    PostgresStorage,
    db = sqlx::Postgres,
    begin = "BEGIN",
    read_snapshot = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    lock_head = "SELECT last_id, last_hash FROM audit_head WHERE id = 1 FOR UPDATE",
    migrator = MIGRATOR,
    migrations_exist = "SELECT to_regclass('_sqlx_migrations') IS NOT NULL",
    notify = "SELECT pg_notify('signet_keys', '')",
    specific = {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn ping(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn instance_info(&self) -> Result<InstanceInfo, StorageError> {
        let row = sqlx::query(
            "SELECT installation_id, \
             to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS created_at, \
             (SELECT MAX(version) FROM _sqlx_migrations WHERE success) AS schema_version \
             FROM instance WHERE id = 1",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(InstanceInfo {
            installation_id: row.get("installation_id"),
            created_at: row.get("created_at"),
            schema_version: row.get("schema_version"),
        })
    }

    async fn listen_key_changes(
        &self,
        changed: tokio::sync::mpsc::Sender<()>,
    ) -> Result<(), StorageError> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen("signet_keys").await?;
        loop {
            // `recv` reconnects by itself after a dropped connection.
            listener.recv().await?;
            if changed.send(()).await.is_err() {
                return Ok(());
            }
        }
    }

    async fn close(&self) {
        self.pool.close().await;
    }
    }
}
