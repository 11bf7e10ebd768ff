//! What one node's agent is told: the instances placed on it (each slot's current instance, and the replacement
//! being started during a restart or a drain), with secrets resolved, and every routed service with its placed
//! instances. Readiness is the plane's in-memory knowledge, added by the API handler.

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
                        },
                    ))
                })
                .collect();
            for (slot, stored) in &slots {
                let Some(node) = &stored.node else { continue };
                let Some(service) = services.get(&slot.service) else { continue };
                // The current instance, and the replacement being started; without surge the current one goes
                // first.
                let (_, surge) = service.replacement_batch();
                let mut lineage = Vec::new();
                if stored.next.is_none() || surge {
                    lineage.push((node.clone(), stored.epoch));
                }
                if let Some((next_node, next_epoch)) = &stored.next {
                    lineage.push((next_node.clone(), *next_epoch));
                }
                for (on, epoch) in lineage {
                    let instance_id = crate::state::placements::instance_id(&slot.service, slot.index, service.template, epoch);
                    if let Some(port) = service.spec.port {
                        routed
                            .entry(&slot.service)
                            .or_insert_with(|| RoutedService {
                                service: slot.service.clone(),
                                port,
                                instances: Vec::new(),
                                sticky: service.spec.sticky.clone(),
                            })
                            .instances
                            .push((instance_id.clone(), service.version.clone()));
                    }
                    placed.push((slot.service.clone(), instance_id.clone()));
                    if on != agent_id {
                        continue;
                    }
                    let RuntimeSpec::Process(process) = &service.spec.runtime;
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
                        revision: service.template,
                        version: service.version.clone(),
                        process: resolved,
                        health: service.spec.health.clone(),
                        kill_timeout_ms: service.spec.kill_timeout_ms,
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
}
