//! Free text that people type and Signet stores or searches: bounded, and without control
//! characters (PostgreSQL refuses NUL in text; a newline would forge a line of a log).
//! The API and the UI parse it with these types, so both give the same answer.

use std::fmt;

/// Why a text was refused. `Display` names the field, for an error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextError {
    Empty(&'static str),
    TooLong { field: &'static str, max: usize },
    Control(&'static str),
}

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TextError::Empty(field) => write!(f, "{field} is required"),
            TextError::TooLong { field, max } => {
                write!(f, "{field} is longer than {max} characters")
            }
            TextError::Control(field) => write!(f, "{field} must not contain control characters"),
        }
    }
}

impl std::error::Error for TextError {}

/// A message with its first letter in upper case.
pub fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// A message as a sentence for a page: capitalized, with a full stop.
pub fn sentence(s: &str) -> String {
    format!("{}.", capitalize(s))
}

/// Checks `text` (no control characters anywhere, not even a trailing newline) and trims
/// it to at most `max` characters. Empty text passes here; the types decide whether it
/// may be empty.
fn bounded(field: &'static str, text: &str, max: usize) -> Result<String, TextError> {
    if text.chars().any(char::is_control) {
        return Err(TextError::Control(field));
    }
    let t = text.trim();
    if t.chars().count() > max {
        return Err(TextError::TooLong { field, max });
    }
    Ok(t.to_string())
}

/// Why an operator revoked a key: required, at most [`Reason::MAX`] characters of plain text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason(String);

impl Reason {
    pub const MAX: usize = 500;

    pub fn parse(text: &str) -> Result<Self, TextError> {
        let t = bounded("reason", text, Self::MAX)?;
        if t.is_empty() {
            return Err(TextError::Empty("reason"));
        }
        Ok(Self(t))
    }

    /// An optional reason (a plain rotation): blank text is no reason.
    pub fn parse_optional(text: Option<&str>) -> Result<Option<Self>, TextError> {
        match text.map(|t| bounded("reason", t, Self::MAX)).transpose()? {
            Some(t) if !t.is_empty() => Ok(Some(Self(t))),
            _ => Ok(None),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A search term of the audit log (event kind, actor): at most [`FilterText::MAX`]
/// characters of plain text; blank means "any".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterText(String);

impl FilterText {
    pub const MAX: usize = 200;

    pub fn parse(field: &'static str, text: Option<&str>) -> Result<Option<Self>, TextError> {
        match text.map(|t| bounded(field, t, Self::MAX)).transpose()? {
            Some(t) if !t.is_empty() => Ok(Some(Self(t))),
            _ => Ok(None),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_required_bounded_plain_text() {
        assert_eq!(Reason::parse("  leaked ").unwrap().as_str(), "leaked");
        assert_eq!(Reason::parse(" "), Err(TextError::Empty("reason")));
        assert!(Reason::parse(&"x".repeat(500)).is_ok());
        assert_eq!(
            Reason::parse(&"x".repeat(501)),
            Err(TextError::TooLong {
                field: "reason",
                max: 500
            })
        );
        assert_eq!(Reason::parse("a\nb"), Err(TextError::Control("reason")));
        assert_eq!(Reason::parse("a\0"), Err(TextError::Control("reason")));
        assert_eq!(Reason::parse("leaked\n"), Err(TextError::Control("reason")));
        assert_eq!(Reason::parse_optional(Some("  ")), Ok(None));
        assert_eq!(Reason::parse_optional(None), Ok(None));
        assert!(Reason::parse_optional(Some("a\u{7}")).is_err());
    }

    #[test]
    fn messages_become_sentences() {
        assert_eq!(
            sentence("the database is unavailable; try again"),
            "The database is unavailable; try again."
        );
        assert_eq!(sentence(""), ".");
    }

    #[test]
    fn filter_terms_are_optional_bounded_plain_text() {
        assert_eq!(FilterText::parse("kind", Some("")), Ok(None));
        assert_eq!(
            FilterText::parse("kind", Some(" keys.rotated "))
                .unwrap()
                .unwrap()
                .as_str(),
            "keys.rotated"
        );
        assert_eq!(
            FilterText::parse("actor", Some(&"a".repeat(201))),
            Err(TextError::TooLong {
                field: "actor",
                max: 200
            })
        );
        assert_eq!(
            FilterText::parse("actor", Some("x\u{0}")),
            Err(TextError::Control("actor"))
        );
        assert_eq!(
            FilterText::parse("actor", Some("\nforged")),
            Err(TextError::Control("actor"))
        );
    }
}
