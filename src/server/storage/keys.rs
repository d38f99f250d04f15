//! Signing keys: listing, lifecycle changes (with their events and slot claims, in one
//! transaction), resealing, token expiry bookkeeping, pruning retired keys, and the key
//! version other processes watch.

use super::StorageError;
use super::audit::append_event_tx;
use super::error::{corrupt, unique_is_conflict};
use super::schedule::{SlotClaim, claim_slot_tx};
use super::sql::{Col as _, Dialect, QueryExt as _, SqlBackend, Tx, begin};
use crate::domain::{Algorithm, KeyInfo, KeyState, Kid, Transition};
use crate::server::audit::{self as chain, NewEvent};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

#[async_trait]
pub trait KeyStore: Send + Sync {
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
    /// that can push (PostgreSQL NOTIFY). Returns when it cannot listen any more; a
    /// backend that cannot push never sends, and the caller's polling covers it.
    async fn listen_key_changes(
        &self,
        changed: tokio::sync::mpsc::Sender<()>,
    ) -> Result<(), StorageError>;

    /// Deletes the records of `revoked` and of `expired` keys beyond the newest `keep` of
    /// each state per algorithm, with `event` (its kids filled in) in the same
    /// transaction. Returns the kids deleted; none, and no event, when nothing was over.
    async fn prune_retired_keys(
        &self,
        keep: usize,
        event: &NewEvent,
    ) -> Result<Vec<String>, StorageError>;
}

/// A signing key as stored: metadata, public JWK, and where the private half is (gone
/// once the key is revoked or expired): sealed in the row (`software`), or an object on a
/// PKCS#11 token (`pkcs11`).
#[derive(Clone)]
pub struct StoredKey {
    pub info: KeyInfo,
    pub public_jwk: String,
    pub sealed: Option<Vec<u8>>,
    pub kek_id: Option<String>,
    pub revoke_reason: Option<String>,
    /// The label of the token that holds (or held) the private half.
    pub hsm_token: Option<String>,
    /// The private object's `CKA_ID` in hex, while the key lives.
    pub hsm_object: Option<String>,
}

impl StoredKey {
    /// `software` or `pkcs11`: where the private half lives.
    pub fn backend(&self) -> &'static str {
        if self.hsm_token.is_some() {
            "pkcs11"
        } else {
            "software"
        }
    }
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("info", &self.info)
            .field("kek_id", &self.kek_id)
            .field("sealed", &self.sealed.as_ref().map(|_| "REDACTED"))
            .field("hsm_token", &self.hsm_token)
            .field("hsm_object", &self.hsm_object)
            .finish()
    }
}

