//! Key pairs: generation, the public JWK, and a parsed [`Signer`] per private key.

use super::CryptoError;
use crate::domain::{Algorithm, Kid, RsaBits};
use aws_lc_rs::encoding::{AsBigEndian as _, AsDer as _};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    self, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};
use std::fmt;
use zeroize::Zeroizing;

/// The public half of a key as a JWK. Built only from public components, so it cannot
/// carry a private parameter whatever the caller does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicJwk {
    pub kty: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    pub kid: String,
    #[serde(rename = "use")]
    pub use_: String,
    pub alg: String,
}

impl PublicJwk {
    pub(super) fn new(alg: Algorithm, kty: &str) -> Self {
        Self {
            kty: kty.to_string(),
            crv: None,
            x: None,
            y: None,
            n: None,
            e: None,
            kid: String::new(),
            use_: "sig".to_string(),
            alg: alg.as_str().to_string(),
        }
    }

    /// RFC 7638 thumbprint: SHA-256 over the required members in lexicographic order,
    /// without whitespace, base64url-encoded.
    pub fn thumbprint(&self) -> Kid {
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        let canonical = match self.kty.as_str() {
            "RSA" => format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                s(&self.e),
                s(&self.n)
            ),
            "EC" => format!(
                r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                s(&self.crv),
                s(&self.x),
                s(&self.y)
            ),
            _ => format!(
                r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#,
                s(&self.crv),
                s(&self.x)
            ),
        };
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
        Kid::parse(&B64.encode(digest.as_ref()))
            .unwrap_or_else(|e| unreachable!("a SHA-256 thumbprint is a valid kid: {e}"))
    }
}

/// Private key bytes: PKCS#8 DER for RSA and ECDSA, the 32-byte seed for Ed25519.
/// Wiped on drop; never printed.
pub struct PrivateKey(Zeroizing<Vec<u8>>);

impl PrivateKey {
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(REDACTED)")
    }
}

/// A freshly generated key pair.
#[derive(Debug)]
pub struct GeneratedKey {
    pub kid: Kid,
    pub alg: Algorithm,
    pub jwk: PublicJwk,
    pub private: PrivateKey,
}

/// Generates a key pair. CPU-heavy for RSA (tens to hundreds of milliseconds): call it
/// from a blocking thread.
pub fn generate(alg: Algorithm, rsa_bits: RsaBits) -> Result<GeneratedKey, CryptoError> {
    let (mut jwk, private) = match alg {
        Algorithm::EdDSA => {
            let pair = Ed25519KeyPair::generate().map_err(|_| CryptoError::Generate(alg))?;
            // The 32-byte seed is what Signet stores (aws-lc wipes its own copy on drop).
            let seed = pair
                .seed()
                .and_then(|s| s.as_be_bytes())
                .map_err(|_| CryptoError::Generate(alg))?;
            let mut jwk = PublicJwk::new(alg, "OKP");
            jwk.crv = Some("Ed25519".into());
            jwk.x = Some(B64.encode(pair.public_key().as_ref()));
            (jwk, PrivateKey::from_bytes(seed.as_ref().to_vec()))
        }
        Algorithm::ES256 => {
            let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                .map_err(|_| CryptoError::Generate(alg))?;
            let der = pair.to_pkcs8v1().map_err(|_| CryptoError::Generate(alg))?;
            let point = pair.public_key().as_ref();
            // Uncompressed SEC1 point: 0x04 || x (32 bytes) || y (32 bytes).
            let mut jwk = PublicJwk::new(alg, "EC");
            jwk.crv = Some("P-256".into());
            jwk.x = Some(B64.encode(&point[1..33]));
            jwk.y = Some(B64.encode(&point[33..65]));
            (jwk, PrivateKey::from_bytes(der.as_ref().to_vec()))
        }
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 => {
            let size = match rsa_bits {
                RsaBits::B2048 => KeySize::Rsa2048,
                RsaBits::B3072 => KeySize::Rsa3072,
                RsaBits::B4096 => KeySize::Rsa4096,
            };
            let pair = RsaKeyPair::generate(size).map_err(|_| CryptoError::Generate(alg))?;
            let der = pair.as_der().map_err(|_| CryptoError::Generate(alg))?;
            let public = pair.public_key();
            let mut jwk = PublicJwk::new(alg, "RSA");
            jwk.n = Some(B64.encode(public.modulus().big_endian_without_leading_zero()));
            jwk.e = Some(B64.encode(public.exponent().big_endian_without_leading_zero()));
            (jwk, PrivateKey::from_bytes(der.as_ref().to_vec()))
        }
    };
    let kid = jwk.thumbprint();
    jwk.kid = kid.to_string();
    Ok(GeneratedKey {
        kid,
        alg,
        jwk,
        private,
    })
}

