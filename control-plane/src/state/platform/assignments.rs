//! What one node's agent is told: the instances placed on it (each slot's current instance, and the replacement
//! being started during a restart, a drain or a rollout, each at its own template revision), with secrets
//! resolved, and every routed service with its placed instances and the versions' weights a canary or blue-green
//! rollout sets. Readiness is the plane's in-memory knowledge, added by the API handler.

use std::collections::BTreeMap;

use gantry_proto::instances::Assignment;
use gantry_proto::platform::RuntimeSpec;

use super::{PlatformError, PlatformStore, current};
use crate::spec;
use crate::state::secrets;

impl PlatformStore {
    /// What `agent_id` should run (its placed slots at each service's current revision, secrets resolved) and
    /// every routed service with the instance ids of all its placed slots.
    ///
    /// # Errors
    /// The database failed.
    pub fn assignments(&self, agent_id: &str) -> Result<NodeWork, PlatformError> {
        Ok(self.db.read(|c| {
            let services = current(c)?;
            let slots = crate::state::placements::load(c, None)?;
            let templates = crate::state::deployments::templates(c)?;
            let rollouts: BTreeMap<String, crate::state::deployments::Row> =
                crate::state::deployments::active(c)?
                    .into_iter()
                    .map(|d| (d.service.clone(), d))
                    .collect();
            let mut route_weights = BTreeMap::new();
            let mut mirrors = BTreeMap::new();
            for (name, rollout) in &rollouts {
                route_weights.insert(name.clone(), weights(c, rollout)?);
                if let Some(mirror) = mirror(c, rollout)? {
                    mirrors.insert(name.clone(), mirror);
                }
            }
            let mut assignments = Vec::new();
            let mut placed = Vec::new();
            // Every service with a routed port keeps its route, instances or not (its routers answer 503).
            let mut routed: BTreeMap<&str, RoutedService> = services
                .iter()
                .filter_map(|(name, service)| {
                    let port = service.spec.port?;
                    Some((
                        name.as_str(),
                        RoutedService {
                            service: name.clone(),
                            port,
                            instances: Vec::new(),
                            sticky: service.spec.sticky.clone(),
                            weights: route_weights.get(name).cloned().unwrap_or_default(),
                            mirror: mirrors.get(name).cloned(),
                        },
                    ))
                })
                .collect();
            for (slot, stored) in &slots {
                let Some(node) = &stored.node else { continue };
                let Some(service) = services.get(&slot.service) else { continue };
                // The current instance, and the replacement being started. Without surge the current instance of a
                // restart, a drain or a rolling rollout goes first; a canary's or blue-green's new instance always
                // starts beside the old one.
                let (_, surge) = service.replacement_batch();
                let mut lineage = Vec::new();
                let beside = stored.next.as_ref().is_some_and(|next| next.template != stored.template)
                    && rollouts.get(&slot.service).is_some_and(|rollout| {
                        rollout.strategy != gantry_proto::platform::Strategy::Rolling
                    });
                if stored.next.is_none() || surge || beside {
                    lineage.push((node.clone(), stored.template, stored.epoch));
                }
                if let Some(next) = &stored.next {
                    lineage.push((next.node.clone(), next.template, next.epoch));
                }
                for (on, template, epoch) in lineage {
                    let Some((version, template_spec)) = templates.get(&(slot.service.clone(), template)) else {
                        tracing::warn!(slot = %slot, template, "instance not assigned: its template revision is gone");
                        continue;
                    };
                    let instance_id = crate::state::placements::instance_id(&slot.service, slot.index, template, epoch);
                    if let Some(port) = service.spec.port {
                        routed
                            .entry(&slot.service)
                            .or_insert_with(|| RoutedService {
                                service: slot.service.clone(),
                                port,
                                instances: Vec::new(),
                                sticky: service.spec.sticky.clone(),
                                weights: BTreeMap::new(),
                                mirror: None,
                            })
                            .instances
                            .push((instance_id.clone(), version.clone()));
                    }
                    placed.push((slot.service.clone(), instance_id.clone()));
                    if on != agent_id {
                        continue;
                    }
                    let RuntimeSpec::Process(process) = &template_spec.runtime;
                    let mut resolved = process.clone();
                    let mut missing = None;
                    for value in resolved.env.values_mut() {
                        match spec::resolve_secrets(value, &|name| secrets::value_in(c, name).ok().flatten()) {
                            Ok(text) => *value = text,
                            Err(name) => missing = Some(name),
                        }
                    }
                    if let Some(name) = missing {
                        tracing::warn!(instance = %instance_id, secret = %name, "instance not assigned: a secret it references is gone");
                        continue;
                    }
                    assignments.push(Assignment {
                        instance_id,
                        service: slot.service.clone(),
                        slot: slot.index,
                        revision: template,
                        version: version.clone(),
                        process: resolved,
                        health: template_spec.health.clone(),
                        kill_timeout_ms: template_spec.kill_timeout_ms,
                    });
                }
            }
            let depends_on = services
                .iter()
                .map(|(name, service)| (name.clone(), service.spec.depends_on.clone()))
                .collect();
            Ok(NodeWork {
                assignments,
                routed: routed.into_values().collect(),
                placed,
                depends_on,
            })
        })?)
    }
}

