-- Keys generated on a PKCS#11 token (key_backend = "pkcs11"). Such a key has no sealed
-- private half at all: the row names the token (hsm_token, kept for the record) and the
-- private object's CKA_ID in hex (hsm_object, cleared when the key is revoked or expires,
-- in the same transaction that ends it; the object is destroyed on the token right after).
-- SQLite cannot change a table's CHECK constraints in place, so the table is rebuilt.
CREATE TABLE signing_keys_new (
    kid            TEXT PRIMARY KEY,
    alg            TEXT NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('next', 'active', 'rotated', 'revoked', 'expired')),
    public_jwk     TEXT NOT NULL,
    private_sealed BLOB,
    kek_id         TEXT,
    created_at     TEXT NOT NULL,
    activated_at   TEXT,
    rotated_at     TEXT,
    revoked_at     TEXT,
    expires_at     TEXT,
    last_token_exp TEXT,
    revoke_reason  TEXT,
    hsm_token      TEXT,
    hsm_object     TEXT,
    CHECK (
        (hsm_token IS NULL AND hsm_object IS NULL
            AND (private_sealed IS NULL) = (state IN ('revoked', 'expired'))
            AND (private_sealed IS NULL) = (kek_id IS NULL))
        OR
        (hsm_token IS NOT NULL AND private_sealed IS NULL AND kek_id IS NULL
            AND (hsm_object IS NULL) = (state IN ('revoked', 'expired')))
    )
);
INSERT INTO signing_keys_new (kid, alg, state, public_jwk, private_sealed, kek_id, created_at,
    activated_at, rotated_at, revoked_at, expires_at, last_token_exp, revoke_reason)
SELECT kid, alg, state, public_jwk, private_sealed, kek_id, created_at,
    activated_at, rotated_at, revoked_at, expires_at, last_token_exp, revoke_reason
FROM signing_keys;
DROP TABLE signing_keys;
ALTER TABLE signing_keys_new RENAME TO signing_keys;
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys (alg) WHERE state = 'active';
CREATE UNIQUE INDEX signing_keys_one_next ON signing_keys (alg) WHERE state = 'next';
