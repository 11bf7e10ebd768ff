//! Node registration and heartbeats (agent → plane) and the node listing (`GET /api/v1/nodes`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Path of the heartbeat route: agents `POST` a [`NodeHeartbeat`] there with an `ingest` token.
pub const HEARTBEAT_PATH: &str = "/api/v1/nodes/heartbeat";

/// Most labels a node may carry; the plane refuses heartbeats with more, the agent refuses such a config.
pub const MAX_NODE_LABELS: usize = 64;
/// Longest node label key, in characters.
pub const MAX_NODE_LABEL_KEY_CHARS: usize = 128;
/// Longest node label value, in characters.
pub const MAX_NODE_LABEL_VALUE_CHARS: usize = 1024;

/// What an agent knows about its machine; sent with every heartbeat (the first one registers the node).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeFacts {
    /// The agent's id; survives agent restarts (kept in the agent's data dir).
    pub agent_id: String,
    /// The machine's host name.
    pub hostname: String,
    /// Non-loopback IP addresses of the machine.
    pub addresses: Vec<String>,
    /// Logical CPUs.
    pub cpus: u32,
    /// Physical memory, bytes.
    pub memory_bytes: u64,
    /// Operating system, e.g. `linux 6.1.0 (Debian GNU/Linux 12)`.
    pub os: String,
    /// The agent's version.
    pub agent_version: String,
    /// Labels from the agent's config (`[labels]`), e.g. `zone = "eu-1"`.
    pub labels: BTreeMap<String, String>,
    /// Workload runtimes the node offers, e.g. `process`, `docker`.
    pub runtimes: Vec<String>,
}

/// The agent's shipping figures, as it counts them; sent with every heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeShipping {
    /// Records acknowledged by the plane since the agent started.
    pub sent_records: u64,
    /// Compressed bytes acknowledged since the agent started.
    pub sent_bytes: u64,
    /// Records acknowledged per second over the last heartbeat interval.
    pub records_per_sec: f64,
    /// Compressed bytes acknowledged per second over the last heartbeat interval.
    pub bytes_per_sec: f64,
    /// Bytes in the agent's disk buffer (shipped segments not yet removed included).
    pub buffer_bytes: u64,
    /// The buffer's size limit.
    pub buffer_max_bytes: u64,
    /// Age of the oldest record not yet acknowledged, seconds (0 when all is shipped).
    pub oldest_unshipped_secs: f64,
    /// Records dropped since the agent started, all reasons.
    pub dropped_records: u64,
}

/// Body of `POST /api/v1/nodes/heartbeat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeHeartbeat {
    /// Who the node is.
    pub facts: NodeFacts,
    /// How its shipping goes.
    pub shipping: NodeShipping,
    /// Milliseconds until the next heartbeat; the plane counts missed heartbeats with it.
    pub interval_ms: u64,
}

/// Answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// True when this heartbeat registered the node (first sight, or first since it was forgotten).
    pub registered: bool,
}

/// A node's status as the plane sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Heartbeats arrive.
    Up,
    /// The configured number of heartbeats in a row did not arrive.
    Down,
}

/// One entry of `GET /api/v1/nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Up or down.
    pub status: NodeStatus,
    /// Last heartbeat, RFC 3339.
    pub last_seen: String,
    /// First registration, RFC 3339.
    pub registered: String,
    /// The node's facts from its last heartbeat.
    pub facts: NodeFacts,
    /// Its shipping figures from its last heartbeat.
    pub shipping: NodeShipping,
    /// The heartbeat interval it announced, milliseconds.
    pub interval_ms: u64,
}

/// Body of `GET /api/v1/nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodesResponse {
    /// Every known node, by host name then agent id.
    pub nodes: Vec<NodeInfo>,
    /// The agent ids of the nodes being drained (`gantry nodes drain`): they take no new instances.
    #[serde(default)]
    pub drained: Vec<String>,
}
