//! What a key operation can fail with. How each failure is answered is in
//! [`crate::server::error`].

use crate::domain::Kid;
use crate::domain::lifecycle::PlanError;
use crate::server::crypto::CryptoError;
use crate::server::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(
        "key {0} is sealed with key-encryption key '{1}', which this instance does not have \
         (add it to SIGNET_ENC_KEYS)"
    )]
    MissingKek(Kid, String),
    /// A key lives on a PKCS#11 token this instance cannot use (not configured, or
    /// another token).
    #[error("{0}")]
    TokenMissing(String),
    #[error("the keys kept changing concurrently; try again")]
    Busy,
    #[error("the scheduled slot was already handled by another instance")]
    SlotTaken,
}
