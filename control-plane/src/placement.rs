//! The placement planner: which node runs each slot of each service. Pure (no I/O, no clock): the caller passes
//! the nodes as it sees them now, what each service asks for, and the current placements, and applies the answer.
//!
//! A *slot* is one of a service's `replicas` (`gateway/0`, `gateway/1`, ...); a plan maps each slot to at most one
//! node, so **one slot is never placed twice**. The rules, after Nomad's `scheduler/reconcile.go` and its spread
//! scoring:
//! - a current placement is kept while its slot still exists, its node is `Ready` or `Down` (a node that missed
//!   heartbeats keeps its instances for the grace period) and the node still carries the service's labels and has
//!   room for it;
//! - every other slot goes to a `Ready` node that carries all the service's constraint labels and has the CPU and
//!   memory free, choosing the node with the fewest instances of that service, then the fewest instances in all,
//!   then the most free CPU, then the id (so the same inputs give the same plan);
//! - a slot no node can take is reported unplaced with the reason, never dropped silently.

use std::collections::BTreeMap;

use gantry_proto::platform::Resources;

/// One of a service's replicas.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot {
    /// The service.
    pub service: String,
    /// 0-based, below the service's replicas.
    pub index: u32,
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.service, self.index)
    }
}

/// Whether a node may run instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Heartbeats arrive: keeps its instances and takes new ones.
    Ready,
    /// Missed heartbeats for less than the grace period: keeps its instances, takes no new ones.
    Down,
    /// Down for longer than the grace period, or drained: its instances go elsewhere.
    Lost,
}

/// A node as the planner sees it.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// The agent id.
    pub id: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// What it has in all: CPUs × 1000 millicores, memory bytes.
    pub capacity: Resources,
    /// Whether it may run instances.
    pub state: NodeState,
}

/// What a service asks for.
#[derive(Debug, Clone)]
pub struct Demand {
    /// The service.
    pub service: String,
    /// How many slots.
    pub replicas: u32,
    /// What each instance needs.
    pub resources: Resources,
    /// Labels its nodes must carry.
    pub constraints: BTreeMap<String, String>,
}

/// The planner's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Each placed slot and its node (agent id).
    pub placements: BTreeMap<Slot, String>,
    /// Each slot no node could take, with why.
    pub unplaced: BTreeMap<Slot, String>,
}

/// Plans the placement of every slot of `demands` on `nodes`, keeping what `current` may keep (see the module).
pub fn place(nodes: &[NodeView], demands: &[Demand], current: &BTreeMap<Slot, String>) -> Plan {
    let by_id: BTreeMap<&str, &NodeView> =
        nodes.iter().map(|node| (node.id.as_str(), node)).collect();
    let by_service: BTreeMap<&str, &Demand> =
        demands.iter().map(|d| (d.service.as_str(), d)).collect();
    let mut used: BTreeMap<&str, Resources> = BTreeMap::new();
    let mut count: BTreeMap<(&str, &str), u32> = BTreeMap::new();
    let mut total: BTreeMap<&str, u32> = BTreeMap::new();
    let mut plan = Plan::default();

    for (slot, node_id) in current {
        let (Some(demand), Some(node)) = (
            by_service.get(slot.service.as_str()),
            by_id.get(node_id.as_str()),
        ) else {
            continue;
        };
        let keep = slot.index < demand.replicas
            && node.state != NodeState::Lost
            && carries(node, &demand.constraints)
            && fits(node, used.get(node.id.as_str()), demand.resources);
        if keep {
            take(&mut used, &mut count, &mut total, node, demand);
            plan.placements.insert(slot.clone(), node.id.clone());
        }
    }

    for demand in demands {
        for index in 0..demand.replicas {
            let slot = Slot {
                service: demand.service.clone(),
                index,
            };
            if plan.placements.contains_key(&slot) {
                continue;
            }
            let best = nodes
                .iter()
                .filter(|node| node.state == NodeState::Ready && carries(node, &demand.constraints))
                .filter(|node| fits(node, used.get(node.id.as_str()), demand.resources))
                .min_by_key(|node| {
                    let id = node.id.as_str();
                    let free_cpu = node
                        .capacity
                        .cpu_millis
                        .saturating_sub(used.get(id).map_or(0, |u| u.cpu_millis));
                    (
                        count
                            .get(&(demand.service.as_str(), id))
                            .copied()
                            .unwrap_or(0),
                        total.get(id).copied().unwrap_or(0),
                        std::cmp::Reverse(free_cpu),
                        id,
                    )
                });
            match best {
                Some(node) => {
                    take(&mut used, &mut count, &mut total, node, demand);
                    plan.placements.insert(slot, node.id.clone());
                }
                None => {
                    let why = unplaced_reason(nodes, demand);
                    plan.unplaced.insert(slot, why);
                }
            }
        }
    }
    plan
}

