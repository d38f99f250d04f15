-- Scheduled work ('rotation' on the cron schedule, 'housekeeping' every minute): the
-- latest slot (fire time) each job has claimed, and which instance claimed it. A claim
-- is a compare-and-set on the job's row that only moves forward; a rotation makes it in
-- the same transaction as the rotation, so each slot rotates exactly once, however many
-- instances reach it and whenever they restart.
CREATE TABLE scheduler_slots (
    job        TEXT PRIMARY KEY,
    last_slot  TEXT NOT NULL,
    claimed_by TEXT NOT NULL,
    claimed_at TEXT NOT NULL
);

-- When the current cron expression took effect. Slots before it are not owed: changing
-- the schedule never rotates at once. For an existing installation that is now: the
-- version before had no scheduler, so the upgrade owes no rotation either.
ALTER TABLE schedule ADD COLUMN cron_since TEXT;
UPDATE schedule SET cron_since = strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now');
