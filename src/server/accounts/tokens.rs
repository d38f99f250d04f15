//! API tokens: bearer secrets with scopes, for the REST API.
//!
//! A token reads `sgt_<id>_<secret>`. The id finds the row; only SHA-256 of the secret is
//! stored (the secret has 256 bits of entropy, so a slow hash would add nothing), and it
//! is compared in constant time. The full token is shown once, at creation.

use crate::domain::audit::{Level, kind};
use crate::server::audit::Actor;
use crate::server::audit::{self, NewEvent};
use crate::server::storage::{ApiTokenRow, Revocations, Storage, StorageError};
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Scopes a token can carry.
pub const SCOPES: [&str; 4] = ["keys:read", "keys:write", "audit:read", "sign"];

const PREFIX: &str = "sgt_";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("unknown scope '{0}' (known: keys:read, keys:write, audit:read, sign)")]
    UnknownScope(String),
    #[error("a token needs at least one scope")]
    NoScope,
    #[error("a token name must be 1 to 64 characters: letters, digits, '-', '_' or '.'")]
    BadName,
    #[error("a token named '{0}' already exists")]
    Exists(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("no randomness available")]
    Random,
}

/// Who a valid bearer token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub scopes: Vec<String>,
}

impl Principal {
    pub fn has(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

fn hash(secret: &str) -> String {
    crate::server::crypto::sha256_hex(secret)
}

fn random_b64(len: usize) -> Result<String, TokenError> {
    let mut buf = vec![0u8; len];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| TokenError::Random)?;
    Ok(B64.encode(buf))
}

/// Creates a token and returns its full text, the only time it exists outside the caller.
pub async fn create(
    storage: &dyn Storage,
    name: &str,
    scopes: &[String],
    actor: &Actor,
) -> Result<String, TokenError> {
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !name_ok {
        return Err(TokenError::BadName);
    }
    if scopes.is_empty() {
        return Err(TokenError::NoScope);
    }
    let mut scopes: Vec<String> = scopes.to_vec();
    scopes.sort();
    scopes.dedup();
    if let Some(bad) = scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
        return Err(TokenError::UnknownScope(bad.clone()));
    }
    // The id is hex so it can never contain the '_' separator.
    let id = crate::server::crypto::random_hex(8).ok_or(TokenError::Random)?;
    let secret = random_b64(32)?;
    let row = ApiTokenRow {
        id: id.clone(),
        name: name.to_string(),
        secret_hash: hash(&secret),
        scopes: scopes.clone(),
        created_at: audit::now(),
        revoked_at: None,
    };
    let event = NewEvent::new(Level::Notice, kind::TOKEN_CREATED, actor)
        .details(serde_json::json!({ "name": name, "scopes": scopes }));
    match storage.create_api_token(&row, &event).await {
        Ok(()) => Ok(format!("{PREFIX}{id}_{secret}")),
        Err(StorageError::Conflict) => Err(TokenError::Exists(name.to_string())),
        Err(e) => Err(e.into()),
    }
}

/// Revokes a token by id; `false` if there is none or it is already revoked. Requests
/// carrying it fail from then on.
pub async fn revoke(storage: &dyn Storage, id: &str, actor: &Actor) -> Result<bool, StorageError> {
    let Some(row) = storage.find_api_token(id).await? else {
        return Ok(false);
    };
    let event = NewEvent::new(Level::Notice, kind::TOKEN_REVOKED, actor)
        .details(serde_json::json!({ "name": row.name, "id": row.id }));
    storage.revoke_api_token(id, audit::now(), &event).await
}

/// How long a token that the database accepted may be honoured from memory while the
/// database is unreachable: long enough to ride out a restart or a failover, short enough
/// that a revocation made elsewhere just before an outage is not honoured for long.
pub const OUTAGE_GRACE: Duration = Duration::from_secs(60);

/// How often each instance asks the database whether any token was revoked.
pub const REVOCATION_POLL: Duration = Duration::from_millis(250);

/// A token is authenticated from memory only while the last look at the revocations
/// started less than this long ago: a revocation anywhere takes effect on every instance
/// within this bound, even if the poller stalls.
pub const REVOCATION_BOUND: Duration = Duration::from_secs(1);

