//! The keys as every request sees them: built once per change of the stored keys.
//!
//! The published JWKS as precomputed bytes with an ETag, and a parsed signer per active
//! key. The snapshot is built from public metadata, so it follows the database even where
//! a private key cannot be opened; only signing needs the private halves, and it refuses
//! rather than use a stale key.

use super::KeyError;
use crate::domain::{Algorithm, KeyInfo, KeyState, Kid};
use crate::server::crypto::{PublicJwk, Signer};
use crate::server::storage::{StorageError, StoredKey};
use axum::body::Bytes;
use axum::http::HeaderValue;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::Arc;

/// One published key, ready to serve or sign with.
pub struct ActiveSigner {
    pub kid: Kid,
    pub alg: Algorithm,
    pub signer: Signer,
    /// The token header every signature with this key carries (`alg`, `kid`, `typ`),
    /// base64url-encoded once rather than per token.
    pub header_b64: String,
}

impl ActiveSigner {
    pub fn new(kid: Kid, alg: Algorithm, signer: Signer) -> Self {
        use base64::Engine as _;
        let header = serde_json::json!({ "alg": alg.as_str(), "typ": "JWT", "kid": kid.as_str() });
        let header_b64 =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(header.to_string());
        Self {
            kid,
            alg,
            signer,
            header_b64,
        }
    }
}

/// A JWKS ready to serve: its body and its `ETag` header value, computed once per
/// snapshot so a request only clones them.
#[derive(Clone)]
pub struct PublishedJwks {
    /// `Bytes`, so serving it is a reference-count increment, not a copy.
    pub body: Bytes,
    /// The quoted strong ETag, e.g. `"0123…"`.
    pub etag: HeaderValue,
}

impl PublishedJwks {
    /// The empty key set, before the keys are loaded.
    fn none() -> Self {
        Self {
            body: Bytes::from_static(br#"{"keys":[]}"#),
            etag: HeaderValue::from_static("\"\""),
        }
    }

    fn new(body: Bytes, etag: &str) -> Result<Self, KeyError> {
        let etag = HeaderValue::from_str(etag)
            .map_err(|e| KeyError::from(StorageError::Corrupt(e.to_string())))?;
        Ok(Self { body, etag })
    }
}

/// What every request reads: built once per change of the keys.
///
/// Everything but the signers comes from public metadata (states, timestamps, public
/// JWKs), so the JWKS, the key states and verification follow the database even when a
/// private key cannot be opened here (a KEK this instance lacks, a damaged row).
pub struct KeySnapshot {
    pub version: i64,
    pub keys: Vec<KeyInfo>,
    /// The published JWKS.
    pub jwks: PublishedJwks,
    /// The JWKS narrowed to each algorithm (`?alg=`), in the order of `Algorithm::ALL`.
    pub jwks_by_alg: [PublishedJwks; Algorithm::ALL.len()],
    /// The active key of each algorithm whose private half this instance could open.
    pub signers: HashMap<Algorithm, Arc<ActiveSigner>>,
    /// Why an algorithm with an active key has no signer here (for `/sign` and readiness).
    pub unavailable: HashMap<Algorithm, String>,
    /// Published keys left out of the JWKS because their stored public JWK is damaged.
    pub damaged: Vec<String>,
    /// The public JWK of every published key, for verification.
    pub public: HashMap<Kid, PublicJwk>,
    /// When the next rotated key's publication ends; the watcher expires it then, so the
    /// JWKS drops it on time rather than at the next housekeeping pass.
    pub next_expiry: Option<DateTime<Utc>>,
}

impl KeySnapshot {
    pub(super) fn empty() -> Self {
        Self {
            version: -1,
            keys: Vec::new(),
            jwks: PublishedJwks::none(),
            jwks_by_alg: Algorithm::ALL.map(|_| PublishedJwks::none()),
            signers: HashMap::new(),
            unavailable: HashMap::new(),
            damaged: Vec::new(),
            public: HashMap::new(),
            next_expiry: None,
        }
    }

    /// The JWKS to serve for `?alg=` (all published keys for `None`).
    pub fn jwks_for(&self, alg: Option<Algorithm>) -> &PublishedJwks {
        match alg {
            None => &self.jwks,
            Some(alg) => &self.jwks_by_alg[alg.index()],
        }
    }

