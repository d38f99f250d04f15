//! Audit event vocabulary: levels, triggers and kinds; how an event reads, and how a
//! reader filters the log.

use crate::domain::text::FilterText;
use crate::domain::time::parse_utc;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Info,
    Notice,
    Warning,
    Critical,
}

impl Level {
    pub const ALL: [Level; 4] = [Level::Info, Level::Notice, Level::Warning, Level::Critical];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Notice => "notice",
            Level::Warning => "warning",
            Level::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_str() == s)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What started a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Ui,
    Api,
    Cli,
    Scheduler,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Ui => "ui",
            Trigger::Api => "api",
            Trigger::Cli => "cli",
            Trigger::Scheduler => "scheduler",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Trigger::Ui, Trigger::Api, Trigger::Cli, Trigger::Scheduler]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One audit event as people read it (the events page, its live tail). Times are in
/// [`format_utc`](crate::domain::time::format_utc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventView {
    pub id: i64,
    pub at: String,
    pub level: String,
    pub kind: String,
    pub actor: String,
    pub trigger: String,
    pub source: Option<String>,
    pub kids: Vec<String>,
    pub reason: Option<String>,
    /// The details object as JSON text; empty when there are none.
    pub details: String,
}

/// What a reader of the audit log asks for; every part is optional. The REST API, the
/// events page, its live tail and the export all read their filters with [`EventFilter::parse`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub level: Option<Level>,
    pub kind: Option<FilterText>,
    pub actor: Option<FilterText>,
    /// From this time on (inclusive).
    pub since: Option<DateTime<Utc>>,
    /// Before this time.
    pub until: Option<DateTime<Utc>>,
}

impl EventFilter {
    /// Reads filters as typed: blank means "any"; times as [`parse_utc`] reads them.
    pub fn parse(
        level: Option<&str>,
        kind: Option<&str>,
        actor: Option<&str>,
        since: Option<&str>,
        until: Option<&str>,
    ) -> Result<Self, String> {
        fn blank(v: Option<&str>) -> Option<&str> {
            v.map(str::trim).filter(|v| !v.is_empty())
        }
        let level = blank(level)
            .map(|l| Level::parse(l).ok_or_else(|| format!("unknown level '{l}'")))
            .transpose()?;
        let time = |v: Option<&str>| blank(v).map(parse_utc).transpose();
        Ok(Self {
            level,
            kind: FilterText::parse("kind", kind).map_err(|e| e.to_string())?,
            actor: FilterText::parse("actor", actor).map_err(|e| e.to_string())?,
            since: time(since)?,
            until: time(until)?,
        })
    }
}

/// Event kinds written by the key lifecycle.
pub mod kind {
    pub const KEYS_CREATED: &str = "keys.created";
    pub const KEYS_ROTATED: &str = "keys.rotated";
    pub const KEYS_REVOKED: &str = "keys.revoked";
    pub const KEYS_EXPIRED: &str = "keys.expired";
    pub const KEYS_EXPIRED_EARLY: &str = "keys.expired_early";
    pub const KEYS_REENCRYPTED: &str = "keys.reencrypted";
    /// Records of revoked or expired keys deleted beyond the cap (metadata only).
    pub const KEYS_PRUNED: &str = "keys.pruned";
    /// More rotated keys published than the cap, because tokens they signed are valid.
    pub const KEYS_OVER_CAP: &str = "keys.over_cap";
    /// Objects on the PKCS#11 token that no key refers to, destroyed by housekeeping.
    pub const KEYS_ORPHANS_DESTROYED: &str = "keys.orphans_destroyed";
    pub const SCHEDULE_CHANGED: &str = "schedule.changed";
    pub const TOKEN_CREATED: &str = "token.created";
    pub const TOKEN_REVOKED: &str = "token.revoked";
    pub const ADMIN_LOGIN: &str = "admin.login";
    pub const ADMIN_LOGIN_FAILED: &str = "admin.login_failed";
    pub const ADMIN_LOGOUT: &str = "admin.logout";
    pub const ADMIN_CREATED: &str = "admin.created";
    pub const ADMIN_DISABLED: &str = "admin.disabled";
    pub const ADMIN_ENABLED: &str = "admin.enabled";
    pub const ADMIN_PASSWORD_RESET: &str = "admin.password_reset";
    pub const ADMIN_PASSWORD_CHANGED: &str = "admin.password_changed";
    /// Events older than the event retention deleted; names where the chain now starts.
    pub const AUDIT_PRUNED: &str = "audit.pruned";
    /// The events from before the chain was keyed were checked and given their MACs.
    pub const AUDIT_KEYED: &str = "audit.keyed";

    /// Every kind, for the events page's filter.
    pub const ALL: [&str; 22] = [
        KEYS_CREATED,
        KEYS_ROTATED,
        KEYS_REVOKED,
        KEYS_EXPIRED,
        KEYS_EXPIRED_EARLY,
        KEYS_REENCRYPTED,
        KEYS_PRUNED,
        KEYS_OVER_CAP,
        KEYS_ORPHANS_DESTROYED,
        SCHEDULE_CHANGED,
        TOKEN_CREATED,
        TOKEN_REVOKED,
        ADMIN_LOGIN,
        ADMIN_LOGIN_FAILED,
        ADMIN_LOGOUT,
        ADMIN_CREATED,
        ADMIN_DISABLED,
        ADMIN_ENABLED,
        ADMIN_PASSWORD_RESET,
        ADMIN_PASSWORD_CHANGED,
        AUDIT_PRUNED,
        AUDIT_KEYED,
    ];
}
