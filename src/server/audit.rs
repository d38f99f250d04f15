//! Audit events and their hash chain.
//!
//! Each stored event carries `hash = SHA-256(prev_hash, id, and every field)`, and the
//! chain's head (last id and hash) is kept in its own row. Editing a row breaks its own
//! hash; deleting one breaks the next row's link, or the head if it was the last.

use crate::domain::audit::{Level, Trigger};
use chrono::{DateTime, SubsecRound as _, Utc};
use serde::Serialize;

/// An event about to be written.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub level: Level,
    pub kind: &'static str,
    pub actor: String,
    pub trigger: Trigger,
    pub source: Option<String>,
    pub kids: Vec<String>,
    pub reason: Option<String>,
    pub details: serde_json::Value,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredEvent {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub level: String,
    pub kind: String,
    pub actor: String,
    pub trigger: String,
    pub source: Option<String>,
    pub kids: Vec<String>,
    pub reason: Option<String>,
    pub details: serde_json::Value,
    #[serde(skip)]
    pub prev_hash: String,
    #[serde(skip)]
    pub hash: String,
}

/// Timestamps are stored with microsecond precision on both backends; truncating before
/// writing makes what is hashed equal to what is read back.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// The hash of an event given its predecessor's hash. Fields are length-prefixed so no
/// two different events serialize alike.
#[allow(clippy::too_many_arguments)]
pub fn chain_hash(
    prev_hash: &str,
    id: i64,
    at: DateTime<Utc>,
    level: &str,
    kind: &str,
    actor: &str,
    trigger: &str,
    source: Option<&str>,
    kids_json: &str,
    reason: Option<&str>,
    details_json: &str,
) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let at = at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    let id = id.to_string();
    let fields: [Option<&str>; 11] = [
        Some(prev_hash),
        Some(&id),
        Some(&at),
        Some(level),
        Some(kind),
        Some(actor),
        Some(trigger),
        source,
        Some(kids_json),
        reason,
        Some(details_json),
    ];
    for field in fields {
        match field {
            Some(v) => {
                ctx.update(&(v.len() as u64).to_be_bytes());
                ctx.update(v.as_bytes());
            }
            None => ctx.update(&u64::MAX.to_be_bytes()),
        }
    }
    crate::server::crypto::hex(ctx.finish().as_ref())
}

impl StoredEvent {
    pub fn expected_hash(&self) -> String {
        chain_hash(
            &self.prev_hash,
            self.id,
            self.at,
            &self.level,
            &self.kind,
            &self.actor,
            &self.trigger,
            self.source.as_deref(),
            &serde_json::to_string(&self.kids).unwrap_or_default(),
            self.reason.as_deref(),
            &self.details.to_string(),
        )
    }
}

/// Where the chain breaks, if it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainBreak {
    /// The row's content does not match its hash: it was edited.
    Edited { id: i64 },
    /// The row does not follow its predecessor: something before it was deleted or
    /// reordered.
    Unlinked { id: i64 },
    /// The head names a later event than the last row: the newest rows were deleted.
    Truncated { last_id: i64, head_id: i64 },
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChainBreak::Edited { id } => {
                write!(f, "event {id} was altered (its hash does not match)")
            }
            ChainBreak::Unlinked { id } => {
                write!(
                    f,
                    "event {id} does not follow the event before it (a row was deleted)"
                )
            }
            ChainBreak::Truncated { last_id, head_id } => write!(
                f,
                "the log ends at event {last_id} but its head records event {head_id} (rows were deleted)"
            ),
        }
    }
}

/// Where a chain cut by housekeeping begins, as an `audit.pruned` record names it: the
/// first event kept, and the hash that event follows.
pub fn pruned_start(record: &StoredEvent) -> Option<(i64, String)> {
    if record.kind != crate::domain::audit::kind::AUDIT_PRUNED {
        return None;
    }
    let id = record.details.get("first_kept_id")?.as_i64()?;
    let anchor = record.details.get("anchor")?.as_str()?;
    Some((id, anchor.to_string()))
}

/// Checks that `events` (in id order) follow `prev` and each other, and that each one
/// matches its hash. Returns the last hash (`prev` when there are none).
pub fn check_links(events: &[StoredEvent], prev: &str) -> Result<String, ChainBreak> {
    let mut prev = prev.to_string();
    for e in events {
        if e.prev_hash != prev {
            return Err(ChainBreak::Unlinked { id: e.id });
        }
        if e.expected_hash() != e.hash {
            return Err(ChainBreak::Edited { id: e.id });
        }
        prev = e.hash.clone();
    }
    Ok(prev)
}

/// Checks a whole chain, given in id order, against its head.
///
/// The chain may begin after event 1 when housekeeping deleted events older than the
/// retention. Each such deletion appends an `audit.pruned` event naming the first event
/// it kept and the hash that event follows; the latest of them must describe exactly
/// where the rows now begin. That record is linked and hashed like any other event, so
/// rows deleted by hand still show up as a break, and housekeeping checks the rows it
/// deletes first, so it never re-anchors around an earlier break.
pub fn verify_chain(
    events: &[StoredEvent],
    head_id: i64,
    head_hash: &str,
) -> Result<usize, ChainBreak> {
    let start = events.iter().rev().find_map(pruned_start);
    let prev = match (events.first(), start) {
        (Some(first), Some((id, anchor))) if id == first.id => anchor,
        _ => String::new(),
    };
    let last = check_links(events, &prev)?;
    let last_id = events.last().map_or(0, |e| e.id);
    if last_id != head_id || last != head_hash {
        return Err(ChainBreak::Truncated { last_id, head_id });
    }
    Ok(events.len())
}
