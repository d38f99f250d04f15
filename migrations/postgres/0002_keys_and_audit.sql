-- Signing keys. The private half is sealed (AES-256-GCM, the kid as associated data)
-- under the key-encryption key named by kek_id, and set to NULL when the key is revoked
-- or expires.
CREATE TABLE signing_keys (
    kid            TEXT PRIMARY KEY,
    alg            TEXT NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('next', 'active', 'rotated', 'revoked', 'expired')),
    public_jwk     TEXT NOT NULL,
    private_sealed BYTEA,
    kek_id         TEXT,
    created_at     TIMESTAMPTZ NOT NULL,
    activated_at   TIMESTAMPTZ,
    rotated_at     TIMESTAMPTZ,
    revoked_at     TIMESTAMPTZ,
    expires_at     TIMESTAMPTZ,
    last_token_exp TIMESTAMPTZ,
    revoke_reason  TEXT,
    CHECK ((private_sealed IS NULL) = (state IN ('revoked', 'expired'))),
    CHECK ((private_sealed IS NULL) = (kek_id IS NULL))
);

-- The database itself refuses a second active or next key per algorithm.
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys (alg) WHERE state = 'active';
CREATE UNIQUE INDEX signing_keys_one_next ON signing_keys (alg) WHERE state = 'next';

-- Bumped by every change to signing_keys, so other instances notice (NOTIFY, or a poll).
CREATE TABLE key_version (
    id      SMALLINT PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO key_version (id, version) VALUES (1, 0);

-- The audit log. Each row's hash covers its content and the previous row's hash.
CREATE TABLE audit_events (
    id        BIGINT PRIMARY KEY,
    at        TIMESTAMPTZ NOT NULL,
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
    id        SMALLINT PRIMARY KEY CHECK (id = 1),
    last_id   BIGINT NOT NULL,
    last_hash TEXT NOT NULL
);
INSERT INTO audit_head (id, last_id, last_hash) VALUES (1, 0, '');
