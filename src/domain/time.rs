//! Time as people read and type it: one UTC format for every page, and the times a filter
//! accepts.

use chrono::{DateTime, NaiveDateTime, Utc};

/// A time as the UI and the CLI show it: `2026-11-22 14:30:00 UTC`.
pub fn format_utc(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// The same to the minute, where space is short (the JWKS page's timeline).
pub fn format_utc_minutes(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// Reads a time a person typed: RFC 3339, or the `YYYY-MM-DDTHH:MM[:SS]` of a
/// datetime-local input, taken as UTC.
pub fn parse_utc(text: &str) -> Result<DateTime<Utc>, String> {
    let t = text.trim();
    DateTime::parse_from_rfc3339(t)
        .map(|d| d.with_timezone(&Utc))
        .or_else(|_| {
            NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M")
                .or_else(|_| NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S"))
                .map(|n| n.and_utc())
        })
        .map_err(|_| format!("'{t}' is not a time (expected e.g. 2026-11-22T14:30, UTC)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_accept_rfc3339_and_datetime_local() {
        assert_eq!(
            parse_utc("2026-11-22T14:30").unwrap().to_rfc3339(),
            "2026-11-22T14:30:00+00:00"
        );
        assert_eq!(
            parse_utc("2026-11-22T15:30:00+01:00").unwrap().to_rfc3339(),
            "2026-11-22T14:30:00+00:00"
        );
        assert!(parse_utc("yesterday").is_err());
        assert_eq!(
            format_utc(parse_utc("2026-11-22T14:30").unwrap()),
            "2026-11-22 14:30:00 UTC"
        );
    }
}
