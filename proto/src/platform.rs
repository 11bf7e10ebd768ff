//! The platform's services as Gantry stores and ships them: the validated form of one service of a platform spec
//! (`gantry apply platform.yaml`), its immutable revisions, the plan an apply makes, secrets' metadata and the audit
//! log. The YAML the user writes is parsed and checked by the plane; what crosses the wire is this canonical form,
//! with every duration in milliseconds, memory in bytes and CPU in millicores.
//!
//! Secret values never appear here: an environment value holds references such as `${secret:db-password}`, resolved
//! only when an instance is started, so every place that shows a spec, a revision or a diff shows the reference.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One service of the platform, validated. Stored as JSON in each revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// The service's name: 1-63 lowercase letters, digits and `-`, starting with a letter (an RFC 1123 label).
    pub name: String,
    /// The version label instances carry (`service.version`, `GANTRY_VERSION`); when the spec gives none, the
    /// plane uses `r<revision>`.
    pub version: Option<String>,
    /// How an instance is run.
    pub runtime: RuntimeSpec,
    /// How many instances should run.
    pub replicas: u32,
    /// What one instance needs of a node, used for placement.
    pub resources: Resources,
    /// The routed port: the service's stable address on every node (on loopback by default); `None` for a service
    /// nothing calls.
    pub port: Option<u16>,
    /// Services started before this one (their instances healthy first).
    pub depends_on: Vec<String>,
    /// How an instance's health is checked; `None`: healthy once running.
    pub health: Option<HealthCheck>,
    /// Node labels an instance's node must carry, all of them (`label: value`).
    pub constraints: BTreeMap<String, String>,
    /// How long a stopping instance has between SIGTERM and SIGKILL, milliseconds.
    pub kill_timeout_ms: u64,
    /// How a new revision replaces the running one.
    pub rollout: RolloutPolicy,
    /// Requests with the same value of this header or cookie go to the same instance while it is ready.
    #[serde(default)]
    pub sticky: Option<Sticky>,
}

/// What keeps a caller on one instance: the hash of a header's or a cookie's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sticky {
    /// A request header, e.g. `x-session-id`.
    Header(String),
    /// A cookie, e.g. `session`.
    Cookie(String),
}

/// How an instance is run: one runtime per service. Docker and Kubernetes come later behind the same trait.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeSpec {
    /// A process on the node, started by the agent in its own process group.
    Process(ProcessSpec),
}

/// The `process` runtime: a command on the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// The program: a path, or a name looked up in the agent's `PATH`.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its environment, on top of the variables Gantry sets (`PORT`, `GANTRY_*`, `OTEL_*`). Values may hold
    /// secret references, `${secret:NAME}`.
    pub env: BTreeMap<String, String>,
    /// The working directory; `None`: a fresh directory per instance in the agent's data directory. A relative
    /// path is relative to that directory.
    pub working_dir: Option<String>,
}

/// What one instance needs of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU, in millicores (1000 = one core).
    pub cpu_millis: u32,
    /// Memory, in bytes.
    pub memory_bytes: u64,
}

/// A health check of one instance, with Docker's and Kubernetes' probe semantics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// What is checked.
    pub probe: Probe,
    /// Time between checks, milliseconds.
    pub interval_ms: u64,
    /// How long one check may take before it counts as failed, milliseconds.
    pub timeout_ms: u64,
    /// Consecutive successes that make an instance healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures that make it unhealthy.
    pub unhealthy_threshold: u32,
    /// Failures in this first period after a start do not count, milliseconds.
    pub start_period_ms: u64,
}

/// What a health check does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    /// `GET http://127.0.0.1:$PORT{path}` answers 2xx or 3xx.
    Http {
        /// The request path, starting with `/`.
        path: String,
    },
    /// A TCP connection to the instance's port is accepted.
    Tcp,
    /// A command exits 0 (run in the instance's working directory with its environment).
    Command {
        /// The program.
        command: String,
        /// Its arguments.
        args: Vec<String>,
    },
}

