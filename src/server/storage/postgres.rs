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

    async fn close(&self) {
        self.pool.close().await;
    }
}
