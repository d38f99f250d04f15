//! Queries both backends run verbatim.
//!
//! sqlx binds `$1`-style parameters on SQLite as well as PostgreSQL, and both store the
//! same Rust types here, so most SQL is written once. What differs (how a transaction
//! takes its write lock, how other instances are told of a change) is passed in by each
//! backend. The macro stamps the shared code out as inherent methods of a backend whose
//! `pool` field is a `sqlx::Pool` of that backend.
//!
//! Timestamps: PostgreSQL stores `TIMESTAMPTZ`; SQLite stores sqlx's RFC 3339 text
//! (`...:SS[.fff...]+00:00`, always UTC). The comparisons below (`expires_at > $2`,
//! `at >= $4`) are then text comparisons on SQLite, which order correctly because every
//! value has the same offset and '+' sorts before '.', which sorts before any digit.

use super::StorageError;
use crate::domain::{Algorithm, KeyInfo, KeyState, Kid};
use crate::server::audit::StoredEvent;
use chrono::{DateTime, Utc};
use sqlx::Row;

pub const KEY_COLUMNS: &str = "kid, alg, state, public_jwk, private_sealed, kek_id, created_at, \
     activated_at, rotated_at, revoked_at, expires_at, last_token_exp, revoke_reason";

pub const EVENT_COLUMNS: &str =
    "id, at, level, kind, actor, trigger, source, kids, reason, details, prev_hash, hash";

/// A unique-index violation means another writer got there first: a `Conflict`, which
/// callers retry or report, not a database failure.
pub fn unique_is_conflict(e: sqlx::Error) -> StorageError {
    match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StorageError::Conflict,
        other => other.into(),
    }
}

fn corrupt(what: &str, value: &str) -> StorageError {
    StorageError::Corrupt(format!("{what} '{value}'"))
}

/// Decodes a `signing_keys` row selected with [`KEY_COLUMNS`].
pub fn key_from_row<R: Row>(row: &R) -> Result<super::StoredKey, StorageError>
where
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<Vec<u8>>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> DateTime<Utc>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<DateTime<Utc>>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
{
    let kid: String = row.try_get("kid")?;
    let alg: String = row.try_get("alg")?;
    let state: String = row.try_get("state")?;
    Ok(super::StoredKey {
        info: KeyInfo {
            kid: Kid::parse(&kid).map_err(|_| corrupt("kid", &kid))?,
            alg: Algorithm::parse(&alg).map_err(|_| corrupt("algorithm", &alg))?,
            state: KeyState::parse(&state).ok_or_else(|| corrupt("state", &state))?,
            created_at: row.try_get("created_at")?,
            activated_at: row.try_get("activated_at")?,
            rotated_at: row.try_get("rotated_at")?,
            revoked_at: row.try_get("revoked_at")?,
            expires_at: row.try_get("expires_at")?,
            last_token_exp: row.try_get("last_token_exp")?,
        },
        public_jwk: row.try_get("public_jwk")?,
        sealed: row.try_get("private_sealed")?,
        kek_id: row.try_get("kek_id")?,
        revoke_reason: row.try_get("revoke_reason")?,
    })
}

