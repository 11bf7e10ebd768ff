//! The placement loop: reads what should run (each service's current revision and replicas) and the nodes as the
//! registry sees them, asks the pure planner (`placement::place`) where each slot goes, and stores the answer
//! where it changed, in one transaction. It runs after every apply and every few seconds, so a node down for
//! longer than the grace period has its instances placed elsewhere within one round.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gantry_proto::platform::Resources;
use gantry_proto::{Access, NodeStatus, Role};
use gantry_support::CancellationToken;

use crate::instances::InstanceRegistry;
use crate::nodes::NodeRegistry;
use crate::placement::{self, NodeState, NodeView};
use crate::state::placements::{self, Changes};
use crate::state::tokens::TokenStore;
use crate::state::{StateDb, StateError, deployments, platform};

/// How often the loop plans when nothing asks it to.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// The placement loop's state.
#[derive(Debug)]
pub struct Scheduler {
    db: Arc<StateDb>,
    nodes: Arc<NodeRegistry>,
    tokens: TokenStore,
    instances: Arc<InstanceRegistry>,
    grace: Duration,
}

impl Scheduler {
    /// A scheduler over the state database and the node registry; a node down for longer than `grace` loses its
    /// instances. Each change it stores bumps the agents' assignments generation in `instances`.
    pub fn new(
        db: Arc<StateDb>,
        nodes: Arc<NodeRegistry>,
        instances: Arc<InstanceRegistry>,
        grace: Duration,
    ) -> Scheduler {
        Scheduler {
            tokens: TokenStore::new(db.clone()),
            db,
            nodes,
            instances,
            grace,
        }
    }

    /// The nodes as the planner sees them now. Only nodes registered with a `node` (or `admin`) token and offering
    /// the `process` runtime take instances: a node an `ingest` token registered ships telemetry only, since an
    /// instance's environment holds its secrets.
    pub fn node_views(&self) -> Vec<NodeView> {
        let now = chrono::Utc::now();
        let roles: HashMap<String, Role> = match self.tokens.list() {
            Ok(tokens) => tokens.into_iter().map(|t| (t.id, t.role)).collect(),
            Err(error) => {
                tracing::warn!(%error, "tokens unreadable: no node takes new instances this round");
                HashMap::new()
            }
        };
        let owners = self.nodes.owners();
        let may_run = |agent_id: &str| {
            owners
                .get(agent_id)
                .and_then(|token| roles.get(token))
                .is_some_and(|role| role.allows(Access::Node))
        };
        self.nodes
            .list()
            .nodes
            .into_iter()
            .filter(|node| node.facts.runtimes.iter().any(|r| r == "process"))
            .filter(|node| may_run(&node.facts.agent_id))
            .map(|node| {
                let silent_for = chrono::DateTime::parse_from_rfc3339(&node.last_seen)
                    .ok()
                    .and_then(|seen| (now - seen.with_timezone(&chrono::Utc)).to_std().ok())
                    .unwrap_or(Duration::MAX);
                let state = match node.status {
                    NodeStatus::Up => NodeState::Ready,
                    NodeStatus::Down if silent_for > self.grace => NodeState::Lost,
                    NodeStatus::Down => NodeState::Down,
                };
                NodeView {
                    id: node.facts.agent_id,
                    labels: node.facts.labels,
                    capacity: Resources {
                        cpu_millis: node.facts.cpus.saturating_mul(1000),
                        memory_bytes: node.facts.memory_bytes,
                    },
                    state,
                }
            })
            .collect()
    }

