//! Rollouts as the API and the CLI see them: `POST /api/v1/deployments` starts one, `GET /api/v1/deployments/{id}`
//! shows it with its decision records, `GET .../events` follows it (the CLI's `--wait`), and the history of a
//! service's deployments doubles as deploy markers for charts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::platform::Strategy;

/// `POST /api/v1/deployments`: a new version of one service, as changes to its current spec.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeployRequest {
    /// The service.
    pub service: String,
    /// The new version label; required (a canary tells versions apart by it).
    pub version: String,
    /// Environment variables to set (`--set KEY=VALUE`); values may hold `${secret:NAME}`.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Environment variables to remove.
    #[serde(default)]
    pub unset: Vec<String>,
    /// A new program, when it changes.
    #[serde(default)]
    pub command: Option<String>,
    /// New arguments, when they change.
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// The strategy for this deployment only; `None`: the service's rollout policy.
    #[serde(default)]
    pub strategy: Option<Strategy>,
    /// Deploy even a revision that was rolled back before.
    #[serde(default)]
    pub force: bool,
    /// When another rollout of the service runs: wait in line behind it (the deployment is `queued`, and starts,
    /// with these changes applied to what the service runs then, once no rollout of the service runs) instead of
    /// being refused.
    #[serde(default)]
    pub queue: bool,
}

/// `POST /api/v1/services/{name}/rollback`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RollbackRequest {
    /// The revision to return to; `None`: the last revision before the current one with another template that
    /// was not rolled back itself.
    #[serde(default)]
    pub to: Option<u64>,
}

/// Where a deployment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Moving forward.
    Progressing,
    /// Holding: a step's pause, `gantry pause`, or an inconclusive verdict waiting for a human.
    Paused,
    /// Returning to the stable revision.
    RollingBack,
    /// Done: the new revision runs everywhere.
    Succeeded,
    /// Done: the stable revision runs everywhere again.
    RolledBack,
    /// Waiting in line behind the service's running rollout (`--queue`).
    Queued,
    /// Ended before it started: refused when its turn came (the reason says why), or aborted while queued.
    Cancelled,
}

impl Status {
    /// Whether the deployment has ended (succeeded, rolled back or cancelled).
    pub fn ended(self) -> bool {
        matches!(
            self,
            Status::Succeeded | Status::RolledBack | Status::Cancelled
        )
    }

    /// Whether the deployment is running (a queued one is not yet).
    pub fn active(self) -> bool {
        matches!(
            self,
            Status::Progressing | Status::Paused | Status::RollingBack
        )
    }

    /// Its name in the API and the state database.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Progressing => "progressing",
            Status::Paused => "paused",
            Status::RollingBack => "rolling_back",
            Status::Succeeded => "succeeded",
            Status::RolledBack => "rolled_back",
            Status::Queued => "queued",
            Status::Cancelled => "cancelled",
        }
    }

    /// The status named `text`.
    pub fn parse(text: &str) -> Option<Status> {
        [
            Status::Progressing,
            Status::Paused,
            Status::RollingBack,
            Status::Succeeded,
            Status::RolledBack,
            Status::Queued,
            Status::Cancelled,
        ]
        .into_iter()
        .find(|status| status.as_str() == text)
    }
}

/// Why a deployment ended (or is ending) the way it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The new revision runs everywhere.
    Succeeded,
    /// The canary judge found a regression.
    RolledBackByJudge,
    /// New instances did not become healthy, or the progress deadline passed.
    RolledBackForHealth,
    /// Someone aborted it (`gantry abort`, `gantry rollback`).
    Aborted,
}

impl Outcome {
    /// Its name in the API and the state database.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::RolledBackByJudge => "rolled_back_by_judge",
            Outcome::RolledBackForHealth => "rolled_back_for_health",
            Outcome::Aborted => "aborted",
        }
    }

    /// The outcome named `text`.
    pub fn parse(text: &str) -> Option<Outcome> {
        [
            Outcome::Succeeded,
            Outcome::RolledBackByJudge,
            Outcome::RolledBackForHealth,
            Outcome::Aborted,
        ]
        .into_iter()
        .find(|outcome| outcome.as_str() == text)
    }
}

/// Whether a deployment brings a new version or returns to an old one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `gantry deploy` or an apply that changed the instance template.
    Deploy,
    /// `gantry rollback`: fast-tracked, no canary steps.
    Rollback,
}

/// One deployment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deployment {
    /// Its id.
    pub id: u64,
    /// The service.
    pub service: String,
    /// Deploy or rollback.
    pub kind: Kind,
    /// The strategy.
    pub strategy: Strategy,
    /// Where it stands.
    pub status: Status,
    /// What it is doing now, in a word: `starting`, `judging`, `promoting`, `rolling`, `rolling_back`, `done`.
    pub phase: String,
    /// The stable revision and its version.
    pub from_revision: u64,
    /// See `from_revision`.
    pub from_version: String,
    /// The new revision and its version.
    pub to_revision: u64,
    /// See `to_revision`.
    pub to_version: String,
    /// The canary step (0-based), for canaries.
    pub step: u32,
    /// The canary steps' weights, percent.
    pub steps: Vec<f64>,
    /// The new version's share of requests the routers apply now, percent.
    pub weight: f64,
    /// Why it is paused, when it is.
    pub pause_reason: Option<String>,
    /// When a timed pause ends, RFC 3339; `None` while paused means it waits for a human (`gantry resume`,
    /// `promote` or `abort`).
    pub paused_until: Option<String>,
    /// How it ended, once it has (or is ending).
    pub outcome: Option<Outcome>,
    /// Why, in words.
    pub reason: String,
    /// The token that started it.
    pub created_by: String,
    /// When it started, RFC 3339.
    pub started: String,
    /// When it ended, RFC 3339.
    pub finished: Option<String>,
    /// Every verdict of the canary judge, oldest first.
    pub decisions: Vec<Decision>,
}

/// A verdict of the canary judge with what it was based on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// When, RFC 3339.
    pub time: String,
    /// The step judged.
    pub step: u32,
    /// Its weight, percent.
    pub weight: f64,
    /// `pass`, `fail` or `inconclusive`.
    pub verdict: String,
    /// Why, in words.
    pub reason: String,
    /// The versions compared: stable, canary.
    pub versions: (String, String),
    /// The judge's record: both versions' estimates with anytime-valid intervals, e-values and thresholds,
    /// counts, the window and exemplar trace ids.
    pub record: gantry_judge::Record,
}

/// One thing that happened to a deployment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// Its sequence number, increasing over all deployments.
    pub seq: u64,
    /// The deployment.
    pub deployment: u64,
    /// When, RFC 3339 with milliseconds.
    pub time: String,
    /// When, ms since the Unix epoch.
    pub time_ms: u64,
    /// `started`, `step`, `weight`, `verdict`, `paused`, `resumed`, `promoted`, `rollback`, `finished`, ...
    pub kind: String,
    /// In words.
    pub message: String,
    /// Structured detail (a decision, for `verdict`).
    pub detail: Option<serde_json::Value>,
}

/// `GET /api/v1/deployments/{id}/events`: the deployment now and its events after `after`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventPage {
    /// The deployment.
    pub deployment: Deployment,
    /// Its events after the caller's `after`, oldest first.
    pub events: Vec<Event>,
}

/// `GET /api/v1/deployments`: a service's (or every) deployment in a time range, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentList {
    /// The deployments.
    pub deployments: Vec<Deployment>,
    /// Deploy markers for charts: each deployment's events, oldest first.
    pub markers: Vec<Event>,
}
