//! Audit events: who did what ([`Actor`], [`NewEvent`]), how a stored event reads, and
//! the hash chain with its MACs.
//!
//! Each stored event carries `hash = SHA-256(prev_hash, id, and every field)`, and the
//! chain's head (last id and hash) is kept in its own row. Editing a row breaks its own
//! hash; deleting one breaks the next row's link, or the head if it was the last.
//!
//! The chain is also keyed, so that someone with database access but without the KEK
//! cannot rewrite it and recompute the hashes: each event carries
//! `mac = HMAC-SHA256(K, hash)` and the id of the KEK that `K` was derived from
//! (`K = HKDF-SHA256(KEK, info "signet audit chain v1")`, never the KEK itself). New events
//! use the active KEK; older ones keep naming theirs, so a KEK rotation leaves them
//! verifiable as long as the old KEK stays configured (as it must for sealed keys anyway).
//! Events written before the chain was keyed (below the head's `keyed_from`) get their
//! MACs once, from the first process that has the KEK, after their hash chain checks out.

use crate::domain::audit::{EventView, Level, Trigger};
use crate::domain::time::format_utc;
use crate::server::crypto::kek::Keyring;
use aws_lc_rs::{hkdf, hmac};
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

impl NewEvent {
    /// An event of `kind` that `actor` caused, with no kids, reason or details yet.
    pub fn new(level: Level, kind: &'static str, actor: &Actor) -> Self {
        Self {
            level,
            kind,
            actor: actor.name.clone(),
            trigger: actor.trigger,
            source: actor.source.clone(),
            kids: Vec::new(),
            reason: None,
            details: serde_json::json!({}),
        }
    }

    /// The keys the event is about.
    pub fn kids(mut self, kids: Vec<String>) -> Self {
        self.kids = kids;
        self
    }

    /// Why it happened, as the operator said or Signet explains.
    pub fn reason(mut self, reason: Option<String>) -> Self {
        self.reason = reason;
        self
    }

    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

/// Who asked for a change, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub trigger: Trigger,
    pub source: Option<String>,
}

impl Actor {
    pub fn cli() -> Self {
        let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
        Self {
            name: format!("cli:{user}"),
            trigger: Trigger::Cli,
            source: None,
        }
    }

    /// Signet itself, for what happens at start (first keys, catch-up).
    pub fn system() -> Self {
        Self {
            name: "system".into(),
            trigger: Trigger::Scheduler,
            source: None,
        }
    }

    pub fn scheduler() -> Self {
        Self {
            name: "scheduler".into(),
            trigger: Trigger::Scheduler,
            source: None,
        }
    }
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
    /// HMAC of `hash` (hex), absent only on events from before the chain was keyed.
    #[serde(skip)]
    pub mac: Option<String>,
    /// The id of the KEK the MAC key was derived from.
    #[serde(skip)]
    pub mac_kek: Option<String>,
}