/// A freshly generated key to insert: sealed (`sealed` and `kek_id`), or on a token
/// (`hsm_token` and `hsm_object`).
#[derive(Clone)]
pub struct NewKey {
    pub kid: Kid,
    pub alg: Algorithm,
    pub state: KeyState,
    pub public_jwk: String,
    pub sealed: Option<Vec<u8>>,
    pub kek_id: Option<String>,
    pub hsm_token: Option<String>,
    pub hsm_object: Option<String>,
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

const KEY_COLUMNS: &str = "kid, alg, state, public_jwk, private_sealed, kek_id, created_at, \
     activated_at, rotated_at, revoked_at, expires_at, last_token_exp, revoke_reason, \
     hsm_token, hsm_object";

/// Decodes a `signing_keys` row selected with [`KEY_COLUMNS`].
fn key_from_row<DB: Dialect>(row: &DB::Row) -> Result<StoredKey, StorageError> {
    let kid: String = row.col("kid")?;
    let alg: String = row.col("alg")?;
    let state: String = row.col("state")?;
    Ok(StoredKey {
        info: KeyInfo {
            kid: Kid::parse(&kid).map_err(|_| corrupt("kid", &kid))?,
            alg: Algorithm::parse(&alg).map_err(|_| corrupt("algorithm", &alg))?,
            state: KeyState::parse(&state).ok_or_else(|| corrupt("state", &state))?,
            created_at: row.col("created_at")?,
            activated_at: row.col("activated_at")?,
            rotated_at: row.col("rotated_at")?,
            revoked_at: row.col("revoked_at")?,
            expires_at: row.col("expires_at")?,
            last_token_exp: row.col("last_token_exp")?,
        },
        public_jwk: row.col("public_jwk")?,
        sealed: row.col("private_sealed")?,
        kek_id: row.col("kek_id")?,
        revoke_reason: row.col("revoke_reason")?,
        hsm_token: row.col("hsm_token")?,
        hsm_object: row.col("hsm_object")?,
    })
}

/// Bumps the key version inside `tx` and, where the backend can, tells the other
/// instances (delivered at commit), so they reload their keys.
async fn keys_changed_tx<DB: Dialect>(tx: &mut Tx<DB>) -> Result<(), StorageError> {
    sqlx::query("UPDATE key_version SET version = version + 1 WHERE id = 1")
        .exec(&mut *tx)
        .await?;
    if let Some(notify) = DB::NOTIFY {
        sqlx::query(notify).exec(&mut *tx).await?;
    }
    Ok(())
}

/// Moves one key from `t.from` to `t.to` inside `tx`; `Conflict` when it is no longer in
/// `t.from`.
async fn transition_tx<DB: Dialect>(
    tx: &mut Tx<DB>,
    t: &Transition,
    change: &KeyChange,
) -> Result<(), StorageError> {
    let destroys = matches!(t.to, KeyState::Revoked | KeyState::Expired);
    let changed = sqlx::query(
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
           kek_id = CASE WHEN $5 THEN NULL ELSE kek_id END, \
           hsm_object = CASE WHEN $5 THEN NULL ELSE hsm_object END \
         WHERE kid = $6 AND state = $7",
    )
    .arg(t.to.as_str())
    .arg(change.now)
    .arg(change.reason.as_deref())
    .arg(t.expires_at)
    .arg(destroys)
    .arg(t.kid.as_str())
    .arg(t.from.as_str())
    .exec(&mut *tx)
    .await?;
    if changed != 1 {
        return Err(StorageError::Conflict);
    }
    Ok(())
}

/// Inserts a new key inside `tx`.
async fn insert_key_tx<DB: Dialect>(
    tx: &mut Tx<DB>,
    k: &NewKey,
    now: DateTime<Utc>,
) -> Result<(), StorageError> {
    let activated = (k.state == KeyState::Active).then_some(now);
    sqlx::query(
        "INSERT INTO signing_keys (kid, alg, state, public_jwk, private_sealed, \
           kek_id, created_at, activated_at, hsm_token, hsm_object) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .arg(k.kid.as_str())
    .arg(k.alg.as_str())
    .arg(k.state.as_str())
    .arg(&k.public_jwk)
    .arg(k.sealed.as_ref())
    .arg(k.kek_id.as_deref())
    .arg(now)
    .arg(activated)
    .arg(k.hsm_token.as_deref())
    .arg(k.hsm_object.as_deref())
    .exec(&mut *tx)
    .await
    // The one-active/one-next indexes: someone else bootstrapped or rotated first.
    .map_err(unique_is_conflict)?;
    Ok(())
}

#[async_trait]
impl<B: SqlBackend> KeyStore for B {
    async fn list_keys(&self) -> Result<Vec<StoredKey>, StorageError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM signing_keys ORDER BY created_at, kid");
        let rows = sqlx::query(&sql).all(self.pool()).await?;
        rows.iter().map(key_from_row::<B::DB>).collect()
    }

    async fn apply_key_change(&self, change: &KeyChange) -> Result<(), StorageError> {
        let mut tx = begin(self).await?;
        // The slot first: a losing instance stops before touching any key.
        if let Some(claim) = &change.claim
            && !claim_slot_tx(&mut tx, claim, change.now).await?
        {
            return Err(StorageError::SlotTaken);
        }
        for t in change.ordered_transitions() {
            transition_tx(&mut tx, t, change).await?;
        }
        for k in &change.new_keys {
            insert_key_tx(&mut tx, k, change.now).await?;
        }
        keys_changed_tx(&mut tx).await?;
        for event in &change.events {
            append_event_tx(self, &mut tx, event, change.now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn reseal_keys(&self, keys: &[Resealed], event: &NewEvent) -> Result<(), StorageError> {
        let mut tx = begin(self).await?;
        for k in keys {
            let changed = sqlx::query(
                "UPDATE signing_keys SET private_sealed = $1, kek_id = $2 \
                 WHERE kid = $3 AND kek_id = $4",
            )
            .arg(&k.sealed)
            .arg(&k.kek_id)
            .arg(k.kid.as_str())
            .arg(&k.old_kek_id)
            .exec(&mut tx)
            .await?;
            if changed != 1 {
                return Err(StorageError::Conflict);
            }
        }
        append_event_tx(self, &mut tx, event, chain::now()).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_token_exp(&self, kid: &Kid, exp: DateTime<Utc>) -> Result<(), StorageError> {
        // A key rotated since the token was signed (another instance had not reloaded
        // yet) stays published until that token expires: invariant 4.
        sqlx::query(
            "UPDATE signing_keys SET last_token_exp = $1, \
               expires_at = CASE WHEN state = 'rotated' AND expires_at < $1 THEN $1 \
                                 ELSE expires_at END \
             WHERE kid = $2 AND (last_token_exp IS NULL OR last_token_exp < $1)",
        )
        .arg(exp)
        .arg(kid.as_str())
        .exec(self.pool())
        .await?;
        Ok(())
    }

    async fn key_version(&self) -> Result<i64, StorageError> {
        let row = sqlx::query("SELECT version FROM key_version WHERE id = 1")
            .one(self.pool())
            .await?;
        Ok(row.at(0)?)
    }

    async fn listen_key_changes(
        &self,
        changed: tokio::sync::mpsc::Sender<()>,
    ) -> Result<(), StorageError> {
        SqlBackend::listen_key_changes(self, changed).await
    }

    async fn prune_retired_keys(
        &self,
        keep: usize,
        event: &NewEvent,
    ) -> Result<Vec<String>, StorageError> {
        let now = chain::now();
        let mut tx = begin(self).await?;
        // Newest first by when each key left service; everything past `keep` in its
        // (algorithm, state) goes. Only metadata is left in these rows.
        let rows = sqlx::query(
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
        .arg(i64::try_from(keep).unwrap_or(i64::MAX))
        .all(&mut tx)
        .await?;
        let mut kids = rows
            .iter()
            .map(|row| row.at(0))
            .collect::<Result<Vec<String>, _>>()?;
        if kids.is_empty() {
            // Nothing over the cap (or another instance pruned first): no event.
            return Ok(kids);
        }
        kids.sort();
        keys_changed_tx(&mut tx).await?;
        let mut event = event.clone();
        event.kids = kids.clone();
        append_event_tx(self, &mut tx, &event, now).await?;
        tx.commit().await?;
        Ok(kids)
    }
}
