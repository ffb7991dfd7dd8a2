-- Several hosts on one database (issue 14): one unfinished run per customer and journey,
-- runs leased to the host advancing them, versioned writes, sends timed from when they
-- actually went out, and leases that make a tick or a scheduled run happen once.

-- Runs a race already doubled: the oldest stays, the others end now, before the index
-- that forbids them.
UPDATE journey_runs SET status = 'done', wake_at = NULL, ended_reason = 'duplicate run'
WHERE status <> 'done'
  AND id NOT IN (SELECT MIN(id) FROM journey_runs WHERE status <> 'done' GROUP BY journey, profile_id);
CREATE UNIQUE INDEX journey_runs_one_unfinished ON journey_runs(journey, profile_id) WHERE status <> 'done';

-- What took the customer in (`change:ID`, `event:ID`); one run per cause, whichever host
-- read it.
ALTER TABLE journey_runs ADD COLUMN entered_by TEXT;
CREATE UNIQUE INDEX journey_runs_one_per_cause ON journey_runs(journey, entered_by) WHERE entered_by IS NOT NULL;

-- The host advancing a run, and until when; a run whose lease has passed is anybody's.
ALTER TABLE journey_runs ADD COLUMN lease_owner TEXT;
ALTER TABLE journey_runs ADD COLUMN lease_until BIGINT;
-- Bumped by every save: a save from a host that lost the run changes nothing.
ALTER TABLE journey_runs ADD COLUMN version BIGINT NOT NULL DEFAULT 0;

-- When the request last went out (NULL: claimed, never sent). A send in doubt is looked up
-- `reconcile_after` after this, not after the claim.
ALTER TABLE journey_sends ADD COLUMN sent_at BIGINT;

-- Named leases: the journey tick, each scheduled segment run.
CREATE TABLE leases (
    name  TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    until BIGINT NOT NULL
);

-- The message-id dedup table is swept by age.
CREATE INDEX messages_by_age ON messages(received_at);