fn take<'a>(
    used: &mut BTreeMap<&'a str, Resources>,
    count: &mut BTreeMap<(&'a str, &'a str), u32>,
    total: &mut BTreeMap<&'a str, u32>,
    node: &'a NodeView,
    demand: &'a Demand,
) {
    let entry = used.entry(node.id.as_str()).or_insert(Resources {
        cpu_millis: 0,
        memory_bytes: 0,
    });
    entry.cpu_millis += demand.resources.cpu_millis;
    entry.memory_bytes += demand.resources.memory_bytes;
    *count
        .entry((demand.service.as_str(), node.id.as_str()))
        .or_default() += 1;
    *total.entry(node.id.as_str()).or_default() += 1;
}

fn carries(node: &NodeView, constraints: &BTreeMap<String, String>) -> bool {
    constraints
        .iter()
        .all(|(key, value)| node.labels.get(key) == Some(value))
}

fn fits(node: &NodeView, used: Option<&Resources>, need: Resources) -> bool {
    let (cpu, memory) = used.map_or((0, 0), |u| (u.cpu_millis, u.memory_bytes));
    u64::from(cpu) + u64::from(need.cpu_millis) <= u64::from(node.capacity.cpu_millis)
        && memory.saturating_add(need.memory_bytes) <= node.capacity.memory_bytes
}