/// Whether `signature` over `message` verifies against the public `jwk` (the JWS forms:
/// `r || s` for ES256). For checking a signer, e.g. an HSM's, independently of it.
pub fn verify(alg: Algorithm, jwk: &PublicJwk, message: &[u8], signature: &[u8]) -> bool {
    use aws_lc_rs::signature::{RsaPublicKeyComponents, UnparsedPublicKey};
    let field = |v: &Option<String>| v.as_deref().and_then(|s| B64.decode(s).ok());
    match alg {
        Algorithm::EdDSA => field(&jwk.x).is_some_and(|x| {
            UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(message, signature)
                .is_ok()
        }),
        Algorithm::ES256 => match (field(&jwk.x), field(&jwk.y)) {
            (Some(x), Some(y)) => {
                let point = [&[0x04][..], &x, &y].concat();
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, signature)
                    .is_ok()
            }
            _ => false,
        },
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 => {
            let params: &signature::RsaParameters = match alg {
                Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                _ => &signature::RSA_PKCS1_2048_8192_SHA256,
            };
            match (field(&jwk.n), field(&jwk.e)) {
                (Some(n), Some(e)) => RsaPublicKeyComponents { n, e }
                    .verify(params, message, signature)
                    .is_ok(),
                _ => false,
            }
        }
    }
}

/// A parsed signing key, ready to sign many tokens.
pub enum Signer {
    /// aws-lc's Ed25519: about 1.8 times ed25519-dalek's signing rate here
    /// (`bench/crypto`).
    Ed25519(Ed25519KeyPair),
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair, &'static dyn signature::RsaEncoding),
    /// A private object on a PKCS#11 token, named by its `CKA_ID` (hex): the token signs.
    Token {
        token: std::sync::Arc<super::pkcs11::Token>,
        alg: Algorithm,
        id: String,
    },
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signer(REDACTED)")
    }
}

