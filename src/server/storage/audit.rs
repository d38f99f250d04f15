//! The audit log: appending to the hash chain (with MACs), reading, pruning, keying the
//! chain that predates MACs.

use super::StorageError;
use super::error::corrupt;
use super::sql::{Col as _, Dialect, QueryExt as _, SqlBackend, Tx, begin, read_snapshot};
use crate::domain::audit::{Level, kind};
use crate::server::audit::{
    self as chain, Actor, AuditKeys, AuditLog, Macs, NewEvent, StoredEvent, check_links,
    pruned_start,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::sync::atomic::Ordering;

#[async_trait]
pub trait AuditStore: Send + Sync {
    async fn list_events(&self, query: &EventQuery) -> Result<Vec<StoredEvent>, StorageError>;

    /// Appends one event on its own (sign-ins, sign-outs: changes with no other row).
    async fn append_event(&self, event: &NewEvent) -> Result<(), StorageError>;

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

    /// The whole chain in id order and the head (last id, last hash), for verification.
    async fn audit_chain(&self) -> Result<(Vec<StoredEvent>, i64, String), StorageError> {
        let log = self.audit_log().await?;
        Ok((log.events, log.head_id, log.head_hash))
    }

    /// The whole log with its head and where the keyed chain begins, from one snapshot.
    async fn audit_log(&self) -> Result<AuditLog, StorageError>;

    /// Gives the storage the MAC keys of the audit chain (derived from the KEKs). Until
    /// then, appending an event fails with `NoAuditKey`; reading never needs them.
    fn set_audit_keys(&self, keys: AuditKeys);

    /// Gives the events from before the chain was keyed their MACs, in one transaction
    /// with an `audit.keyed` event, after checking their hash chain. `None` when there is
    /// nothing to key; `Corrupt` (nothing written) when the chain is broken, which is
    /// never blessed with MACs. Writers do this by themselves before their first event.
    async fn key_audit_chain(&self) -> Result<Option<KeyedChain>, StorageError>;
}

/// What keying the pre-existing audit chain did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedChain {
    /// How many old events were given their MAC.
    pub events: u64,
    pub kek_id: String,
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
    /// Only events older than this one (the cursor of the previous page): a smaller id,
    /// or, in a time window (whose pages go newest first by `(at, id)`), a smaller
    /// `(at, id)`.
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

const EVENT_COLUMNS: &str = "id, at, level, kind, actor, trigger, source, kids, reason, details, prev_hash, hash, \
     mac, mac_kek";

/// Decodes an `audit_events` row selected with [`EVENT_COLUMNS`].
fn event_from_row<DB: Dialect>(row: &DB::Row) -> Result<StoredEvent, StorageError> {
    let kids: String = row.col("kids")?;
    let details: String = row.col("details")?;
    Ok(StoredEvent {
        id: row.col("id")?,
        at: row.col("at")?,
        level: row.col("level")?,
        kind: row.col("kind")?,
        actor: row.col("actor")?,
        trigger: row.col("trigger")?,
        source: row.col("source")?,
        kids: serde_json::from_str(&kids).map_err(|_| corrupt("kids", &kids))?,
        reason: row.col("reason")?,
        details: serde_json::from_str(&details).map_err(|_| corrupt("details", &details))?,
        prev_hash: row.col("prev_hash")?,
        hash: row.col("hash")?,
        mac: row.col("mac")?,
        mac_kek: row.col("mac_kek")?,
    })
}

/// The events a query selecting [`EVENT_COLUMNS`] returns.
fn events_from_rows<DB: Dialect>(rows: &[DB::Row]) -> Result<Vec<StoredEvent>, StorageError> {
    rows.iter().map(event_from_row::<DB>).collect()
}

/// Reads and locks the audit chain's head (last id, last hash) inside `tx`
/// ([`Dialect::LOCK_HEAD`]).
pub(super) async fn lock_head<DB: Dialect>(tx: &mut Tx<DB>) -> Result<(i64, String), StorageError> {
    let head = sqlx::query(DB::LOCK_HEAD).one(&mut *tx).await?;
    Ok((head.at(0)?, head.at(1)?))
}

/// The id from which every event must carry a MAC, inside `tx`.
async fn keyed_from<DB: Dialect>(tx: &mut Tx<DB>) -> Result<i64, StorageError> {
    let row = sqlx::query("SELECT keyed_from FROM audit_head WHERE id = 1")
        .one(&mut *tx)
        .await?;
    Ok(row.at(0)?)
}

/// Appends one event to the hash chain inside `tx`, with its MAC under the active KEK.
/// Locking the head row serializes appenders, so the chain never forks. A process's first
/// append keys the old chain first, if it has to.
pub(super) async fn append_event_tx<B: SqlBackend>(
    backend: &B,
    tx: &mut Tx<B::DB>,
    event: &NewEvent,
    at: DateTime<Utc>,
) -> Result<(), StorageError> {
    let state = backend.audit();
    let keys = state.get().ok_or(StorageError::NoAuditKey)?;
    if !state.looked.load(Ordering::Relaxed) {
        match key_chain_tx(tx, &keys).await {
            Ok(_) => {}
            // The error says why; the event is still written (with its MAC), so a broken
            // old log never stops a revocation.
            Err(StorageError::Corrupt(why)) => {
                tracing::error!("{why}");
            }
            Err(e) => return Err(e),
        }
        state.looked.store(true, Ordering::Relaxed);
    }
    append_keyed_tx(tx, &keys, event, at).await
}

async fn append_keyed_tx<DB: Dialect>(
    tx: &mut Tx<DB>,
    keys: &AuditKeys,
    event: &NewEvent,
    at: DateTime<Utc>,
) -> Result<(), StorageError> {
    let (last_id, last_hash) = lock_head(tx).await?;
    let id = last_id + 1;
    let kids =
        serde_json::to_string(&event.kids).map_err(|e| StorageError::Corrupt(e.to_string()))?;
    let details = event.details.to_string();
    let hash = chain::chain_hash(
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
    .arg(id)
    .arg(at)
    .arg(event.level.as_str())
    .arg(event.kind)
    .arg(&event.actor)
    .arg(event.trigger.as_str())
    .arg(event.source.as_deref())
    .arg(&kids)
    .arg(event.reason.as_deref())
    .arg(&details)
    .arg(&last_hash)
    .arg(&hash)
    .arg(&mac)
    .arg(&mac_kek)
    .exec(&mut *tx)
    .await?;
    sqlx::query("UPDATE audit_head SET last_id = $1, last_hash = $2 WHERE id = 1")
        .arg(id)
        .arg(&hash)
        .exec(&mut *tx)
        .await?;
    Ok(())
}

/// Keys the events from before the keyed chain inside `tx` (see
/// [`AuditStore::key_audit_chain`]).
async fn key_chain_tx<DB: Dialect>(
    tx: &mut Tx<DB>,
    keys: &AuditKeys,
) -> Result<Option<KeyedChain>, StorageError> {
    // The head lock first: a second instance keying at once waits here, then finds
    // nothing left to do.
    let (last_id, last_hash) = lock_head(tx).await?;
    let waiting: i64 = sqlx::query("SELECT COUNT(*) FROM audit_events WHERE mac IS NULL")
        .one(&mut *tx)
        .await?
        .at(0)?;
    if waiting == 0 {
        return Ok(None);
    }
    let keyed_from = keyed_from(tx).await?;
    let sql = format!("SELECT {EVENT_COLUMNS} FROM audit_events ORDER BY id");
    let events = events_from_rows::<DB>(&sqlx::query(&sql).all(&mut *tx).await?)?;
    // Only an intact chain is blessed: every hash and link, every MAC that is there, and
    // no row missing one that was written after keying began.
    let macs = Macs::Check {
        keys: Some(keys),
        keyed_from,
        accept_unkeyed: true,
    };
    chain::verify_chain_with(&events, last_id, &last_hash, macs).map_err(|b| {
        StorageError::Corrupt(format!(
            "the audit chain is broken ({b}); its older events are not given MACs \
             until `signet audit verify` passes"
        ))
    })?;
    let mut keyed = 0u64;
    for e in events.iter().filter(|e| e.mac.is_none()) {
        let (kek, mac) = keys.sign(&e.hash);
        sqlx::query("UPDATE audit_events SET mac = $1, mac_kek = $2 WHERE id = $3")
            .arg(&mac)
            .arg(&kek)
            .arg(e.id)
            .exec(&mut *tx)
            .await?;
        keyed += 1;
    }
    let kek_id = keys.active_id().to_string();
    let event = NewEvent::new(Level::Notice, kind::AUDIT_KEYED, &Actor::system()).details(
        serde_json::json!({
            "events": keyed,
            "first_id": events.first().map(|e| e.id),
            "last_id": last_id,
            "kek": kek_id,
        }),
    );
    append_keyed_tx(tx, keys, &event, chain::now()).await?;
    tracing::warn!(
        events = keyed,
        kek = %kek_id,
        "the audit log predated keyed MACs: its hash chain checked out and its \
         events are now authenticated under the key-encryption key"
    );
    Ok(Some(KeyedChain {
        events: keyed,
        kek_id,
    }))
}

/// A value an [`EventQuery`] filters on.
enum FilterValue {
    Text(String),
    Time(DateTime<Utc>),
    Id(i64),
}

/// Each filter given, in order: its condition and its value. `$` stands for the value's
/// parameter (a condition may name it twice).
fn event_filters(q: &EventQuery) -> Vec<(&'static str, FilterValue)> {
    use FilterValue::{Id, Text, Time};
    let texts = [
        ("level = $", &q.level),
        ("kind = $", &q.kind),
        ("actor = $", &q.actor),
    ];
    let times = [("at >= $", q.since), ("at < $", q.until)];
    // Pages of a time window walk the (at, id) index, so their cursor is (at, id) too:
    // the cursor event's time is read from its id.
    let before = if by_time(q) {
        "(at, id) < ((SELECT at FROM audit_events WHERE id = $), $)"
    } else {
        "id < $"
    };
    let ids = [(before, q.before_id), ("id > $", q.after_id)];
    let texts = texts
        .into_iter()
        .filter_map(|(c, v)| Some((c, Text(v.clone()?))));
    let times = times.into_iter().filter_map(|(c, v)| Some((c, Time(v?))));
    let ids = ids.into_iter().filter_map(|(c, v)| Some((c, Id(v?))));
    texts.chain(times).chain(ids).collect()
}

/// Whether a query pages newest first by time rather than by id: a time window (the
/// (at, id) index finds it at once; walking ids from the newest would scan everything
/// after it), unless it reads forward from an id (the live tail).
fn by_time(q: &EventQuery) -> bool {
    (q.since.is_some() || q.until.is_some()) && q.after_id.is_none()
}

#[async_trait]
impl<B: SqlBackend> AuditStore for B {
    async fn list_events(&self, q: &EventQuery) -> Result<Vec<StoredEvent>, StorageError> {
        // Only the filters given go into the SQL, so each shape of query gets a plan that
        // uses its index ((kind, id), (level, id), (actor, id), the primary key, or for a
        // time window (at, id) and (kind, at, id), (level, at, id), (actor, at, id)) and
        // walks it newest first, whatever the table's size.
        let filters = event_filters(q);
        let mut sql = format!("SELECT {EVENT_COLUMNS} FROM audit_events WHERE 1 = 1");
        for (n, (condition, _)) in filters.iter().enumerate() {
            sql.push_str(" AND ");
            sql.push_str(&condition.replace('$', &format!("${}", n + 1)));
        }
        // Newest first, except when reading forward from a point (the live tail), which
        // must see the oldest new rows first so none is skipped.
        let order = if by_time(q) {
            "at DESC, id DESC"
        } else if q.after_id.is_some() && q.before_id.is_none() {
            "id ASC"
        } else {
            "id DESC"
        };
        sql.push_str(&format!(" ORDER BY {order} LIMIT ${}", filters.len() + 1));
        let query = filters
            .into_iter()
            .fold(sqlx::query(&sql), |query, (_, value)| match value {
                FilterValue::Text(v) => query.arg(v),
                FilterValue::Time(v) => query.arg(v),
                FilterValue::Id(v) => query.arg(v),
            });
        let rows = query.arg(q.limit).all(self.pool()).await?;
        events_from_rows::<B::DB>(&rows)
    }

    async fn append_event(&self, event: &NewEvent) -> Result<(), StorageError> {
        let mut tx = begin(self).await?;
        append_event_tx(self, &mut tx, event, chain::now()).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn prune_events(
        &self,
        before: DateTime<Utc>,
        batch: i64,
        event: &NewEvent,
    ) -> Result<PrunedEvents, StorageError> {
        let now = chain::now();
        let mut tx = begin(self).await?;
        // Holding the head serializes this with every appender and with other instances
        // pruning at the same time.
        let (last_id, last_hash) = lock_head(&mut tx).await?;
        let first: Option<i64> = sqlx::query("SELECT MIN(id) FROM audit_events")
            .one(&mut tx)
            .await?
            .at(0)?;
        let Some(first) = first else {
            return Ok(PrunedEvents::default());
        };
        // The log is cut at one id: everything before the first event that is still
        // within the retention goes, so the kept part stays one chain.
        let cut: Option<i64> =
            sqlx::query("SELECT id FROM audit_events WHERE at >= $1 ORDER BY id LIMIT 1")
                .arg(before)
                .opt(&mut tx)
                .await?
                .map(|row| row.at(0))
                .transpose()?;
        let cut = cut.unwrap_or(last_id + 1);
        if cut <= first {
            return Ok(PrunedEvents::default());
        }
        let upto = cut.min(first.saturating_add(batch.max(1)));
        // Check what is about to go first: deleting across a break and anchoring the rest
        // would hide the tampering for good.
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
                "SELECT {EVENT_COLUMNS} FROM audit_events WHERE kind = $1 ORDER BY id DESC LIMIT 1"
            );
            let record = sqlx::query(&sql)
                .arg(kind::AUDIT_PRUNED)
                .opt(&mut tx)
                .await?
                .as_ref()
                .map(event_from_row::<B::DB>)
                .transpose()?;
            match record.as_ref().and_then(pruned_start) {
                Some((id, anchor)) if id == first => anchor,
                _ => {
                    return Err(broken(format!(
                        "events before {first} are missing and no record says why"
                    )));
                }
            }
        };
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM audit_events WHERE id >= $1 AND id < $2 ORDER BY id"
        );
        let rows = sqlx::query(&sql).arg(first).arg(upto).all(&mut tx).await?;
        let doomed = events_from_rows::<B::DB>(&rows)?;
        // Their MACs too: rows rewritten without the KEK are not deleted either.
        let keys = self.audit().get();
        let macs = Macs::Check {
            keys: keys.as_deref(),
            keyed_from: keyed_from(&mut tx).await?,
            accept_unkeyed: false,
        };
        let last_deleted =
            check_links(&doomed, &anchor, macs).map_err(|b| broken(b.to_string()))?;
        let kept = sqlx::query(
            "SELECT id, prev_hash FROM audit_events WHERE id >= $1 ORDER BY id LIMIT 1",
        )
        .arg(upto)
        .opt(&mut tx)
        .await?
        .map(|row| Ok::<(i64, String), sqlx::Error>((row.at(0)?, row.at(1)?)))
        .transpose()?;
        // The first event kept must follow the last one deleted; with nothing kept, the
        // head must name it, and the chain restarts at this record.
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
            .arg(upto)
            .exec(&mut tx)
            .await?;
        let mut event = event.clone();
        event.details = serde_json::json!({
            "deleted": deleted,
            "before": before.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "first_kept_id": first_kept_id,
            "anchor": anchor,
        });
        append_event_tx(self, &mut tx, &event, now).await?;
        tx.commit().await?;
        Ok(PrunedEvents {
            deleted,
            more: upto < cut,
        })
    }

    async fn audit_log(&self) -> Result<AuditLog, StorageError> {
        // Head and rows from one snapshot: neither an event appended meanwhile nor a
        // pruning pass (which deletes old rows and appends its record) can make a healthy
        // log look broken.
        let mut tx = read_snapshot(self).await?;
        let head =
            sqlx::query("SELECT last_id, last_hash, keyed_from FROM audit_head WHERE id = 1")
                .one(&mut tx)
                .await?;
        let (head_id, head_hash, keyed_from): (i64, String, i64) =
            (head.at(0)?, head.at(1)?, head.at(2)?);
        let sql = format!("SELECT {EVENT_COLUMNS} FROM audit_events WHERE id <= $1 ORDER BY id");
        let rows = sqlx::query(&sql).arg(head_id).all(&mut tx).await?;
        let events = events_from_rows::<B::DB>(&rows)?;
        tx.commit().await?;
        Ok(AuditLog {
            events,
            head_id,
            head_hash,
            keyed_from,
        })
    }

    fn set_audit_keys(&self, keys: AuditKeys) {
        self.audit().set(keys);
    }

    async fn key_audit_chain(&self) -> Result<Option<KeyedChain>, StorageError> {
        let keys = self.audit().get().ok_or(StorageError::NoAuditKey)?;
        let mut tx = begin(self).await?;
        let keyed = key_chain_tx(&mut tx, &keys).await?;
        tx.commit().await?;
        self.audit().looked.store(true, Ordering::Relaxed);
        Ok(keyed)
    }
}
