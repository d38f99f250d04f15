//! Public keys as PEM (`-----BEGIN PUBLIC KEY-----`, an X.509 SubjectPublicKeyInfo), built
//! from the public JWK, for tools that do not read JWKs (openssl, older libraries).
//!
//! Only the three shapes Signet issues are needed (RSA, P-256, Ed25519), so the DER is
//! written by hand: a few nested TLVs, not worth an ASN.1 dependency.

use crate::server::crypto::PublicJwk;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the stored public key is incomplete or malformed")]
pub struct PemError;

/// OID 1.2.840.113549.1.1.1 (rsaEncryption).
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// OID 1.2.840.10045.2.1 (id-ecPublicKey).
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// OID 1.2.840.10045.3.1.7 (prime256v1).
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// OID 1.3.101.112 (Ed25519).
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = body.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(body);
    out
}

fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

/// A positive INTEGER: leading zeros dropped, one added if the top bit is set.
fn uint(bytes: &[u8]) -> Vec<u8> {
    let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    let mut body = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|b| b & 0x80 != 0) {
        body.push(0);
    }
    body.extend(trimmed);
    tlv(0x02, &body)
}

fn bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut body = vec![0];
    body.extend_from_slice(bytes);
    tlv(0x03, &body)
}

fn field(v: &Option<String>) -> Result<Vec<u8>, PemError> {
    let text = v.as_deref().ok_or(PemError)?;
    URL_SAFE_NO_PAD.decode(text).map_err(|_| PemError)
}

/// The DER SubjectPublicKeyInfo of a public JWK.
pub fn spki_der(jwk: &PublicJwk) -> Result<Vec<u8>, PemError> {
    match jwk.kty.as_str() {
        "RSA" => {
            let key = seq(&[uint(&field(&jwk.n)?), uint(&field(&jwk.e)?)]);
            Ok(seq(&[
                seq(&[tlv(0x06, OID_RSA), vec![0x05, 0x00]]),
                bit_string(&key),
            ]))
        }
        "EC" if jwk.crv.as_deref() == Some("P-256") => {
            let (x, y) = (field(&jwk.x)?, field(&jwk.y)?);
            if x.len() != 32 || y.len() != 32 {
                return Err(PemError);
            }
            let point = [&[0x04][..], &x, &y].concat();
            Ok(seq(&[
                seq(&[tlv(0x06, OID_EC), tlv(0x06, OID_P256)]),
                bit_string(&point),
            ]))
        }
        "OKP" if jwk.crv.as_deref() == Some("Ed25519") => {
            let x = field(&jwk.x)?;
            if x.len() != 32 {
                return Err(PemError);
            }
            Ok(seq(&[seq(&[tlv(0x06, OID_ED25519)]), bit_string(&x)]))
        }
        _ => Err(PemError),
    }
}

/// The PEM text of a public JWK, lines of 64 characters.
pub fn public_pem(jwk: &PublicJwk) -> Result<String, PemError> {
    let b64 = STANDARD.encode(spki_der(jwk)?);
    let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).map_err(|_| PemError)?);
        out.push('\n');
    }
    out.push_str("-----END PUBLIC KEY-----\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Algorithm, RsaBits};
    use crate::server::crypto::generate;
    use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
    use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};

    /// AWS-LC's own encoder, from the private key, is the reference.
    fn reference_der(alg: Algorithm, private: &[u8]) -> Vec<u8> {
        let der: PublicKeyX509Der<'static> = match alg {
            Algorithm::EdDSA => Ed25519KeyPair::from_seed_unchecked(private)
                .unwrap()
                .public_key()
                .as_der()
                .unwrap(),
            Algorithm::ES256 => EcdsaKeyPair::from_pkcs8(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                private,
            )
            .unwrap()
            .public_key()
            .as_der()
            .unwrap(),
            _ => RsaKeyPair::from_pkcs8(private)
                .unwrap()
                .public_key()
                .as_der()
                .unwrap(),
        };
        der.as_ref().to_vec()
    }

    #[test]
    fn the_der_matches_aws_lc_for_every_algorithm() {
        for alg in Algorithm::ALL {
            let key = generate(alg, RsaBits::default()).unwrap();
            assert_eq!(
                spki_der(&key.jwk).unwrap(),
                reference_der(alg, key.private.as_bytes()),
                "{alg}"
            );
            let pem = public_pem(&key.jwk).unwrap();
            assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
            assert!(pem.ends_with("-----END PUBLIC KEY-----\n"));
            assert!(pem.lines().all(|l| l.len() <= 64));
        }
    }

    #[test]
    fn long_lengths_use_the_long_form() {
        assert_eq!(tlv(0x04, &[0; 3])[..2], [0x04, 3]);
        assert_eq!(tlv(0x04, &[0; 200])[..3], [0x04, 0x81, 200]);
        assert_eq!(tlv(0x04, &[0; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
        // Integers stay positive.
        assert_eq!(uint(&[0x80]), [0x02, 0x02, 0x00, 0x80]);
        assert_eq!(uint(&[0x00, 0x01]), [0x02, 0x01, 0x01]);
    }

    #[test]
    fn incomplete_keys_are_refused() {
        let key = generate(Algorithm::EdDSA, RsaBits::default()).unwrap();
        let mut broken = key.jwk.clone();
        broken.x = Some("AAAA".into());
        assert_eq!(public_pem(&broken), Err(PemError));
        broken.kty = "oct".into();
        assert_eq!(public_pem(&broken), Err(PemError));
    }
}
