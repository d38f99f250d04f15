-- One row that identifies this installation. Every instance sharing the database sees
-- the same id, which is how operators tell installations apart in logs and metrics.
CREATE TABLE instance (
    id              SMALLINT    PRIMARY KEY CHECK (id = 1),
    installation_id TEXT        NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

INSERT INTO instance (id, installation_id)
VALUES (1, replace(gen_random_uuid()::text, '-', ''));