impl From<&StoredEvent> for EventView {
    fn from(e: &StoredEvent) -> Self {
        EventView {
            id: e.id,
            at: format_utc(e.at),
            level: e.level.clone(),
            kind: e.kind.clone(),
            actor: e.actor.clone(),
            trigger: e.trigger.clone(),
            source: e.source.clone(),
            kids: e.kids.clone(),
            reason: e.reason.clone(),
            details: if e.details.as_object().is_some_and(|o| o.is_empty()) {
                String::new()
            } else {
                e.details.to_string()
            },
        }
    }
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
    /// The row's MAC does not match: it was rewritten (hash and all) without the KEK, or
    /// the KEK configured under its id is not the one it was written with.
    Forged { id: i64 },
    /// A row of the keyed chain has no MAC.
    Unauthenticated { id: i64 },
    /// A row from before the chain was keyed that has not been given its MAC yet.
    Unkeyed { id: i64 },
    /// The row's MAC was made under a KEK this process does not have.
    MissingKek { id: i64, kek: String },
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
            ChainBreak::Forged { id } => write!(
                f,
                "event {id} was altered (its MAC does not match: it was rewritten without \
                 the key-encryption key, or the key configured under its id is wrong)"
            ),
            ChainBreak::Unauthenticated { id } => write!(
                f,
                "event {id} has no MAC (it was written or altered without the key-encryption key)"
            ),
            ChainBreak::Unkeyed { id } => write!(
                f,
                "event {id} predates the keyed chain and has no MAC yet; the next start of \
                 `signet serve` (or any command that writes) with the key-encryption key adds them"
            ),
            ChainBreak::MissingKek { id, kek } => write!(
                f,
                "event {id} is authenticated under key-encryption key '{kek}', which is not \
                 configured; add it to SIGNET_ENC_KEYS to verify the log"
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

/// How the MACs of a chain are checked.
#[derive(Debug, Clone, Copy)]
pub enum Macs<'a> {
    /// Links and hashes only.
    Ignore,
    /// Every event must carry a valid MAC, except, with `accept_unkeyed`, those below
    /// `keyed_from` that have none yet (what keying the old chain accepts). Without
    /// `keys`, any MAC is an unknown KEK.
    Check {
        keys: Option<&'a AuditKeys>,
        keyed_from: i64,
        accept_unkeyed: bool,
    },
}

/// Checks that `events` (in id order) follow `prev` and each other, and that each one
/// matches its hash and, as `macs` says, its MAC. Returns the last hash (`prev` when there
/// are none).
///
/// Events merely waiting for their MAC (`Unkeyed`) are reported only when nothing else is
/// wrong: an edit further on is the news.
pub fn check_links(
    events: &[StoredEvent],
    prev: &str,
    macs: Macs<'_>,
) -> Result<String, ChainBreak> {
    let mut prev = prev.to_string();
    let mut unkeyed = None;
    for e in events {
        if e.prev_hash != prev {
            return Err(ChainBreak::Unlinked { id: e.id });
        }
        if e.expected_hash() != e.hash {
            return Err(ChainBreak::Edited { id: e.id });
        }
        if let Macs::Check {
            keys,
            keyed_from,
            accept_unkeyed,
        } = macs
        {
            match check_mac(e, keys, keyed_from, accept_unkeyed) {
                Err(b @ ChainBreak::Unkeyed { .. }) => {
                    unkeyed.get_or_insert(b);
                }
                other => other?,
            }
        }
        prev = e.hash.clone();
    }
    match unkeyed {
        Some(b) => Err(b),
        None => Ok(prev),
    }
}

fn check_mac(
    e: &StoredEvent,
    keys: Option<&AuditKeys>,
    keyed_from: i64,
    accept_unkeyed: bool,
) -> Result<(), ChainBreak> {
    let (Some(mac), Some(kek)) = (&e.mac, &e.mac_kek) else {
        return match (e.id < keyed_from, accept_unkeyed) {
            (true, true) => Ok(()),
            (true, false) => Err(ChainBreak::Unkeyed { id: e.id }),
            (false, _) => Err(ChainBreak::Unauthenticated { id: e.id }),
        };
    };
    let missing = || ChainBreak::MissingKek {
        id: e.id,
        kek: kek.clone(),
    };
    match keys.ok_or_else(&missing)?.verify(kek, &e.hash, mac) {
        None => Err(missing()),
        Some(true) => Ok(()),
        Some(false) => Err(ChainBreak::Forged { id: e.id }),
    }
}

/// Checks a whole chain, given in id order, against its head: links and hashes only
/// (see [`verify_keyed_chain`] for the MACs).
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
    verify_chain_with(events, head_id, head_hash, Macs::Ignore)
}

/// The whole log as stored, for verification: events in id order, the head, and the
/// first id that had to carry a MAC from the start.
#[derive(Debug, Clone, Default)]
pub struct AuditLog {
    pub events: Vec<StoredEvent>,
    pub head_id: i64,
    pub head_hash: String,
    pub keyed_from: i64,
}

/// Checks links, hashes and every MAC: what `signet audit verify` reports. Names the
/// first bad event, or a KEK it needs but `keys` lacks.
pub fn verify_keyed_chain(log: &AuditLog, keys: Option<&AuditKeys>) -> Result<usize, ChainBreak> {
    verify_chain_with(
        &log.events,
        log.head_id,
        &log.head_hash,
        Macs::Check {
            keys,
            keyed_from: log.keyed_from,
            accept_unkeyed: false,
        },
    )
}

pub fn verify_chain_with(
    events: &[StoredEvent],
    head_id: i64,
    head_hash: &str,
    macs: Macs<'_>,
) -> Result<usize, ChainBreak> {
    let start = events.iter().rev().find_map(pruned_start);
    let prev = match (events.first(), start) {
        (Some(first), Some((id, anchor))) if id == first.id => anchor,
        _ => String::new(),
    };
    let last = check_links(events, &prev, macs)?;
    let last_id = events.last().map_or(0, |e| e.id);
    if last_id != head_id || last != head_hash {
        return Err(ChainBreak::Truncated { last_id, head_id });
    }
    Ok(events.len())
}

/// The info string of the MAC key's derivation: a key for this purpose only.
const MAC_KEY_INFO: &[u8] = b"signet audit chain v1";

/// The MAC keys of the audit chain, derived on use from the configured KEKs. Holds the
/// keyring, whose `Debug` shows ids only.
#[derive(Debug, Clone)]
pub struct AuditKeys {
    ring: Keyring,
}

impl AuditKeys {
    pub fn new(ring: Keyring) -> Self {
        Self { ring }
    }

    /// The KEK id new events are authenticated under.
    pub fn active_id(&self) -> &str {
        self.ring.active_id()
    }

    fn key(&self, kek_id: &str) -> Option<hmac::Key> {
        let kek = self.ring.get(kek_id)?;
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(kek.key_bytes());
        let okm = prk.expand(&[MAC_KEY_INFO], hmac::HMAC_SHA256).ok()?;
        Some(hmac::Key::from(okm))
    }

