-- Promo-tile offers and page slots, stored as validated JSON documents: the tile endpoint
-- keeps a snapshot in memory and several hosts share them through the database.
CREATE TABLE offers (
    id         TEXT PRIMARY KEY,
    slot       TEXT NOT NULL,
    definition TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE tile_slots (
    name       TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
