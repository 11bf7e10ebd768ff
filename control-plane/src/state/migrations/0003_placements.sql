-- Where each slot of each service should run: written by the placement planner, read by the agents (next) and by
-- `gantry status`. One row per slot, so one slot is never placed twice.

CREATE TABLE placements (
    service  TEXT NOT NULL,
    slot     INTEGER NOT NULL,      -- 0 .. replicas - 1
    node     TEXT,                  -- the agent id; NULL while no node can take the slot
    reason   TEXT NOT NULL,         -- why it is unplaced ('' when placed)
    updated  TEXT NOT NULL,         -- RFC 3339, when node or reason last changed
    PRIMARY KEY (service, slot)
) STRICT;
