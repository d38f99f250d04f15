-- API tokens for the REST API. Only a SHA-256 of the secret is stored; the secret is
-- shown once, at creation.
CREATE TABLE api_tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    secret_hash TEXT NOT NULL,
    scopes      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);

-- The rotation schedule and retention, changed through the API and UI. The first start
-- seeds it from SIGNET_ROTATION_CRON and SIGNET_RETENTION.
CREATE TABLE schedule (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    cron           TEXT    NOT NULL,
    retention_secs INTEGER NOT NULL,
    updated_at     TEXT    NOT NULL
);