/// How a new revision replaces the running one. Parsed and validated with the spec; acted on by rollouts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutPolicy {
    /// The strategy.
    pub strategy: Strategy,
    /// Instances above `replicas` that may run during a rollout (Kubernetes' `maxSurge`; a percentage of
    /// `replicas` rounds up).
    pub max_surge: IntOrPercent,
    /// Instances below `replicas` that may be unavailable during a rollout (Kubernetes' `maxUnavailable`; a
    /// percentage rounds down). Never 0 together with `max_surge`.
    pub max_unavailable: IntOrPercent,
    /// How long a new instance must stay healthy before it counts as available, milliseconds.
    pub min_healthy_time_ms: u64,
    /// A rollout that has not completed in this long fails and reverts, milliseconds.
    pub progress_deadline_ms: u64,
    /// The canary's traffic steps, in order (canary only).
    pub steps: Vec<CanaryStep>,
    /// How long blue-green keeps the old version after the switch, for an instant switch back, milliseconds.
    pub scale_down_delay_ms: u64,
    /// How blue-green judges the new version before the switch.
    #[serde(default)]
    pub preview: Preview,
    /// What the canary judge compares, and how much worse the canary may be.
    pub judge: JudgePolicy,
}

/// A rollout strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Replace instances a few at a time, new first.
    Rolling,
    /// Shift traffic to the new version in weighted steps, judged against the stable one.
    Canary,
    /// Start the new version at full size beside the old, judge it on preview traffic, switch at once.
    BlueGreen,
}

/// A count of instances, or a percentage of the replicas. In JSON, as in Kubernetes' `IntOrString`: a number for a
/// count, a string such as `"25%"` for a percentage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum IntOrPercent {
    /// A number of instances.
    Count(u32),
    /// A percentage of `replicas`, in [0, 100].
    Percent(f64),
}

impl IntOrPercent {
    /// The number of instances this means for `replicas`: a percentage rounds up when `round_up` (surge) and down
    /// otherwise (unavailable), as Kubernetes' `intstr.GetScaledValueFromIntOrPercent` does.
    pub fn resolve(self, replicas: u32, round_up: bool) -> u32 {
        match self {
            IntOrPercent::Count(count) => count,
            IntOrPercent::Percent(percent) => {
                let exact = f64::from(replicas) * percent / 100.0;
                let rounded = if round_up {
                    exact.ceil()
                } else {
                    exact.floor()
                };
                rounded as u32
            }
        }
    }
}

impl Serialize for IntOrPercent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            IntOrPercent::Count(count) => serializer.serialize_u32(*count),
            IntOrPercent::Percent(_) => serializer.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrPercent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Count(u32),
            Text(String),
        }
        match Form::deserialize(deserializer)? {
            Form::Count(count) => Ok(IntOrPercent::Count(count)),
            Form::Text(text) => text
                .strip_suffix('%')
                .and_then(|number| number.parse().ok())
                .map(IntOrPercent::Percent)
                .ok_or_else(|| {
                    serde::de::Error::custom(format!("`{text}` is not a count or a percentage"))
                }),
        }
    }
}

impl std::fmt::Display for IntOrPercent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IntOrPercent::Count(count) => write!(f, "{count}"),
            IntOrPercent::Percent(percent) => write!(f, "{percent}%"),
        }
    }
}

/// One step of a canary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryStep {
    /// The canary's share of requests, percent in (0, 100].
    pub weight_percent: f64,
    /// Requests the canary must have served at this weight before the step may complete.
    pub min_requests: u64,
    /// Time at this weight before the step may complete, milliseconds.
    pub min_duration_ms: u64,
    /// What happens when the step's exposure is reached.
    pub pause: Pause,
}

/// Blue-green's preview: the new version, at full size and taking no live traffic, is judged on copies of the
/// live safe requests (mirrored by the routers, answers dropped) against the live answers to the same requests;
/// it also answers requests that ask for it with `x-gantry-version`. Argo Rollouts' pre-promotion analysis, with
/// the canary judge instead of queries.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Preview {
    /// The share of safe requests (`GET`, `HEAD`, `OPTIONS`) copied to the new version, percent in [0, 100]; 0
    /// judges nothing: the switch comes once the new version is healthy.
    pub mirror_percent: f64,
    /// Mirrored requests the judge must see before the switch.
    pub min_requests: u64,
    /// Time judged before the switch, milliseconds.
    pub min_duration_ms: u64,
    /// What happens once the judge passes the new version.
    pub pause: Pause,
}

