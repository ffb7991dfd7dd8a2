-- How many orders bought each pair of products together, kept current on ingest, so
-- "bought together" recommendations never scan order history.
CREATE TABLE co_purchases (
    product_id TEXT NOT NULL,
    other_id   TEXT NOT NULL,
    orders     BIGINT NOT NULL,
    PRIMARY KEY (product_id, other_id)
);
