-- Signing keys. The private half is sealed (AES-256-GCM, the kid as associated data)
-- under the key-encryption key named by kek_id, and set to NULL when the key is revoked
-- or expires.
CREATE TABLE signing_keys (
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
    CHECK ((private_sealed IS NULL) = (state IN ('revoked', 'expired'))),
    CHECK ((private_sealed IS NULL) = (kek_id IS NULL))
);

-- The database itself refuses a second active or next key per algorithm.
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys (alg) WHERE state = 'active';
CREATE UNIQUE INDEX signing_keys_one_next ON signing_keys (alg) WHERE state = 'next';

-- Bumped by every change to signing_keys, so other processes notice within a poll.
CREATE TABLE key_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO key_version (id, version) VALUES (1, 0);

-- The audit log. Each row's hash covers its content and the previous row's hash.
CREATE TABLE audit_events (
    id        INTEGER PRIMARY KEY,
    at        TEXT NOT NULL,
    level     TEXT NOT NULL CHECK (level IN ('info', 'notice', 'warning', 'critical')),
    kind      TEXT NOT NULL,
    actor     TEXT NOT NULL,
    trigger   TEXT NOT NULL CHECK (trigger IN ('ui', 'api', 'cli', 'scheduler')),
    source    TEXT,
    kids      TEXT NOT NULL,
    reason    TEXT,
    details   TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE INDEX audit_events_at ON audit_events (at, id);

-- The head of the hash chain. Appending locks this row, which serializes writers and
-- lets `audit verify` notice a deleted last row.
CREATE TABLE audit_head (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    last_id   INTEGER NOT NULL,
    last_hash TEXT NOT NULL
);
INSERT INTO audit_head (id, last_id, last_hash) VALUES (1, 0, '');
