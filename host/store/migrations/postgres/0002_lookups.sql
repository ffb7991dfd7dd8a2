-- Profile reads look identities up by value alone, and list a profile's latest events
-- across all names.
CREATE INDEX identities_by_value ON identities(value);
CREATE INDEX events_by_time ON events(profile_id, timestamp);
