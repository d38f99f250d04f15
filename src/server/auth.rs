//! Admin accounts: password hashing, sign-in with throttling, and account changes.
//!
//! Passwords are hashed with argon2id at OWASP's parameters (19 MiB, 2 passes, 1 lane) on
//! tokio's blocking pool, so a sign-in never stalls the threads serving the JWKS. A
//! sign-in for an unknown email still runs one verification against a dummy hash, and
//! every refusal carries the same message, so neither timing nor wording tells whether an
//! account exists.

use crate::domain::admin::{self, PasswordError};
use crate::domain::audit::{Level, kind};
use crate::domain::{Email, Role};
use crate::server::audit::{self, NewEvent};
use crate::server::keys::Actor;
use crate::server::storage::{AdminChange, AdminRow, Storage, StorageError};
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use chrono::{DateTime, Duration, Utc};
use std::sync::LazyLock;

/// OWASP's minimum for argon2id: m = 19456 KiB, t = 2, p = 1.
const ARGON2_MEMORY_KIB: u32 = 19_456;
const ARGON2_PASSES: u32 = 2;
const ARGON2_LANES: u32 = 1;

/// Failures counted per account, and per client address, within this window.
const THROTTLE_WINDOW: Duration = Duration::minutes(15);
/// Failures allowed before an account is locked for a while.
const ACCOUNT_FREE_FAILURES: i64 = 5;
/// Failures allowed from one address (across accounts) before it is locked.
const ADDRESS_FREE_FAILURES: i64 = 20;
/// The first lock; each further failure doubles it, up to the cap.
const FIRST_LOCK: Duration = Duration::seconds(30);
const MAX_LOCK: Duration = Duration::minutes(15);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong email or password, or a disabled account: deliberately one case.
    #[error("sign-in failed: the email or password is wrong")]
    Refused,
    #[error("too many failed sign-ins; try again in {0} seconds")]
    Throttled(i64),
    #[error("{0}")]
    Email(#[from] admin::EmailError),
    #[error("{0}")]
    Password(#[from] PasswordError),
    #[error("the current password is wrong")]
    WrongPassword,
    #[error("an admin with the email {0} already exists")]
    Exists(Email),
    #[error("there is no admin with the email {0}")]
    NoSuchAdmin(String),
    #[error("you cannot disable your own account")]
    DisableSelf,
    #[error("the last enabled admin with the admin role cannot be disabled")]
    LastAdmin,
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn hasher() -> Argon2<'static> {
    let params = Params::new(ARGON2_MEMORY_KIB, ARGON2_PASSES, ARGON2_LANES, None)
        .unwrap_or_else(|_| Params::default());
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes running at once. Each takes 19 MiB and a core for tens of milliseconds; without
/// a bound, a burst of sign-ins (even for unknown accounts) could take all the memory
/// and starve the threads that serve the JWKS.
static HASHING: LazyLock<tokio::sync::Semaphore> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    tokio::sync::Semaphore::new(cores)
});

/// Hashes a password into a PHC string, off the async threads.
pub async fn hash_password(password: String) -> Result<String, AuthError> {
    let _permit = HASHING
        .acquire()
        .await
        .map_err(|e| AuthError::Hash(e.to_string()))?;
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        hasher()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| AuthError::Hash(e.to_string()))
    })
    .await
    .map_err(|e| AuthError::Hash(e.to_string()))?
}

/// Checks a password against a PHC string, off the async threads. A malformed hash
/// never matches. Without a hash (an unknown account), the same work is done against a
/// dummy hash, and the answer is `false`.
pub async fn verify_password(hash: Option<String>, password: String) -> bool {
    let Ok(_permit) = HASHING.acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.clone());
        let matches = PasswordHash::new(&hash)
            .map(|parsed| {
                hasher()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false);
        known && matches
    })
    .await
    .unwrap_or(false)
}

/// What an unknown account is checked against, so it costs as much as a known one.
/// Computed on first use, on the blocking pool (inside `verify_password`).
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    hasher()
        .hash_password(b"no such account", &salt)
        .map(|h| h.to_string())
        .unwrap_or_default()
});

/// A one-time password: 20 characters from an alphabet without look-alikes (~100 bits),
/// in groups of five for reading aloud.
pub fn generate_password() -> Result<String, AuthError> {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut bytes = [0u8; 20];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| AuthError::Hash("no randomness available".into()))?;
    let chars: Vec<char> = bytes
        .iter()
        // 256 is not a multiple of 31; the bias (under 1 %) costs well under a bit.
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    Ok(chars
        .chunks(5)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-"))
}