fn unplaced_reason(nodes: &[NodeView], demand: &Demand) -> String {
    let ready: Vec<&NodeView> = nodes
        .iter()
        .filter(|n| n.state == NodeState::Ready)
        .collect();
    if ready.is_empty() {
        return "no node is ready to run instances".to_owned();
    }
    let labelled = ready
        .iter()
        .filter(|n| carries(n, &demand.constraints))
        .count();
    if labelled == 0 {
        let wanted: Vec<String> = demand
            .constraints
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        return format!("no ready node has the labels {}", wanted.join(", "));
    }
    format!(
        "none of the {labelled} ready nodes with its labels has {} millicores and {} MiB free",
        demand.resources.cpu_millis,
        demand.resources.memory_bytes >> 20
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn node(id: &str, zone: &str, cores: u32, state: NodeState) -> NodeView {
        NodeView {
            id: id.to_owned(),
            labels: BTreeMap::from([("zone".to_owned(), zone.to_owned())]),
            capacity: Resources {
                cpu_millis: cores * 1000,
                memory_bytes: 8 << 30,
            },
            state,
        }
    }

    fn demand(service: &str, replicas: u32, cpu: u32, zone: Option<&str>) -> Demand {
        Demand {
            service: service.to_owned(),
            replicas,
            resources: Resources {
                cpu_millis: cpu,
                memory_bytes: 64 << 20,
            },
            constraints: zone
                .map(|z| BTreeMap::from([("zone".to_owned(), z.to_owned())]))
                .unwrap_or_default(),
        }
    }

    fn nodes_of(plan: &Plan, service: &str) -> Vec<String> {
        plan.placements
            .iter()
            .filter(|(slot, _)| slot.service == service)
            .map(|(_, node)| node.clone())
            .collect()
    }

    #[test]
    fn spreads_keeps_and_replaces() {
        let mut nodes = vec![
            node("n1", "a", 4, NodeState::Ready),
            node("n2", "a", 4, NodeState::Ready),
            node("n3", "b", 4, NodeState::Ready),
        ];
        let demands = [demand("api", 3, 500, None), demand("db", 2, 500, Some("a"))];
        let first = place(&nodes, &demands, &BTreeMap::new());
        assert!(first.unplaced.is_empty());
        let mut api = nodes_of(&first, "api");
        api.sort();
        assert_eq!(api, ["n1", "n2", "n3"], "one per node");
        assert!(
            nodes_of(&first, "db").iter().all(|n| n != "n3"),
            "constraint"
        );
        // The same inputs with the plan as current: nothing moves.
        assert_eq!(place(&nodes, &demands, &first.placements), first);
        // A node down within its grace period keeps its instances; lost, they move.
        nodes[2].state = NodeState::Down;
        assert_eq!(place(&nodes, &demands, &first.placements), first);
        nodes[2].state = NodeState::Lost;
        let moved = place(&nodes, &demands, &first.placements);
        assert!(nodes_of(&moved, "api").iter().all(|n| n != "n3"));
        assert_eq!(moved.placements.len(), 5);
        // Back again: what moved stays where it went (the surplus on n3 is no longer placed there).
        nodes[2].state = NodeState::Ready;
        assert_eq!(place(&nodes, &demands, &moved.placements), moved);
    }

    #[test]
    fn reports_what_it_cannot_place() {
        let nodes = [node("n1", "a", 1, NodeState::Ready)];
        let plan = place(
            &nodes,
            &[
                demand("big", 1, 2000, None),
                demand("far", 1, 100, Some("z")),
            ],
            &BTreeMap::new(),
        );
        let reasons: Vec<&String> = plan.unplaced.values().collect();
        assert!(reasons[0].contains("2000 millicores"), "{reasons:?}");
        assert!(reasons[1].contains("zone=z"), "{reasons:?}");
        let none = place(
            &[node("n1", "a", 1, NodeState::Down)],
            &[demand("x", 1, 1, None)],
            &BTreeMap::new(),
        );
        assert_eq!(
            none.unplaced.values().next().unwrap(),
            "no node is ready to run instances"
        );
    }

    fn arb_state() -> impl Strategy<Value = NodeState> {
        prop_oneof![4 => Just(NodeState::Ready), 1 => Just(NodeState::Down), 1 => Just(NodeState::Lost)]
    }

    fn arb_cluster() -> impl Strategy<Value = (Vec<NodeView>, Vec<Demand>, BTreeMap<Slot, String>)>
    {
        let nodes = prop::collection::vec((0..2u8, 1..8u32, 1..16u64, arb_state()), 1..7).prop_map(
            |specs| {
                specs
                    .into_iter()
                    .enumerate()
                    .map(|(i, (zone, cores, gib, state))| NodeView {
                        id: format!("n{i}"),
                        labels: BTreeMap::from([(
                            "zone".to_owned(),
                            ["a", "b"][zone as usize].to_owned(),
                        )]),
                        capacity: Resources {
                            cpu_millis: cores * 1000,
                            memory_bytes: gib << 30,
                        },
                        state,
                    })
                    .collect::<Vec<_>>()
            },
        );
        let demands = prop::collection::vec((0..8u32, 1..3000u32, 1..4096u64, 0..3u8), 1..6)
            .prop_map(|specs| {
                specs
                    .into_iter()
                    .enumerate()
                    .map(|(i, (replicas, cpu, mib, zone))| Demand {
                        service: format!("s{i}"),
                        replicas,
                        resources: Resources {
                            cpu_millis: cpu,
                            memory_bytes: mib << 20,
                        },
                        constraints: match zone {
                            0 => BTreeMap::new(),
                            z => BTreeMap::from([(
                                "zone".to_owned(),
                                ["a", "b"][z as usize - 1].to_owned(),
                            )]),
                        },
                    })
                    .collect::<Vec<_>>()
            });
        let current = prop::collection::btree_map((0..6usize, 0..10u32), 0..7usize, 0..20);
        (nodes, demands, current).prop_map(|(nodes, demands, current)| {
            let current = current
                .into_iter()
                .map(|((service, index), node)| {
                    (
                        Slot {
                            service: format!("s{service}"),
                            index,
                        },
                        format!("n{node}"),
                    )
                })
                .collect();
            (nodes, demands, current)
        })
    }

    proptest! {
        #[test]
        fn placements_respect_slots_labels_capacity_and_states((nodes, demands, current) in arb_cluster()) {
            let plan = place(&nodes, &demands, &current);
            let wanted: u32 = demands.iter().map(|d| d.replicas).sum();
            prop_assert_eq!((plan.placements.len() + plan.unplaced.len()) as u32, wanted, "every slot once");
            let mut used: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
            for (slot, node_id) in &plan.placements {
                prop_assert!(!plan.unplaced.contains_key(slot));
                let demand = demands.iter().find(|d| d.service == slot.service).unwrap();
                prop_assert!(slot.index < demand.replicas);
                let node = nodes.iter().find(|n| &n.id == node_id).unwrap();
                prop_assert!(carries(node, &demand.constraints), "{} on {} lacks labels", slot, node_id);
                prop_assert!(node.state != NodeState::Lost, "{} on lost {}", slot, node_id);
                if node.state == NodeState::Down {
                    prop_assert_eq!(current.get(slot), Some(node_id), "new placement on a down node");
                }
                let entry = used.entry(node_id).or_default();
                entry.0 += u64::from(demand.resources.cpu_millis);
                entry.1 += demand.resources.memory_bytes;
            }
            for (node_id, (cpu, memory)) in used {
                let node = nodes.iter().find(|n| n.id == node_id).unwrap();
                prop_assert!(cpu <= u64::from(node.capacity.cpu_millis) && memory <= node.capacity.memory_bytes);
            }
            // Planning again from the answer changes nothing.
            prop_assert_eq!(place(&nodes, &demands, &plan.placements), plan);
        }

        #[test]
        fn with_room_enough_instances_spread_within_one_per_node(
            (mut nodes, demands, _) in arb_cluster(),
        ) {
            for node in &mut nodes {
                node.capacity = Resources { cpu_millis: u32::MAX / 2, memory_bytes: u64::MAX / 2 };
            }
            let plan = place(&nodes, &demands, &BTreeMap::new());
            for demand in &demands {
                let eligible: Vec<&NodeView> = nodes
                    .iter()
                    .filter(|n| n.state == NodeState::Ready && carries(n, &demand.constraints))
                    .collect();
                if eligible.is_empty() {
                    continue;
                }
                let counts: Vec<usize> = eligible
                    .iter()
                    .map(|n| plan.placements.iter().filter(|(s, id)| s.service == demand.service && **id == n.id).count())
                    .collect();
                let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
                prop_assert!(max - min <= 1, "{}: {:?}", demand.service, counts);
            }
        }
    }
}
