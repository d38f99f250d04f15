//! The key list as `GET /api/v1/keys` answers it and `signet keys --json` prints it.

use crate::server::storage::StoredKey;
use serde_json::{Value, json};

/// The `{"keys": [...]}` answer of `GET /keys`, also printed by `signet keys --json`.
pub fn listing(keys: &[StoredKey]) -> Value {
    let keys: Vec<Value> = keys
        .iter()
        .map(|k| {
            let jwk: Option<Value> = serde_json::from_str(&k.public_jwk).ok();
            let info = &k.info;
            json!({
                "kid": info.kid,
                "alg": info.alg,
                "state": info.state,
                "created_at": info.created_at,
                "activated_at": info.activated_at,
                "rotated_at": info.rotated_at,
                "revoked_at": info.revoked_at,
                "expires_at": info.expires_at,
                "jwk": jwk,
                "backend": k.backend(),
                "token": k.hsm_token,
            })
        })
        .collect();
    json!({ "keys": keys })
}
