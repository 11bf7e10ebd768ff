//! What the node agents report their instances doing, kept in memory (an agent reports its whole set on every
//! change and every heartbeat interval, so a restarted plane has it back within seconds), and the *generation*
//! that agents' long polls wait on: it changes whenever what an agent should run, or where a routed service's ready
//! instances are, may have changed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use gantry_proto::instances::{InstanceReport, InstanceState, Phase};
use gantry_support::CancellationToken;
use tokio::sync::watch;

/// The longest an assignments long poll waits.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// Reported instance states and the assignments generation.
#[derive(Debug)]
pub struct InstanceRegistry {
    /// By agent id: each node's last report, by instance id.
    reports: Mutex<HashMap<String, BTreeMap<String, InstanceState>>>,
    generation: watch::Sender<u64>,
    shutdown: CancellationToken,
}

impl Default for InstanceRegistry {
    fn default() -> Self {
        InstanceRegistry::new(CancellationToken::new())
    }
}

impl InstanceRegistry {
    /// An empty registry whose long polls end when `shutdown` is cancelled. The first generation is the start time
    /// in milliseconds, so that an agent's generation from an earlier plane process never matches.
    pub fn new(shutdown: CancellationToken) -> InstanceRegistry {
        let start = chrono::Utc::now().timestamp_millis().max(1) as u64;
        InstanceRegistry {
            reports: Mutex::new(HashMap::new()),
            generation: watch::Sender::new(start),
            shutdown,
        }
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Marks that assignments or routes may have changed: every waiting long poll answers.
    pub fn bump(&self) {
        self.generation.send_modify(|generation| *generation += 1);
    }

    /// Waits until the generation differs from `seen`, for at most `wait` (capped at [`MAX_WAIT`]) or until the
    /// plane shuts down; returns the generation then.
    pub async fn wait_for_change(&self, seen: u64, wait: Duration) -> u64 {
        let mut receiver = self.generation.subscribe();
        let changed = receiver.wait_for(|generation| *generation != seen);
        tokio::select! {
            _ = tokio::time::timeout(wait.min(MAX_WAIT), changed) => {}
            () = self.shutdown.cancelled() => {}
        }
        self.generation()
    }

    /// Stores a node's report; bumps the generation when the set of ready instances or their addresses changed
    /// (routers on every node need the new set), and returns whether it did.
    pub fn report(&self, agent_id: &str, report: InstanceReport) -> bool {
        let ready =
            |states: Option<&BTreeMap<String, InstanceState>>| -> Vec<(String, Option<String>)> {
                states
                    .into_iter()
                    .flat_map(|states| states.values())
                    .filter(|state| state.phase == Phase::Healthy)
                    .map(|state| (state.instance_id.clone(), state.address.clone()))
                    .collect()
            };
        let changed = {
            let mut reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
            let before = ready(reports.get(agent_id));
            let states: BTreeMap<String, InstanceState> = report
                .instances
                .into_iter()
                .map(|state| (state.instance_id.clone(), state))
                .collect();
            let after = ready(Some(&states));
            reports.insert(agent_id.to_owned(), states);
            before != after
        };
        if changed {
            self.bump();
        }
        changed
    }

    /// The last reported state of an instance, on whichever node reported it.
    pub fn state(&self, agent_id: &str, instance_id: &str) -> Option<InstanceState> {
        let reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        reports.get(agent_id)?.get(instance_id).cloned()
    }

    /// Every healthy instance with an address, by instance id: (agent id, address).
    pub fn ready(&self) -> HashMap<String, (String, String)> {
        let reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        reports
            .iter()
            .flat_map(|(agent, states)| {
                states.values().filter_map(move |state| {
                    let address = state.address.clone()?;
                    (state.phase == Phase::Healthy)
                        .then(|| (state.instance_id.clone(), (agent.clone(), address)))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(id: &str, phase: Phase) -> InstanceState {
        InstanceState {
            instance_id: id.into(),
            phase,
            pid: Some(1),
            address: Some("127.0.0.1:9000".into()),
            restarts: 0,
            last_exit: None,
            reason: String::new(),
            last_lines: vec![],
            since: String::new(),
            phase_age_ms: None,
        }
    }

    #[tokio::test]
    async fn reports_bump_the_generation_only_when_readiness_changes() {
        let registry = InstanceRegistry::default();
        let first = registry.generation();
        let report = |phases: &[(&str, Phase)]| InstanceReport {
            instances: phases.iter().map(|(id, phase)| state(id, *phase)).collect(),
        };
        registry.report("n1", report(&[("a-0-r1", Phase::Starting)]));
        assert_eq!(registry.generation(), first, "nothing ready yet");
        registry.report("n1", report(&[("a-0-r1", Phase::Healthy)]));
        assert_eq!(registry.generation(), first + 1);
        assert_eq!(registry.ready()["a-0-r1"].0, "n1");
        registry.report("n1", report(&[("a-0-r1", Phase::Healthy)]));
        assert_eq!(registry.generation(), first + 1, "same readiness");
        // A waiting poll answers at the next change.
        let waiting = registry.wait_for_change(first + 1, Duration::from_secs(5));
        let (generation, ()) = tokio::join!(waiting, async {
            registry.report("n1", report(&[("a-0-r1", Phase::Unhealthy)]));
        });
        assert_eq!(generation, first + 2);
        assert!(registry.ready().is_empty());
    }
}
