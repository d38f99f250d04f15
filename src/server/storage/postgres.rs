//! PostgreSQL storage: for several instances behind a load balancer.

use super::{
    AppliedMigration, InstanceInfo, PendingMigration, Storage, StorageError, compare_migrations,
};
use crate::server::config::{Backend, DatabaseUrl};
use async_trait::async_trait;
use sqlx::Row as _;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::str::FromStr as _;
use std::time::Duration;

static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

pub struct PostgresStorage {
    pool: PgPool,
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
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

#[async_trait]
impl Storage for PostgresStorage {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn ping(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn pending_migrations(&self) -> Result<Vec<PendingMigration>, StorageError> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&self.pool)
            .await?;
        let applied = if exists {
            sqlx::query("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(|r| AppliedMigration {
                    version: r.get("version"),
                    checksum: r.get("checksum"),
                    success: r.get("success"),
                })
                .collect()
        } else {
            Vec::new()
        };
        compare_migrations(&MIGRATOR, &applied)
    }

    async fn migrate(&self) -> Result<usize, StorageError> {
        let pending = self.pending_migrations().await?.len();
        // sqlx takes an advisory lock, so instances migrating at once do not collide.
        MIGRATOR.run(&self.pool).await?;
        Ok(pending)
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

    async fn list_keys(&self) -> Result<Vec<super::StoredKey>, StorageError> {
        self.list_keys_shared().await
    }

    async fn apply_key_change(&self, change: &super::KeyChange) -> Result<(), StorageError> {
        self.apply_key_change_shared(change).await
    }

    async fn reseal_keys(
        &self,
        keys: &[super::Resealed],
        event: &crate::server::audit::NewEvent,
    ) -> Result<(), StorageError> {
        self.reseal_keys_shared(keys, event).await
    }

    async fn record_token_exp(
        &self,
        kid: &crate::domain::Kid,
        exp: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), StorageError> {
        self.record_token_exp_shared(kid, exp).await
    }

    async fn key_version(&self) -> Result<i64, StorageError> {
        self.key_version_shared().await
    }

    async fn list_events(
        &self,
        query: &super::EventQuery,
    ) -> Result<Vec<crate::server::audit::StoredEvent>, StorageError> {
        self.list_events_shared(query).await
    }

    async fn audit_chain(
        &self,
    ) -> Result<(Vec<crate::server::audit::StoredEvent>, i64, String), StorageError> {
        self.audit_chain_shared().await
    }

    async fn create_api_token(
        &self,
        token: &super::ApiTokenRow,
        event: &crate::server::audit::NewEvent,
    ) -> Result<(), StorageError> {
        self.create_api_token_shared(token, event).await
    }

    async fn find_api_token(&self, id: &str) -> Result<Option<super::ApiTokenRow>, StorageError> {
        self.find_api_token_shared(id).await
    }

    async fn get_schedule(&self) -> Result<Option<super::ScheduleRow>, StorageError> {
        self.get_schedule_shared().await
    }

    async fn put_schedule(
        &self,
        row: &super::ScheduleRow,
        event: Option<&crate::server::audit::NewEvent>,
    ) -> Result<(), StorageError> {
        self.put_schedule_shared(row, event).await
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

impl super::shared::HasDb for PostgresStorage {
    type Db = sqlx::Postgres;
}

// The head row is locked FOR UPDATE, serializing appenders; NOTIFY (delivered at
// commit) tells the other instances to reload their keys.
super::shared::shared_storage_methods!(
    PostgresStorage,
    begin = "BEGIN",
    lock_head = "SELECT last_id, last_hash FROM audit_head WHERE id = 1 FOR UPDATE",
    notify = "SELECT pg_notify('signet_keys', '')"
);
