//! The node registry: every agent that heartbeats, keyed by agent id, with its facts, shipping figures and status.
//!
//! A heartbeat inserts or refreshes a node in memory. A node is written to the state database (`state::nodes`) when
//! it registers or its facts or owner change, and every node once more when the plane stops; not on every heartbeat,
//! so `last_seen` and the shipping figures stored are those of the last write. **Writes follow what changed**: only
//! the nodes that changed are written.
//!
//! Status is computed when read: a node is **down when more than `missed × interval_ms` passed since its last
//! heartbeat**, `interval_ms` being the one it announced. Nodes loaded at start are down until they heartbeat again:
//! the plane has not heard from them, and the saved `last_seen` is only a lower bound. A once-a-second sweep
//! ([`NodeRegistry::watch`]) logs each up→down transition once. **The registry knows nothing about HTTP.**

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use gantry_proto::{NodeFacts, NodeHeartbeat, NodeInfo, NodeShipping, NodeStatus, NodesResponse};

use crate::state::StateDb;
use crate::state::nodes::StoredNode;

/// Most nodes a plane tracks; a heartbeat from a new node beyond it is refused.
pub const MAX_NODES: usize = 100_000;

/// Accepted announced heartbeat intervals, milliseconds.
pub const INTERVAL_MS: std::ops::RangeInclusive<u64> = 100..=600_000;

/// How often [`NodeRegistry::watch`] looks for nodes that went down.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A registry problem.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A heartbeat field is out of bounds.
    #[error("invalid heartbeat: `{field}` {message}")]
    Invalid {
        /// The field's path in the heartbeat, e.g. `facts.agent_id`.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The agent id belongs to another, still existing token.
    #[error(
        "agent id `{agent_id}` is registered by another token: only that token or an admin token may heartbeat for it (revoke the old token to move the node to a new one)"
    )]
    Owned {
        /// The agent id.
        agent_id: String,
    },
    /// The registry holds [`MAX_NODES`] nodes and this heartbeat is from a new one.
    #[error(
        "the plane already tracks {MAX_NODES} nodes, its limit: this node is not registered; stop the plane and delete the nodes that are gone from the `nodes` table of DATA_DIR/state.db"
    )]
    Full,
    /// The sending token registered as many nodes as one token may.
    #[error(
        "this token already registered {limit} nodes, the most one token may (max_nodes_per_token): give other nodes their own token, or raise the limit"
    )]
    TokenFull {
        /// The limit.
        limit: usize,
    },
    /// The node heartbeats faster than its announced interval allows.
    #[error(
        "node `{agent_id}` heartbeats faster than once per {min_spacing_ms} ms (a quarter of its announced interval, at most 1 s, after a burst of 10): slow down"
    )]
    TooFrequent {
        /// The agent id.
        agent_id: String,
        /// The shortest spacing accepted, ms.
        min_spacing_ms: u64,
    },
    /// Reading or writing the state database failed.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

/// Default of the most nodes one (non-admin) token may register.
pub const DEFAULT_MAX_NODES_PER_TOKEN: usize = 10_000;
/// Most characters in a node's labels, keys and values together.
pub const MAX_LABEL_CHARS_TOTAL: usize = 16 << 10;

/// Heartbeats a node may send in a burst before the spacing below applies (a token bucket: one credit per
/// heartbeat, refilled at one per spacing).
pub const HEARTBEAT_BURST: f64 = 10.0;

/// The spacing the bucket refills at, for a node announcing `interval_ms`: a quarter of the interval, at most 1 s
/// and at least 25 ms, so that an agent's own retries never trip it and a flood is refused.
pub fn min_heartbeat_spacing(interval_ms: u64) -> Duration {
    Duration::from_millis((interval_ms / 4).clamp(25, 1000))
}

/// A node in memory.
#[derive(Debug, Clone)]
struct Node {
    /// Shared so that a listing or a save copies a pointer, not the facts, under the lock.
    facts: Arc<NodeFacts>,
    shipping: NodeShipping,
    interval_ms: u64,
    registered: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    /// When this plane process last heard from the node; `None` for a node loaded from disk and not heard since.
    heard: Option<Instant>,
    /// Whether the sweep logged it down since its last heartbeat.
    reported_down: bool,
    /// The token that registered the node; only it (or an admin token) may heartbeat for it while it exists.
    token_id: String,
    /// Heartbeats the node may still send at once (a token bucket, see [`HEARTBEAT_BURST`]).
    credit: f64,
    /// When `credit` was last computed.
    credit_at: Option<Instant>,
    /// Bumped by every change that must reach the database.
    changes: u64,
    /// The value of `changes` last written.
    saved: u64,
}

impl Node {
    fn info(&self, status: NodeStatus) -> NodeInfo {
        NodeInfo {
            status,
            last_seen: rfc3339(self.last_seen),
            registered: rfc3339(self.registered),
            facts: NodeFacts::clone(&self.facts),
            shipping: self.shipping.clone(),
            interval_ms: self.interval_ms,
        }
    }

