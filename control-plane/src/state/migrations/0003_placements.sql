-- Where each slot of each service should run: written by the placement planner, read by the agents (next) and by
-- `gantry status`. One row per slot, so one slot is never placed twice.

CREATE TABLE placements (
    service  TEXT NOT NULL,
    slot     INTEGER NOT NULL,      -- 0 .. replicas - 1
    node     TEXT,                  -- the agent id; NULL while no node can take the slot
    reason   TEXT NOT NULL,         -- why it is unplaced ('' when placed)
    updated  TEXT NOT NULL,         -- RFC 3339, when node or reason last changed
    epoch    INTEGER NOT NULL DEFAULT 0,  -- the generation of the slot's instance (a restart or a move makes a new one)
    next_node  TEXT,                -- a replacement being started (restart, drain) before the current one stops
    next_epoch INTEGER,             -- its generation
    PRIMARY KEY (service, slot)
) STRICT;

-- Nodes being drained (`gantry nodes drain`): they take no new instances, and theirs move elsewhere, new first.
CREATE TABLE drained_nodes (
    agent_id TEXT PRIMARY KEY,
    since    TEXT NOT NULL          -- RFC 3339
) STRICT;