/// Decodes an `audit_events` row selected with [`EVENT_COLUMNS`].
pub fn event_from_row<R: Row>(row: &R) -> Result<StoredEvent, StorageError>
where
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> DateTime<Utc>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
{
    let kids: String = row.try_get("kids")?;
    let details: String = row.try_get("details")?;
    Ok(StoredEvent {
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        level: row.try_get("level")?,
        kind: row.try_get("kind")?,
        actor: row.try_get("actor")?,
        trigger: row.try_get("trigger")?,
        source: row.try_get("source")?,
        kids: serde_json::from_str(&kids).map_err(|_| corrupt("kids", &kids))?,
        reason: row.try_get("reason")?,
        details: serde_json::from_str(&details).map_err(|_| corrupt("details", &details))?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

/// Implements `Storage` for one backend: its own methods (`specific`) plus the shared ones.
///
/// - `$ty`: the backend type, with a `pool` field; `db`: its sqlx database.
/// - `begin`: the statement that opens a writing transaction.
/// - `lock_head`: the query that reads and locks the audit chain's head.
/// - `migrator`: the backend's embedded migrations; `migrations_exist`: a query telling
///   whether sqlx's migrations table exists yet.
/// - `notify`: a statement run in the transaction after a key change, or "" for none.
macro_rules! storage_impl {
    (
        $ty:ty,
        db = $db:ty,
        begin = $begin:expr,
        lock_head = $lock_head:expr,
        migrator = $migrator:expr,
        migrations_exist = $migrations_exist:expr,
        notify = $notify:expr,
        specific = { $($specific:tt)* }
    ) => {
        impl $ty {
            /// Appends one event to the hash chain inside `tx`. Locking the head row
            /// serializes appenders, so the chain never forks.
            async fn append_event(
                tx: &mut sqlx::Transaction<'_, $db>,
                event: &crate::server::audit::NewEvent,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), StorageError> {
                let (last_id, last_hash): (i64, String) =
                    sqlx::query_as($lock_head).fetch_one(&mut **tx).await?;
                let id = last_id + 1;
                let kids = serde_json::to_string(&event.kids)
                    .map_err(|e| StorageError::Corrupt(e.to_string()))?;
                let details = event.details.to_string();
                let hash = crate::server::audit::chain_hash(
                    &last_hash,
                    id,
                    at,
                    event.level.as_str(),
                    event.kind,
                    &event.actor,
                    event.trigger.as_str(),
                    event.source.as_deref(),
                    &kids,
                    event.reason.as_deref(),
                    &details,
                );
                sqlx::query(
                    "INSERT INTO audit_events (id, at, level, kind, actor, trigger, source, kids, \
                       reason, details, prev_hash, hash) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                )
                .bind(id)
                .bind(at)
                .bind(event.level.as_str())
                .bind(event.kind)
                .bind(&event.actor)
                .bind(event.trigger.as_str())
                .bind(event.source.as_deref())
                .bind(&kids)
                .bind(event.reason.as_deref())
                .bind(&details)
                .bind(&last_hash)
                .bind(&hash)
                .execute(&mut **tx)
                .await?;
                sqlx::query("UPDATE audit_head SET last_id = $1, last_hash = $2 WHERE id = 1")
                    .bind(id)
                    .bind(&hash)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

        }

        #[async_trait::async_trait]
        impl super::Storage for $ty {
            $($specific)*

            async fn pending_migrations(
                &self,
            ) -> Result<Vec<super::PendingMigration>, StorageError> {
                let exists: bool = sqlx::query_scalar($migrations_exist)
                    .fetch_one(&self.pool)
                    .await?;
                let applied = if exists {
                    let rows: Vec<(i64, Vec<u8>, bool)> = sqlx::query_as(
                        "SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version",
                    )
                    .fetch_all(&self.pool)
                    .await?;
                    rows.into_iter()
                        .map(|(version, checksum, success)| super::AppliedMigration {
                            version,
                            checksum,
                            success,
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                super::compare_migrations(&$migrator, &applied)
            }

            async fn migrate(&self) -> Result<usize, StorageError> {
                let pending = self.pending_migrations().await?.len();
                // On PostgreSQL sqlx takes an advisory lock, so instances migrating at
                // once do not collide.
                $migrator.run(&self.pool).await?;
                Ok(pending)
            }

            async fn list_keys(&self) -> Result<Vec<super::StoredKey>, StorageError> {
                let sql = format!(
                    "SELECT {} FROM signing_keys ORDER BY created_at, kid",
                    super::shared::KEY_COLUMNS
                );
                sqlx::query(&sql)
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(super::shared::key_from_row)
                    .collect()
            }

            async fn key_version(&self) -> Result<i64, StorageError> {
                Ok(sqlx::query_scalar("SELECT version FROM key_version WHERE id = 1")
                    .fetch_one(&self.pool)
                    .await?)
            }

            async fn apply_key_change(
                &self,
                change: &super::KeyChange,
            ) -> Result<(), StorageError> {
                use crate::domain::KeyState;
                let mut tx = self.pool.begin_with($begin).await?;
                for t in change.ordered_transitions() {
                    let destroys = matches!(t.to, KeyState::Revoked | KeyState::Expired);
                    let result = sqlx::query(
                        "UPDATE signing_keys SET state = $1, \
                           activated_at = CASE WHEN $1 = 'active' THEN $2 ELSE activated_at END, \
                           rotated_at = CASE WHEN $1 = 'rotated' THEN $2 ELSE rotated_at END, \
                           revoked_at = CASE WHEN $1 = 'revoked' THEN $2 ELSE revoked_at END, \
                           revoke_reason = CASE WHEN $1 = 'revoked' THEN $3 ELSE revoke_reason END, \
                           expires_at = CASE \
                             WHEN $1 = 'rotated' THEN $4 \
                             WHEN $1 = 'expired' AND (expires_at IS NULL OR expires_at > $2) THEN $2 \
                             ELSE expires_at END, \
                           private_sealed = CASE WHEN $5 THEN NULL ELSE private_sealed END, \
                           kek_id = CASE WHEN $5 THEN NULL ELSE kek_id END \
                         WHERE kid = $6 AND state = $7",
                    )
                    .bind(t.to.as_str())
                    .bind(change.now)
                    .bind(change.reason.as_deref())
                    .bind(t.expires_at)
                    .bind(destroys)
                    .bind(t.kid.as_str())
                    .bind(t.from.as_str())
                    .execute(&mut *tx)
                    .await?;
                    if result.rows_affected() != 1 {
                        return Err(StorageError::Conflict);
                    }
                }
                for k in &change.new_keys {
                    let activated = (k.state == KeyState::Active).then_some(change.now);
                    sqlx::query(
                        "INSERT INTO signing_keys (kid, alg, state, public_jwk, private_sealed, \
                           kek_id, created_at, activated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    )
                    .bind(k.kid.as_str())
                    .bind(k.alg.as_str())
                    .bind(k.state.as_str())
                    .bind(&k.public_jwk)
                    .bind(&k.sealed)
                    .bind(&k.kek_id)
                    .bind(change.now)
                    .bind(activated)
                    .execute(&mut *tx)
                    .await
                    // The one-active/one-next indexes: someone else bootstrapped or
                    // rotated first.
                    .map_err(super::shared::unique_is_conflict)?;
                }
                sqlx::query("UPDATE key_version SET version = version + 1 WHERE id = 1")
                    .execute(&mut *tx)
                    .await?;
                let notify: &str = $notify;
                if !notify.is_empty() {
                    sqlx::query(notify).execute(&mut *tx).await?;
                }
                for event in &change.events {
                    Self::append_event(&mut tx, event, change.now).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn reseal_keys(
                &self,
                keys: &[super::Resealed],
                event: &crate::server::audit::NewEvent,
            ) -> Result<(), StorageError> {
                let mut tx = self.pool.begin_with($begin).await?;
                for k in keys {
                    let result = sqlx::query(
                        "UPDATE signing_keys SET private_sealed = $1, kek_id = $2 \
                         WHERE kid = $3 AND kek_id = $4",
                    )
                    .bind(&k.sealed)
                    .bind(&k.kek_id)
                    .bind(k.kid.as_str())
                    .bind(&k.old_kek_id)
                    .execute(&mut *tx)
                    .await?;
                    if result.rows_affected() != 1 {
                        return Err(StorageError::Conflict);
                    }
                }
                Self::append_event(&mut tx, event, crate::server::audit::now()).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn record_token_exp(
                &self,
                kid: &crate::domain::Kid,
                exp: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), StorageError> {
                // A key rotated since the token was signed (another instance had not
                // reloaded yet) stays published until that token expires: invariant 4.
                sqlx::query(
                    "UPDATE signing_keys SET last_token_exp = $1, \
                       expires_at = CASE WHEN state = 'rotated' AND expires_at < $1 THEN $1 \
                                         ELSE expires_at END \
                     WHERE kid = $2 AND (last_token_exp IS NULL OR last_token_exp < $1)",
                )
                .bind(exp)
                .bind(kid.as_str())
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn list_events(
                &self,
                q: &super::EventQuery,
            ) -> Result<Vec<crate::server::audit::StoredEvent>, StorageError> {
                let sql = format!(
                    "SELECT {} FROM audit_events \
                     WHERE ($1 IS NULL OR level = $1) AND ($2 IS NULL OR kind = $2) \
                       AND ($3 IS NULL OR actor = $3) AND ($4 IS NULL OR at >= $4) \
                       AND ($5 IS NULL OR at < $5) AND ($6 IS NULL OR id < $6) \
                     ORDER BY id DESC LIMIT $7",
                    super::shared::EVENT_COLUMNS
                );
                sqlx::query(&sql)
                    .bind(q.level.as_deref())
                    .bind(q.kind.as_deref())
                    .bind(q.actor.as_deref())
                    .bind(q.since)
                    .bind(q.until)
                    .bind(q.before_id)
                    .bind(q.limit)
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(super::shared::event_from_row)
                    .collect()
            }

            async fn create_api_token(
                &self,
                t: &super::ApiTokenRow,
                event: &crate::server::audit::NewEvent,
            ) -> Result<(), StorageError> {
                let mut tx = self.pool.begin_with($begin).await?;
                sqlx::query(
                    "INSERT INTO api_tokens (id, name, secret_hash, scopes, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&t.id)
                .bind(&t.name)
                .bind(&t.secret_hash)
                .bind(t.scopes.join(" "))
                .bind(t.created_at)
                .execute(&mut *tx)
                .await
                // The token name is unique.
                .map_err(super::shared::unique_is_conflict)?;
                Self::append_event(&mut tx, event, t.created_at).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn find_api_token(
                &self,
                id: &str,
            ) -> Result<Option<super::ApiTokenRow>, StorageError> {
                let row = sqlx::query(
                    "SELECT id, name, secret_hash, scopes, created_at, revoked_at \
                     FROM api_tokens WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                let Some(row) = row else { return Ok(None) };
                use sqlx::Row as _;
                let scopes: String = row.try_get("scopes")?;
                Ok(Some(super::ApiTokenRow {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    secret_hash: row.try_get("secret_hash")?,
                    scopes: scopes.split_whitespace().map(str::to_string).collect(),
                    created_at: row.try_get("created_at")?,
                    revoked_at: row.try_get("revoked_at")?,
                }))
            }

            async fn get_schedule(&self) -> Result<Option<super::ScheduleRow>, StorageError> {
                let row: Option<(String, i64, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
                    "SELECT cron, retention_secs, updated_at FROM schedule WHERE id = 1",
                )
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(|(cron, retention_secs, updated_at)| super::ScheduleRow {
                    cron,
                    retention_secs,
                    updated_at,
                }))
            }

            async fn put_schedule(
                &self,
                s: &super::ScheduleRow,
                event: Option<&crate::server::audit::NewEvent>,
            ) -> Result<(), StorageError> {
                let mut tx = self.pool.begin_with($begin).await?;
                let sql = if event.is_some() {
                    "INSERT INTO schedule (id, cron, retention_secs, updated_at) VALUES (1, $1, $2, $3) \
                     ON CONFLICT (id) DO UPDATE SET cron = $1, retention_secs = $2, updated_at = $3"
                } else {
                    "INSERT INTO schedule (id, cron, retention_secs, updated_at) VALUES (1, $1, $2, $3) \
                     ON CONFLICT (id) DO NOTHING"
                };
                sqlx::query(sql)
                    .bind(&s.cron)
                    .bind(s.retention_secs)
                    .bind(s.updated_at)
                    .execute(&mut *tx)
                    .await?;
                if let Some(event) = event {
                    Self::append_event(&mut tx, event, s.updated_at).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn audit_chain(
                &self,
            ) -> Result<(Vec<crate::server::audit::StoredEvent>, i64, String), StorageError> {
                // The head first, then the rows up to it: an event appended meanwhile (a
                // running server) is neither half-seen nor mistaken for a truncation. On
                // PostgreSQL each statement has its own snapshot, so the order matters.
                let (last_id, last_hash): (i64, String) =
                    sqlx::query_as("SELECT last_id, last_hash FROM audit_head WHERE id = 1")
                        .fetch_one(&self.pool)
                        .await?;
                let sql = format!(
                    "SELECT {} FROM audit_events WHERE id <= $1 ORDER BY id",
                    super::shared::EVENT_COLUMNS
                );
                let events = sqlx::query(&sql)
                    .bind(last_id)
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(super::shared::event_from_row)
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((events, last_id, last_hash))
            }
        }
    };
}

pub(super) use storage_impl;
