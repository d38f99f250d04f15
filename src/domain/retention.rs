//! How long a rotated key stays published: a positive duration written as `30d`, `12h`, ...

use serde::{Deserialize, Serialize};
use std::fmt;

/// A retention period in whole seconds, parsed from `<n><unit>` with unit `s`, `m`, `h`,
/// `d` or `w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Retention {
    secs: u64,
}

/// Ten years: anything longer is certainly a typo, and would keep retired keys published
/// for no reason.
const MAX_SECS: u64 = 3650 * 86_400;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetentionError {
    #[error("'{0}' is not a duration: write a number and a unit, e.g. 30d, 12h, 90m")]
    Malformed(String),
    #[error("unknown unit in '{0}' (use s, m, h, d or w)")]
    UnknownUnit(String),
    #[error("retention must be longer than zero")]
    Zero,
    #[error("'{0}' is longer than the maximum of 3650d")]
    TooLong(String),
}

impl Retention {
    pub fn parse(s: &str) -> Result<Self, RetentionError> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| RetentionError::Malformed(s.to_string()))?;
        let (digits, unit) = s.split_at(split);
        if digits.is_empty() {
            return Err(RetentionError::Malformed(s.to_string()));
        }
        let n: u64 = digits
            .parse()
            .map_err(|_| RetentionError::TooLong(s.to_string()))?;
        let factor = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            _ => return Err(RetentionError::UnknownUnit(s.to_string())),
        };
        let secs = n
            .checked_mul(factor)
            .ok_or_else(|| RetentionError::TooLong(s.to_string()))?;
        match secs {
            0 => Err(RetentionError::Zero),
            s if s > MAX_SECS => Err(RetentionError::TooLong(digits.to_string() + unit)),
            secs => Ok(Self { secs }),
        }
    }

    pub fn from_secs(secs: u64) -> Self {
        Self { secs }
    }

    pub fn as_secs(self) -> u64 {
        self.secs
    }
}

impl Default for Retention {
    fn default() -> Self {
        Self { secs: 30 * 86_400 }
    }
}

impl fmt::Display for Retention {
    /// Writes the largest unit that divides the period exactly, so `parse` round-trips.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (factor, unit) in [(7 * 86_400, "w"), (86_400, "d"), (3_600, "h"), (60, "m")] {
            if self.secs.is_multiple_of(factor) {
                return write!(f, "{}{unit}", self.secs / factor);
            }
        }
        write!(f, "{}s", self.secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_units() {
        assert_eq!(Retention::parse("30d").unwrap().as_secs(), 30 * 86_400);
        assert_eq!(Retention::parse("12h").unwrap().as_secs(), 43_200);
        assert_eq!(Retention::parse("90m").unwrap().as_secs(), 5_400);
        assert_eq!(Retention::parse("2w").unwrap().as_secs(), 14 * 86_400);
        assert_eq!(Retention::parse(" 45s ").unwrap().as_secs(), 45);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            Retention::parse("30"),
            Err(RetentionError::Malformed(_))
        ));
        assert!(matches!(
            Retention::parse("d"),
            Err(RetentionError::Malformed(_))
        ));
        assert!(matches!(
            Retention::parse("-3d"),
            Err(RetentionError::Malformed(_))
        ));
        assert!(matches!(
            Retention::parse("3y"),
            Err(RetentionError::UnknownUnit(_))
        ));
        assert!(matches!(
            Retention::parse("3 d"),
            Err(RetentionError::UnknownUnit(_))
        ));
        assert_eq!(Retention::parse("0d"), Err(RetentionError::Zero));
        assert!(matches!(
            Retention::parse("3651d"),
            Err(RetentionError::TooLong(_))
        ));
        assert!(matches!(
            Retention::parse("99999999999999999999d"),
            Err(RetentionError::TooLong(_))
        ));
    }

    #[test]
    fn displays_largest_exact_unit() {
        assert_eq!(Retention::parse("14d").unwrap().to_string(), "2w");
        assert_eq!(Retention::parse("36h").unwrap().to_string(), "36h");
        assert_eq!(Retention::parse("61s").unwrap().to_string(), "61s");
    }

    proptest! {
        #[test]
        fn display_round_trips(secs in 1u64..=MAX_SECS) {
            let r = Retention::from_secs(secs);
            prop_assert_eq!(Retention::parse(&r.to_string()).unwrap(), r);
        }

        #[test]
        fn parse_never_panics(s in ".{0,12}") {
            let _ = Retention::parse(&s);
        }
    }
}