    fn stored(&self) -> StoredNode {
        StoredNode {
            registered: rfc3339(self.registered),
            last_seen: rfc3339(self.last_seen),
            interval_ms: self.interval_ms,
            facts: NodeFacts::clone(&self.facts),
            shipping: self.shipping.clone(),
            token_id: self.token_id.clone(),
        }
    }
}

/// Who sends a heartbeat, for the ownership check: an agent id belongs to the token that registered it, so that
/// another `ingest` token (every app holds one) cannot overwrite a node's facts.
pub struct Sender<'a> {
    /// The sending token's id.
    pub token_id: &'a str,
    /// Admin tokens may heartbeat for any node.
    pub admin: bool,
    /// Whether a token id still exists: a node whose token was revoked may be claimed by the next token.
    pub token_exists: &'a dyn Fn(&str) -> bool,
}

#[derive(Debug, Default)]
struct Nodes {
    by_id: HashMap<String, Node>,
    /// Nodes with changes not yet written.
    unsaved: usize,
    /// Nodes registered per token id.
    per_token: HashMap<String, usize>,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heard {
    /// The node was not known before.
    pub registered: bool,
    /// The registry holds changes the database does not: call [`NodeRegistry::save_if_changed`] (off the async
    /// workers).
    pub unsaved: bool,
}

/// The nodes of one plane.
pub struct NodeRegistry {
    db: Arc<StateDb>,
    /// Heartbeats missed in a row before a node is down.
    missed: u32,
    /// The most nodes a non-admin token may register.
    max_per_token: usize,
    nodes: Mutex<Nodes>,
    /// Held while writing, so that saves are ordered and each writes a snapshot taken under it.
    writing: Mutex<()>,
}

impl std::fmt::Debug for NodeRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeRegistry")
            .field("db", &self.db.path())
            .field("missed", &self.missed)
            .finish_non_exhaustive()
    }
}

impl NodeRegistry {
    /// The registry of the nodes stored in `db`; a node is down after `missed` heartbeats. Blocking.
    ///
    /// # Errors
    /// The database failed.
    pub fn open(db: Arc<StateDb>, missed: u32) -> Result<Self, NodeError> {
        Self::open_with(db, missed, DEFAULT_MAX_NODES_PER_TOKEN)
    }

    /// Like [`NodeRegistry::open`], with the most nodes one non-admin token may register.
    ///
    /// # Errors
    /// The database failed.
    pub fn open_with(
        db: Arc<StateDb>,
        missed: u32,
        max_per_token: usize,
    ) -> Result<Self, NodeError> {
        let by_id = crate::state::nodes::load_all(&db)?
            .into_iter()
            .map(|stored| {
                let registered = parse_time(&stored.registered);
                let node = Node {
                    last_seen: parse_time(&stored.last_seen).max(registered),
                    registered,
                    facts: Arc::new(stored.facts),
                    shipping: stored.shipping,
                    interval_ms: stored.interval_ms,
                    heard: None,
                    reported_down: false,
                    token_id: stored.token_id,
                    credit: HEARTBEAT_BURST,
                    credit_at: None,
                    changes: 0,
                    saved: 0,
                };
                (node.facts.agent_id.clone(), node)
            })
            .collect::<HashMap<_, _>>();
        if !by_id.is_empty() {
            tracing::info!(
                nodes = by_id.len(),
                "node registry loaded; nodes are down until they heartbeat"
            );
        }
        let mut per_token: HashMap<String, usize> = HashMap::new();
        for node in by_id.values() {
            *per_token.entry(node.token_id.clone()).or_default() += 1;
        }
        Ok(Self {
            db,
            missed: missed.max(1),
            max_per_token: max_per_token.max(1),
            nodes: Mutex::new(Nodes {
                by_id,
                per_token,
                ..Nodes::default()
            }),
            writing: Mutex::new(()),
        })
    }

    /// Records a heartbeat from `sender`: registers the node (owned by the sender's token) or refreshes it.
    pub fn heartbeat(
        &self,
        heartbeat: NodeHeartbeat,
        sender: &Sender<'_>,
    ) -> Result<Heard, NodeError> {
        self.heartbeat_at(heartbeat, sender, Instant::now(), Utc::now())
    }

