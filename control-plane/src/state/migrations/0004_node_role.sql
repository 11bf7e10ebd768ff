-- The `node` role (node agents: telemetry, heartbeats, instances to run). SQLite cannot change a CHECK constraint in
-- place, so the table is rebuilt with the same rows.

CREATE TABLE tokens_new (
    id      TEXT PRIMARY KEY,
    name    TEXT NOT NULL UNIQUE,
    role    TEXT NOT NULL CHECK (role IN ('ingest', 'node', 'viewer', 'deployer', 'admin')),
    hash    BLOB NOT NULL UNIQUE,
    created TEXT NOT NULL
) STRICT;

INSERT INTO tokens_new (id, name, role, hash, created) SELECT id, name, role, hash, created FROM tokens;
DROP TABLE tokens;
ALTER TABLE tokens_new RENAME TO tokens;
