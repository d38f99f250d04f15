-- One row that identifies this installation. Every instance sharing the database sees
-- the same id, which is how operators tell installations apart in logs and metrics.
CREATE TABLE instance (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    installation_id TEXT    NOT NULL,
    created_at      TEXT    NOT NULL
);

INSERT INTO instance (id, installation_id, created_at)
VALUES (1, lower(hex(randomblob(16))), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