    fn heartbeat_at(
        &self,
        heartbeat: NodeHeartbeat,
        sender: &Sender<'_>,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Result<Heard, NodeError> {
        validate(&heartbeat)?;
        let NodeHeartbeat {
            facts,
            shipping,
            interval_ms,
        } = heartbeat;
        let mut guard = self.lock();
        let nodes = &mut *guard;
        let full = nodes.by_id.len() >= MAX_NODES;
        let token_full = !sender.admin
            && nodes.per_token.get(sender.token_id).copied().unwrap_or(0) >= self.max_per_token;
        let mut nodes_unsaved_delta = 0;
        let (registered, changed) = match nodes.by_id.entry(facts.agent_id.clone()) {
            std::collections::hash_map::Entry::Vacant(vacant) => {
                if full {
                    return Err(NodeError::Full);
                }
                if token_full {
                    return Err(NodeError::TokenFull {
                        limit: self.max_per_token,
                    });
                }
                *nodes
                    .per_token
                    .entry(sender.token_id.to_owned())
                    .or_default() += 1;
                tracing::info!(
                    agent_id = %facts.agent_id,
                    hostname = %facts.hostname,
                    agent_version = %facts.agent_version,
                    interval_ms,
                    "node registered"
                );
                vacant.insert(Node {
                    facts: Arc::new(facts),
                    shipping,
                    interval_ms,
                    registered: wall,
                    last_seen: wall,
                    heard: Some(now),
                    reported_down: false,
                    token_id: sender.token_id.to_owned(),
                    credit: HEARTBEAT_BURST - 1.0,
                    credit_at: Some(now),
                    changes: 1,
                    saved: 0,
                });
                (true, true)
            }
            std::collections::hash_map::Entry::Occupied(mut occupied) => {
                let node = occupied.get_mut();
                let mut claimed = false;
                if node.token_id != sender.token_id {
                    if !sender.admin
                        && !node.token_id.is_empty()
                        && (sender.token_exists)(&node.token_id)
                    {
                        return Err(NodeError::Owned {
                            agent_id: facts.agent_id,
                        });
                    }
                    if !sender.admin {
                        if token_full {
                            return Err(NodeError::TokenFull {
                                limit: self.max_per_token,
                            });
                        }
                        tracing::info!(
                            agent_id = %facts.agent_id,
                            "node claimed by a new token (its previous token is gone)"
                        );
                        if let Some(count) = nodes.per_token.get_mut(&node.token_id) {
                            *count = count.saturating_sub(1);
                        }
                        *nodes
                            .per_token
                            .entry(sender.token_id.to_owned())
                            .or_default() += 1;
                        node.token_id = sender.token_id.to_owned();
                        claimed = true;
                    }
                }
                // Rate: a bucket of HEARTBEAT_BURST credits refilled at one per spacing, so that an agent's own
                // retries pass and a flood is refused.
                let spacing = min_heartbeat_spacing(node.interval_ms.min(interval_ms));
                let refill = node.credit_at.map_or(HEARTBEAT_BURST, |at| {
                    now.saturating_duration_since(at).as_secs_f64() / spacing.as_secs_f64()
                });
                let credit = (node.credit + refill).min(HEARTBEAT_BURST);
                if credit < 1.0 {
                    node.credit = credit;
                    node.credit_at = Some(now);
                    return Err(NodeError::TooFrequent {
                        agent_id: facts.agent_id,
                        min_spacing_ms: spacing.as_millis() as u64,
                    });
                }
                node.credit = credit - 1.0;
                node.credit_at = Some(now);
                match node.heard {
                    None => tracing::debug!(
                        agent_id = %facts.agent_id,
                        hostname = %facts.hostname,
                        "node heard from since the plane started"
                    ),
                    Some(heard)
                        if node.reported_down
                            || status(Some(heard), node.interval_ms, self.missed, now)
                                == NodeStatus::Down =>
                    {
                        tracing::info!(
                            agent_id = %facts.agent_id,
                            hostname = %facts.hostname,
                            silent_ms = now.saturating_duration_since(heard).as_millis() as u64,
                            "node back up"
                        );
                    }
                    Some(_) => {}
                }
                let changed = *node.facts != facts || claimed;
                if *node.facts != facts {
                    node.facts = Arc::new(facts);
                }
                node.shipping = shipping;
                node.interval_ms = interval_ms;
                node.last_seen = wall.max(node.registered);
                node.heard = Some(now);
                node.reported_down = false;
                if changed {
                    if node.changes == node.saved {
                        // Clean until now: one more node to write.
                        nodes_unsaved_delta = 1;
                    }
                    node.changes += 1;
                }
                (false, changed)
            }
        };
        if registered {
            nodes.unsaved += 1;
        } else if changed {
            nodes.unsaved += nodes_unsaved_delta;
        }
        Ok(Heard {
            registered,
            unsaved: nodes.unsaved > 0,
        })
    }

    /// Every node, by host name then agent id.
    pub fn list(&self) -> NodesResponse {
        self.list_at(Instant::now())
    }

    fn list_at(&self, now: Instant) -> NodesResponse {
        // Copy under the lock (the facts are shared), build the answer outside it.
        let snapshot: Vec<(Node, NodeStatus)> = {
            let nodes = self.lock();
            nodes
                .by_id
                .values()
                .map(|node| (node.clone(), self.status_of(node, now)))
                .collect()
        };
        let mut nodes: Vec<NodeInfo> = snapshot
            .into_iter()
            .map(|(node, status)| node.info(status))
            .collect();
        nodes.sort_by(|a, b| {
            (&a.facts.hostname, &a.facts.agent_id).cmp(&(&b.facts.hostname, &b.facts.agent_id))
        });
        NodesResponse {
            nodes,
            drained: Vec::new(),
        }
    }

    /// The id of the token that registered each node, by agent id.
    pub fn owners(&self) -> HashMap<String, String> {
        self.lock()
            .by_id
            .iter()
            .map(|(id, node)| (id.clone(), node.token_id.clone()))
            .collect()
    }