/// API tokens this instance checked against the database, so `/sign` does not read the
/// database per request.
///
/// A remembered token is honoured from memory (same secret hash) only while a look at
/// the revocations ([`TokenStore::revocations`], every [`REVOCATION_POLL`]) started less
/// than [`REVOCATION_BOUND`] ago and saw nothing new since the token was checked; any new
/// revocation anywhere empties the memory. While the database is unavailable, a token
/// checked within [`OUTAGE_GRACE`] is still honoured. A token seen revoked or unknown,
/// or presented with a wrong secret, goes to the database, and the first two are
/// forgotten at once.
///
/// [`TokenStore::revocations`]: crate::server::storage::TokenStore::revocations
#[derive(Default)]
pub struct RecentTokens {
    inner: std::sync::Mutex<Memory>,
}

#[derive(Default)]
struct Memory {
    entries: HashMap<String, Recent>,
    /// Bumped whenever the entries are dropped for a revocation: a database check that
    /// began under an older epoch may have read a token revoked since, and is not kept.
    epoch: u64,
    /// What the last look at the revocations saw, and when that look started.
    seen: Option<Revocations>,
    looked: Option<Instant>,
}

struct Recent {
    secret_hash: String,
    principal: Principal,
    checked: Instant,
}

impl RecentTokens {
    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The epoch to pass to [`Self::remember`] for a database check starting now.
    fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    fn remember(&self, epoch: u64, id: &str, secret_hash: &str, principal: &Principal) {
        let mut memory = self.lock();
        if memory.epoch != epoch {
            return;
        }
        // Bounded: entries past the grace are useless, so drop them when it grows.
        if memory.entries.len() >= 10_000 {
            memory
                .entries
                .retain(|_, r| r.checked.elapsed() < OUTAGE_GRACE);
        }
        memory.entries.insert(
            id.to_string(),
            Recent {
                secret_hash: secret_hash.to_string(),
                principal: principal.clone(),
                checked: Instant::now(),
            },
        );
    }

    /// Forgets a token (revoked, or unknown).
    pub fn forget(&self, id: &str) {
        self.lock().entries.remove(id);
    }

    /// Records a look at the revocations that started at `started`: anything new since
    /// the last look empties the memory.
    pub fn looked(&self, started: Instant, now: Revocations) {
        let mut memory = self.lock();
        if memory.seen.as_ref().is_some_and(|seen| *seen != now) {
            memory.entries.clear();
            memory.epoch += 1;
        }
        memory.seen = Some(now);
        memory.looked = Some(memory.looked.map_or(started, |l| l.max(started)));
    }

    /// The token, if it can be honoured from memory without the database.
    fn current(&self, id: &str, presented_hash: &str) -> Option<Principal> {
        let memory = self.lock();
        if memory
            .looked
            .is_none_or(|l| l.elapsed() >= REVOCATION_BOUND)
        {
            return None;
        }
        memory
            .entries
            .get(id)
            .filter(|r| same_hash(presented_hash, &r.secret_hash))
            .map(|r| r.principal.clone())
    }

    /// The token, if the database accepted it within [`OUTAGE_GRACE`] (for outages).
    fn recall(&self, id: &str, presented_hash: &str) -> Option<Principal> {
        let memory = self.lock();
        let recent = memory.entries.get(id)?;
        // Still known good as of the last look at the revocations, if that was later.
        let confirmed = memory
            .looked
            .map_or(recent.checked, |l| l.max(recent.checked));
        (same_hash(presented_hash, &recent.secret_hash) && confirmed.elapsed() < OUTAGE_GRACE)
            .then(|| recent.principal.clone())
    }
}