    /// Why this snapshot cannot sign for every enabled algorithm, if it cannot: one
    /// sentence per algorithm (a missing KEK names its id).
    pub fn problems(&self, enabled: &[Algorithm]) -> Vec<String> {
        if self.version < 0 {
            return vec!["the keys have not been loaded yet".into()];
        }
        enabled
            .iter()
            .filter(|a| !self.signers.contains_key(a))
            .map(|a| {
                self.unavailable
                    .get(a)
                    .cloned()
                    .unwrap_or_else(|| format!("{a} has no active key"))
            })
            .collect()
    }

    /// Builds a snapshot from the stored keys. Never fails for one key's sake: a key whose
    /// private half cannot be opened only leaves its algorithm without a signer (with the
    /// reason in `unavailable`), and a damaged public JWK only leaves that key out of the
    /// JWKS. Signers of keys that were already active in `previous` are reused; `open_signer`
    /// opens the others.
    pub fn build(
        version: i64,
        stored: Vec<StoredKey>,
        previous: &KeySnapshot,
        open_signer: impl Fn(&StoredKey) -> Result<Signer, KeyError>,
    ) -> Result<KeySnapshot, KeyError> {
        let now = Utc::now();
        let infos: Vec<KeyInfo> = stored.iter().map(|k| k.info.clone()).collect();
        let mut published: Vec<&StoredKey> =
            stored.iter().filter(|k| k.info.is_published(now)).collect();
        published.sort_by_key(|k| k.info.listing_order());
        let mut public = HashMap::new();
        let mut damaged = Vec::new();
        for k in &published {
            match serde_json::from_str::<PublicJwk>(&k.public_jwk) {
                Ok(jwk) if jwk.kid == k.info.kid.as_str() => {
                    public.insert(k.info.kid.clone(), jwk);
                }
                _ => damaged.push(format!(
                    "the stored public key of {} {} is damaged; it is not published",
                    k.info.alg, k.info.kid
                )),
            }
        }
        let jwks_of = |keys: &[&StoredKey]| -> Result<Bytes, KeyError> {
            let jwks: Vec<&PublicJwk> = keys
                .iter()
                .filter_map(|k| public.get(&k.info.kid))
                .collect();
            serde_json::to_vec(&serde_json::json!({ "keys": jwks }))
                .map(Bytes::from)
                .map_err(|e| StorageError::Corrupt(e.to_string()).into())
        };
        let jwks = jwks_of(&published)?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &jwks);
        let etag = crate::server::crypto::hex(&digest.as_ref()[..16]);
        let mut jwks_by_alg = Vec::with_capacity(Algorithm::ALL.len());
        for alg in Algorithm::ALL {
            let of_alg: Vec<&StoredKey> = published
                .iter()
                .copied()
                .filter(|k| k.info.alg == alg)
                .collect();
            jwks_by_alg.push(PublishedJwks::new(
                jwks_of(&of_alg)?,
                &format!("\"{etag}-{alg}\""),
            )?);
        }
        let jwks_by_alg = jwks_by_alg
            .try_into()
            .map_err(|_| KeyError::from(StorageError::Corrupt("algorithm count".into())))?;
        let jwks = PublishedJwks::new(jwks, &format!("\"{etag}\""))?;
        let mut signers = HashMap::new();
        let mut unavailable = HashMap::new();
        for key in stored.iter().filter(|k| k.info.state == KeyState::Active) {
            let alg = key.info.alg;
            if let Some(kept) = previous.signers.get(&alg).filter(|s| s.kid == key.info.kid) {
                signers.insert(alg, kept.clone());
                continue;
            }
            match open_signer(key) {
                Ok(signer) => {
                    signers.insert(
                        alg,
                        Arc::new(ActiveSigner::new(key.info.kid.clone(), alg, signer)),
                    );
                }
                Err(e) => {
                    unavailable.insert(alg, format!("cannot sign with the active {alg} key: {e}"));
                }
            }
        }
        let next_expiry = infos
            .iter()
            .filter(|k| k.state == KeyState::Rotated)
            .filter_map(|k| k.expires_at)
            .min();
        Ok(KeySnapshot {
            version,
            keys: infos,
            jwks,
            jwks_by_alg,
            signers,
            unavailable,
            damaged,
            public,
            next_expiry,
        })
    }
}
