//! Private keys at rest: AES-256-GCM under a key-encryption key, bound to their kid.

use super::{CryptoError, PrivateKey};
use crate::domain::Kid;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use zeroize::Zeroizing;

/// Seals private key bytes under a KEK with AES-256-GCM. The kid is the associated data:
/// a sealed blob copied to another row does not open. Output: nonce || ciphertext || tag.
pub fn seal(kek: &[u8; 32], kid: &Kid, private: &PrivateKey) -> Result<Vec<u8>, CryptoError> {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, kek).map_err(|_| CryptoError::Seal)?);
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| CryptoError::Seal)?;
    let mut in_out = private.as_bytes().to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(kid.as_str().as_bytes()),
        &mut in_out,
    )
    .map_err(|_| CryptoError::Seal)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&in_out);
    Ok(out)
}

/// Opens what [`seal`] produced.
pub fn open(kek: &[u8; 32], kid: &Kid, sealed: &[u8]) -> Result<PrivateKey, CryptoError> {
    if sealed.len() < NONCE_LEN {
        return Err(CryptoError::Open);
    }
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, kek).map_err(|_| CryptoError::Open)?);
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Open)?;
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    let plain = key
        .open_in_place(nonce, Aad::from(kid.as_str().as_bytes()), &mut buf)
        .map_err(|_| CryptoError::Open)?;
    Ok(PrivateKey::from_bytes(plain.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Algorithm, RsaBits};
    use crate::server::crypto::generate;
    #[test]
    fn sealed_keys_open_only_under_the_same_kek_and_kid() {
        let key = generate(Algorithm::EdDSA, RsaBits::B2048).unwrap();
        let kek = [7u8; 32];
        let sealed = seal(&kek, &key.kid, &key.private).unwrap();
        assert!(!sealed.windows(32).any(|w| w == key.private.as_bytes()));
        assert_eq!(
            open(&kek, &key.kid, &sealed).unwrap().as_bytes(),
            key.private.as_bytes()
        );

        let other = generate(Algorithm::EdDSA, RsaBits::B2048).unwrap();
        assert!(matches!(
            open(&kek, &other.kid, &sealed),
            Err(CryptoError::Open)
        ));
        assert!(matches!(
            open(&[8u8; 32], &key.kid, &sealed),
            Err(CryptoError::Open)
        ));
        let mut tampered = sealed.clone();
        tampered[NONCE_LEN] ^= 1;
        assert!(matches!(
            open(&kek, &key.kid, &tampered),
            Err(CryptoError::Open)
        ));
        assert!(matches!(
            open(&kek, &key.kid, &sealed[..4]),
            Err(CryptoError::Open)
        ));
    }
}
