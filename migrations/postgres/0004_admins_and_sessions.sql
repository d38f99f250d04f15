-- Admin accounts. Passwords are argon2id PHC strings. must_change_password marks a
-- generated one-time password; sessions_valid_after ends every session started before
-- it (password reset, disabling).
CREATE TABLE admins (
    id                   TEXT PRIMARY KEY,
    email                TEXT NOT NULL UNIQUE,
    role                 TEXT NOT NULL CHECK (role IN ('admin', 'viewer')),
    password_hash        TEXT NOT NULL,
    must_change_password BOOLEAN NOT NULL DEFAULT FALSE,
    created_at           TIMESTAMPTZ NOT NULL,
    disabled_at          TIMESTAMPTZ,
    last_login_at        TIMESTAMPTZ,
    sessions_valid_after TIMESTAMPTZ NOT NULL
);

-- Browser sessions (tower-sessions records as JSON), shared by every instance.
CREATE TABLE sessions (
    id          TEXT PRIMARY KEY,
    record      TEXT NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX sessions_expires_at ON sessions (expires_at);

-- Failed sign-in counters per account and per client address.
CREATE TABLE login_throttle (
    key          TEXT PRIMARY KEY,
    failures     INTEGER NOT NULL,
    window_start TIMESTAMPTZ NOT NULL,
    locked_until TIMESTAMPTZ
);

-- The events page filters by these, newest first, over millions of rows.
CREATE INDEX audit_events_kind ON audit_events (kind, id);
CREATE INDEX audit_events_level ON audit_events (level, id);
CREATE INDEX audit_events_actor ON audit_events (actor, id);