impl Default for Preview {
    fn default() -> Preview {
        Preview {
            mirror_percent: 100.0,
            min_requests: 100,
            min_duration_ms: 30_000,
            pause: Pause::None,
        }
    }
}

/// A canary step's pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pause {
    /// Go on at once.
    None,
    /// Wait this long, milliseconds.
    For(u64),
    /// Wait for `gantry promote`.
    UntilPromoted,
}

/// What the canary judge compares. Every threshold is optional: without one, the judge's statistical test alone
/// decides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgePolicy {
    /// The largest allowed increase of the error ratio, absolute (0.01 = one percentage point).
    pub max_error_ratio_increase: Option<f64>,
    /// The largest allowed relative increase of latency, percent (10 = 10% slower).
    pub max_latency_increase_percent: Option<f64>,
    /// Also judge `severity >= error` log records per request.
    pub log_errors: bool,
}

/// One immutable revision of a service: its spec as applied, who applied it, when, and what changed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revision {
    /// The service.
    pub service: String,
    /// Its number, 1 for the first; never reused.
    pub revision: u64,
    /// The revision whose instance template (the spec but `replicas` and `rollout`) it runs: itself when the
    /// template changed, the one before's otherwise (a change of `replicas` or of the rollout policy alone starts
    /// no new instances, as in Kubernetes).
    pub template_revision: u64,
    /// The version label of this revision's instances.
    pub version: String,
    /// The name of the token that applied it.
    pub author: String,
    /// When, RFC 3339.
    pub created: String,
    /// The file it came from, as the client named it.
    pub source: String,
    /// What changed against the revision before (empty for the first): one line per field.
    pub diff: Vec<FieldChange>,
    /// The spec.
    pub spec: ServiceSpec,
}

/// One changed field between two revisions of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    /// The field's path, e.g. `runtime.process.env.ERROR_RATE`.
    pub field: String,
    /// The value before (JSON), `None` when added.
    pub before: Option<serde_json::Value>,
    /// The value after (JSON), `None` when removed.
    pub after: Option<serde_json::Value>,
}

impl std::fmt::Display for FieldChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.before, &self.after) {
            (None, Some(after)) => write!(f, "+ {}: {after}", self.field),
            (Some(before), None) => write!(f, "- {}: {before}", self.field),
            (Some(before), Some(after)) => write!(f, "~ {}: {before} => {after}", self.field),
            (None, None) => write!(f, "  {}", self.field),
        }
    }
}

/// `POST /api/v1/apply`: a platform spec to apply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyRequest {
    /// The file's name as the user knows it, used in errors and in the revisions' `source`.
    pub file: String,
    /// The YAML text.
    pub content: String,
    /// Plan only: change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Apply even a service's template that was rolled back before.
    #[serde(default)]
    pub force: bool,
}

/// What an apply did (or, for a dry run, would do) to each service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyResponse {
    /// Whether this was a plan only.
    pub dry_run: bool,
    /// One entry per service of the file, and per known service the file does not name, by name.
    pub services: Vec<ServicePlan>,
}

/// What an apply does to one service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServicePlan {
    /// The service.
    pub service: String,
    /// What happens.
    pub change: Change,
    /// The revision before, when there was one.
    pub previous_revision: Option<u64>,
    /// The revision after: new for `create` and `update`, the current one otherwise.
    pub revision: Option<u64>,
    /// The changed fields (`update`), or every field (`create`).
    pub diff: Vec<FieldChange>,
}

/// What an apply does to one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// A new service: revision 1.
    Create,
    /// A changed spec: a new revision.
    Update,
    /// Same spec: no new revision.
    Unchanged,
    /// Known to the plane but not in this file: kept as it is.
    NotInFile,
}

/// A service the plane runs, as `GET /api/v1/services` lists it beside the RED rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployedService {
    /// The service.
    pub service: String,
    /// The current revision.
    pub revision: u64,
    /// The revision whose instance template runs (see [`Revision::template_revision`]); instance ids carry it.
    pub template_revision: u64,
    /// Its version label.
    pub version: String,
    /// Desired instances (the spec's, or as `gantry scale` set them).
    pub replicas: u32,
    /// Stopped with `gantry stop`: no instance runs until `gantry start`.
    pub stopped: bool,
    /// The routed port.
    pub port: Option<u16>,
    /// When the current revision was applied, RFC 3339.
    pub updated: String,
}

