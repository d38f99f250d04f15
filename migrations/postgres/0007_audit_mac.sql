-- The audit chain is keyed: each event also carries an HMAC of its hash under a key
-- derived from a key-encryption key (never stored here), and the id of that KEK. Rows
-- written before this migration have none; `keyed_from` is the first id that must have
-- one from the start. The first Signet process with the KEK checks the older rows'
-- hash chain and MACs them in one transaction (an `audit.keyed` event says so).
ALTER TABLE audit_events ADD COLUMN mac TEXT;
ALTER TABLE audit_events ADD COLUMN mac_kek TEXT;
ALTER TABLE audit_head ADD COLUMN keyed_from BIGINT NOT NULL DEFAULT 1;
UPDATE audit_head SET keyed_from = last_id + 1;
-- Finds the rows still waiting for their MAC without scanning the log.
CREATE INDEX audit_events_unkeyed ON audit_events (id) WHERE mac IS NULL;
