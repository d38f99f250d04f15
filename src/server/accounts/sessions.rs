//! Admin sessions: tower-sessions with a store in Signet's own database, and the checks
//! every page and server function makes (who is signed in, with which role, and whether
//! a changing request came from this site).
//!
//! Sessions live in the `sessions` table, so they survive restarts and any instance
//! behind a load balancer can serve any admin. The table holds a SHA-256 of each session
//! id, never the id itself: a copy of the database cannot be replayed as a cookie.

use crate::domain::Role;
use crate::server::config::Config;
use crate::server::storage::{AdminRow, Storage, StorageError};
use async_trait::async_trait;
use axum::http::{HeaderMap, header};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use tower_sessions::cookie::SameSite;
use tower_sessions::cookie::time::Duration as CookieDuration;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{self, SessionStore};
use tower_sessions::{Expiry, Session, SessionManagerLayer};

/// The session cookie's name.
pub const COOKIE: &str = "signet_session";

const ADMIN_ID: &str = "admin_id";
const SIGNED_IN_AT: &str = "signed_in_at";
const LAST_SEEN: &str = "last_seen";

/// A session is written back (moving its idle deadline) at most this often.
const TOUCH_EVERY: chrono::Duration = chrono::Duration::seconds(60);

/// The tower-sessions store over [`Storage`].
#[derive(Clone)]
pub struct SqlSessionStore {
    storage: Arc<dyn Storage>,
}

impl std::fmt::Debug for SqlSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlSessionStore").finish_non_exhaustive()
    }
}

impl SqlSessionStore {
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self { storage }
    }
}

fn key(id: &Id) -> String {
    crate::server::crypto::sha256_hex(&id.to_string())
}

fn backend(e: StorageError) -> session_store::Error {
    session_store::Error::Backend(e.to_string())
}

fn expiry(record: &Record) -> DateTime<Utc> {
    DateTime::from_timestamp(record.expiry_date.unix_timestamp(), 0).unwrap_or_else(Utc::now)
}

fn encode(record: &Record) -> session_store::Result<String> {
    serde_json::to_string(record).map_err(|e| session_store::Error::Encode(e.to_string()))
}

#[async_trait]
impl SessionStore for SqlSessionStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        // A collision of 128-bit random ids is next to impossible; still, never overwrite.
        loop {
            let created = self
                .storage
                .save_session(&key(&record.id), &encode(record)?, expiry(record), true)
                .await
                .map_err(backend)?;
            if created {
                return Ok(());
            }
            record.id = Id::default();
        }
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        self.storage
            .save_session(&key(&record.id), &encode(record)?, expiry(record), false)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let Some(text) = self
            .storage
            .load_session(&key(id), Utc::now())
            .await
            .map_err(backend)?
        else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| session_store::Error::Decode(e.to_string()))
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        self.storage.delete_session(&key(id)).await.map_err(backend)
    }
}

/// Whether the UI is served on plain-HTTP localhost, the one place a cookie may go
/// without `Secure` (browsers would drop a `Secure` cookie there over http).
fn plain_localhost(config: &Config) -> bool {
    let url = &config.public_url;
    url.scheme() == "http"
        && match url.host() {
            Some(url::Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        }
}

/// The session middleware: `HttpOnly`, `SameSite=Strict`, `Secure` unless on plain
/// localhost, expiring after the idle time.
pub fn layer(storage: Arc<dyn Storage>, config: &Config) -> SessionManagerLayer<SqlSessionStore> {
    let idle = i64::try_from(config.session_idle.as_secs()).unwrap_or(i64::MAX);
    SessionManagerLayer::new(SqlSessionStore::new(storage))
        .with_name(COOKIE)
        .with_http_only(true)
        .with_same_site(SameSite::Strict)
        .with_secure(!plain_localhost(config))
        .with_path("/")
        .with_expiry(Expiry::OnInactivity(CookieDuration::seconds(idle)))
}

/// Starts a session for an admin who just proved who they are. The session id changes
/// (no fixation), and the time is kept for the absolute lifetime.
pub async fn start(
    session: &Session,
    admin: &AdminRow,
) -> Result<(), tower_sessions::session::Error> {
    session.cycle_id().await?;
    session.clear().await;
    let now = Utc::now();
    session.insert(ADMIN_ID, &admin.id).await?;
    session.insert(SIGNED_IN_AT, now.timestamp_micros()).await?;
    session.insert(LAST_SEEN, now.timestamp()).await?;
    Ok(())
}

/// Ends the session: the record is deleted and the cookie removed.
pub async fn end(session: &Session) {
    if let Err(e) = session.flush().await {
        tracing::warn!(error = %e, "cannot delete a session");
    }
}

/// Whether the session's record is still in the database (not signed out or expired
/// since this request loaded it). Long-lived responses such as the live tail check it on
/// every round, since the session object caches what it loaded.
pub async fn still_stored(session: &Session, storage: &dyn Storage) -> bool {
    match session.id() {
        Some(id) => matches!(
            storage.load_session(&key(&id), Utc::now()).await,
            Ok(Some(_))
        ),
        None => false,
    }
}

/// Why a request was not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("sign in first (your session may have ended)")]
    SignedOut,
    #[error("choose a new password first")]
    PasswordChange,
    #[error("your role ({0}) may look but not change anything")]
    Role(Role),
    #[error("refused: the request did not come from this site")]
    Origin,
    #[error("the database is unavailable; try again")]
    Unavailable,
}

