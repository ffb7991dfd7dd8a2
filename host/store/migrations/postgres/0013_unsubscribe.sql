-- One-click unsubscribe (issue 15): the secrets this host's links are sealed with, shared
-- by every host on the database so any of them opens any link; and each unsubscribe, kept
-- once per (send, purpose) so a mail client's repeated POST changes nothing.
CREATE TABLE host_secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE unsubscribes (
    send_key   TEXT NOT NULL,
    purpose    TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    channel    TEXT NOT NULL,
    at         BIGINT NOT NULL,
    PRIMARY KEY (send_key, purpose)
);
CREATE INDEX unsubscribes_by_profile ON unsubscribes(profile_id);