/// What a node's agent is told, before readiness is known: see [`PlatformStore::assignments`].
#[derive(Debug, Clone)]
pub struct NodeWork {
    /// The instances placed on the node.
    pub assignments: Vec<Assignment>,
    /// Every routed service with its placed instances.
    pub routed: Vec<RoutedService>,
    /// Every placed instance on any node: (service, instance id).
    pub placed: Vec<(String, String)>,
    /// Each service's dependencies.
    pub depends_on: BTreeMap<String, Vec<String>>,
}

/// A routed service and its placed instances (id, version), for the routers' tables.
#[derive(Debug, Clone)]
pub struct RoutedService {
    /// The service.
    pub service: String,
    /// Its routed port.
    pub port: u16,
    /// Every placed instance: id and version.
    pub instances: Vec<(String, String)>,
    /// Its stickiness.
    pub sticky: Option<gantry_proto::platform::Sticky>,
    /// Share of requests per version, percent (empty: every instance alike).
    pub weights: BTreeMap<String, f64>,
    /// Mirroring to a blue-green rollout's new version while the judge compares it.
    pub mirror: Option<gantry_proto::instances::Mirror>,
}

/// The routers' mirroring during a blue-green rollout's judging (its `judging` and `passed` phases, paused or
/// not): safe requests copied to the new version at the preview's share.
fn mirror(
    connection: &rusqlite::Connection,
    rollout: &crate::state::deployments::Row,
) -> rusqlite::Result<Option<gantry_proto::instances::Mirror>> {
    use gantry_proto::deployments::Status;
    use gantry_proto::platform::Strategy;
    let judging = rollout.strategy == Strategy::BlueGreen
        && rollout.status != Status::RollingBack
        && matches!(rollout.phase.as_str(), "judging" | "passed")
        && rollout.policy.preview.mirror_percent > 0.0;
    if !judging {
        return Ok(None);
    }
    Ok(Some(gantry_proto::instances::Mirror {
        version: crate::state::deployments::version(
            connection,
            &rollout.service,
            rollout.to_revision,
        )?,
        percent: rollout.policy.preview.mirror_percent.min(100.0),
    }))
}

/// The routers' weights during a rollout: a canary's step weight, or blue-green's switch (0 before, 100 after);
/// none for a rolling rollout (every instance alike) or once the rollout is done.
fn weights(
    connection: &rusqlite::Connection,
    rollout: &crate::state::deployments::Row,
) -> rusqlite::Result<BTreeMap<String, f64>> {
    use gantry_proto::platform::Strategy;
    if rollout.strategy == Strategy::Rolling {
        return Ok(BTreeMap::new());
    }
    let stable =
        crate::state::deployments::version(connection, &rollout.service, rollout.from_revision)?;
    let new =
        crate::state::deployments::version(connection, &rollout.service, rollout.to_revision)?;
    if stable == new {
        return Ok(BTreeMap::new());
    }
    let weight = rollout.weight.clamp(0.0, 100.0);
    Ok(BTreeMap::from([(stable, 100.0 - weight), (new, weight)]))
}
