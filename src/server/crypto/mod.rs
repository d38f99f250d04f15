//! Cryptography: key generation, public JWKs and signing ([`signing`]), sealing private
//! keys under a key-encryption key ([`seal`]), the KEKs themselves ([`kek`]) and PEM
//! export ([`pem`]).
//!
//! Private-key work for RSA and ECDSA goes through aws-lc-rs (never the `rsa` crate:
//! RUSTSEC-2023-0071), Ed25519 through ed25519-dalek. A signing key is parsed once into a
//! [`Signer`] and kept; nothing re-parses a private key per token. Every type that holds
//! private material has a redacted `Debug` and wipes its bytes on drop.

pub mod kek;
pub mod pem;
pub mod pkcs11;
pub mod seal;
pub mod signing;

pub use seal::{open, seal};
pub use signing::{GeneratedKey, PrivateKey, PublicJwk, Signer, generate};

use crate::domain::Algorithm;
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("key generation failed for {0}")]
    Generate(Algorithm),
    #[error("stored private key for {0} could not be parsed")]
    Parse(Algorithm),
    #[error("signing failed")]
    Sign,
    #[error("sealing failed")]
    Seal,
    /// Wrong KEK, a tampered blob, or a blob moved to another key id.
    #[error(
        "a sealed private key could not be opened (wrong key-encryption key, or the row was altered)"
    )]
    Open,
    /// The PKCS#11 module refused an operation (its return code, never key material).
    #[error("the HSM refused: {0}")]
    Hsm(String),
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Bytes of a lowercase or uppercase hex string; `None` for an odd length or a character
/// that is not a hex digit.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// SHA-256 of a text as lowercase hex: how secrets with enough entropy of their own (API
/// token secrets, session ids) are stored.
pub fn sha256_hex(text: &str) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes()).as_ref())
}

/// `n` random bytes as lowercase hex, for row ids; `None` without randomness.
pub fn random_hex(n: usize) -> Option<String> {
    let mut bytes = vec![0u8; n];
    SystemRandom::new().fill(&mut bytes).ok()?;
    Some(hex(&bytes))
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_is_lowercase_two_digits_per_byte() {
        assert_eq!(super::hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(super::hex(&[]), "");
        let every: Vec<u8> = (0..=255).collect();
        let expected: String = every.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(super::hex(&every), expected);
    }

    #[test]
    fn unhex_reverses_hex_and_rejects_odd_or_foreign_text() {
        let bytes = [0x00, 0xab, 0x10, 0xff];
        assert_eq!(super::unhex(&super::hex(&bytes)), Some(bytes.to_vec()));
        assert_eq!(super::unhex("00AB10FF"), Some(bytes.to_vec()));
        assert_eq!(super::unhex("abc"), None);
        assert_eq!(super::unhex("zz"), None);
    }
}