    /// The id of the token that registered a node.
    pub fn owner(&self, agent_id: &str) -> Option<String> {
        self.lock()
            .by_id
            .get(agent_id)
            .map(|node| node.token_id.clone())
    }

    /// One node by agent id.
    pub fn get(&self, agent_id: &str) -> Option<NodeInfo> {
        self.get_at(agent_id, Instant::now())
    }

    fn get_at(&self, agent_id: &str, now: Instant) -> Option<NodeInfo> {
        let node = self.lock().by_id.get(agent_id)?.clone();
        let status = self.status_of(&node, now);
        Some(node.info(status))
    }

    /// Writes the nodes that changed since they were last written, in one transaction. Blocks on disk: not on an
    /// async worker.
    ///
    /// # Errors
    /// The database failed; the nodes stay marked and the next save writes them.
    pub fn save_if_changed(&self) -> Result<(), NodeError> {
        self.save_inner(false)
    }

    /// Writes every node with its current `last_seen` and shipping figures, changed or not (at shutdown).
    ///
    /// # Errors
    /// The database failed.
    pub fn save(&self) -> Result<(), NodeError> {
        self.save_inner(true)
    }

    fn save_inner(&self, all: bool) -> Result<(), NodeError> {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        // Taken after the write lock: a save that waited writes a state at least as new as the change that asked
        // for it, and one that finds nothing unsaved (another save wrote it meanwhile) has nothing to do.
        let snapshot: Vec<(u64, StoredNode)> = {
            let nodes = self.lock();
            if !all && nodes.unsaved == 0 {
                return Ok(());
            }
            nodes
                .by_id
                .values()
                .filter(|node| all || node.changes != node.saved)
                .map(|node| (node.changes, node.stored()))
                .collect()
        };
        let rows: Vec<StoredNode> = snapshot.iter().map(|(_, row)| row.clone()).collect();
        crate::state::nodes::upsert(&self.db, &rows)?;
        let mut nodes = self.lock();
        let mut cleaned = 0;
        for (changes, row) in snapshot {
            if let Some(node) = nodes.by_id.get_mut(&row.facts.agent_id) {
                let was_dirty = node.changes != node.saved;
                node.saved = node.saved.max(changes);
                if was_dirty && node.changes == node.saved {
                    cleaned += 1;
                }
            }
        }
        nodes.unsaved = nodes.unsaved.saturating_sub(cleaned);
        Ok(())
    }

    /// Logs each node that went down, once, checking every second until `stop` completes.
    pub async fn watch(self: Arc<Self>, stop: impl Future<Output = ()>) {
        let mut ticker = tokio::time::interval(SWEEP_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = ticker.tick() => {
                    for down in self.sweep_at(Instant::now()) {
                        tracing::warn!(
                            agent_id = %down.agent_id,
                            hostname = %down.hostname,
                            last_seen = %rfc3339(down.last_seen),
                            missed = self.missed,
                            "node down"
                        );
                    }
                }
            }
        }
    }

    /// The nodes that went down since the last sweep, marked so that they are reported once.
    fn sweep_at(&self, now: Instant) -> Vec<WentDown> {
        let mut nodes = self.lock();
        let mut down = Vec::new();
        for (agent_id, node) in &mut nodes.by_id {
            // A node loaded from disk was never up in this process: not a transition.
            if node.reported_down || node.heard.is_none() {
                continue;
            }
            if status(node.heard, node.interval_ms, self.missed, now) == NodeStatus::Down {
                node.reported_down = true;
                down.push(WentDown {
                    agent_id: agent_id.clone(),
                    hostname: node.facts.hostname.clone(),
                    last_seen: node.last_seen,
                });
            }
        }
        down
    }

    fn status_of(&self, node: &Node, now: Instant) -> NodeStatus {
        status(node.heard, node.interval_ms, self.missed, now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Nodes> {
        self.nodes.lock().expect("node registry lock poisoned")
    }
}

/// A node found down by a sweep.
struct WentDown {
    agent_id: String,
    hostname: String,
    last_seen: DateTime<Utc>,
}

/// Up while no more than `missed` announced intervals passed since the last heartbeat heard by this process.
fn status(heard: Option<Instant>, interval_ms: u64, missed: u32, now: Instant) -> NodeStatus {
    match heard {
        Some(at)
            if now.saturating_duration_since(at) <= Duration::from_millis(interval_ms) * missed =>
        {
            NodeStatus::Up
        }
        _ => NodeStatus::Down,
    }
}

/// Checks a heartbeat's bounds; the error names the field.
pub fn validate(heartbeat: &NodeHeartbeat) -> Result<(), NodeError> {
    let invalid = |field: &'static str, message: String| Err(NodeError::Invalid { field, message });
    let facts = &heartbeat.facts;
    let id = &facts.agent_id;
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return invalid(
            "facts.agent_id",
            "must be 1-64 characters of letters, digits and `-`".to_owned(),
        );
    }
    check_text("facts.hostname", &facts.hostname, 1, 255)?;
    check_text("facts.os", &facts.os, 0, 255)?;
    check_text("facts.agent_version", &facts.agent_version, 0, 64)?;
    if facts.labels.len() > gantry_proto::MAX_NODE_LABELS {
        return invalid(
            "facts.labels",
            format!(
                "has {} labels; at most {} are accepted",
                facts.labels.len(),
                gantry_proto::MAX_NODE_LABELS
            ),
        );
    }
    let label_chars: usize = facts
        .labels
        .iter()
        .map(|(k, v)| k.chars().count() + v.chars().count())
        .sum();
    if label_chars > MAX_LABEL_CHARS_TOTAL {
        return invalid(
            "facts.labels",
            format!(
                "hold {label_chars} characters in all; at most {MAX_LABEL_CHARS_TOTAL} are accepted"
            ),
        );
    }
    for (key, value) in &facts.labels {
        check_text(
            "facts.labels",
            key,
            1,
            gantry_proto::MAX_NODE_LABEL_KEY_CHARS,
        )?;
        check_text(
            "facts.labels",
            value,
            0,
            gantry_proto::MAX_NODE_LABEL_VALUE_CHARS,
        )?;
    }
    if facts.addresses.len() > 1000 {
        return invalid(
            "facts.addresses",
            format!(
                "has {} addresses; at most 1000 are accepted",
                facts.addresses.len()
            ),
        );
    }
    for address in &facts.addresses {
        check_text("facts.addresses", address, 1, 64)?;
    }
    if facts.runtimes.len() > 16 {
        return invalid(
            "facts.runtimes",
            format!(
                "has {} runtimes; at most 16 are accepted",
                facts.runtimes.len()
            ),
        );
    }
    for runtime in &facts.runtimes {
        check_text("facts.runtimes", runtime, 1, 64)?;
    }
    if !INTERVAL_MS.contains(&heartbeat.interval_ms) {
        return invalid(
            "interval_ms",
            format!(
                "is {}; it must be between {} and {} (10 minutes)",
                heartbeat.interval_ms,
                INTERVAL_MS.start(),
                INTERVAL_MS.end()
            ),
        );
    }
    Ok(())
}