/// The admin behind a session, if the session is still good: the admin exists and is
/// enabled, nothing ended their sessions since (password reset, disabling), and neither
/// the idle nor the absolute lifetime has passed. A session that is no longer good is
/// deleted.
pub async fn current(
    session: &Session,
    storage: &dyn Storage,
    config: &Config,
) -> Result<Option<AdminRow>, Denied> {
    let read = async {
        let id: Option<String> = session.get(ADMIN_ID).await?;
        let at: Option<i64> = session.get(SIGNED_IN_AT).await?;
        let seen: Option<i64> = session.get(LAST_SEEN).await?;
        Ok::<_, tower_sessions::session::Error>((id, at, seen))
    };
    let (id, signed_in_at, last_seen) = read.await.map_err(|e| {
        tracing::warn!(error = %e, "cannot read a session");
        Denied::Unavailable
    })?;
    let (Some(id), Some(signed_in_at)) =
        (id, signed_in_at.and_then(DateTime::from_timestamp_micros))
    else {
        return Ok(None);
    };
    let admin = storage.find_admin(&id).await.map_err(|e| {
        tracing::warn!(error = %e, "cannot read an admin");
        Denied::Unavailable
    })?;
    let now = Utc::now();
    let lifetime = chrono::Duration::seconds(
        i64::try_from(config.session_lifetime.as_secs()).unwrap_or(i64::MAX / 2),
    );
    let good = admin.filter(|a| {
        a.disabled_at.is_none()
            && signed_in_at >= a.sessions_valid_after
            && now < signed_in_at + lifetime
    });
    match good {
        None => {
            end(session).await;
            Ok(None)
        }
        Some(admin) => {
            let stale = last_seen
                .and_then(|t| DateTime::from_timestamp(t, 0))
                .is_none_or(|t| now - t >= TOUCH_EVERY);
            // Modifying the session makes tower-sessions save it with a fresh idle expiry.
            if stale && let Err(e) = session.insert(LAST_SEEN, now.timestamp()).await {
                tracing::warn!(error = %e, "cannot refresh a session");
            }
            Ok(Some(admin))
        }
    }
}

/// Whether a request that changes something came from a page of this site. Browsers send
/// `Origin` on every POST; it must be this site's public URL, or the host the request was
/// sent to. Without `Origin`, only a browser's `Sec-Fetch-Site: same-origin` will do.
pub fn same_origin(headers: &HeaderMap, config: &Config) -> bool {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    match origin {
        Some(origin) => {
            let public = config.public_url.origin().ascii_serialization();
            let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
            origin == public
                || host.is_some_and(|h| {
                    origin == format!("http://{h}") || origin == format!("https://{h}")
                })
        }
        None => headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes() == b"same-origin"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(public_url: &str) -> Config {
        Config::from_sources(
            None,
            [("SIGNET_PUBLIC_URL".to_string(), public_url.to_string())],
        )
        .unwrap()
    }

    #[test]
    fn secure_cookies_except_on_plain_localhost() {
        assert!(plain_localhost(&config("http://127.0.0.1:3000")));
        assert!(plain_localhost(&config("http://localhost:3000")));
        assert!(!plain_localhost(&config("https://localhost")));
        assert!(!plain_localhost(&config("http://signet.example.com")));
        assert!(!plain_localhost(&config("https://signet.example.com")));
    }

    #[test]
    fn origin_must_be_this_site() {
        let c = config("https://signet.example.com");
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, v.parse().unwrap());
            }
            h
        };
        assert!(same_origin(
            &headers(&[("origin", "https://signet.example.com")]),
            &c
        ));
        assert!(same_origin(
            &headers(&[
                ("origin", "http://10.0.0.5:3000"),
                ("host", "10.0.0.5:3000")
            ]),
            &c
        ));
        assert!(!same_origin(
            &headers(&[("origin", "https://evil.example")]),
            &c
        ));
        assert!(!same_origin(
            &headers(&[
                ("origin", "https://evil.example"),
                ("host", "signet.example.com")
            ]),
            &c
        ));
        assert!(!same_origin(&headers(&[]), &c));
        assert!(!same_origin(
            &headers(&[("sec-fetch-site", "cross-site")]),
            &c
        ));
        assert!(same_origin(
            &headers(&[("sec-fetch-site", "same-origin")]),
            &c
        ));
    }
}