/// `GET /api/v1/services/{name}`: a service's current revision and where each of its instances should run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// The service, its revision, version and replicas.
    pub service: DeployedService,
    /// One entry per slot, by index.
    pub instances: Vec<InstanceStatus>,
}

/// One slot of a service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// The instance id, `<service>/<slot>`.
    pub instance: String,
    /// The slot, 0-based.
    pub slot: u32,
    /// The node's agent id, when placed.
    pub node: Option<String>,
    /// The node's host name, when placed on a known node.
    pub hostname: Option<String>,
    /// The node's status, when placed on a known node.
    pub node_status: Option<crate::NodeStatus>,
    /// `placed`, or `unplaced` with `reason`.
    pub state: String,
    /// The id of the instance that fills the slot at the current revision.
    pub instance_id: String,
    /// The instance being started to replace it (`gantry restart`, a drain): its id and node.
    pub replacement: Option<(String, String)>,
    /// What the node's agent last reported of it (`None`: nothing yet).
    pub actual: Option<crate::instances::InstanceState>,
    /// Why no node takes it (empty when placed).
    pub reason: String,
    /// When its placement last changed, RFC 3339.
    pub since: String,
}

/// `POST /api/v1/services/{name}/scale`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    /// Desired instances, 0 to 1000.
    pub replicas: u32,
}

/// A secret's metadata (`GET /api/v1/secrets`); the value is never returned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretInfo {
    /// The name, as referenced by `${secret:NAME}`.
    pub name: String,
    /// When it was last set, RFC 3339.
    pub updated: String,
    /// The token name that last set it.
    pub updated_by: String,
}

/// `PUT /api/v1/secrets/{name}`.
#[derive(Clone, Serialize, Deserialize)]
pub struct SetSecretRequest {
    /// The value.
    pub value: String,
}

impl std::fmt::Debug for SetSecretRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetSecretRequest")
            .field("value", &"<redacted>")
            .finish()
    }
}

/// One entry of the audit log (`GET /api/v1/audit`): every change made through the API, refused ones included.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Increasing id.
    pub id: u64,
    /// When, RFC 3339 with milliseconds.
    pub time: String,
    /// The token's name.
    pub actor: String,
    /// The token's role.
    pub role: String,
    /// What was done: `apply`, `secret.set`, `secret.delete`, `token.create`, `token.revoke`.
    pub action: String,
    /// What it was done to: a file, a service, a secret or token name.
    pub target: String,
    /// `ok`, or `refused: <why>` (the caller's fault), or `failed: <why>`.
    pub outcome: String,
    /// What changed, in words (e.g. `gateway r3, accounts r1`).
    pub detail: String,
}

/// The answer of `GET /api/v1/audit`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditResponse {
    /// Newest first.
    pub entries: Vec<AuditEntry>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_as_kubernetes_does() {
        let check = |value: IntOrPercent, replicas, up, expected| {
            assert_eq!(
                value.resolve(replicas, up),
                expected,
                "{value} of {replicas}"
            );
        };
        check(IntOrPercent::Percent(25.0), 1, true, 1);
        check(IntOrPercent::Percent(25.0), 1, false, 0);
        check(IntOrPercent::Percent(25.0), 10, true, 3);
        check(IntOrPercent::Percent(25.0), 10, false, 2);
        check(IntOrPercent::Count(2), 10, true, 2);
        check(IntOrPercent::Percent(100.0), 4, false, 4);
    }

    #[test]
    fn counts_and_percentages_in_json() {
        for (value, json) in [
            (IntOrPercent::Count(2), "2"),
            (IntOrPercent::Percent(25.0), "\"25%\""),
            (IntOrPercent::Percent(0.5), "\"0.5%\""),
        ] {
            assert_eq!(serde_json::to_string(&value).unwrap(), json);
            assert_eq!(serde_json::from_str::<IntOrPercent>(json).unwrap(), value);
        }
    }

    #[test]
    fn a_secret_request_hides_its_value() {
        let request = SetSecretRequest {
            value: "hunter2".into(),
        };
        assert!(!format!("{request:?}").contains("hunter2"));
    }
}