    /// The MAC of an event's hash under the KEK `kek_id`; `None` if it is not configured.
    pub fn mac(&self, kek_id: &str, hash: &str) -> Option<String> {
        let tag = hmac::sign(&self.key(kek_id)?, hash.as_bytes());
        Some(crate::server::crypto::hex(tag.as_ref()))
    }

    /// The active KEK's id and the MAC under it: what a new event carries.
    pub fn sign(&self, hash: &str) -> (String, String) {
        let id = self.active_id().to_string();
        let mac = self.mac(&id, hash).unwrap_or_default();
        (id, mac)
    }

    /// Whether `mac` is the MAC of `hash` under `kek_id` (compared in constant time);
    /// `None` if that KEK is not configured.
    pub fn verify(&self, kek_id: &str, hash: &str, mac: &str) -> Option<bool> {
        let key = self.key(kek_id)?;
        let Some(tag) = crate::server::crypto::unhex(mac) else {
            return Some(false);
        };
        Some(hmac::verify(&key, hash.as_bytes(), &tag).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const K2: &str = "k2:HxwdHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=";

    fn event(id: i64, prev: &str, keys: Option<&AuditKeys>) -> StoredEvent {
        let mut e = StoredEvent {
            id,
            at: now(),
            level: "info".into(),
            kind: "schedule.changed".into(),
            actor: "a".into(),
            trigger: "cli".into(),
            source: None,
            kids: Vec::new(),
            reason: None,
            details: serde_json::json!({}),
            prev_hash: prev.into(),
            hash: String::new(),
            mac: None,
            mac_kek: None,
        };
        e.hash = e.expected_hash();
        if let Some(keys) = keys {
            let (kek, mac) = keys.sign(&e.hash);
            e.mac = Some(mac);
            e.mac_kek = Some(kek);
        }
        e
    }

    #[test]
    fn macs_are_keyed_per_kek_and_checked() {
        let both = AuditKeys::new(Keyring::parse(&format!("{K1},{K2}"), "k2").unwrap());
        let (kek, mac) = both.sign("abc");
        assert_eq!(kek, "k2");
        assert_eq!(mac.len(), 64);
        assert_eq!(both.verify("k2", "abc", &mac), Some(true));
        assert_eq!(both.verify("k2", "abd", &mac), Some(false));
        assert_eq!(both.verify("k1", "abc", &mac), Some(false));
        assert_eq!(both.verify("k2", "abc", "zz"), Some(false));
        let only_k1 = AuditKeys::new(Keyring::parse(K1, "").unwrap());
        assert_eq!(only_k1.verify("k2", "abc", &mac), None);
        // The MAC key is derived, not the KEK itself.
        let raw = hmac::Key::new(
            hmac::HMAC_SHA256,
            Keyring::parse(K2, "").unwrap().active().key_bytes(),
        );
        let raw_tag = crate::server::crypto::hex(hmac::sign(&raw, b"abc").as_ref());
        assert_ne!(raw_tag, mac);
        assert!(!format!("{both:?}").contains("AAECAw"));
    }

    #[test]
    fn keyed_verification_names_the_first_bad_event() {
        let keys = AuditKeys::new(Keyring::parse(K1, "").unwrap());
        let a = event(1, "", Some(&keys));
        let b = event(2, &a.hash, Some(&keys));
        let log = |events: Vec<StoredEvent>, keyed_from| AuditLog {
            head_id: events.last().unwrap().id,
            head_hash: events.last().unwrap().hash.clone(),
            events,
            keyed_from,
        };
        assert_eq!(
            verify_keyed_chain(&log(vec![a.clone(), b.clone()], 1), Some(&keys)),
            Ok(2)
        );
        let mut forged = b.clone();
        forged.mac = a.mac.clone();
        assert_eq!(
            verify_keyed_chain(&log(vec![a.clone(), forged], 1), Some(&keys)),
            Err(ChainBreak::Forged { id: 2 })
        );
        assert_eq!(
            verify_keyed_chain(&log(vec![a.clone(), b.clone()], 1), None),
            Err(ChainBreak::MissingKek {
                id: 1,
                kek: "k1".into()
            })
        );
        let old = event(1, "", None);
        let new = event(2, &old.hash, Some(&keys));
        assert_eq!(
            verify_keyed_chain(&log(vec![old.clone(), new.clone()], 2), Some(&keys)),
            Err(ChainBreak::Unkeyed { id: 1 })
        );
        assert_eq!(
            verify_keyed_chain(&log(vec![old.clone(), new.clone()], 1), Some(&keys)),
            Err(ChainBreak::Unauthenticated { id: 1 })
        );
        let mut edited = new.clone();
        edited.actor = "mallory".into();
        assert_eq!(
            verify_keyed_chain(&log(vec![old, edited], 2), Some(&keys)),
            Err(ChainBreak::Edited { id: 2 }),
            "an edit is reported before events waiting for their MAC"
        );
    }
}
