-- Profiles, the identities that resolve to them, and what they did.
CREATE TABLE profiles (
    id          TEXT PRIMARY KEY,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    timezone    TEXT,
    timezone_at BIGINT
);

-- kind is 'user' (userId) or 'anonymous' (anonymousId).
CREATE TABLE identities (
    kind       TEXT NOT NULL,
    value      TEXT NOT NULL,
    profile_id TEXT NOT NULL REFERENCES profiles(id),
    PRIMARY KEY (kind, value)
);
CREATE INDEX identities_by_profile ON identities(profile_id);

-- Every accepted message id per source, so a client's retries never count twice.
CREATE TABLE messages (
    source      TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (source, message_id)
);

CREATE TABLE events (
    id          BIGSERIAL PRIMARY KEY,
    profile_id  TEXT NOT NULL,
    name        TEXT NOT NULL,
    timestamp   BIGINT NOT NULL,
    properties  TEXT NOT NULL,
    message_id  TEXT NOT NULL
);
CREATE INDEX events_by_profile ON events(profile_id, name, timestamp);

-- Last write wins by event time.
CREATE TABLE traits (
    profile_id TEXT NOT NULL,
    name       TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (profile_id, name)
);

CREATE TABLE contacts (
    profile_id TEXT NOT NULL,
    kind       TEXT NOT NULL,
    address    TEXT NOT NULL,
    active     BOOLEAN NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (profile_id, kind, address)
);

CREATE TABLE consents (
    profile_id TEXT NOT NULL,
    purpose    TEXT NOT NULL,
    granted    BOOLEAN NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (profile_id, purpose)
);

-- Computed traits, kept current on ingest rather than scanned at read time.
CREATE TABLE computed (
    profile_id      TEXT PRIMARY KEY,
    order_count     BIGINT NOT NULL,
    lifetime_value  DOUBLE PRECISION NOT NULL,
    first_order_at  BIGINT,
    last_order_at   BIGINT,
    category_counts TEXT NOT NULL
);

CREATE TABLE products (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    category   TEXT,
    price      DOUBLE PRECISION,
    url        TEXT,
    image      TEXT,
    in_stock   BOOLEAN NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX products_by_category ON products(category);
