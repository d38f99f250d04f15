//! API tokens: their stored hash, scopes and revocation, each change with its event.

use super::StorageError;
use super::audit::append_event_tx;
use super::error::unique_is_conflict;
use super::sql::{Col as _, Dialect, QueryExt as _, SqlBackend, begin};
use crate::server::audit::NewEvent;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Stores a new API token with its audit event. `Conflict` if the name is taken.
    async fn create_api_token(
        &self,
        token: &ApiTokenRow,
        event: &NewEvent,
    ) -> Result<(), StorageError>;

    async fn find_api_token(&self, id: &str) -> Result<Option<ApiTokenRow>, StorageError>;

    /// Every API token, newest first.
    async fn list_api_tokens(&self) -> Result<Vec<ApiTokenRow>, StorageError>;

    /// What the revoked tokens look like now: any revocation changes it (tokens are never
    /// un-revoked or deleted). Cheap enough to ask several times a second.
    async fn revocations(&self) -> Result<Revocations, StorageError>;

    /// Marks a token revoked, with its event. `false` if there is no such live token.
    async fn revoke_api_token(
        &self,
        id: &str,
        at: DateTime<Utc>,
        event: &NewEvent,
    ) -> Result<bool, StorageError>;
}

/// A fingerprint of the revoked API tokens: how many, and the latest revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocations {
    pub count: i64,
    pub latest: Option<DateTime<Utc>>,
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

const TOKEN_COLUMNS: &str = "id, name, secret_hash, scopes, created_at, revoked_at";

/// Decodes an `api_tokens` row selected with [`TOKEN_COLUMNS`].
fn token_from_row<DB: Dialect>(row: &DB::Row) -> Result<ApiTokenRow, StorageError> {
    let scopes: String = row.col("scopes")?;
    Ok(ApiTokenRow {
        id: row.col("id")?,
        name: row.col("name")?,
        secret_hash: row.col("secret_hash")?,
        scopes: scopes.split_whitespace().map(str::to_string).collect(),
        created_at: row.col("created_at")?,
        revoked_at: row.col("revoked_at")?,
    })
}

#[async_trait]
impl<B: SqlBackend> TokenStore for B {
    async fn create_api_token(
        &self,
        t: &ApiTokenRow,
        event: &NewEvent,
    ) -> Result<(), StorageError> {
        let mut tx = begin(self).await?;
        sqlx::query(
            "INSERT INTO api_tokens (id, name, secret_hash, scopes, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .arg(&t.id)
        .arg(&t.name)
        .arg(&t.secret_hash)
        .arg(t.scopes.join(" "))
        .arg(t.created_at)
        .exec(&mut tx)
        .await
        // The token name is unique.
        .map_err(unique_is_conflict)?;
        append_event_tx(self, &mut tx, event, t.created_at).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn find_api_token(&self, id: &str) -> Result<Option<ApiTokenRow>, StorageError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = $1");
        let row = sqlx::query(&sql).arg(id).opt(self.pool()).await?;
        row.as_ref().map(token_from_row::<B::DB>).transpose()
    }

    async fn list_api_tokens(&self) -> Result<Vec<ApiTokenRow>, StorageError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at DESC, name");
        let rows = sqlx::query(&sql).all(self.pool()).await?;
        rows.iter().map(token_from_row::<B::DB>).collect()
    }

    async fn revocations(&self) -> Result<Revocations, StorageError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS count, MAX(revoked_at) AS latest FROM api_tokens \
             WHERE revoked_at IS NOT NULL",
        )
        .one(self.pool())
        .await?;
        Ok(Revocations {
            count: row.col("count")?,
            latest: row.col("latest")?,
        })
    }

    async fn revoke_api_token(
        &self,
        id: &str,
        at: DateTime<Utc>,
        event: &NewEvent,
    ) -> Result<bool, StorageError> {
        let mut tx = begin(self).await?;
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .arg(at)
        .arg(id)
        .exec(&mut tx)
        .await?
            == 1;
        if done {
            append_event_tx(self, &mut tx, event, at).await?;
            tx.commit().await?;
        }
        Ok(done)
    }
}
