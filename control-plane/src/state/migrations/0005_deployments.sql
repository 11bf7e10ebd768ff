-- Rollouts. Each slot now records the template revision its instance runs (a rollout moves slots from one template
-- to another a few at a time, or adds the canary beside them), and the highest generation ever issued for it (so a
-- replacement never reuses an instance id). A deployment is one rollout of one service from its stable revision to
-- a new one; its whole state (step, weight, step start, judge) is here, so a plane killed at any moment resumes it.

ALTER TABLE placements ADD COLUMN template INTEGER NOT NULL DEFAULT 0;  -- the revision whose template the instance runs
ALTER TABLE placements ADD COLUMN next_template INTEGER;               -- the replacement's template
ALTER TABLE placements ADD COLUMN issued INTEGER NOT NULL DEFAULT 0;   -- the highest epoch ever given to the slot

UPDATE placements SET
    template = COALESCE((SELECT r.template FROM services s JOIN revisions r ON r.service = s.name AND r.revision = s.revision
                         WHERE s.name = placements.service), 0),
    next_template = CASE WHEN next_node IS NULL THEN NULL ELSE
        (SELECT r.template FROM services s JOIN revisions r ON r.service = s.name AND r.revision = s.revision
         WHERE s.name = placements.service) END,
    issued = MAX(epoch, COALESCE(next_epoch, 0));

-- Why a rollout of this revision was rolled back; NULL while it was not. `gantry apply` of the same template
-- refuses without --force.
ALTER TABLE revisions ADD COLUMN rejected TEXT;

CREATE TABLE deployments (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    service       TEXT NOT NULL,
    from_revision INTEGER NOT NULL,      -- the stable revision
    to_revision   INTEGER NOT NULL,      -- the revision rolled out
    kind          TEXT NOT NULL,         -- deploy | rollback
    strategy      TEXT NOT NULL,         -- rolling | canary | blue-green
    policy        TEXT NOT NULL,         -- JSON gantry_proto::platform::RolloutPolicy in effect
    status        TEXT NOT NULL,         -- progressing | paused | rolling_back | succeeded | rolled_back | failed
    phase         TEXT NOT NULL,         -- see control-plane/src/rollout/mod.rs
    step          INTEGER NOT NULL DEFAULT 0,     -- the canary step (0-based)
    weight        REAL NOT NULL DEFAULT 0,        -- the new version's share of requests applied by the routers, percent
    step_started_ms INTEGER,             -- when the current step's weight took effect, ms since the epoch
    paused_until_ms INTEGER,             -- a timed pause ends then
    pause_reason  TEXT,
    outcome       TEXT,                  -- succeeded | rolled_back_by_judge | rolled_back_for_health | aborted | superseded
    reason        TEXT NOT NULL DEFAULT '',
    created_by    TEXT NOT NULL,
    started_ms    INTEGER NOT NULL,
    finished_ms   INTEGER,
    judge         TEXT,                  -- JSON gantry_judge::Judge
    decisions     TEXT NOT NULL DEFAULT '[]'  -- JSON array of gantry_proto::deployments::Decision
) STRICT;

-- One rollout per service at a time.
CREATE UNIQUE INDEX deployments_one_active ON deployments (service)
    WHERE status IN ('progressing', 'paused', 'rolling_back');
CREATE INDEX deployments_by_service ON deployments (service, id);

-- What happened, in order: the CLI's `--wait` follows it, the dashboard draws it as deploy markers.
CREATE TABLE deployment_events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment INTEGER NOT NULL REFERENCES deployments (id),
    time_ms    INTEGER NOT NULL,
    kind       TEXT NOT NULL,            -- started, step, weight, verdict, paused, resumed, promoted, rollback, finished, ...
    message    TEXT NOT NULL,
    detail     TEXT                      -- JSON, e.g. a decision record
) STRICT;
CREATE INDEX deployment_events_by_deployment ON deployment_events (deployment, seq);
