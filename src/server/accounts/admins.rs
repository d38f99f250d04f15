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
use crate::server::audit::Actor;
use crate::server::audit::{self, NewEvent};
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

/// Failures counted per key (account and address, address, account) within this window.
const THROTTLE_WINDOW: Duration = Duration::minutes(15);
/// Failures allowed for one account from one address before that pair is locked.
const PAIR_FREE_FAILURES: i64 = 5;
/// Failures allowed from one address (across accounts) before it is locked.
const ADDRESS_FREE_FAILURES: i64 = 20;
/// The first lock; each further failure doubles it, up to the cap.
const FIRST_LOCK: Duration = Duration::seconds(30);
const MAX_LOCK: Duration = Duration::minutes(15);
/// Failures of one account from all addresses together before its sign-ins are slowed
/// down. An account is never locked as a whole: anyone could lock its owner out.
const ACCOUNT_FREE_FAILURES: i64 = 5;
/// The first slow-down; each further failure doubles it, up to the cap.
const FIRST_DELAY: std::time::Duration = std::time::Duration::from_millis(250);
const MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(3);
/// How long a generated one-time password works.
pub const ONE_TIME_PASSWORD_LIFETIME: Duration = Duration::hours(24);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong email or password, or a disabled account: deliberately one case.
    #[error("sign-in failed: the email or password is wrong")]
    Refused,
    #[error("too many failed sign-ins; try again in {0} seconds")]
    Throttled(i64),
    /// The right one-time password, but too late.
    #[error(
        "this one-time password has expired (they last 24 hours); ask an admin for a new one \
         (`signet admin reset-password {0}`)"
    )]
    Expired(Email),
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
    NewEvent::new(level, kind, actor).details(details)
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
        password_expires_at: generated.then(|| now + ONE_TIME_PASSWORD_LIFETIME),
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
        password_expires_at: Some(now + ONE_TIME_PASSWORD_LIFETIME),
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

