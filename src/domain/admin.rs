//! Admin accounts: roles, email addresses and the password rule.
//!
//! Shared with the browser, so the sign-in and settings forms check input with the rules
//! the server enforces.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What a signed-in admin may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May look at everything and change nothing.
    Viewer,
    /// May change keys, the schedule, admins and API tokens.
    Admin,
}

impl Role {
    pub const ALL: [Role; 2] = [Role::Admin, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s.trim())
    }

    /// Whether this role includes everything `needed` allows.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An admin's sign-in name: an email address, stored lowercased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Email(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("an email address is required")]
    Empty,
    #[error("an email address is at most 254 characters")]
    TooLong,
    #[error("'{0}' is not an email address (expected name@domain)")]
    Invalid(String),
}

impl Email {
    pub fn parse(s: &str) -> Result<Self, EmailError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(EmailError::Empty);
        }
        if s.chars().count() > 254 {
            return Err(EmailError::TooLong);
        }
        let invalid = || EmailError::Invalid(s.to_string());
        let (local, domain) = s.rsplit_once('@').ok_or_else(invalid)?;
        let plain = |part: &str| {
            !part.is_empty()
                && !part
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '@' | '<' | '>'))
        };
        if !plain(local) || !plain(domain) || domain.starts_with('.') || domain.ends_with('.') {
            return Err(invalid());
        }
        Ok(Email(s.to_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Shortest password an admin may choose (NIST SP 800-63B asks for at least 8; admins of
/// a key service get more).
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest accepted, so a huge input cannot make hashing expensive.
pub const MAX_PASSWORD_CHARS: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("a password needs at least {MIN_PASSWORD_CHARS} characters")]
    TooShort,
    #[error("a password may have at most {MAX_PASSWORD_CHARS} characters")]
    TooLong,
    #[error("a password must not contain control characters")]
    Control,
}

/// Checks a new password. Length is what matters; no composition rules (NIST 800-63B).
pub fn check_new_password(password: &str) -> Result<(), PasswordError> {
    let n = password.chars().count();
    if n < MIN_PASSWORD_CHARS {
        Err(PasswordError::TooShort)
    } else if n > MAX_PASSWORD_CHARS {
        Err(PasswordError::TooLong)
    } else if password.chars().any(char::is_control) {
        Err(PasswordError::Control)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_order_by_power() {
        assert!(Role::Admin.allows(Role::Viewer));
        assert!(Role::Admin.allows(Role::Admin));
        assert!(Role::Viewer.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Admin));
        assert_eq!(Role::parse("viewer"), Some(Role::Viewer));
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn emails_are_trimmed_and_lowercased() {
        assert_eq!(
            Email::parse("  Ops@Example.COM ").unwrap().as_str(),
            "ops@example.com"
        );
        assert_eq!(Email::parse("a@localhost").unwrap().as_str(), "a@localhost");
    }

    #[test]
    fn bad_emails_are_refused() {
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a b@c.d",
            "a@.com",
            "a@c.",
            "<a>@b.c",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            Email::parse(&format!("{}@x.y", "a".repeat(260))),
            Err(EmailError::TooLong)
        );
    }

    #[test]
    fn password_rule_is_about_length() {
        assert_eq!(check_new_password("short"), Err(PasswordError::TooShort));
        assert_eq!(check_new_password("correct horse battery"), Ok(()));
        assert_eq!(
            check_new_password(&"x".repeat(300)),
            Err(PasswordError::TooLong)
        );
        assert_eq!(
            check_new_password("twelve chars\n ok"),
            Err(PasswordError::Control)
        );
    }
}
