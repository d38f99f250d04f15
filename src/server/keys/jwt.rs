//! Signing and verifying JWTs with Signet's keys.
//!
//! Signing uses the parsed signer kept in the key snapshot, so no private key is parsed
//! per token. Verification follows RFC 8725: the key is found by exact `kid` match among
//! the published keys, the key (not the token) fixes the algorithm, `iss` (and `aud` when
//! asked) are checked, and `jwk`, `jku` and `x5u` headers are refused outright.

use crate::domain::{Algorithm, KeyState, Kid};
use crate::server::crypto::{CryptoError, PublicJwk};
use crate::server::keys::KeySnapshot;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::{DateTime, TimeZone as _, Utc};
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Map, Value};

/// Claims Signet sets itself; a caller may not supply them.
pub const RESERVED_CLAIMS: [&str; 3] = ["iss", "iat", "exp"];

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("claim '{0}' is set by Signet and must not be supplied")]
    ReservedClaim(String),
    #[error("algorithm {0} is not enabled")]
    NotEnabled(Algorithm),
    #[error("ttl must be at least 1 second")]
    TtlZero,
    #[error("ttl {ttl} s is longer than the maximum token lifetime of {max} s")]
    TtlTooLong { ttl: u64, max: u64 },
    #[error("no active key for {0}")]
    NoActiveKey(Algorithm),
    /// This instance cannot sign right now (a KEK it lacks, keys it could not load).
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// A signed token.
#[derive(Debug, Clone)]
pub struct Signed {
    pub token: String,
    pub kid: Kid,
    pub alg: Algorithm,
    pub exp: DateTime<Utc>,
}

/// Signs `claims` with the active key of `alg`, adding `iss`, `iat` and `exp`.
pub fn sign(
    snapshot: &KeySnapshot,
    issuer: &str,
    mut claims: Map<String, Value>,
    alg: Algorithm,
    ttl_secs: u64,
    now: DateTime<Utc>,
) -> Result<Signed, SignError> {
    if let Some(reserved) = RESERVED_CLAIMS.iter().find(|c| claims.contains_key(**c)) {
        return Err(SignError::ReservedClaim(reserved.to_string()));
    }
    let signer = snapshot
        .signers
        .get(&alg)
        .ok_or(SignError::NoActiveKey(alg))?;
    let iat = now.timestamp();
    let exp = iat.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX));
    claims.insert("iss".into(), Value::String(issuer.to_string()));
    claims.insert("iat".into(), Value::from(iat));
    claims.insert("exp".into(), Value::from(exp));
    // The claims are serialised once, straight into the bytes the payload encodes.
    let payload = serde_json::to_vec(&claims).map_err(|_| CryptoError::Sign)?;
    let mut token =
        String::with_capacity(signer.header_b64.len() + 2 + payload.len().div_ceil(3) * 4 + 350);
    token.push_str(&signer.header_b64);
    token.push('.');
    B64.encode_string(&payload, &mut token);
    let signature = signer.signer.sign(token.as_bytes())?;
    token.push('.');
    B64.encode_string(signature, &mut token);
    Ok(Signed {
        token,
        kid: signer.kid.clone(),
        alg,
        exp: Utc.timestamp_opt(exp, 0).single().unwrap_or(now),
    })
}

/// The outcome of a verification, as `POST /verify` reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Verified {
    Valid { kid: Kid, claims: Value },
    Invalid { reason: String },
}

fn invalid(reason: impl Into<String>) -> Verified {
    Verified::Invalid {
        reason: reason.into(),
    }
}

/// Verifies a token against the published keys.
pub fn verify(
    snapshot: &KeySnapshot,
    issuer: &str,
    token: &str,
    audience: Option<&str>,
) -> Verified {
    let header = match jsonwebtoken::decode_header(token) {
        Ok(h) => h,
        Err(_) => return invalid("malformed token"),
    };
    if header.jku.is_some() || header.jwk.is_some() || header.x5u.is_some() {
        return invalid("tokens naming their own key (jku, jwk, x5u) are refused");
    }
    let Some(kid) = header.kid.as_deref() else {
        return invalid("token has no kid");
    };
    let Some(key) = snapshot.keys.iter().find(|k| k.kid.as_str() == kid) else {
        return invalid("unknown kid");
    };
    match key.state {
        KeyState::Revoked => return invalid("key revoked"),
        KeyState::Expired => return invalid("key expired"),
        _ => {}
    }
    let Some(jwk) = snapshot.public.get(&key.kid) else {
        return invalid("key not published");
    };
    let alg = jwt_alg(key.alg);
    if header.alg != alg {
        return invalid(format!("algorithm mismatch: key {kid} is {}", key.alg));
    }
    let decoding = match decoding_key(jwk) {
        Some(k) => k,
        None => return invalid("key cannot verify"),
    };
    let mut validation = Validation::new(alg);
    validation.set_issuer(&[issuer]);
    validation.leeway = 30;
    validation.validate_nbf = true;
    // A claim that is checked must be present: jsonwebtoken skips checks of absent ones.
    match audience {
        Some(aud) => {
            validation.set_audience(&[aud]);
            validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        }
        None => {
            validation.validate_aud = false;
            validation.set_required_spec_claims(&["exp", "iss"]);
        }
    }
    match jsonwebtoken::decode::<Value>(token, &decoding, &validation) {
        // RFC 8725 section 3.9: a token meant for some audience is only accepted by a
        // caller who says which audience it is.
        Ok(data) if audience.is_none() && data.claims.get("aud").is_some() => {
            invalid("token has an audience (aud); pass the audience you expect to verify it")
        }
        Ok(data) => Verified::Valid {
            kid: key.kid.clone(),
            claims: data.claims,
        },
        Err(e) => invalid(describe(&e)),
    }
}

fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "token expired".into(),
        ErrorKind::ImmatureSignature => "token not yet valid".into(),
        ErrorKind::InvalidIssuer => "wrong issuer".into(),
        ErrorKind::InvalidAudience => "wrong audience".into(),
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("missing claim {c}"),
        _ => "invalid token".into(),
    }
}

pub fn jwt_alg(alg: Algorithm) -> jsonwebtoken::Algorithm {
    match alg {
        Algorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        Algorithm::RS256 => jsonwebtoken::Algorithm::RS256,
        Algorithm::RS384 => jsonwebtoken::Algorithm::RS384,
        Algorithm::RS512 => jsonwebtoken::Algorithm::RS512,
        Algorithm::PS256 => jsonwebtoken::Algorithm::PS256,
        Algorithm::ES256 => jsonwebtoken::Algorithm::ES256,
    }
}

fn decoding_key(jwk: &PublicJwk) -> Option<DecodingKey> {
    match jwk.kty.as_str() {
        "RSA" => DecodingKey::from_rsa_components(jwk.n.as_deref()?, jwk.e.as_deref()?).ok(),
        "EC" => DecodingKey::from_ec_components(jwk.x.as_deref()?, jwk.y.as_deref()?).ok(),
        "OKP" => DecodingKey::from_ed_components(jwk.x.as_deref()?).ok(),
        _ => None,
    }
}
