-- RFM cutoffs a segment's "auto" parameters resolved to, refreshed on its schedule: every
-- evaluation between refreshes (the edge's bundle, real time, reference decisions, other
-- hosts) uses the same ones, named by when they were computed.
CREATE TABLE segment_cutoffs (
    segment TEXT PRIMARY KEY,
    from_params TEXT NOT NULL,
    resolved TEXT NOT NULL,
    computed_at BIGINT NOT NULL
);
