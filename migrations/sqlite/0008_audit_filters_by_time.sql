-- Time-windowed event pages with one filter (the events page's since/until plus a kind,
-- level or actor) walk these in (at, id) order, newest first, and stop after one page;
-- the (kind, id)-style indexes of 0004 serve the unwindowed pages, which go by id.
-- Without them a rare kind inside a busy day skipped most of that day's rows.
CREATE INDEX audit_events_kind_at ON audit_events (kind, at, id);
CREATE INDEX audit_events_level_at ON audit_events (level, at, id);
CREATE INDEX audit_events_actor_at ON audit_events (actor, at, id);
