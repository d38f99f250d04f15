-- Keys generated on a PKCS#11 token (key_backend = "pkcs11"). Such a key has no sealed
-- private half at all: the row names the token (hsm_token, kept for the record) and the
-- private object's CKA_ID in hex (hsm_object, cleared when the key is revoked or expires,
-- in the same transaction that ends it; the object is destroyed on the token right after).
ALTER TABLE signing_keys ADD COLUMN hsm_token TEXT;
ALTER TABLE signing_keys ADD COLUMN hsm_object TEXT;
ALTER TABLE signing_keys DROP CONSTRAINT signing_keys_check;
ALTER TABLE signing_keys DROP CONSTRAINT signing_keys_check1;
ALTER TABLE signing_keys ADD CONSTRAINT signing_keys_private_half CHECK (
    (hsm_token IS NULL AND hsm_object IS NULL
        AND (private_sealed IS NULL) = (state IN ('revoked', 'expired'))
        AND (private_sealed IS NULL) = (kek_id IS NULL))
    OR
    (hsm_token IS NOT NULL AND private_sealed IS NULL AND kek_id IS NULL
        AND (hsm_object IS NULL) = (state IN ('revoked', 'expired')))
);
