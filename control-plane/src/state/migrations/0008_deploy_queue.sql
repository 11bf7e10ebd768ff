-- Deployments queued behind a running rollout (`gantry deploy --queue`): a row with status `queued` holds the
-- request and its author until its turn, when it becomes the deployment (same id) or is cancelled with the reason.
ALTER TABLE deployments ADD COLUMN request TEXT;  -- JSON {"request": DeployRequest, "by": TokenInfo} while queued
CREATE INDEX deployments_queued ON deployments (service, id) WHERE status = 'queued';
