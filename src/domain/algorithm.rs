//! JWS signing algorithms Signet can keep keys for, and the RSA modulus sizes it accepts.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A JWS algorithm (RFC 7518 / RFC 8037 names). Each enabled one gets its own key chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Algorithm {
    EdDSA,
    RS256,
    RS384,
    RS512,
    PS256,
    ES256,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlgorithmError {
    #[error("unknown algorithm '{0}' (supported: EdDSA, RS256, RS384, RS512, PS256, ES256)")]
    Unknown(String),
    #[error("the algorithm list is empty: at least one algorithm must be enabled")]
    Empty,
    #[error("algorithm {0} is listed twice")]
    Duplicate(Algorithm),
}

impl Algorithm {
    pub const ALL: [Algorithm; 6] = [
        Algorithm::EdDSA,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::ES256,
    ];

    /// This algorithm's position in [`Algorithm::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The `alg` value as written in a JWS header and a JWK.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::EdDSA => "EdDSA",
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::ES256 => "ES256",
        }
    }

    /// Parses an algorithm name. Matching ignores case, because operators type these by
    /// hand in environment variables; the canonical spelling is what gets stored.
    pub fn parse(s: &str) -> Result<Self, AlgorithmError> {
        let s = s.trim();
        Self::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| AlgorithmError::Unknown(s.to_string()))
    }

    /// Whether keys of this algorithm are RSA keys (and so take the configured size).
    pub fn is_rsa(self) -> bool {
        matches!(
            self,
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256
        )
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The non-empty, duplicate-free list of enabled algorithms, in the order given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlgorithmList(Vec<Algorithm>);

impl AlgorithmList {
    /// Parses a comma-separated list such as `EdDSA,RS256`.
    pub fn parse(s: &str) -> Result<Self, AlgorithmError> {
        let mut list = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let alg = Algorithm::parse(part)?;
            if list.contains(&alg) {
                return Err(AlgorithmError::Duplicate(alg));
            }
            list.push(alg);
        }
        if list.is_empty() {
            return Err(AlgorithmError::Empty);
        }
        Ok(Self(list))
    }

    pub fn as_slice(&self) -> &[Algorithm] {
        &self.0
    }
}

impl Default for AlgorithmList {
    fn default() -> Self {
        Self(vec![Algorithm::EdDSA, Algorithm::RS256])
    }
}

impl fmt::Display for AlgorithmList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|a| a.as_str()).collect();
        f.write_str(&names.join(","))
    }
}

/// RSA modulus size. Only the sizes in common use are accepted: smaller is weak, and
/// larger makes key generation take many seconds for no practical gain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RsaBits {
    #[default]
    B2048,
    B3072,
    B4096,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported RSA size '{0}' (expected 2048, 3072 or 4096)")]
pub struct RsaBitsError(String);

impl RsaBits {
    pub fn parse(s: &str) -> Result<Self, RsaBitsError> {
        match s.trim() {
            "2048" => Ok(Self::B2048),
            "3072" => Ok(Self::B3072),
            "4096" => Ok(Self::B4096),
            other => Err(RsaBitsError(other.to_string())),
        }
    }

    pub fn bits(self) -> u32 {
        match self {
            Self::B2048 => 2048,
            Self::B3072 => 3072,
            Self::B4096 => 4096,
        }
    }
}

impl fmt::Display for RsaBits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.bits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn index_is_the_position_in_all() {
        for (i, alg) in Algorithm::ALL.into_iter().enumerate() {
            assert_eq!(alg.index(), i);
        }
    }

    #[test]
    fn parses_canonical_and_any_case() {
        assert_eq!(Algorithm::parse("EdDSA"), Ok(Algorithm::EdDSA));
        assert_eq!(Algorithm::parse("rs256"), Ok(Algorithm::RS256));
        assert_eq!(Algorithm::parse(" ES256 "), Ok(Algorithm::ES256));
    }

    #[test]
    fn rejects_unknown_and_explains() {
        let err = Algorithm::parse("HS256").unwrap_err();
        assert_eq!(err, AlgorithmError::Unknown("HS256".into()));
        assert!(err.to_string().contains("supported: EdDSA"));
        assert!(Algorithm::parse("none").is_err());
    }

    #[test]
    fn list_rejects_empty_and_duplicates() {
        assert_eq!(AlgorithmList::parse(" , "), Err(AlgorithmError::Empty));
        assert_eq!(
            AlgorithmList::parse("EdDSA,eddsa"),
            Err(AlgorithmError::Duplicate(Algorithm::EdDSA))
        );
        assert_eq!(
            AlgorithmList::parse("EdDSA,RS256").unwrap(),
            AlgorithmList::default()
        );
    }

    #[test]
    fn rsa_bits() {
        assert_eq!(RsaBits::parse("3072").unwrap().bits(), 3072);
        assert!(RsaBits::parse("1024").is_err());
        assert!(RsaBits::parse("abc").is_err());
        assert!(Algorithm::PS256.is_rsa() && !Algorithm::ES256.is_rsa());
    }

    proptest! {
        #[test]
        fn list_display_round_trips(mask in 1u8..64) {
            let algs: Vec<Algorithm> = Algorithm::ALL
                .into_iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, a)| a)
                .collect();
            let list = AlgorithmList(algs);
            prop_assert_eq!(AlgorithmList::parse(&list.to_string()).unwrap(), list);
        }
    }
}
