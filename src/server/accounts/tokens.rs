//! API tokens: bearer secrets with scopes, for the REST API.
//!
//! A token reads `sgt_<id>_<secret>`. The id finds the row; only SHA-256 of the secret is
//! stored (the secret has 256 bits of entropy, so a slow hash would add nothing), and it
//! is compared in constant time. The full token is shown once, at creation.

use crate::domain::audit::{Level, kind};
use crate::server::audit::Actor;
use crate::server::audit::{self, NewEvent};
use crate::server::storage::{ApiTokenRow, Storage, StorageError};
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

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
pub const OUTAGE_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// API tokens this instance recently checked against the database. Used only when the
/// database is unavailable, so `/sign` and `/verify` keep working through a short outage;
/// a token seen revoked or unknown is dropped at once and never honoured from here.
#[derive(Default)]
pub struct RecentTokens {
    entries: std::sync::Mutex<std::collections::HashMap<String, Recent>>,
}

struct Recent {
    secret_hash: String,
    principal: Principal,
    checked: std::time::Instant,
}

impl RecentTokens {
    fn remember(&self, id: &str, secret_hash: &str, principal: &Principal) {
        if let Ok(mut entries) = self.entries.lock() {
            // Bounded: entries past the grace are useless, so drop them when it grows.
            if entries.len() >= 10_000 {
                entries.retain(|_, r| r.checked.elapsed() < OUTAGE_GRACE);
            }
            entries.insert(
                id.to_string(),
                Recent {
                    secret_hash: secret_hash.to_string(),
                    principal: principal.clone(),
                    checked: std::time::Instant::now(),
                },
            );
        }
    }

    /// Forgets a token (revoked, unknown, or a wrong secret presented for it).
    pub fn forget(&self, id: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(id);
        }
    }

    fn recall(&self, id: &str, presented_hash: &str) -> Option<Principal> {
        let entries = self.entries.lock().ok()?;
        let recent = entries.get(id)?;
        let matches = aws_lc_rs::constant_time::verify_slices_are_equal(
            presented_hash.as_bytes(),
            recent.secret_hash.as_bytes(),
        )
        .is_ok();
        (matches && recent.checked.elapsed() < OUTAGE_GRACE).then(|| recent.principal.clone())
    }
}

/// Checks a bearer token. `None` for anything that is not a valid, unrevoked token; the
/// caller answers 401 without saying which part was wrong. When the database is
/// unavailable, a token it accepted within [`OUTAGE_GRACE`] is still honoured.
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
    let matches = aws_lc_rs::constant_time::verify_slices_are_equal(
        presented.as_bytes(),
        row.secret_hash.as_bytes(),
    )
    .is_ok();
    if !matches || row.revoked_at.is_some() {
        if row.revoked_at.is_some() {
            recent.forget(id);
        }
        return Ok(None);
    }
    let principal = Principal {
        name: row.name,
        scopes: row.scopes,
    };
    recent.remember(id, &row.secret_hash, &principal);
    Ok(Some(principal))
}