    /// One planning round. Blocking (a committed write when something changed).
    ///
    /// # Errors
    /// The state database failed; nothing changed.
    pub fn reconcile(&self) -> Result<Changes, StateError> {
        let mut nodes = self.node_views();
        let changes = self.db.write(|transaction| {
            let error = |e| self.db.error(e);
            // A drained node keeps what it runs until each replacement is healthy, and takes nothing new.
            let drained = placements::drained(transaction).map_err(error)?;
            for node in &mut nodes {
                if drained.contains(&node.id) && node.state == NodeState::Ready {
                    node.state = NodeState::Down;
                }
            }
            let demands = platform::demands(transaction).map_err(error)?;
            let current = placements::load(transaction, None)
                .map_err(error)?
                .into_iter()
                .filter_map(|(slot, stored)| stored.node.map(|node| (slot, node)))
                .collect();
            let plan = placement::place(&nodes, &demands, &current);
            let templates = deployments::slot_templates(transaction).map_err(error)?;
            let mut changes = placements::store(transaction, &plan, &templates).map_err(error)?;
            self.replace(transaction, &nodes, &demands, &drained, &mut changes)
                .map_err(error)?;
            Ok::<_, StateError>(changes)
        })?;
        for (slot, from, to) in &changes.moved {
            match (from, to) {
                (None, Some(to)) => tracing::info!(%slot, node = %to, "instance placed"),
                (Some(from), Some(to)) => tracing::info!(%slot, %from, %to, "instance moved"),
                (Some(from), None) => {
                    tracing::warn!(%slot, %from, "instance unplaced: no node can take it")
                }
                (None, None) => {}
            }
        }
        for slot in &changes.removed {
            tracing::info!(%slot, "instance no longer wanted");
        }
        for slot in &changes.replaced {
            tracing::info!(%slot, "instance replacement started or completed");
        }
        if changes.any() {
            self.instances.bump();
        }
        Ok(changes)
    }

    /// Restarts and drains: completes each replacement whose new instance is healthy, and starts new ones while the
    /// service's surge allows (without surge, its `max_unavailable`: the old instance stops first). A service with
    /// a rollout in progress is left to the rollout, which owns its replacements.
    fn replace(
        &self,
        transaction: &rusqlite::Transaction<'_>,
        nodes: &[NodeView],
        demands: &[placement::Demand],
        drained: &std::collections::BTreeSet<String>,
        changes: &mut Changes,
    ) -> rusqlite::Result<()> {
        let services = platform::current(transaction)?;
        let rolling_out = deployments::active_services(transaction)?;
        let slots = placements::load(transaction, None)?;
        let mut in_flight: HashMap<String, u32> = HashMap::new();
        for (slot, stored) in &slots {
            let Some(next) = &stored.next else { continue };
            let current_template = services.get(&slot.service).map(|s| s.template);
            if rolling_out.contains(&slot.service)
                || (next.template != stored.template && Some(next.template) != current_template)
            {
                continue;
            }
            let Some(id) = stored.next_instance_id(slot) else {
                continue;
            };
            let healthy = self
                .instances
                .state(&next.node, &id)
                .is_some_and(|state| state.phase == gantry_proto::instances::Phase::Healthy);
            if healthy {
                placements::complete_replacement(transaction, slot)?;
                changes.replaced.push(slot.clone());
            } else {
                *in_flight.entry(slot.service.clone()).or_default() += 1;
            }
        }
        // Where a drained node's slots go: the planner's answer with drained nodes lost.
        let without_drained: Vec<NodeView> = nodes
            .iter()
            .cloned()
            .map(|mut node| {
                if drained.contains(&node.id) {
                    node.state = NodeState::Lost;
                }
                node
            })
            .collect();
        let current = slots
            .iter()
            .filter_map(|(slot, stored)| stored.node.clone().map(|node| (slot.clone(), node)))
            .collect();
        let elsewhere = placement::place(&without_drained, demands, &current);
        for (slot, stored) in &slots {
            let (Some(node), None, Some(service)) =
                (&stored.node, &stored.next, services.get(&slot.service))
            else {
                continue;
            };
            if rolling_out.contains(&slot.service) {
                continue;
            }
            let restarting = stored.epoch < service.restart_epoch;
            let draining = drained.contains(node);
            // A slot left at another template than its service's with no rollout under way (one that ended
            // while the slot was away) is replaced like a restart.
            let stale = stored.template != service.template;
            if !restarting && !draining && !stale {
                continue;
            }
            let (batch, _) = service.replacement_batch();
            let busy = in_flight.entry(slot.service.clone()).or_default();
            if *busy >= batch {
                continue;
            }
            let target = if draining {
                match elsewhere.placements.get(slot) {
                    Some(target) if target != node => target.clone(),
                    _ => continue,
                }
            } else {
                node.clone()
            };
            let epoch = (stored.epoch + 1).max(service.restart_epoch);
            placements::begin_replacement(transaction, slot, &target, epoch, service.template)?;
            changes.replaced.push(slot.clone());
            *busy += 1;
        }
        Ok(())
    }

    /// Plans every [`INTERVAL`] until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let scheduler = self.clone();
            match tokio::task::spawn_blocking(move || scheduler.reconcile()).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::warn!(%error, "placement round failed; retrying"),
                Err(error) => tracing::error!(%error, "placement round panicked"),
            }
        }
    }
}