fn same_hash(a: &str, b: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

/// Looks at the revocations every [`REVOCATION_POLL`] for as long as the server runs, so
/// a token revoked on any instance (or by the CLI) stops working here within
/// [`REVOCATION_BOUND`]. A failed look just lets the bound lapse: tokens then go to the
/// database again.
pub async fn watch_revocations(
    recent: std::sync::Arc<RecentTokens>,
    storage: std::sync::Arc<dyn Storage>,
) {
    let mut tick = tokio::time::interval(REVOCATION_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let started = Instant::now();
        match storage.revocations().await {
            Ok(now) => recent.looked(started, now),
            Err(e) => tracing::debug!(error = %e, "cannot look at token revocations"),
        }
    }
}

/// Checks a bearer token. `None` for anything that is not a valid, unrevoked token; the
/// caller answers 401 without saying which part was wrong. A token checked recently is
/// honoured from memory while revocations are being watched (see [`RecentTokens`]); when
/// the database is unavailable, one it accepted within [`OUTAGE_GRACE`] still is.
pub async fn authenticate(
    storage: &dyn Storage,
    recent: &RecentTokens,
    token: &str,
) -> Result<Option<Principal>, StorageError> {
    let Some((id, secret)) = token
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once('_'))
    else {
        return Ok(None);
    };
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let presented = hash(secret);
    if let Some(principal) = recent.current(id, &presented) {
        return Ok(Some(principal));
    }
    let epoch = recent.epoch();
    let row = match storage.find_api_token(id).await {
        Ok(row) => row,
        Err(e) if e.is_unavailable() => {
            return match recent.recall(id, &presented) {
                Some(principal) => {
                    tracing::debug!(token = %principal.name, "database unavailable; token honoured from memory");
                    Ok(Some(principal))
                }
                None => Err(e),
            };
        }
        Err(e) => return Err(e),
    };
    let Some(row) = row else {
        recent.forget(id);
        return Ok(None);
    };
    if row.revoked_at.is_some() {
        recent.forget(id);
        return Ok(None);
    }
    if !same_hash(&presented, &row.secret_hash) {
        return Ok(None);
    }
    let principal = Principal {
        name: row.name,
        scopes: row.scopes,
    };
    recent.remember(epoch, id, &row.secret_hash, &principal);
    Ok(Some(principal))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal() -> Principal {
        Principal {
            name: "svc".into(),
            scopes: vec!["sign".into()],
        }
    }

    fn revocations(count: i64) -> Revocations {
        Revocations {
            count,
            latest: None,
        }
    }

    #[test]
    fn memory_is_used_only_while_revocations_are_being_watched() {
        let recent = RecentTokens::default();
        let epoch = recent.epoch();
        recent.remember(epoch, "a", "h", &principal());
        // Never looked at the revocations: the database decides.
        assert_eq!(recent.current("a", "h"), None);
        recent.looked(Instant::now(), revocations(0));
        assert_eq!(recent.current("a", "h"), Some(principal()));
        // A wrong secret is never answered from memory.
        assert_eq!(recent.current("a", "x"), None);
        // A look that started more than the bound ago no longer vouches for anything.
        let stale = RecentTokens::default();
        stale.remember(stale.epoch(), "a", "h", &principal());
        stale.looked(Instant::now() - REVOCATION_BOUND, revocations(0));
        assert_eq!(stale.current("a", "h"), None);
        // But during an outage the grace still holds.
        assert_eq!(stale.recall("a", "h"), Some(principal()));
    }

    #[test]
    fn a_new_revocation_anywhere_empties_the_memory() {
        let recent = RecentTokens::default();
        recent.looked(Instant::now(), revocations(3));
        recent.remember(recent.epoch(), "a", "h", &principal());
        recent.looked(Instant::now(), revocations(3));
        assert!(recent.current("a", "h").is_some());
        recent.looked(Instant::now(), revocations(4));
        assert_eq!(recent.current("a", "h"), None);
        assert_eq!(recent.recall("a", "h"), None, "not even for an outage");
    }

    #[test]
    fn a_check_that_began_before_a_revocation_was_seen_is_not_remembered() {
        let recent = RecentTokens::default();
        recent.looked(Instant::now(), revocations(0));
        // A request reads the token from the database...
        let epoch = recent.epoch();
        // ...meanwhile the poller sees a revocation (perhaps of this very token)...
        recent.looked(Instant::now(), revocations(1));
        // ...so what the request read may be stale and is dropped.
        recent.remember(epoch, "a", "h", &principal());
        assert_eq!(recent.current("a", "h"), None);
        // A check that began after it is kept.
        recent.remember(recent.epoch(), "a", "h", &principal());
        assert_eq!(recent.current("a", "h"), Some(principal()));
    }
}
