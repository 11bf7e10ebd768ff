-- The platform: services applied from a spec, their immutable revisions, the secrets specs reference, and the
-- audit log of every change made through the API.

CREATE TABLE services (
    name     TEXT PRIMARY KEY,
    revision INTEGER NOT NULL,      -- the current revision's number
    replicas INTEGER NOT NULL,      -- desired instances (the spec's, until `gantry scale` changes it)
    stopped  INTEGER NOT NULL DEFAULT 0,  -- 1 after `gantry stop`: no instance runs until `gantry start`
    restart_epoch INTEGER NOT NULL DEFAULT 0,  -- `gantry restart`: every slot's instance of an older generation is replaced
    updated  TEXT NOT NULL          -- RFC 3339, when `revision` or `replicas` last changed
) STRICT;

CREATE TABLE revisions (
    service  TEXT NOT NULL,
    revision INTEGER NOT NULL,      -- 1, 2, ... per service; never reused, never changed
    template INTEGER NOT NULL,      -- the revision whose instance template (all but replicas) this one runs
    version  TEXT NOT NULL,         -- the version label of its instances
    author   TEXT NOT NULL,         -- the applying token's name
    created  TEXT NOT NULL,         -- RFC 3339
    source   TEXT NOT NULL,         -- the file name the client gave
    diff     TEXT NOT NULL,         -- JSON array of gantry_proto::platform::FieldChange against the revision before
    spec     TEXT NOT NULL,         -- gantry_proto::platform::ServiceSpec as JSON, secrets as references
    PRIMARY KEY (service, revision)
) STRICT;

CREATE TABLE secrets (
    name       TEXT PRIMARY KEY,
    value      BLOB NOT NULL,       -- the value; the file is mode 0600 like the data directory
    updated    TEXT NOT NULL,       -- RFC 3339
    updated_by TEXT NOT NULL        -- the token's name
) STRICT;

CREATE TABLE audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    time    TEXT NOT NULL,          -- RFC 3339 with milliseconds
    actor   TEXT NOT NULL,          -- the token's name
    role    TEXT NOT NULL,
    action  TEXT NOT NULL,          -- apply, secret.set, secret.delete, token.create, token.revoke, ...
    target  TEXT NOT NULL,
    outcome TEXT NOT NULL,          -- ok, refused: ..., failed: ...
    detail  TEXT NOT NULL
) STRICT;

CREATE INDEX audit_by_target ON audit (target, id);