fn new_id() -> Result<String, AuthError> {
    crate::server::crypto::random_hex(12)
        .ok_or_else(|| AuthError::Hash("no randomness available".into()))
}

fn event(level: Level, kind: &'static str, actor: &Actor, details: serde_json::Value) -> NewEvent {
    NewEvent {
        level,
        kind,
        actor: actor.name.clone(),
        trigger: actor.trigger,
        source: actor.source.clone(),
        kids: Vec::new(),
        reason: None,
        details,
    }
}

/// The actor for an admin's own actions in the UI.
pub fn admin_actor(admin: &AdminRow, source: Option<String>) -> Actor {
    Actor {
        name: admin.email.to_string(),
        trigger: crate::domain::audit::Trigger::Ui,
        source,
    }
}

/// Creates an admin. Without a password, one is generated, returned, and must be changed
/// at the first sign-in.
pub async fn create_admin(
    storage: &dyn Storage,
    email: &str,
    role: Role,
    password: Option<String>,
    actor: &Actor,
) -> Result<(AdminRow, Option<String>), AuthError> {
    let email = Email::parse(email)?;
    let (password, generated) = match password {
        Some(p) => {
            admin::check_new_password(&p)?;
            (p, false)
        }
        None => (generate_password()?, true),
    };
    let now = audit::now();
    let row = AdminRow {
        id: new_id()?,
        email: email.clone(),
        role,
        password_hash: hash_password(password.clone()).await?,
        must_change_password: generated,
        created_at: now,
        disabled_at: None,
        last_login_at: None,
        sessions_valid_after: now,
    };
    let details =
        serde_json::json!({ "email": email, "role": role, "one_time_password": generated });
    match storage
        .create_admin(
            &row,
            false,
            &event(Level::Notice, kind::ADMIN_CREATED, actor, details),
        )
        .await
    {
        Ok(_) => Ok((row, generated.then_some(password))),
        Err(StorageError::Conflict) => Err(AuthError::Exists(email)),
        Err(e) => Err(e.into()),
    }
}

