//! Types that cross the wire between server functions and the browser.

use crate::domain::Role;
pub use crate::domain::audit::EventView;
use serde::{Deserialize, Serialize};

/// What the overview shows about this installation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceView {
    pub version: String,
    pub backend: String,
    pub installation_id: String,
    pub installed_at: String,
    pub schema_version: i64,
    pub issuer: String,
    pub algorithms: String,
}

/// The rotation schedule and the policy around it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleView {
    pub expression: String,
    pub retention: String,
    /// The longest token lifetime Signet grants; retention must be longer.
    pub max_token_ttl: String,
    pub next: Vec<String>,
    pub updated_at: Option<String>,
    /// The latest slot the scheduler rotated for, with the instance that did it.
    pub last_scheduled: Option<String>,
}

/// Next fire times of a proposed expression, or why it is not acceptable.
pub type SchedulePreview = Result<Vec<String>, String>;

/// One key as the JWKS page shows it. Timestamps are shown in UTC, `None` where not
/// reached; the `*_ts` twins are Unix seconds for the timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyView {
    pub kid: String,
    pub alg: String,
    pub state: String,
    pub created_at: String,
    pub activated_at: Option<String>,
    pub rotated_at: Option<String>,
    pub revoked_at: Option<String>,
    /// When publication ends (rotated keys) or ended (expired keys).
    pub expires_at: Option<String>,
    pub revoke_reason: Option<String>,
    /// The public JWK, pretty-printed (public members only).
    pub jwk: String,
    /// Where the private half lives (or lived): `software`, or `HSM token 'LABEL'`.
    pub held_in: String,
    pub created_ts: i64,
    pub activated_ts: Option<i64>,
    pub rotated_ts: Option<i64>,
    pub revoked_ts: Option<i64>,
    pub expires_ts: Option<i64>,
}

#[cfg(feature = "ssr")]
impl From<&crate::server::storage::StoredKey> for KeyView {
    fn from(k: &crate::server::storage::StoredKey) -> Self {
        use crate::domain::time::format_utc as fmt;
        let i = &k.info;
        let jwk = serde_json::from_str::<serde_json::Value>(&k.public_jwk)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or_default();
        KeyView {
            kid: i.kid.to_string(),
            alg: i.alg.to_string(),
            state: i.state.to_string(),
            created_at: fmt(i.created_at),
            activated_at: i.activated_at.map(fmt),
            rotated_at: i.rotated_at.map(fmt),
            revoked_at: i.revoked_at.map(fmt),
            expires_at: i.expires_at.map(fmt),
            revoke_reason: k.revoke_reason.clone(),
            jwk,
            held_in: match &k.hsm_token {
                Some(label) => format!("HSM token '{label}'"),
                None => "software".into(),
            },
            created_ts: i.created_at.timestamp(),
            activated_ts: i.activated_at.map(|t| t.timestamp()),
            rotated_ts: i.rotated_at.map(|t| t.timestamp()),
            revoked_ts: i.revoked_at.map(|t| t.timestamp()),
            expires_ts: i.expires_at.map(|t| t.timestamp()),
        }
    }
}

/// Everything the JWKS page shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeysPage {
    pub keys: Vec<KeyView>,
    /// The enabled algorithms, in configuration order.
    pub algorithms: Vec<String>,
    /// Unix seconds: now, and the next scheduled rotation.
    pub now_ts: i64,
    pub next_rotation_ts: Option<i64>,
    pub next_rotation: Option<String>,
}

/// The admin looking at the page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Me {
    pub email: String,
    pub role: Role,
    pub must_change_password: bool,
}

/// What a key action changed, for the page's message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionOutcome {
    pub message: String,
}

/// Filters of the events page (empty means "any"). Times are UTC, `YYYY-MM-DDTHH:MM`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFilterView {
    pub level: String,
    pub kind: String,
    pub actor: String,
    pub since: String,
    pub until: String,
}

impl EventFilterView {
    /// The filters as a query string for the stream and export URLs.
    pub fn query_string(&self) -> String {
        let mut parts = Vec::new();
        for (k, v) in [
            ("level", &self.level),
            ("kind", &self.kind),
            ("actor", &self.actor),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            let v = v.trim();
            if !v.is_empty() {
                parts.push(format!("{k}={}", encode_component(v)));
            }
        }
        parts.join("&")
    }
}

/// Percent-encodes a query-string value (RFC 3986 unreserved characters stay as they are).
pub fn encode_component(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One page of events, newest first, and the cursor of the next (older) page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventPage {
    pub events: Vec<EventView>,
    pub next_cursor: Option<i64>,
}

/// An admin account as the settings page lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminView {
    pub id: String,
    pub email: String,
    pub role: Role,
    pub created_at: String,
    pub last_login_at: Option<String>,
    pub disabled: bool,
    pub must_change_password: bool,
}

/// An API token as the settings page lists it (never its secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

#[cfg(feature = "ssr")]
impl From<crate::server::storage::AdminRow> for AdminView {
    fn from(a: crate::server::storage::AdminRow) -> Self {
        use crate::domain::time::format_utc;
        AdminView {
            id: a.id,
            email: a.email.to_string(),
            role: a.role,
            created_at: format_utc(a.created_at),
            last_login_at: a.last_login_at.map(format_utc),
            disabled: a.disabled_at.is_some(),
            must_change_password: a.must_change_password,
        }
    }
}

#[cfg(feature = "ssr")]
impl From<crate::server::storage::ApiTokenRow> for TokenView {
    fn from(t: crate::server::storage::ApiTokenRow) -> Self {
        use crate::domain::time::format_utc;
        TokenView {
            id: t.id,
            name: t.name,
            scopes: t.scopes,
            created_at: format_utc(t.created_at),
            revoked_at: t.revoked_at.map(format_utc),
        }
    }
}

/// A secret shown once: a new admin's one-time password or a new API token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Secret {
    pub label: String,
    pub secret: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_an_encoded_query_string() {
        let f = EventFilterView {
            level: "notice".into(),
            kind: String::new(),
            actor: "ops@example.com".into(),
            since: "2026-11-22T10:00".into(),
            until: " ".into(),
        };
        assert_eq!(
            f.query_string(),
            "level=notice&actor=ops%40example.com&since=2026-11-22T10%3A00"
        );
    }
}