/// Gives an admin a new one-time password (which must be changed at the next sign-in and
/// expires in 24 hours), ends their sessions, and lifts their sign-in throttle: the
/// account's counter and the lock of every (account, address) pair.
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
    let now = audit::now();
    let change = AdminChange::Password {
        hash: hash_password(password.clone()).await?,
        must_change: true,
        end_sessions: true,
        expires_at: Some(now + ONE_TIME_PASSWORD_LIFETIME),
    };
    let details = serde_json::json!({ "email": email });
    storage
        .change_admin(
            &admin.id,
            &change,
            now,
            &event(Level::Notice, kind::ADMIN_PASSWORD_RESET, actor, details),
        )
        .await?;
    let name = email.as_str();
    storage.clear_login_failures(&account_key(name)).await?;
    storage
        .clear_login_failures_with_prefix(&pair_prefix(name))
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
    let name = admin.email.as_str();
    let attempts = enter_throttle(storage, name, source.as_deref(), now).await?;
    if !verify_password(Some(admin.password_hash.clone()), current).await {
        attempts.lock_if_spent(storage, now).await?;
        // A guess at a signed-in admin's password is a failed login like any other.
        let details = serde_json::json!({
            "email": admin.email,
            "why": "wrong current password (password change)",
        });
        storage
            .append_event(&event(
                Level::Warning,
                kind::ADMIN_LOGIN_FAILED,
                &admin_actor(admin, source),
                details,
            ))
            .await?;
        return Err(AuthError::WrongPassword);
    }
    attempts.forgive(storage).await?;
    let change = AdminChange::Password {
        hash: hash_password(new).await?,
        must_change: false,
        end_sessions: true,
        expires_at: None,
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

/// The name an attempt is throttled under: a parsed email as stored, anything else as
/// typed (trimmed, lowercased) with whitespace and control characters escaped, so a NUL
/// (which PostgreSQL cannot store in text) or a space never reaches a key.
fn account_name(email: &str, parsed: Option<&Email>) -> String {
    if let Some(e) = parsed {
        return e.as_str().to_string();
    }
    email
        .trim()
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_control() || c.is_whitespace() {
                format!("\\u{{{:x}}}", u32::from(c))
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn account_key(name: &str) -> String {
    format!("account:{name}")
}

/// Every pair key of an account starts with this (a name holds no space).
fn pair_prefix(name: &str) -> String {
    format!("pair:{name} ")
}

fn pair_key(name: &str, source: Option<&str>) -> String {
    format!("{}{}", pair_prefix(name), source.unwrap_or("-"))
}

fn address_key(source: &str) -> String {
    format!("address:{source}")
}

/// How long an account's sign-ins wait after `failures` recent failures from anywhere.
fn delay_for(failures: i64) -> Option<std::time::Duration> {
    let over = failures - ACCOUNT_FREE_FAILURES;
    if over < 0 {
        return None;
    }
    let factor = 1u32
        .checked_shl(u32::try_from(over).unwrap_or(31))
        .unwrap_or(u32::MAX);
    Some(
        FIRST_DELAY
            .checked_mul(factor)
            .map_or(MAX_DELAY, |d| d.min(MAX_DELAY)),
    )
}

/// Checks an email and password. Throttled per (account, address) pair and per client
/// address (locks), and per account from everywhere (a slow-down, never a lock, so an
/// attacker elsewhere cannot keep the owner out). Every failure is recorded as an
/// `admin.login_failed` event.
pub async fn sign_in(
    storage: &dyn Storage,
    email: &str,
    password: String,
    source: Option<String>,
) -> Result<AdminRow, AuthError> {
    let now = Utc::now();
    // Anything unparsable is throttled under its own text, like an unknown account.
    let parsed = Email::parse(email).ok();
    let name = account_name(email, parsed.as_ref());
    let attempts = enter_throttle(storage, &name, source.as_deref(), now).await?;

    let admin = match &parsed {
        Some(e) => storage.find_admin_by_email(e).await?,
        None => None,
    };
    let hash = admin.as_ref().map(|a| a.password_hash.clone());
    let password_ok = verify_password(hash, password).await;
    let expired =
        |a: &AdminRow| a.must_change_password && a.password_expires_at.is_some_and(|t| t <= now);
    match admin {
        Some(admin) if password_ok && admin.disabled_at.is_none() && !expired(&admin) => {
            attempts.forgive(storage).await?;
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
            // Only the holder of the right (expired) password learns that it expired;
            // that is no guess, so it does not count against the throttle.
            let too_late = admin
                .as_ref()
                .filter(|a| password_ok && a.disabled_at.is_none() && expired(a));
            if too_late.is_some() {
                attempts.forgive(storage).await?;
            } else {
                attempts.lock_if_spent(storage, now).await?;
            }
            let why = match (&admin, too_late) {
                (_, Some(_)) => "one-time password expired",
                (None, _) => "unknown account",
                (Some(a), _) if a.disabled_at.is_some() => "account disabled",
                (Some(_), _) => "wrong password",
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
            match too_late {
                Some(a) => Err(AuthError::Expired(a.email.clone())),
                None => Err(AuthError::Refused),
            }
        }
    }
}

/// The throttle in front of every password check (sign-in, and the current password when
/// changing it). Refuses while the (account, address) pair or the address is locked;
/// otherwise counts the attempt before the password is checked, in one atomic statement
/// per key, so attempts sent in parallel cannot all slip past the limit while the first
/// ones are still hashing. Then waits the account's slow-down. A right password takes
/// its counts back ([`Attempts::forgive`]).
async fn enter_throttle(
    storage: &dyn Storage,
    name: &str,
    source: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Attempts, AuthError> {
    let mut keys = vec![(pair_key(name, source), PAIR_FREE_FAILURES)];
    if let Some(src) = source {
        keys.push((address_key(src), ADDRESS_FREE_FAILURES));
    }
    let locks: Vec<String> = keys.iter().map(|(k, _)| k.clone()).collect();
    if let Some(until) = storage.login_locked_until(&locks, now).await? {
        return Err(AuthError::Throttled((until - now).num_seconds().max(1)));
    }
    let window_start = now - THROTTLE_WINDOW;
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
    let mut attempts = Attempts {
        locking: counted,
        account: None,
    };
    if let Some(wait) = attempts.throttled() {
        return Err(AuthError::Throttled(wait));
    }
    // Only attempts that will be checked count against the account.
    let account = account_key(name);
    let failures = storage
        .count_login_failure(&account, now, window_start)
        .await?;
    attempts.account = Some(account);
    if let Some(delay) = delay_for(failures - 1) {
        tokio::time::sleep(delay).await;
    }
    Ok(attempts)
}

/// The attempts counted for one password check.
struct Attempts {
    /// Keys that lock: the (account, address) pair and the address, with the failures
    /// counted and those allowed.
    locking: Vec<(String, i64, i64)>,
    /// The account's own key, which only slows down.
    account: Option<String>,
}

impl Attempts {
    /// Seconds to wait if any key is past its allowance (the attempt is then refused
    /// unchecked, and the key locked).
    fn throttled(&self) -> Option<i64> {
        self.locking
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
        for (key, n, free) in &self.locking {
            if let Some(lock) = lock_for(*n, *free) {
                storage.lock_login(key, now + lock).await?;
            }
        }
        Ok(())
    }

    /// After a right password: the pair starts afresh, and this attempt is taken back
    /// from the address and the account (failures from elsewhere stay counted).
    async fn forgive(&self, storage: &dyn Storage) -> Result<(), StorageError> {
        for (i, (key, _, _)) in self.locking.iter().enumerate() {
            if i == 0 {
                storage.clear_login_failures(key).await?;
            } else {
                storage.forgive_login_failure(key).await?;
            }
        }
        if let Some(account) = &self.account {
            storage.forgive_login_failure(account).await?;
        }
        Ok(())
    }
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
    fn the_account_slow_down_doubles_to_a_few_seconds_and_never_locks() {
        assert_eq!(delay_for(4), None);
        assert_eq!(delay_for(5), Some(std::time::Duration::from_millis(250)));
        assert_eq!(delay_for(6), Some(std::time::Duration::from_millis(500)));
        assert_eq!(delay_for(9), Some(MAX_DELAY));
        assert_eq!(delay_for(i64::MAX), Some(MAX_DELAY));
    }

    #[test]
    fn throttle_keys_hold_no_control_characters_or_spaces() {
        let name = account_name(" Ops\0@Ex ample.com\n", None);
        assert!(
            !name.chars().any(|c| c.is_control() || c.is_whitespace()),
            "{name}"
        );
        assert_eq!(name, "ops\\u{0}@ex\\u{20}ample.com");
        let parsed = Email::parse("Ops@Example.com").unwrap();
        assert_eq!(account_name("whatever", Some(&parsed)), "ops@example.com");
        assert!(
            pair_key("ops@example.com", Some("10.0.0.1"))
                .starts_with(&pair_prefix("ops@example.com"))
        );
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
