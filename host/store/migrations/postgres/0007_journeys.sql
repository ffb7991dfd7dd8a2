-- Journeys, the runs of people through them, what each run did, and every send, so a
-- restarted host resumes where it stopped and never sends the same message twice.
CREATE TABLE journeys (
    name       TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    -- The last membership_log id whose entries this journey has taken.
    cursor     BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE journey_runs (
    id              TEXT PRIMARY KEY,
    journey         TEXT NOT NULL,
    profile_id      TEXT NOT NULL,
    step            BIGINT NOT NULL,
    -- active (due now), waiting (until wake_at), done.
    status          TEXT NOT NULL,
    wake_at         BIGINT,
    step_started_at BIGINT NOT NULL,
    entered_at      BIGINT NOT NULL,
    ended_reason    TEXT
);
CREATE INDEX journey_runs_due ON journey_runs(status, wake_at);
CREATE INDEX journey_runs_by_person ON journey_runs(journey, profile_id);

CREATE TABLE journey_log (
    id BIGSERIAL PRIMARY KEY,
    run_id     TEXT NOT NULL,
    journey    TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    step       TEXT NOT NULL,
    action     TEXT NOT NULL,
    channel    TEXT,
    detail     TEXT NOT NULL,
    at         BIGINT NOT NULL
);
CREATE INDEX journey_log_by_journey ON journey_log(journey, id);

-- One row per (run, step, channel): claimed before the provider is called, so a send is
-- never made twice, and settled with the provider's outcome.
CREATE TABLE journey_sends (
    idempotency_key TEXT PRIMARY KEY,
    run_id          TEXT NOT NULL,
    channel         TEXT NOT NULL,
    outcome         TEXT NOT NULL,
    at              BIGINT NOT NULL
);

-- Frequency caps count a person's recent sends across journeys.
CREATE INDEX journey_log_by_person ON journey_log(profile_id, action, at);
