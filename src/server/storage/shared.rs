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
use crate::domain::{Algorithm, Email, KeyInfo, KeyState, Kid, Role};
use crate::server::audit::StoredEvent;
use chrono::{DateTime, Utc};
use sqlx::Row;

pub const KEY_COLUMNS: &str = "kid, alg, state, public_jwk, private_sealed, kek_id, created_at, \
     activated_at, rotated_at, revoked_at, expires_at, last_token_exp, revoke_reason";

pub const ADMIN_COLUMNS: &str = "id, email, role, password_hash, must_change_password, \
     created_at, disabled_at, last_login_at, sessions_valid_after, password_expires_at";

pub const EVENT_COLUMNS: &str = "id, at, level, kind, actor, trigger, source, kids, reason, details, prev_hash, hash, \
     mac, mac_kek";

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

/// Decodes an `api_tokens` row.
pub fn token_from_row<R: Row>(row: &R) -> Result<super::ApiTokenRow, StorageError>
where
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> DateTime<Utc>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<DateTime<Utc>>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
{
    let scopes: String = row.try_get("scopes")?;
    Ok(super::ApiTokenRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        secret_hash: row.try_get("secret_hash")?,
        scopes: scopes.split_whitespace().map(str::to_string).collect(),
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

/// Decodes an `admins` row selected with [`ADMIN_COLUMNS`].
pub fn admin_from_row<R: Row>(row: &R) -> Result<super::AdminRow, StorageError>
where
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> DateTime<Utc>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<DateTime<Utc>>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
{
    let email: String = row.try_get("email")?;
    let role: String = row.try_get("role")?;
    Ok(super::AdminRow {
        id: row.try_get("id")?,
        email: Email::parse(&email).map_err(|_| corrupt("email", &email))?,
        role: Role::parse(&role).ok_or_else(|| corrupt("role", &role))?,
        password_hash: row.try_get("password_hash")?,
        must_change_password: row.try_get("must_change_password")?,
        created_at: row.try_get("created_at")?,
        disabled_at: row.try_get("disabled_at")?,
        last_login_at: row.try_get("last_login_at")?,
        sessions_valid_after: row.try_get("sessions_valid_after")?,
        password_expires_at: row.try_get("password_expires_at")?,
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
        mac: row.try_get("mac")?,
        mac_kek: row.try_get("mac_kek")?,
    })
}

/// Implements `Storage` for one backend: its own methods (`specific`) plus the shared ones.
///
/// - `$ty`: the backend type, with a `pool` field; `db`: its sqlx database.
/// - `begin`: the statement that opens a writing transaction; `read_snapshot`: one that
///   opens a reading transaction whose statements all see the same snapshot.
/// - `lock_head`: the query that reads and locks the audit chain's head.
/// - `migrator`: the backend's embedded migrations; `migrations_exist`: a query telling
///   whether sqlx's migrations table exists yet.
/// - `notify`: a statement run in the transaction after a key change, or "" for none.
macro_rules! storage_impl {
    (
        $ty:ty,
        db = $db:ty,
        begin = $begin:expr,
        read_snapshot = $read_snapshot:expr,
        lock_head = $lock_head:expr,
        migrator = $migrator:expr,
        migrations_exist = $migrations_exist:expr,
        notify = $notify:expr,
        specific = { $($specific:tt)* }
    ) => {
        impl $ty {
            /// Appends one event to the hash chain inside `tx`, with its MAC under the
            /// active KEK. Locking the head row serializes appenders, so the chain never
            /// forks. A process's first append keys the old chain first, if it has to.
            async fn append_event_tx(
                &self,
                tx: &mut sqlx::Transaction<'_, $db>,
                event: &crate::server::audit::NewEvent,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), StorageError> {
                use std::sync::atomic::Ordering;
                let keys = self.audit.get().ok_or(StorageError::NoAuditKey)?;
                if !self.audit.looked.load(Ordering::Relaxed) {
                    match self.key_chain_tx(tx, &keys).await {
                        Ok(_) => {}
                        // The error says why; the event is still written (with its MAC),
                        // so a broken old log never stops a revocation.
                        Err(StorageError::Corrupt(why)) => {
                            tracing::error!("{why}");
                        }
                        Err(e) => return Err(e),
                    }
                    self.audit.looked.store(true, Ordering::Relaxed);
                }
                Self::append_keyed_tx(tx, &keys, event, at).await
            }

            async fn append_keyed_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                keys: &crate::server::audit::AuditKeys,
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
                let (mac_kek, mac) = keys.sign(&hash);
                sqlx::query(
                    "INSERT INTO audit_events (id, at, level, kind, actor, trigger, source, kids, \
                       reason, details, prev_hash, hash, mac, mac_kek) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
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
                .bind(&mac)
                .bind(&mac_kek)
                .execute(&mut **tx)
                .await?;
                sqlx::query("UPDATE audit_head SET last_id = $1, last_hash = $2 WHERE id = 1")
                    .bind(id)
                    .bind(&hash)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            /// Keys the events from before the keyed chain inside `tx` (see
            /// `Storage::key_audit_chain`).
            async fn key_chain_tx(
                &self,
                tx: &mut sqlx::Transaction<'_, $db>,
                keys: &crate::server::audit::AuditKeys,
            ) -> Result<Option<super::KeyedChain>, StorageError> {
                use crate::server::audit::{self, Macs};
                // The head lock first: a second instance keying at once waits here, then
                // finds nothing left to do.
                let (last_id, last_hash): (i64, String) =
                    sqlx::query_as($lock_head).fetch_one(&mut **tx).await?;
                let waiting: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM audit_events WHERE mac IS NULL")
                        .fetch_one(&mut **tx)
                        .await?;
                if waiting == 0 {
                    return Ok(None);
                }
                let keyed_from: i64 =
                    sqlx::query_scalar("SELECT keyed_from FROM audit_head WHERE id = 1")
                        .fetch_one(&mut **tx)
                        .await?;
                let sql = format!(
                    "SELECT {} FROM audit_events ORDER BY id",
                    super::shared::EVENT_COLUMNS
                );
                let events = sqlx::query(&sql)
                    .fetch_all(&mut **tx)
                    .await?
                    .iter()
                    .map(super::shared::event_from_row)
                    .collect::<Result<Vec<_>, _>>()?;
                // Only an intact chain is blessed: every hash and link, every MAC that
                // is there, and no row missing one that was written after keying began.
                let macs = Macs::Check {
                    keys: Some(keys),
                    keyed_from,
                    accept_unkeyed: true,
                };
                audit::verify_chain_with(&events, last_id, &last_hash, macs).map_err(|b| {
                    StorageError::Corrupt(format!(
                        "the audit chain is broken ({b}); its older events are not given MACs \
                         until `signet audit verify` passes"
                    ))
                })?;
                let mut keyed = 0u64;
                for e in events.iter().filter(|e| e.mac.is_none()) {
                    let (kek, mac) = keys.sign(&e.hash);
                    sqlx::query("UPDATE audit_events SET mac = $1, mac_kek = $2 WHERE id = $3")
                        .bind(&mac)
                        .bind(&kek)
                        .bind(e.id)
                        .execute(&mut **tx)
                        .await?;
                    keyed += 1;
                }
                let kek_id = keys.active_id().to_string();
                let event = crate::server::audit::NewEvent {
                    level: crate::domain::audit::Level::Notice,
                    kind: crate::domain::audit::kind::AUDIT_KEYED,
                    actor: "system".into(),
                    trigger: crate::domain::audit::Trigger::Scheduler,
                    source: None,
                    kids: Vec::new(),
                    reason: None,
                    details: serde_json::json!({
                        "events": keyed,
                        "first_id": events.first().map(|e| e.id),
                        "last_id": last_id,
                        "kek": kek_id,
                    }),
                };
                Self::append_keyed_tx(tx, keys, &event, crate::server::audit::now()).await?;
                tracing::warn!(
                    events = keyed,
                    kek = %kek_id,
                    "the audit log predated keyed MACs: its hash chain checked out and its \
                     events are now authenticated under the key-encryption key"
                );
                Ok(Some(super::KeyedChain {
                    events: keyed,
                    kek_id,
                }))
            }

            /// Bumps the key version inside `tx` and, where the backend can, tells the
            /// other instances (delivered at commit), so they reload their keys.
            async fn keys_changed_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
            ) -> Result<(), StorageError> {
                sqlx::query("UPDATE key_version SET version = version + 1 WHERE id = 1")
                    .execute(&mut **tx)
                    .await?;
                let notify: &str = $notify;
                if !notify.is_empty() {
                    sqlx::query(notify).execute(&mut **tx).await?;
                }
                Ok(())
            }

            /// Moves a job's claimed slot forward to `claim.slot`, inside `tx`. `false`
            /// (and nothing written) when that slot or a later one is already claimed.
            /// On PostgreSQL the upsert locks the job's row, so a competing claim waits
            /// for this transaction and then sees its slot.
            async fn claim_slot_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                claim: &super::SlotClaim,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, StorageError> {
                let claimed = sqlx::query(
                    "INSERT INTO scheduler_slots (job, last_slot, claimed_by, claimed_at) \
                     VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (job) DO UPDATE SET last_slot = excluded.last_slot, \
                       claimed_by = excluded.claimed_by, claimed_at = excluded.claimed_at \
                     WHERE scheduler_slots.last_slot < excluded.last_slot",
                )
                .bind(claim.job)
                .bind(claim.slot)
                .bind(&claim.by)
                .bind(at)
                .execute(&mut **tx)
                .await?
                .rows_affected();
                Ok(claimed == 1)
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
                // The slot first: a losing instance stops before touching any key.
                if let Some(claim) = &change.claim
                    && !Self::claim_slot_tx(&mut tx, claim, change.now).await?
                {
                    return Err(StorageError::SlotTaken);
                }
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
                Self::keys_changed_tx(&mut tx).await?;
                for event in &change.events {
                    self.append_event_tx(&mut tx, event, change.now).await?;
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
                self.append_event_tx(&mut tx, event, crate::server::audit::now()).await?;
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
                // Only the filters given go into the SQL, so each shape of query gets a
                // plan that uses its index ((kind, id), (level, id), (actor, id) or the
                // primary key) and walks it newest first, whatever the table's size.
                let mut sql = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT {} FROM audit_events WHERE 1 = 1",
                    super::shared::EVENT_COLUMNS
                ));
                if let Some(level) = &q.level {
                    sql.push(" AND level = ").push_bind(level.clone());
                }
                if let Some(kind) = &q.kind {
                    sql.push(" AND kind = ").push_bind(kind.clone());
                }
                if let Some(actor) = &q.actor {
                    sql.push(" AND actor = ").push_bind(actor.clone());
                }
                if let Some(since) = q.since {
                    sql.push(" AND at >= ").push_bind(since);
                }
                if let Some(until) = q.until {
                    sql.push(" AND at < ").push_bind(until);
                }
                if let Some(before) = q.before_id {
                    sql.push(" AND id < ").push_bind(before);
                }
                if let Some(after) = q.after_id {
                    sql.push(" AND id > ").push_bind(after);
                }
                // Newest first, except when reading forward from a point (the live tail),
                // which must see the oldest new rows first so none is skipped.
                let order = if q.after_id.is_some() && q.before_id.is_none() {
                    " ORDER BY id ASC LIMIT "
                } else {
                    " ORDER BY id DESC LIMIT "
                };
                sql.push(order).push_bind(q.limit);
                sql.build()
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(super::shared::event_from_row)
                    .collect()
            }

            async fn append_event(
                &self,
                event: &crate::server::audit::NewEvent,
            ) -> Result<(), StorageError> {
                let mut tx = self.pool.begin_with($begin).await?;
                self.append_event_tx(&mut tx, event, crate::server::audit::now()).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn list_api_tokens(&self) -> Result<Vec<super::ApiTokenRow>, StorageError> {
                sqlx::query(
                    "SELECT id, name, secret_hash, scopes, created_at, revoked_at \
                     FROM api_tokens ORDER BY created_at DESC, name",
                )
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(super::shared::token_from_row)
                .collect()
            }

            async fn revoke_api_token(
                &self,
                id: &str,
                at: chrono::DateTime<chrono::Utc>,
                event: &crate::server::audit::NewEvent,
            ) -> Result<bool, StorageError> {
                let mut tx = self.pool.begin_with($begin).await?;
                let done = sqlx::query(
                    "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                )
                .bind(at)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if done {
                    self.append_event_tx(&mut tx, event, at).await?;
                    tx.commit().await?;
                }
                Ok(done)
            }

            async fn count_admins(&self) -> Result<i64, StorageError> {
                Ok(sqlx::query_scalar("SELECT COUNT(*) FROM admins")
                    .fetch_one(&self.pool)
                    .await?)
            }

            async fn list_admins(&self) -> Result<Vec<super::AdminRow>, StorageError> {
                let sql = format!(
                    "SELECT {} FROM admins ORDER BY email",
                    super::shared::ADMIN_COLUMNS
                );
                sqlx::query(&sql)
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(super::shared::admin_from_row)
                    .collect()
            }

            async fn find_admin(&self, id: &str) -> Result<Option<super::AdminRow>, StorageError> {
                let sql = format!(
                    "SELECT {} FROM admins WHERE id = $1",
                    super::shared::ADMIN_COLUMNS
                );
                sqlx::query(&sql)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?
                    .as_ref()
                    .map(super::shared::admin_from_row)
                    .transpose()
            }

            async fn find_admin_by_email(
                &self,
                email: &crate::domain::Email,
            ) -> Result<Option<super::AdminRow>, StorageError> {
                let sql = format!(
                    "SELECT {} FROM admins WHERE email = $1",
                    super::shared::ADMIN_COLUMNS
                );
                sqlx::query(&sql)
                    .bind(email.as_str())
                    .fetch_optional(&self.pool)
                    .await?
                    .as_ref()
                    .map(super::shared::admin_from_row)
                    .transpose()
            }

            async fn create_admin(
                &self,
                a: &super::AdminRow,
                only_if_none: bool,
                event: &crate::server::audit::NewEvent,
            ) -> Result<bool, StorageError> {
                let mut tx = self.pool.begin_with($begin).await?;
                let guard = if only_if_none {
                    " WHERE NOT EXISTS (SELECT 1 FROM admins)"
                } else {
                    ""
                };
                let sql = format!(
                    "INSERT INTO admins (id, email, role, password_hash, must_change_password, \
                       created_at, sessions_valid_after, password_expires_at) \
                     SELECT $1, $2, $3, $4, $5, $6, $7, $8{guard}"
                );
                let inserted = sqlx::query(&sql)
                    .bind(&a.id)
                    .bind(a.email.as_str())
                    .bind(a.role.as_str())
                    .bind(&a.password_hash)
                    .bind(a.must_change_password)
                    .bind(a.created_at)
                    .bind(a.sessions_valid_after)
                    .bind(a.password_expires_at)
                    .execute(&mut *tx)
                    .await
                    // The email is unique.
                    .map_err(super::shared::unique_is_conflict)?
                    .rows_affected()
                    == 1;
                if inserted {
                    self.append_event_tx(&mut tx, event, a.created_at).await?;
                    tx.commit().await?;
                }
                Ok(inserted)
            }

            async fn change_admin(
                &self,
                id: &str,
                change: &super::AdminChange,
                at: chrono::DateTime<chrono::Utc>,
                event: &crate::server::audit::NewEvent,
            ) -> Result<bool, StorageError> {
                use super::AdminChange;
                let mut tx = self.pool.begin_with($begin).await?;
                let result = match change {
                    AdminChange::Password { hash, must_change, end_sessions, expires_at } => sqlx::query(
                        "UPDATE admins SET password_hash = $1, must_change_password = $2, \
                           sessions_valid_after = CASE WHEN $3 THEN $4 ELSE sessions_valid_after END, \
                           password_expires_at = $6 \
                         WHERE id = $5",
                    )
                    .bind(hash)
                    .bind(*must_change)
                    .bind(*end_sessions)
                    .bind(at)
                    .bind(id)
                    .bind(*expires_at)
                    .execute(&mut *tx)
                    .await?,
                    AdminChange::Disabled(disabled) => {
                        // Admin changes take the audit head's lock first, so they run one
                        // at a time and the guard below sees every committed change: two
                        // admins disabling each other at once cannot leave nobody.
                        let _head: (i64, String) =
                            sqlx::query_as($lock_head).fetch_one(&mut *tx).await?;
                        sqlx::query(
                            "UPDATE admins SET disabled_at = CASE WHEN $1 THEN $2 ELSE NULL END, \
                               sessions_valid_after = CASE WHEN $1 THEN $2 ELSE sessions_valid_after END \
                             WHERE id = $3 AND (NOT $1 OR role <> 'admin' OR EXISTS ( \
                               SELECT 1 FROM admins other WHERE other.role = 'admin' \
                                 AND other.disabled_at IS NULL AND other.id <> $3))",
                        )
                        .bind(*disabled)
                        .bind(at)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?
                    }
                    AdminChange::SignedIn => {
                        sqlx::query("UPDATE admins SET last_login_at = $1 WHERE id = $2")
                            .bind(at)
                            .bind(id)
                            .execute(&mut *tx)
                            .await?
                    }
                };
                if result.rows_affected() != 1 {
                    return Ok(false);
                }
                self.append_event_tx(&mut tx, event, at).await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn load_session(
                &self,
                id: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<Option<String>, StorageError> {
                Ok(sqlx::query_scalar(
                    "SELECT record FROM sessions WHERE id = $1 AND expires_at > $2",
                )
                .bind(id)
                .bind(now)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn save_session(
                &self,
                id: &str,
                record: &str,
                expires_at: chrono::DateTime<chrono::Utc>,
                create: bool,
            ) -> Result<bool, StorageError> {
                let sql = if create {
                    "INSERT INTO sessions (id, record, expires_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (id) DO NOTHING"
                } else {
                    // Only a session that still exists is updated: a request that loaded
                    // it before a sign-out must not bring it back.
                    "UPDATE sessions SET record = $2, expires_at = $3 WHERE id = $1"
                };
                let done = sqlx::query(sql)
                    .bind(id)
                    .bind(record)
                    .bind(expires_at)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn delete_session(&self, id: &str) -> Result<(), StorageError> {
                sqlx::query("DELETE FROM sessions WHERE id = $1")
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn prune_sessions(
                &self,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<u64, StorageError> {
                let gone = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
                    .bind(now)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                sqlx::query(
                    "DELETE FROM login_throttle WHERE window_start < $1 \
                       AND (locked_until IS NULL OR locked_until < $2)",
                )
                .bind(now - chrono::Duration::days(1))
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(gone)
            }

            async fn count_login_failure(
                &self,
                key: &str,
                now: chrono::DateTime<chrono::Utc>,
                window_start: chrono::DateTime<chrono::Utc>,
            ) -> Result<i64, StorageError> {
                // One statement, so parallel attempts cannot lose a count.
                let failures: i32 = sqlx::query_scalar(
                    "INSERT INTO login_throttle (key, failures, window_start) VALUES ($1, 1, $2) \
                     ON CONFLICT (key) DO UPDATE SET \
                       failures = CASE WHEN login_throttle.window_start < $3 THEN 1 \
                                       ELSE login_throttle.failures + 1 END, \
                       window_start = CASE WHEN login_throttle.window_start < $3 THEN $2 \
                                           ELSE login_throttle.window_start END \
                     RETURNING failures",
                )
                .bind(key)
                .bind(now)
                .bind(window_start)
                .fetch_one(&self.pool)
                .await?;
                Ok(i64::from(failures))
            }

            async fn lock_login(
                &self,
                key: &str,
                until: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), StorageError> {
                sqlx::query("UPDATE login_throttle SET locked_until = $1 WHERE key = $2")
                    .bind(until)
                    .bind(key)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn login_locked_until(
                &self,
                keys: &[String],
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<Option<chrono::DateTime<chrono::Utc>>, StorageError> {
                let mut latest = None;
                for key in keys {
                    let until: Option<Option<chrono::DateTime<chrono::Utc>>> = sqlx::query_scalar(
                        "SELECT locked_until FROM login_throttle WHERE key = $1 AND locked_until > $2",
                    )
                    .bind(key)
                    .bind(now)
                    .fetch_optional(&self.pool)
                    .await?;
                    latest = latest.max(until.flatten());
                }
                Ok(latest)
            }

            async fn forgive_login_failure(&self, key: &str) -> Result<(), StorageError> {
                sqlx::query(
                    "UPDATE login_throttle SET failures = failures - 1 \
                     WHERE key = $1 AND failures > 0",
                )
                .bind(key)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn clear_login_failures(&self, key: &str) -> Result<(), StorageError> {
                sqlx::query("DELETE FROM login_throttle WHERE key = $1")
                    .bind(key)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn clear_login_failures_with_prefix(
                &self,
                prefix: &str,
            ) -> Result<(), StorageError> {
                // Not LIKE: an email may hold '_' or '%'.
                sqlx::query("DELETE FROM login_throttle WHERE substr(key, 1, length($1)) = $1")
                    .bind(prefix)
                    .execute(&self.pool)
                    .await?;
                Ok(())
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
                self.append_event_tx(&mut tx, event, t.created_at).await?;
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
                row.as_ref().map(super::shared::token_from_row).transpose()
            }

            async fn get_schedule(&self) -> Result<Option<super::ScheduleRow>, StorageError> {
                type Row = (
                    String,
                    i64,
                    chrono::DateTime<chrono::Utc>,
                    Option<chrono::DateTime<chrono::Utc>>,
                );
                let row: Option<Row> = sqlx::query_as(
                    "SELECT cron, retention_secs, updated_at, cron_since FROM schedule WHERE id = 1",
                )
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(|(cron, retention_secs, updated_at, cron_since)| {
                    super::ScheduleRow {
                        cron,
                        retention_secs,
                        updated_at,
                        cron_since: cron_since.unwrap_or(updated_at),
                    }
                }))
            }

            async fn put_schedule(
                &self,
                s: &super::ScheduleRow,
                event: Option<&crate::server::audit::NewEvent>,
            ) -> Result<(), StorageError> {
                let mut tx = self.pool.begin_with($begin).await?;
                let sql = if event.is_some() {
                    "INSERT INTO schedule (id, cron, retention_secs, updated_at, cron_since) \
                     VALUES (1, $1, $2, $3, $4) \
                     ON CONFLICT (id) DO UPDATE SET cron = $1, retention_secs = $2, \
                       updated_at = $3, cron_since = $4"
                } else {
                    "INSERT INTO schedule (id, cron, retention_secs, updated_at, cron_since) \
                     VALUES (1, $1, $2, $3, $4) ON CONFLICT (id) DO NOTHING"
                };
                sqlx::query(sql)
                    .bind(&s.cron)
                    .bind(s.retention_secs)
                    .bind(s.updated_at)
                    .bind(s.cron_since)
                    .execute(&mut *tx)
                    .await?;
                if let Some(event) = event {
                    self.append_event_tx(&mut tx, event, s.updated_at).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn last_slot(
                &self,
                job: &str,
            ) -> Result<Option<(chrono::DateTime<chrono::Utc>, String)>, StorageError> {
                Ok(sqlx::query_as(
                    "SELECT last_slot, claimed_by FROM scheduler_slots WHERE job = $1",
                )
                .bind(job)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn claim_slot(
                &self,
                claim: &super::SlotClaim,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, StorageError> {
                let mut tx = self.pool.begin_with($begin).await?;
                let claimed = Self::claim_slot_tx(&mut tx, claim, at).await?;
                tx.commit().await?;
                Ok(claimed)
            }

            async fn prune_retired_keys(
                &self,
                keep: usize,
                event: &crate::server::audit::NewEvent,
            ) -> Result<Vec<String>, StorageError> {
                let now = crate::server::audit::now();
                let mut tx = self.pool.begin_with($begin).await?;
                // Newest first by when each key left service; everything past `keep` in
                // its (algorithm, state) goes. Only metadata is left in these rows.
                let mut kids: Vec<String> = sqlx::query_scalar(
                    "DELETE FROM signing_keys WHERE state IN ('revoked', 'expired') AND kid IN ( \
                       SELECT kid FROM ( \
                         SELECT kid, ROW_NUMBER() OVER ( \
                           PARTITION BY alg, state \
                           ORDER BY COALESCE(revoked_at, expires_at, created_at) DESC, kid DESC \
                         ) AS position \
                         FROM signing_keys WHERE state IN ('revoked', 'expired') \
                       ) ranked WHERE position > $1) \
                     RETURNING kid",
                )
                .bind(i64::try_from(keep).unwrap_or(i64::MAX))
                .fetch_all(&mut *tx)
                .await?;
                if kids.is_empty() {
                    // Nothing over the cap (or another instance pruned first): no event.
                    return Ok(kids);
                }
                kids.sort();
                Self::keys_changed_tx(&mut tx).await?;
                let mut event = event.clone();
                event.kids = kids.clone();
                self.append_event_tx(&mut tx, &event, now).await?;
                tx.commit().await?;
                Ok(kids)
            }

            async fn prune_events(
                &self,
                before: chrono::DateTime<chrono::Utc>,
                batch: i64,
                event: &crate::server::audit::NewEvent,
            ) -> Result<super::PrunedEvents, StorageError> {
                let now = crate::server::audit::now();
                let mut tx = self.pool.begin_with($begin).await?;
                // Holding the head serializes this with every appender and with other
                // instances pruning at the same time.
                let (last_id, last_hash): (i64, String) =
                    sqlx::query_as($lock_head).fetch_one(&mut *tx).await?;
                let first: Option<i64> = sqlx::query_scalar("SELECT MIN(id) FROM audit_events")
                    .fetch_one(&mut *tx)
                    .await?;
                let Some(first) = first else {
                    return Ok(super::PrunedEvents::default());
                };
                // The log is cut at one id: everything before the first event that is
                // still within the retention goes, so the kept part stays one chain.
                let cut: Option<i64> = sqlx::query_scalar(
                    "SELECT id FROM audit_events WHERE at >= $1 ORDER BY id LIMIT 1",
                )
                .bind(before)
                .fetch_optional(&mut *tx)
                .await?;
                let cut = cut.unwrap_or(last_id + 1);
                if cut <= first {
                    return Ok(super::PrunedEvents::default());
                }
                let upto = cut.min(first.saturating_add(batch.max(1)));
                // Check what is about to go first: deleting across a break and anchoring
                // the rest would hide the tampering for good.
                let broken = |why: String| {
                    StorageError::Corrupt(format!(
                        "the audit chain is broken ({why}); old events are kept until \
                         `signet audit verify` passes"
                    ))
                };
                let anchor = if first == 1 {
                    String::new()
                } else {
                    let sql = format!(
                        "SELECT {} FROM audit_events WHERE kind = $1 ORDER BY id DESC LIMIT 1",
                        super::shared::EVENT_COLUMNS
                    );
                    let record = sqlx::query(&sql)
                        .bind(crate::domain::audit::kind::AUDIT_PRUNED)
                        .fetch_optional(&mut *tx)
                        .await?
                        .as_ref()
                        .map(super::shared::event_from_row)
                        .transpose()?;
                    match record.as_ref().and_then(crate::server::audit::pruned_start) {
                        Some((id, anchor)) if id == first => anchor,
                        _ => {
                            return Err(broken(format!(
                                "events before {first} are missing and no record says why"
                            )));
                        }
                    }
                };
                let sql = format!(
                    "SELECT {} FROM audit_events WHERE id >= $1 AND id < $2 ORDER BY id",
                    super::shared::EVENT_COLUMNS
                );
                let doomed = sqlx::query(&sql)
                    .bind(first)
                    .bind(upto)
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(super::shared::event_from_row)
                    .collect::<Result<Vec<_>, _>>()?;
                // Their MACs too: rows rewritten without the KEK are not deleted either.
                let keys = self.audit.get();
                let keyed_from: i64 =
                    sqlx::query_scalar("SELECT keyed_from FROM audit_head WHERE id = 1")
                        .fetch_one(&mut *tx)
                        .await?;
                let macs = crate::server::audit::Macs::Check {
                    keys: keys.as_deref(),
                    keyed_from,
                    accept_unkeyed: false,
                };
                let last_deleted = crate::server::audit::check_links(&doomed, &anchor, macs)
                    .map_err(|b| broken(b.to_string()))?;
                let kept: Option<(i64, String)> = sqlx::query_as(
                    "SELECT id, prev_hash FROM audit_events WHERE id >= $1 ORDER BY id LIMIT 1",
                )
                .bind(upto)
                .fetch_optional(&mut *tx)
                .await?;
                // The first event kept must follow the last one deleted; with nothing
                // kept, the head must name it, and the chain restarts at this record.
                let (first_kept_id, anchor) = match kept {
                    Some((id, prev)) if prev == last_deleted => (id, prev),
                    Some((id, _)) => {
                        return Err(broken(format!(
                            "event {id} does not follow the event before it"
                        )));
                    }
                    None if last_deleted == last_hash => (last_id + 1, last_hash),
                    None => return Err(broken("the newest events were deleted".into())),
                };
                let deleted = sqlx::query("DELETE FROM audit_events WHERE id < $1")
                    .bind(upto)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let mut event = event.clone();
                event.details = serde_json::json!({
                    "deleted": deleted,
                    "before": before.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "first_kept_id": first_kept_id,
                    "anchor": anchor,
                });
                self.append_event_tx(&mut tx, &event, now).await?;
                tx.commit().await?;
                Ok(super::PrunedEvents {
                    deleted,
                    more: upto < cut,
                })
            }

            async fn audit_log(
                &self,
            ) -> Result<crate::server::audit::AuditLog, StorageError> {
                // Head and rows from one snapshot: neither an event appended meanwhile nor
                // a pruning pass (which deletes old rows and appends its record) can make
                // a healthy log look broken.
                let mut tx = self.pool.begin_with($read_snapshot).await?;
                let (head_id, head_hash, keyed_from): (i64, String, i64) = sqlx::query_as(
                    "SELECT last_id, last_hash, keyed_from FROM audit_head WHERE id = 1",
                )
                .fetch_one(&mut *tx)
                .await?;
                let sql = format!(
                    "SELECT {} FROM audit_events WHERE id <= $1 ORDER BY id",
                    super::shared::EVENT_COLUMNS
                );
                let events = sqlx::query(&sql)
                    .bind(head_id)
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(super::shared::event_from_row)
                    .collect::<Result<Vec<_>, _>>()?;
                tx.commit().await?;
                Ok(crate::server::audit::AuditLog {
                    events,
                    head_id,
                    head_hash,
                    keyed_from,
                })
            }

            fn set_audit_keys(&self, keys: crate::server::audit::AuditKeys) {
                self.audit.set(keys);
            }

            async fn key_audit_chain(&self) -> Result<Option<super::KeyedChain>, StorageError> {
                let keys = self.audit.get().ok_or(StorageError::NoAuditKey)?;
                let mut tx = self.pool.begin_with($begin).await?;
                let keyed = self.key_chain_tx(&mut tx, &keys).await?;
                tx.commit().await?;
                self.audit
                    .looked
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(keyed)
            }
        }
    };
}

pub(super) use storage_impl;
