-- The plane's first tables: API tokens and the nodes that heartbeat.

CREATE TABLE tokens (
    id      TEXT PRIMARY KEY,        -- 12 hex digits, stable, used to revoke
    name    TEXT NOT NULL UNIQUE,    -- given at creation
    role    TEXT NOT NULL CHECK (role IN ('ingest', 'viewer', 'deployer', 'admin')),
    hash    BLOB NOT NULL UNIQUE,    -- SHA-256 of the whole secret; the secret itself is never stored
    created TEXT NOT NULL            -- RFC 3339
) STRICT;

CREATE TABLE nodes (
    agent_id    TEXT PRIMARY KEY,
    token_id    TEXT NOT NULL,       -- the token that registered the node ('' when imported without one)
    registered  TEXT NOT NULL,       -- RFC 3339
    last_seen   TEXT NOT NULL,       -- RFC 3339, as of the last write (not every heartbeat is written)
    interval_ms INTEGER NOT NULL,
    facts       TEXT NOT NULL,       -- gantry_proto::NodeFacts as JSON
    shipping    TEXT NOT NULL        -- gantry_proto::NodeShipping as JSON
) STRICT;