/// On a database without any admin, creates one with a one-time password and returns
/// it. Several instances starting at once create exactly one.
pub async fn ensure_first_admin(
    storage: &dyn Storage,
    email: &Email,
) -> Result<Option<String>, AuthError> {
    if storage.count_admins().await? > 0 {
        return Ok(None);
    }
    let password = generate_password()?;
    let now = audit::now();
    let row = AdminRow {
        id: new_id()?,
        email: email.clone(),
        role: Role::Admin,
        password_hash: hash_password(password.clone()).await?,
        must_change_password: true,
        created_at: now,
        disabled_at: None,
        last_login_at: None,
        sessions_valid_after: now,
    };
    let details = serde_json::json!({ "email": email, "role": Role::Admin, "first_start": true });
    let created = storage
        .create_admin(
            &row,
            true,
            &event(
                Level::Notice,
                kind::ADMIN_CREATED,
                &Actor::system(),
                details,
            ),
        )
        .await;
    match created {
        Ok(true) => Ok(Some(password)),
        Ok(false) | Err(StorageError::Conflict) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Gives an admin a new one-time password (which must be changed at the next sign-in) and
/// ends their sessions.
pub async fn reset_password(
    storage: &dyn Storage,
    email: &str,
    actor: &Actor,
) -> Result<String, AuthError> {
    let email = Email::parse(email)?;
    let admin = storage
        .find_admin_by_email(&email)
        .await?
        .ok_or_else(|| AuthError::NoSuchAdmin(email.to_string()))?;
    let password = generate_password()?;
    let change = AdminChange::Password {
        hash: hash_password(password.clone()).await?,
        must_change: true,
        end_sessions: true,
    };
    let details = serde_json::json!({ "email": email });
    storage
        .change_admin(
            &admin.id,
            &change,
            audit::now(),
            &event(Level::Notice, kind::ADMIN_PASSWORD_RESET, actor, details),
        )
        .await?;
    Ok(password)
}

/// An admin replaces their own password (the current one is asked for again). Their
/// other sessions end; the caller starts a fresh one for this browser.
pub async fn change_own_password(
    storage: &dyn Storage,
    admin: &AdminRow,
    current: String,
    new: String,
    source: Option<String>,
) -> Result<(), AuthError> {
    admin::check_new_password(&new)?;
    // Guessing the current password is throttled like signing in.
    let now = Utc::now();
    let account = account_key(admin.email.as_str());
    if let Some(until) = storage
        .login_locked_until(std::slice::from_ref(&account), now)
        .await?
    {
        return Err(AuthError::Throttled((until - now).num_seconds().max(1)));
    }
    let attempts = count_attempts(storage, &account, None, now).await?;
    if let Some(wait) = attempts.throttled() {
        return Err(AuthError::Throttled(wait));
    }
    if !verify_password(Some(admin.password_hash.clone()), current).await {
        attempts.lock_if_spent(storage, now).await?;
        return Err(AuthError::WrongPassword);
    }
    storage.clear_login_failures(&account).await?;
    let change = AdminChange::Password {
        hash: hash_password(new).await?,
        must_change: false,
        end_sessions: true,
    };
    let actor = admin_actor(admin, source);
    let details = serde_json::json!({ "email": admin.email });
    storage
        .change_admin(
            &admin.id,
            &change,
            audit::now(),
            &event(Level::Info, kind::ADMIN_PASSWORD_CHANGED, &actor, details),
        )
        .await?;
    Ok(())
}

/// Disables or re-enables an admin. Disabling ends their sessions at once. Nobody can
/// disable themselves or the last enabled admin with the admin role.
pub async fn set_disabled(
    storage: &dyn Storage,
    by: &AdminRow,
    target_id: &str,
    disabled: bool,
    source: Option<String>,
) -> Result<AdminRow, AuthError> {
    let target = storage
        .find_admin(target_id)
        .await?
        .ok_or_else(|| AuthError::NoSuchAdmin(target_id.to_string()))?;
    if disabled {
        if target.id == by.id {
            return Err(AuthError::DisableSelf);
        }
        let enabled_admins = storage
            .list_admins()
            .await?
            .iter()
            .filter(|a| a.role == Role::Admin && a.disabled_at.is_none())
            .count();
        if target.role == Role::Admin && target.disabled_at.is_none() && enabled_admins <= 1 {
            return Err(AuthError::LastAdmin);
        }
    }
    let (level, kind) = if disabled {
        (Level::Notice, kind::ADMIN_DISABLED)
    } else {
        (Level::Info, kind::ADMIN_ENABLED)
    };
    let actor = admin_actor(by, source);
    let details = serde_json::json!({ "email": target.email });
    let changed = storage
        .change_admin(
            &target.id,
            &AdminChange::Disabled(disabled),
            audit::now(),
            &event(level, kind, &actor, details),
        )
        .await?;
    if !changed {
        // The database's own guard: another admin was disabled meanwhile.
        return Err(AuthError::LastAdmin);
    }
    storage
        .find_admin(&target.id)
        .await?
        .ok_or_else(|| AuthError::NoSuchAdmin(target.id.clone()))
}

/// How long a key is locked after `failures` failures, of which `free` were allowed.
fn lock_for(failures: i64, free: i64) -> Option<Duration> {
    let over = failures - free;
    if over < 0 {
        return None;
    }
    let factor = 1i32
        .checked_shl(u32::try_from(over).unwrap_or(31))
        .unwrap_or(i32::MAX);
    Some(
        FIRST_LOCK
            .checked_mul(factor)
            .map_or(MAX_LOCK, |d| d.min(MAX_LOCK)),
    )
}

fn account_key(email: &str) -> String {
    format!("account:{}", email.trim().to_lowercase())
}

fn address_key(source: &str) -> String {
    format!("address:{source}")
}

/// Checks an email and password. Throttled per account (whether it exists or not) and per
/// client address; every failure is recorded as an `admin.login_failed` event.
pub async fn sign_in(
    storage: &dyn Storage,
    email: &str,
    password: String,
    source: Option<String>,
) -> Result<AdminRow, AuthError> {
    let now = Utc::now();
    // Anything unparsable is throttled under its own text, like an unknown account.
    let parsed = Email::parse(email).ok();
    let account = account_key(parsed.as_ref().map_or(email, Email::as_str));
    let mut keys = vec![account.clone()];
    if let Some(src) = &source {
        keys.push(address_key(src));
    }
    if let Some(until) = storage.login_locked_until(&keys, now).await? {
        return Err(AuthError::Throttled((until - now).num_seconds().max(1)));
    }
    // Every attempt is counted before the password is checked, in one atomic statement
    // per key, so attempts sent in parallel cannot all slip past the limit while the
    // first ones are still hashing. A right password takes its count back.
    let attempts = count_attempts(storage, &account, source.as_deref(), now).await?;
    if let Some(wait) = attempts.throttled() {
        return Err(AuthError::Throttled(wait));
    }

    let admin = match &parsed {
        Some(e) => storage.find_admin_by_email(e).await?,
        None => None,
    };
    let hash = admin.as_ref().map(|a| a.password_hash.clone());
    let password_ok = verify_password(hash, password).await;
    match admin {
        Some(admin) if password_ok && admin.disabled_at.is_none() => {
            storage.clear_login_failures(&account).await?;
            if let Some(src) = &source {
                storage.forgive_login_failure(&address_key(src)).await?;
            }
            let actor = admin_actor(&admin, source);
            let details = serde_json::json!({ "email": admin.email, "role": admin.role });
            storage
                .change_admin(
                    &admin.id,
                    &AdminChange::SignedIn,
                    audit::now(),
                    &event(Level::Info, kind::ADMIN_LOGIN, &actor, details),
                )
                .await?;
            Ok(admin)
        }
        admin => {
            attempts.lock_if_spent(storage, now).await?;
            let why = match admin {
                None => "unknown account",
                Some(a) if a.disabled_at.is_some() => "account disabled",
                Some(_) => "wrong password",
            };
            // The event names the attempted account (bounded, no control characters).
            let attempted: String = email
                .trim()
                .chars()
                .filter(|c| !c.is_control())
                .take(254)
                .collect();
            let actor = Actor {
                name: "anonymous".into(),
                trigger: crate::domain::audit::Trigger::Ui,
                source,
            };
            let details = serde_json::json!({ "email": attempted, "why": why });
            storage
                .append_event(&event(
                    Level::Warning,
                    kind::ADMIN_LOGIN_FAILED,
                    &actor,
                    details,
                ))
                .await?;
            Err(AuthError::Refused)
        }
    }
}

/// The attempts counted under each throttle key for one sign-in.
struct Attempts(Vec<(String, i64, i64)>);

impl Attempts {
    /// Seconds to wait if any key is past its allowance (the attempt is then refused
    /// unchecked, and the key locked).
    fn throttled(&self) -> Option<i64> {
        self.0
            .iter()
            .filter(|(_, n, free)| n > free)
            .filter_map(|(_, n, free)| lock_for(n - 1, *free))
            .map(|d| d.num_seconds())
            .max()
    }

    /// After a failure: a key whose allowance this attempt used up is locked.
    async fn lock_if_spent(
        &self,
        storage: &dyn Storage,
        now: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        for (key, n, free) in &self.0 {
            if let Some(lock) = lock_for(*n, *free) {
                storage.lock_login(key, now + lock).await?;
            }
        }
        Ok(())
    }
}

async fn count_attempts(
    storage: &dyn Storage,
    account: &str,
    source: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Attempts, StorageError> {
    let window_start = now - THROTTLE_WINDOW;
    let mut keys = vec![(account.to_string(), ACCOUNT_FREE_FAILURES)];
    if let Some(src) = source {
        keys.push((address_key(src), ADDRESS_FREE_FAILURES));
    }
    let mut counted = Vec::with_capacity(keys.len());
    for (key, free) in keys {
        let n = storage.count_login_failure(&key, now, window_start).await?;
        if n > free
            && let Some(lock) = lock_for(n - 1, free)
        {
            storage.lock_login(&key, now + lock).await?;
        }
        counted.push((key, n, free));
    }
    Ok(Attempts(counted))
}

/// Records a sign-out.
pub async fn signed_out(storage: &dyn Storage, admin: &AdminRow, source: Option<String>) {
    let actor = admin_actor(admin, source);
    let details = serde_json::json!({ "email": admin.email });
    if let Err(e) = storage
        .append_event(&event(Level::Info, kind::ADMIN_LOGOUT, &actor, details))
        .await
    {
        tracing::warn!(error = %e, "cannot record a sign-out");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_start_after_the_free_failures_and_double_up_to_the_cap() {
        assert_eq!(lock_for(4, 5), None);
        assert_eq!(lock_for(5, 5), Some(Duration::seconds(30)));
        assert_eq!(lock_for(6, 5), Some(Duration::seconds(60)));
        assert_eq!(lock_for(9, 5), Some(Duration::seconds(480)));
        assert_eq!(lock_for(10, 5), Some(MAX_LOCK));
        assert_eq!(lock_for(1000, 5), Some(MAX_LOCK));
    }

    #[test]
    fn generated_passwords_are_long_random_and_pass_the_rule() {
        let a = generate_password().unwrap();
        let b = generate_password().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 23);
        admin::check_new_password(&a).unwrap();
    }

    #[tokio::test]
    async fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let hash = hash_password("correct horse battery".into()).await.unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(verify_password(Some(hash.clone()), "correct horse battery".into()).await);
        assert!(!verify_password(Some(hash), "wrong horse battery".into()).await);
        assert!(!verify_password(Some("not a hash".into()), "x".into()).await);
        // An unknown account never matches, even with the dummy's own password.
        assert!(!verify_password(None, "no such account".into()).await);
    }
}