fn check_text(field: &'static str, text: &str, min: usize, max: usize) -> Result<(), NodeError> {
    let length = text.chars().count();
    let message = if length < min {
        "must not be empty".to_owned()
    } else if length > max {
        format!("has a value of {length} characters; at most {max} are accepted")
    } else if text.chars().any(char::is_control) {
        "holds a control character".to_owned()
    } else {
        return Ok(());
    };
    Err(NodeError::Invalid { field, message })
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A saved time; one that does not parse (a hand edit) reads as the Unix epoch rather than losing the node.
fn parse_time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn always(_: &str) -> bool {
        true
    }

    /// The one ingest token of these tests.
    fn sender() -> Sender<'static> {
        Sender {
            token_id: "t1",
            admin: false,
            token_exists: &always,
        }
    }

    fn heartbeat(agent_id: &str, hostname: &str, interval_ms: u64) -> NodeHeartbeat {
        NodeHeartbeat {
            facts: NodeFacts {
                agent_id: agent_id.to_owned(),
                hostname: hostname.to_owned(),
                addresses: vec!["10.0.0.7".to_owned()],
                cpus: 8,
                memory_bytes: 16 << 30,
                os: "linux 6.1.0 (Debian GNU/Linux 12)".to_owned(),
                agent_version: "0.1.0".to_owned(),
                labels: BTreeMap::from([("zone".to_owned(), "eu-1".to_owned())]),
                runtimes: vec!["process".to_owned()],
            },
            shipping: NodeShipping {
                sent_records: 1200,
                sent_bytes: 48_000,
                records_per_sec: 40.0,
                ..NodeShipping::default()
            },
            interval_ms,
        }
    }

    fn registry(dir: &std::path::Path, missed: u32) -> NodeRegistry {
        NodeRegistry::open(Arc::new(StateDb::open(dir).unwrap()), missed).unwrap()
    }

    fn stored(dir: &std::path::Path) -> Vec<StoredNode> {
        crate::state::nodes::load_all(&StateDb::open(dir).unwrap()).unwrap()
    }

    /// Heartbeats one second apart, as an agent sends them (the registry refuses a node beating faster).
    fn clock() -> impl Fn(&NodeRegistry, NodeHeartbeat, &Sender<'_>) -> Result<Heard, NodeError> {
        let now = std::cell::Cell::new(Instant::now());
        move |nodes, heartbeat, sender| {
            now.set(now.get() + Duration::from_secs(1));
            nodes.heartbeat_at(heartbeat, sender, now.get(), Utc::now())
        }
    }

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn status_follows_missed_heartbeats() {
        let check = |heard_ms_ago: Option<u64>, interval_ms: u64, missed: u32, expected| {
            let now = Instant::now() + ms(10_000_000);
            let heard = heard_ms_ago.map(|ago| now - ms(ago));
            assert_eq!(
                status(heard, interval_ms, missed, now),
                expected,
                "heard {heard_ms_ago:?} ms ago, interval {interval_ms}, missed {missed}"
            );
        };
        check(Some(0), 1000, 3, NodeStatus::Up);
        check(Some(2999), 1000, 3, NodeStatus::Up);
        check(Some(3000), 1000, 3, NodeStatus::Up);
        check(Some(3001), 1000, 3, NodeStatus::Down);
        check(Some(100), 100, 1, NodeStatus::Up);
        check(Some(101), 100, 1, NodeStatus::Down);
        check(Some(59_000_000), 600_000, 100, NodeStatus::Up);
        check(Some(60_000_001), 600_000, 100, NodeStatus::Down);
        check(None, 1000, 3, NodeStatus::Down);
    }

    #[test]
    fn a_node_goes_down_after_missed_heartbeats_and_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = registry(dir.path(), 2);
        let t0 = Instant::now();
        let first = nodes
            .heartbeat_at(heartbeat("a1", "web-1", 200), &sender(), t0, Utc::now())
            .unwrap();
        assert!(first.registered && first.unsaved);
        let again = nodes
            .heartbeat_at(
                heartbeat("a1", "web-1", 200),
                &sender(),
                t0 + ms(200),
                Utc::now(),
            )
            .unwrap();
        assert!(!again.registered);

        let up = |at: Instant| nodes.get_at("a1", at).unwrap().status;
        assert_eq!(up(t0 + ms(600)), NodeStatus::Up);
        assert!(nodes.sweep_at(t0 + ms(600)).is_empty());
        assert_eq!(up(t0 + ms(601)), NodeStatus::Down);
        let down = nodes.sweep_at(t0 + ms(601));
        assert_eq!(down.len(), 1);
        assert_eq!(
            (down[0].agent_id.as_str(), down[0].hostname.as_str()),
            ("a1", "web-1")
        );
        assert!(
            nodes.sweep_at(t0 + ms(5000)).is_empty(),
            "a node is reported down once"
        );

        let back = nodes
            .heartbeat_at(
                heartbeat("a1", "web-1", 200),
                &sender(),
                t0 + ms(6000),
                Utc::now(),
            )
            .unwrap();
        assert!(!back.registered);
        assert_eq!(up(t0 + ms(6000)), NodeStatus::Up);
        assert_eq!(
            nodes.sweep_at(t0 + ms(6401)).len(),
            1,
            "down again after another silence"
        );
    }

    #[test]
    fn list_is_sorted_by_hostname_then_agent_id() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = registry(dir.path(), 3);
        for (id, host) in [
            ("c", "web-2"),
            ("b", "web-1"),
            ("a", "web-2"),
            ("d", "db-1"),
        ] {
            nodes
                .heartbeat(heartbeat(id, host, 1000), &sender())
                .unwrap();
        }
        let order: Vec<String> = nodes
            .list()
            .nodes
            .into_iter()
            .map(|node| node.facts.agent_id)
            .collect();
        assert_eq!(order, ["d", "b", "a", "c"]);
    }

    #[test]
    fn saves_on_registration_and_fact_changes_only() {
        let dir = tempfile::tempdir().unwrap();
        let beat = clock();
        let nodes = registry(dir.path(), 3);
        let heard = beat(&nodes, heartbeat("a1", "web-1", 1000), &sender()).unwrap();
        assert!(heard.unsaved);
        nodes.save_if_changed().unwrap();
        assert_eq!(stored(dir.path()).len(), 1);

        let mut busier = heartbeat("a1", "web-1", 1000);
        busier.shipping.sent_records = 99_999;
        assert!(
            !beat(&nodes, busier, &sender()).unwrap().unsaved,
            "new shipping figures alone are not saved"
        );

        let mut relabelled = heartbeat("a1", "web-1", 1000);
        relabelled.facts.labels.insert("rack".into(), "r7".into());
        assert!(beat(&nodes, relabelled.clone(), &sender()).unwrap().unsaved);
        nodes.save_if_changed().unwrap();
        assert!(!beat(&nodes, relabelled, &sender()).unwrap().unsaved);
        let saved = stored(dir.path());
        assert_eq!(saved[0].facts.labels["rack"], "r7");
        assert_eq!(
            saved[0].shipping.sent_records, 1200,
            "shipping figures alone were not written"
        );
    }

    #[test]
    fn a_reopened_registry_keeps_nodes_down_until_they_heartbeat() {
        let dir = tempfile::tempdir().unwrap();
        let before = registry(dir.path(), 3);
        before
            .heartbeat(heartbeat("a1", "web-1", 1000), &sender())
            .unwrap();
        before
            .heartbeat(heartbeat("b2", "web-2", 5000), &sender())
            .unwrap();
        before.save_if_changed().unwrap();
        let expected = before.list();

        let after = registry(dir.path(), 3);
        let listed = after.list();
        assert_eq!(listed.nodes.len(), 2);
        for (old, new) in expected.nodes.iter().zip(&listed.nodes) {
            assert_eq!(old.facts, new.facts);
            assert_eq!(old.shipping, new.shipping);
            assert_eq!(old.registered, new.registered);
            assert_eq!(old.last_seen, new.last_seen);
            assert_eq!(old.interval_ms, new.interval_ms);
            assert_eq!(new.status, NodeStatus::Down);
        }
        assert!(
            after.sweep_at(Instant::now() + ms(60_000)).is_empty(),
            "loaded nodes are not reported as going down"
        );

        let heard = after
            .heartbeat(heartbeat("a1", "web-1", 1000), &sender())
            .unwrap();
        assert!(!heard.registered, "a loaded node is known");
        let node = after.get("a1").unwrap();
        assert_eq!(node.status, NodeStatus::Up);
        assert_eq!(
            node.registered, expected.nodes[0].registered,
            "the registration time is kept"
        );
    }

    #[test]
    fn a_corrupt_legacy_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nodes.json"), "{\"nodes\": [").unwrap();
        let nodes = registry(dir.path(), 3);
        assert!(nodes.list().nodes.is_empty());
        assert!(dir.path().join("nodes.json.corrupt").exists());
    }

    #[test]
    fn a_legacy_file_is_imported_once() {
        let dir = tempfile::tempdir().unwrap();
        let node = heartbeat("a1", "web-1", 1000);
        let legacy = serde_json::json!({"nodes": [{
            "registered": "2026-11-25T10:00:00.000Z", "last_seen": "2026-11-25T11:00:00.000Z",
            "interval_ms": 1000, "facts": node.facts, "shipping": node.shipping, "token_id": "t1",
        }]});
        std::fs::write(dir.path().join("nodes.json"), legacy.to_string()).unwrap();
        let nodes = registry(dir.path(), 3);
        let listed = nodes.list();
        assert_eq!(listed.nodes.len(), 1);
        assert_eq!(listed.nodes[0].registered, "2026-11-25T10:00:00.000Z");
        assert!(dir.path().join("nodes.json.migrated").exists());
        drop(nodes);
        assert_eq!(registry(dir.path(), 3).list().nodes.len(), 1);
    }

    #[test]
    fn heartbeats_past_a_burst_faster_than_a_quarter_interval_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = registry(dir.path(), 3);
        let t0 = Instant::now();
        let beat = |at: Instant| {
            nodes.heartbeat_at(heartbeat("a1", "web-1", 1000), &sender(), at, Utc::now())
        };
        for i in 0..10 {
            beat(t0 + ms(i)).unwrap_or_else(|e| panic!("heartbeat {i} of the burst: {e}"));
        }
        assert!(matches!(
            beat(t0 + ms(20)),
            Err(NodeError::TooFrequent {
                min_spacing_ms: 250,
                ..
            })
        ));
        beat(t0 + ms(300)).unwrap();
        assert!(
            beat(t0 + ms(310)).is_err(),
            "one credit came back, and was spent"
        );
        assert_eq!(min_heartbeat_spacing(100), ms(25));
        assert_eq!(min_heartbeat_spacing(600_000), ms(1000));
    }

    #[test]
    fn a_token_registers_at_most_its_share_of_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let nodes =
            NodeRegistry::open_with(Arc::new(StateDb::open(dir.path()).unwrap()), 3, 2).unwrap();
        nodes
            .heartbeat(heartbeat("a1", "h", 1000), &sender())
            .unwrap();
        nodes
            .heartbeat(heartbeat("a2", "h", 1000), &sender())
            .unwrap();
        assert!(matches!(
            nodes.heartbeat(heartbeat("a3", "h", 1000), &sender()),
            Err(NodeError::TokenFull { limit: 2 })
        ));
        let admin = Sender {
            token_id: "root",
            admin: true,
            token_exists: &always,
        };
        nodes.heartbeat(heartbeat("a3", "h", 1000), &admin).unwrap();
        let other = Sender {
            token_id: "t2",
            admin: false,
            token_exists: &always,
        };
        nodes.heartbeat(heartbeat("a4", "h", 1000), &other).unwrap();
        let mut big = heartbeat("a5", "h", 1000);
        for i in 0..20 {
            big.facts.labels.insert(format!("k{i}"), "v".repeat(1000));
        }
        let error = nodes.heartbeat(big, &other).unwrap_err().to_string();
        assert!(error.contains("facts.labels"), "{error}");
    }

    #[test]
    fn the_registry_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = registry(dir.path(), 3);
        {
            let mut inner = nodes.lock();
            let template = Node {
                facts: Arc::new(heartbeat("x", "h", 1000).facts),
                shipping: NodeShipping::default(),
                interval_ms: 1000,
                registered: Utc::now(),
                last_seen: Utc::now(),
                heard: None,
                reported_down: false,
                token_id: "t1".to_owned(),
                credit: HEARTBEAT_BURST,
                credit_at: None,
                changes: 0,
                saved: 0,
            };
            for i in 0..MAX_NODES {
                inner.by_id.insert(format!("n{i}"), template.clone());
            }
        }
        assert!(matches!(
            nodes.heartbeat(heartbeat("newcomer", "h", 1000), &sender()),
            Err(NodeError::Full)
        ));
        assert!(
            nodes
                .heartbeat(heartbeat("n7", "h", 1000), &sender())
                .is_ok(),
            "known nodes still heartbeat"
        );
    }

    #[test]
    fn invalid_heartbeats_name_the_field() {
        let check = |change: &dyn Fn(&mut NodeHeartbeat), field: &str| {
            let mut bad = heartbeat("a1", "web-1", 1000);
            change(&mut bad);
            let error = validate(&bad).expect_err(field).to_string();
            assert!(error.contains(&format!("`{field}`")), "{error}");
        };
        validate(&heartbeat("a1", "web-1", 1000)).unwrap();
        check(&|h| h.facts.agent_id.clear(), "facts.agent_id");
        check(&|h| h.facts.agent_id = "a/b".into(), "facts.agent_id");
        check(&|h| h.facts.agent_id = "a b".into(), "facts.agent_id");
        check(&|h| h.facts.agent_id = "é".into(), "facts.agent_id");
        check(&|h| h.facts.agent_id = "a".repeat(65), "facts.agent_id");
        check(&|h| h.facts.hostname.clear(), "facts.hostname");
        check(&|h| h.facts.hostname = "h".repeat(256), "facts.hostname");
        check(&|h| h.facts.hostname = "web\n1".into(), "facts.hostname");
        check(&|h| h.facts.os = "o".repeat(256), "facts.os");
        check(
            &|h| h.facts.agent_version = "v".repeat(65),
            "facts.agent_version",
        );
        check(
            &|h| {
                h.facts.labels = (0..65).map(|i| (format!("k{i}"), String::new())).collect();
            },
            "facts.labels",
        );
        check(
            &|h| {
                h.facts.labels.insert(String::new(), "v".into());
            },
            "facts.labels",
        );
        check(
            &|h| {
                h.facts.labels.insert("k".into(), "v".repeat(1025));
            },
            "facts.labels",
        );
        check(
            &|h| h.facts.addresses = vec!["10.0.0.1".into(); 1001],
            "facts.addresses",
        );
        check(
            &|h| h.facts.addresses.push(String::new()),
            "facts.addresses",
        );
        check(
            &|h| h.facts.runtimes = vec!["process".into(); 17],
            "facts.runtimes",
        );
        check(&|h| h.interval_ms = 99, "interval_ms");
        check(&|h| h.interval_ms = 600_001, "interval_ms");

        let check_ok = |change: &dyn Fn(&mut NodeHeartbeat)| {
            let mut good = heartbeat("a1", "web-1", 1000);
            change(&mut good);
            validate(&good).unwrap();
        };
        check_ok(&|h| h.facts.agent_id = "A-9".repeat(21));
        check_ok(&|h| h.facts.hostname = "h".repeat(255));
        check_ok(&|h| h.facts.addresses = vec!["fe80::1%eth0".into(); 1000]);
        check_ok(&|h| h.facts.labels = (0..64).map(|i| (format!("k{i}"), "v".into())).collect());
        check_ok(&|h| h.interval_ms = 100);
        check_ok(&|h| h.interval_ms = 600_000);
    }

    #[test]
    fn an_agent_id_belongs_to_the_token_that_registered_it() {
        let tmp = tempfile::tempdir().unwrap();
        let beat = clock();
        let nodes = registry(tmp.path(), 3);
        beat(&nodes, heartbeat("a1", "web-1", 1000), &sender()).unwrap();
        let live = |id: &str| id == "t1";
        let other = Sender {
            token_id: "t2",
            admin: false,
            token_exists: &live,
        };
        let error = beat(&nodes, heartbeat("a1", "spoofed", 1000), &other).unwrap_err();
        assert!(matches!(error, NodeError::Owned { .. }), "{error}");
        assert_eq!(nodes.get("a1").unwrap().facts.hostname, "web-1");
        // An admin token may heartbeat for any node, without taking it over.
        let admin = Sender {
            token_id: "root",
            admin: true,
            token_exists: &live,
        };
        beat(&nodes, heartbeat("a1", "web-1", 1000), &admin).unwrap();
        assert!(beat(&nodes, heartbeat("a1", "x", 1000), &other).is_err());
        // Once t1 is revoked, the next token claims the node, and the claim is saved.
        let gone = |_: &str| false;
        let claimer = Sender {
            token_id: "t2",
            admin: false,
            token_exists: &gone,
        };
        let heard = beat(&nodes, heartbeat("a1", "web-1", 1000), &claimer).unwrap();
        assert!(heard.unsaved);
        nodes.save_if_changed().unwrap();
        let reopened = registry(tmp.path(), 3);
        let t2_only = |id: &str| id == "t2";
        let t1_again = Sender {
            token_id: "t1",
            admin: false,
            token_exists: &t2_only,
        };
        assert!(matches!(
            beat(&reopened, heartbeat("a1", "web-1", 1000), &t1_again),
            Err(NodeError::Owned { .. })
        ));
    }
}
