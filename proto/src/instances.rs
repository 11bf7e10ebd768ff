//! What the plane and the node agents exchange about instances. **Agents pull; the plane never dials in**: an
//! agent long-polls `GET /api/v1/nodes/{agent_id}/assignments` for what its node should run (and where every
//! routed service's healthy instances are), and posts what does run to `POST /api/v1/nodes/{agent_id}/instances`.
//! Both need a `node` (or `admin`) token, and the node must be the token's own.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::platform::{HealthCheck, ProcessSpec};

/// Query string of `GET /api/v1/nodes/{agent_id}/assignments`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AssignmentsQuery {
    /// The `generation` of the last answer the agent has; the plane answers at once when its own differs, and
    /// otherwise waits for a change up to `wait_ms`.
    pub generation: Option<u64>,
    /// How long to wait for a change, milliseconds (at most 60 000; default 0: answer at once).
    pub wait_ms: Option<u64>,
}

/// What a node should run, and where the routed services' instances are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignments {
    /// Changes whenever anything in this answer may have changed (and at every plane start).
    pub generation: u64,
    /// The instances this node should run, by id.
    pub instances: Vec<Assignment>,
    /// Every service with a routed port, with its ready instances on all nodes (for the node's routers).
    pub routes: Vec<ServiceRoute>,
}

/// One instance a node should run.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// `<service>-<slot>-r<revision>`: unique, and stable for the life of the instance.
    pub instance_id: String,
    /// The service.
    pub service: String,
    /// The slot it fills, 0-based.
    pub slot: u32,
    /// The service revision it runs.
    pub revision: u64,
    /// The revision's version label.
    pub version: String,
    /// What to run, with secret references resolved (so: never logged, never shown).
    pub process: ProcessSpec,
    /// Its health check.
    pub health: Option<HealthCheck>,
    /// SIGTERM to SIGKILL, milliseconds.
    pub kill_timeout_ms: u64,
}

impl std::fmt::Debug for Assignment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assignment")
            .field("instance_id", &self.instance_id)
            .field("revision", &self.revision)
            .field("version", &self.version)
            .field("command", &self.process.command)
            .field(
                "env",
                &format_args!("<{} variables, redacted>", self.process.env.len()),
            )
            .finish_non_exhaustive()
    }
}

/// A routed service and where its ready instances are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRoute {
    /// The service.
    pub service: String,
    /// Its routed port on every node.
    pub port: u16,
    /// Its ready (healthy) instances, on any node.
    pub endpoints: Vec<Endpoint>,
    /// Share of requests per version, percent (empty: spread over every endpoint alike).
    pub weights: BTreeMap<String, f64>,
    /// Stickiness, when the service asks for it.
    #[serde(default)]
    pub sticky: Option<crate::platform::Sticky>,
    /// Traffic mirroring, while a blue-green rollout judges its new version.
    #[serde(default)]
    pub mirror: Option<Mirror>,
}

/// Traffic mirroring (shadowing): the routers copy a share of the safe requests (`GET`, `HEAD`, `OPTIONS` without
/// a body: RFC 9110, section 9.2.1) to an instance of `version`, drop its answer, and record both answers in one
/// span for the canary judge. A copy never delays the live answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mirror {
    /// The version the copies go to.
    pub version: String,
    /// The share of safe requests copied, percent in (0, 100].
    pub percent: f64,
}

/// One ready instance of a routed service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The instance.
    pub instance_id: String,
    /// Its version.
    pub version: String,
    /// `host:port` where it listens.
    pub address: String,
}

/// `POST /api/v1/nodes/{agent_id}/instances`: every instance the agent runs or ran for its current assignments, as
/// a whole (what is missing is gone).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceReport {
    /// The instances.
    pub instances: Vec<InstanceState>,
}

/// What one instance is doing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceState {
    /// The instance id of its assignment.
    pub instance_id: String,
    /// The phase.
    pub phase: Phase,
    /// Its process id, while it runs.
    pub pid: Option<u32>,
    /// `host:port` it was told to listen on (`PORT`).
    pub address: Option<String>,
    /// Restarts after crashes since it was assigned.
    pub restarts: u32,
    /// How its last process ended, when one did.
    pub last_exit: Option<Exit>,
    /// Why it is in this phase, in words (a failed check, a start error, a back-off).
    pub reason: String,
    /// Its last output lines when it crashed (stdout and stderr, oldest first).
    pub last_lines: Vec<String>,
    /// When it entered this phase, RFC 3339.
    pub since: String,
    /// How long it had been in this phase when the report was sent, milliseconds, by the agent's own clock (so
    /// that the plane can place the phase's start on its clock whatever the skew between the two).
    #[serde(default)]
    pub phase_age_ms: Option<u64>,
}

/// An instance's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Started, not yet healthy (or in its start period).
    Starting,
    /// Running and passing its health check (or running, without one).
    Healthy,
    /// Running and failing its health check.
    Unhealthy,
    /// Crashed repeatedly: waiting out a back-off before the next start.
    CrashLooping,
    /// Being stopped (SIGTERM sent; drained).
    Stopping,
    /// Not running.
    Stopped,
}

impl Phase {
    /// The phase's name as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Healthy => "healthy",
            Phase::Unhealthy => "unhealthy",
            Phase::CrashLooping => "crash_looping",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// Its exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that killed it, when one did.
    pub signal: Option<i32>,
    /// When, RFC 3339.
    pub at: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit code {code}"),
            (None, Some(signal)) => write!(f, "killed by signal {signal}"),
            (None, None) => f.write_str("ended (how is unknown: the agent restarted meanwhile)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assignment_never_shows_its_environment() {
        let assignment = Assignment {
            instance_id: "api-0-r1".into(),
            service: "api".into(),
            slot: 0,
            revision: 1,
            version: "1".into(),
            process: ProcessSpec {
                command: "x".into(),
                args: vec![],
                env: BTreeMap::from([("DB_PASSWORD".into(), "hunter2".into())]),
                working_dir: None,
            },
            health: None,
            kill_timeout_ms: 1000,
        };
        assert!(!format!("{assignment:?}").contains("hunter2"));
    }
}
