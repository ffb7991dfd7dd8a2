-- Segment definitions, current memberships, and every entry and exit.
CREATE TABLE segments (
    name       TEXT PRIMARY KEY,
    slot       TEXT NOT NULL,
    params     TEXT NOT NULL,
    schedule   TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE memberships (
    segment    TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    label      TEXT,
    reason     TEXT NOT NULL,
    digest     TEXT NOT NULL,
    since      BIGINT NOT NULL,
    PRIMARY KEY (segment, profile_id)
);
CREATE INDEX memberships_by_profile ON memberships(profile_id);

CREATE TABLE membership_log (
    id         BIGSERIAL PRIMARY KEY,
    segment    TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    change     TEXT NOT NULL,
    at         BIGINT NOT NULL,
    label      TEXT,
    reason     TEXT NOT NULL,
    digest     TEXT NOT NULL
);
CREATE INDEX membership_log_by_segment ON membership_log(segment, at);
CREATE INDEX membership_log_by_profile ON membership_log(profile_id);
