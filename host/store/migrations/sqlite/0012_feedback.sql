-- Delivery feedback (issue 15): what providers report about each send after accepting it,
-- and the suppressions those reports switch on.

-- One row per provider report, kept once per (channel, the provider's event id) so a
-- replayed webhook changes nothing. Joined to its send by the idempotency key.
CREATE TABLE feedback (
    channel     TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    send_key    TEXT NOT NULL,
    profile_id  TEXT NOT NULL,
    journey     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    at          BIGINT NOT NULL,
    recipient   TEXT,
    reason      TEXT,
    url         TEXT,
    -- An open by a privacy proxy: kept, never counted as an open.
    machine     INTEGER NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (channel, event_id)
);
CREATE INDEX feedback_by_send ON feedback(send_key);
CREATE INDEX feedback_by_journey ON feedback(journey, at);
CREATE INDEX feedback_by_profile ON feedback(profile_id);

-- A contact point (kind 'contact', target 'email:ann@example.com') or a consent purpose
-- (kind 'consent', target 'email') switched off by a report or a refused send, with why
-- and the send that caused it. Live while not lifted and not expired (soft bounces
-- expire); a live contact suppression keeps the address off whatever later messages say.
CREATE TABLE suppressions (
    -- Never reused after an erasure, so a stale id cannot lift someone else's.
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    profile_id TEXT NOT NULL,
    kind       TEXT NOT NULL,
    target     TEXT NOT NULL,
    reason     TEXT NOT NULL,
    detail     TEXT,
    channel    TEXT,
    send_key   TEXT,
    at         BIGINT NOT NULL,
    expires_at BIGINT,
    lifted_at  BIGINT,
    lifted_by  TEXT
);
CREATE INDEX suppressions_by_profile ON suppressions(profile_id, kind, target);
CREATE INDEX suppressions_by_time ON suppressions(at);