impl Signer {
    pub fn parse(alg: Algorithm, private: &PrivateKey) -> Result<Self, CryptoError> {
        let bytes = private.as_bytes();
        let err = || CryptoError::Parse(alg);
        Ok(match alg {
            Algorithm::EdDSA => {
                if bytes.len() != 32 {
                    return Err(err());
                }
                Signer::Ed25519(Ed25519KeyPair::from_seed_unchecked(bytes).map_err(|_| err())?)
            }
            Algorithm::ES256 => Signer::Ecdsa(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, bytes)
                    .map_err(|_| err())?,
            ),
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 => {
                let encoding: &'static dyn signature::RsaEncoding = match alg {
                    Algorithm::RS384 => &signature::RSA_PKCS1_SHA384,
                    Algorithm::RS512 => &signature::RSA_PKCS1_SHA512,
                    Algorithm::PS256 => &signature::RSA_PSS_SHA256,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                Signer::Rsa(RsaKeyPair::from_pkcs8(bytes).map_err(|_| err())?, encoding)
            }
        })
    }

    /// Whether one signature takes long enough to belong off the async threads: RSA keys
    /// above 2048 bits. Measured on one core of the 2-core test machine (2026-12-03): a
    /// 2048-bit signature takes 0.31 ms (aws-lc-rs, `crypto_rates`; OpenSSL 0.29 ms), short
    /// enough that the hand-off to the blocking pool and back costs more throughput than it
    /// saves latency for other requests; 3072 bits take 2.3 ms and 4096 bits 4.6 ms
    /// (`openssl speed`), long enough to stall every request on that thread.
    pub fn is_slow(&self) -> bool {
        match self {
            Signer::Rsa(pair, _) => pair.public_modulus_len() > 256,
            // A call into a module: a real HSM answers over a bus or a network.
            Signer::Token { .. } => true,
            Signer::Ed25519(_) | Signer::Ecdsa(_) => false,
        }
    }

    /// The JWS signature of `message` (for ECDSA: the fixed-size `r || s` form JWS uses).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        match self {
            Signer::Ed25519(pair) => pair
                .try_sign(message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| CryptoError::Sign),
            Signer::Ecdsa(pair) => pair
                .sign(&SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| CryptoError::Sign),
            Signer::Rsa(pair, encoding) => {
                let mut sig = vec![0u8; pair.public_modulus_len()];
                pair.sign(*encoding, &SystemRandom::new(), message, &mut sig)
                    .map_err(|_| CryptoError::Sign)?;
                Ok(sig)
            }
            Signer::Token { token, alg, id } => token.sign(*alg, id, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIVATE_PARAMS: [&str; 6] = ["d", "p", "q", "dp", "dq", "qi"];

    #[test]
    fn every_algorithm_generates_signs_and_exports_only_public_parameters() {
        for alg in Algorithm::ALL {
            let key = generate(alg, RsaBits::B2048).unwrap();
            let json = serde_json::to_value(&key.jwk).unwrap();
            let obj = json.as_object().unwrap();
            for p in PRIVATE_PARAMS {
                assert!(!obj.contains_key(p), "{alg}: JWK has private parameter {p}");
            }
            assert_eq!(obj["kid"], key.kid.as_str());
            assert_eq!(obj["use"], "sig");
            assert_eq!(obj["alg"], alg.as_str());
            assert_eq!(key.jwk.thumbprint(), key.kid);

            let signer = Signer::parse(alg, &key.private).unwrap();
            let sig = signer.sign(b"header.payload").unwrap();
            assert!(verify(alg, &key.jwk, b"header.payload", &sig), "{alg}");
            assert!(!verify(alg, &key.jwk, b"header.payloaX", &sig), "{alg}");
            assert!(!format!("{key:?}{signer:?}").contains(&B64.encode(key.private.as_bytes())));
        }
    }

    /// aws-lc signs Ed25519 here; ed25519-dalek (an independent implementation) must
    /// derive the same public key from the stored seed and accept the signature.
    #[test]
    fn ed25519_keys_and_signatures_agree_with_an_independent_implementation() {
        use ed25519_dalek::Verifier as _;
        for _ in 0..8 {
            let key = generate(Algorithm::EdDSA, RsaBits::B2048).unwrap();
            let seed: [u8; 32] = key.private.as_bytes().try_into().unwrap();
            let dalek = ed25519_dalek::SigningKey::from_bytes(&seed);
            assert_eq!(
                key.jwk.x.as_deref(),
                Some(B64.encode(dalek.verifying_key().as_bytes()).as_str())
            );
            let message = b"eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0";
            let signature = Signer::parse(Algorithm::EdDSA, &key.private)
                .unwrap()
                .sign(message)
                .unwrap();
            let signature = ed25519_dalek::Signature::from_slice(&signature).unwrap();
            dalek.verifying_key().verify(message, &signature).unwrap();
            assert!(
                dalek
                    .verifying_key()
                    .verify(b"another message", &signature)
                    .is_err()
            );
        }
        assert!(Signer::parse(Algorithm::EdDSA, &PrivateKey::from_bytes(vec![7; 31])).is_err());
    }

    #[test]
    fn rfc7638_example_thumbprint() {
        // The RSA key of RFC 7638, section 3.1.
        let mut jwk = PublicJwk::new(Algorithm::RS256, "RSA");
        jwk.e = Some("AQAB".into());
        jwk.n = Some(
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
                .into(),
        );
        assert_eq!(
            jwk.thumbprint().as_str(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }
}
