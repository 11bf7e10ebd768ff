-- Dashboard users (a password and a role) and their login sessions.

CREATE TABLE users (
    id            TEXT PRIMARY KEY,        -- 12 hex digits
    name          TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL CHECK (role IN ('viewer', 'deployer', 'admin')),
    password_hash TEXT NOT NULL,           -- argon2id, PHC string format; the password itself is never stored
    created       TEXT NOT NULL            -- RFC 3339
) STRICT;

CREATE TABLE sessions (
    hash       BLOB PRIMARY KEY,           -- SHA-256 of the session cookie's secret
    user_id    TEXT NOT NULL,
    csrf       TEXT NOT NULL,              -- the synchronizer token every form of this session carries
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL            -- absolute: a session ends this long after its login, used or not
) STRICT;

CREATE INDEX sessions_user ON sessions (user_id);
