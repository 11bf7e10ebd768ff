//! The canary's and blue-green's phases of a round (see the module above for the phases); rolling and rolling
//! back stay beside the round, which they share with every strategy.

use std::collections::BTreeMap;

use gantry_judge::{Exposure, Judge, JudgeConfig, Verdict};
use gantry_proto::deployments::{Outcome, Status};
use gantry_proto::platform::Pause;

use super::feed::Sample;
use super::{Round, step_deadline};
use crate::placement::Slot;
use crate::state::deployments::{self, Row};
use crate::state::placements::{self, StoredSlot};
use crate::state::platform;

impl Round<'_> {
    /// The canary's instance count at `weight` percent: `ceil(weight × replicas)`, at least 1, at most replicas.
    fn canary_count(weight: f64, replicas: u32) -> u32 {
        ((f64::from(replicas) * weight / 100.0).ceil() as u32).clamp(1, replicas.max(1))
    }

    /// Feeds the judge (created at the first round) with `samples`, up to the first crossing, so that the record is
    /// the judge's state at the verdict; returns the failure's reason once a test has crossed.
    fn judge(&self, row: &mut Row, samples: Vec<Sample>) -> Option<String> {
        let config = JudgeConfig {
            alpha: 0.01,
            max_error_ratio_increase: row.policy.judge.max_error_ratio_increase,
            max_latency_increase: row
                .policy
                .judge
                .max_latency_increase_percent
                .map(|p| p / 100.0),
            latency_slack_ns: gantry_judge::LATENCY_SLACK_NS,
            // The log rule is a canary's (a `--strategy blue-green` override of such a service judges pairs).
            log_errors: row.policy.judge.log_errors
                && row.strategy == gantry_proto::platform::Strategy::Canary,
        };
        // Error logs are weighed at the canary's weight now: weights only rise during a canary, so a record
        // routed at an earlier step's weight counts against the canary no more than it should.
        let share = row.weight / 100.0;
        let judge = row.judge.get_or_insert_with(|| Judge::new(config));
        for sample in samples {
            let crossed = match sample {
                Sample::Routed(observation) => judge.observe(&observation),
                Sample::Mirrored(pair) => judge.observe_pair(&pair),
                Sample::ErrorLog(canary, time_ns, trace_id) => {
                    judge.observe_log_error(canary, share, time_ns, &trace_id)
                }
            };
            if crossed.is_some() {
                break;
            }
        }
        judge.failure()?;
        match judge.verdict(Exposure {
            min_requests: 0,
            min_duration_ms: 0,
            deadline_ms: u64::MAX,
            elapsed_ms: 0,
        }) {
            Verdict::Fail(reason) => Some(reason),
            _ => None,
        }
    }

    pub(super) fn canary(&mut self, row: &mut Row, samples: Vec<Sample>) -> rusqlite::Result<()> {
        // The judge sees every request while the canary takes traffic, paused or not: a regression during a pause
        // still rolls back.
        if let Some(reason) = self.judge(row, samples) {
            self.decide(row, "fail", &reason)?;
            return self.fail(row, Outcome::RolledBackByJudge, reason);
        }
        let slots = self.slots(&row.service)?;
        let replicas = self.replicas(&row.service)?;
        if row.status == Status::Paused {
            if row.paused_until_ms.is_some_and(|until| until <= self.now) {
                row.status = Status::Progressing;
                row.paused_until_ms = None;
                row.pause_reason = None;
                self.next_step(row)?;
            }
            return Ok(());
        }
        match row.phase.as_str() {
            "starting" => {
                let Some(step) = row.policy.steps.get(row.step as usize).cloned() else {
                    row.phase = "promoting".to_owned();
                    return Ok(());
                };
                let wanted = Self::canary_count(step.weight_percent, replicas);
                if let Some(why) = self.crash(&slots, row.to_template) {
                    return self.fail(row, Outcome::RolledBackForHealth, why);
                }
                if self.stalled(row) {
                    return self.fail(
                        row,
                        Outcome::RolledBackForHealth,
                        format!("the canary's instances were not healthy within the progress deadline of {} s", row.policy.progress_deadline_ms / 1000),
                    );
                }
                let mut ready = 0;
                for (slot, stored) in slots
                    .iter()
                    .filter(|(_, s)| s.node.is_some())
                    .take(wanted as usize)
                {
                    if self.new_instance_ready(row, slot, stored)? {
                        ready += 1;
                    }
                }
                if ready >= wanted {
                    row.phase = "judging".to_owned();
                    row.weight = step.weight_percent;
                    row.step_started_ms = Some(self.now);
                    if let Some(judge) = &mut row.judge {
                        judge.begin_step();
                    }
                    self.changed = true;
                    let message = format!(
                        "step {} of {}: {}% of requests to {} ({wanted} instance{})",
                        row.step + 1,
                        row.policy.steps.len(),
                        step.weight_percent,
                        deployments::version(self.c, &row.service, row.to_revision)?,
                        if wanted == 1 { "" } else { "s" }
                    );
                    self.event(
                        row,
                        "weight",
                        &message,
                        Some(&serde_json::json!({"weight": step.weight_percent, "step": row.step})),
                    )?;
                    self.audit(row, "deployment.weight", &message)?;
                }
                Ok(())
            }
            "judging" => {
                let Some(step) = row.policy.steps.get(row.step as usize).cloned() else {
                    row.phase = "promoting".to_owned();
                    return Ok(());
                };
                // The canary's instances must stay: one crash-looping fails the rollout; one gone (its node lost)
                // is started again, at the same weight.
                if let Some(why) = self.crash(&slots, row.to_template) {
                    return self.fail(row, Outcome::RolledBackForHealth, why);
                }
                let wanted = Self::canary_count(step.weight_percent, replicas) as usize;
                let present = slots
                    .values()
                    .filter(|s| s.node.is_some())
                    .take(wanted)
                    .filter(|s| {
                        s.next
                            .as_ref()
                            .is_some_and(|n| n.template == row.to_template)
                    })
                    .count();
                if present < wanted {
                    row.phase = "starting".to_owned();
                    row.step_started_ms = Some(self.now);
                    return self.event(
                        row,
                        "step",
                        "a canary instance is gone: starting it again",
                        None,
                    );
                }
                match self.step_verdict(row, step.min_requests, step.min_duration_ms) {
                    Verdict::Continue | Verdict::Fail(_) => Ok(()),
                    Verdict::Pass => {
                        let reason = format!(
                            "no regression after {} canary requests at {}%",
                            row.judge.as_ref().map_or(0, Judge::step_requests),
                            step.weight_percent
                        );
                        self.decide(row, "pass", &reason)?;
                        match step.pause {
                            Pause::None => self.next_step(row),
                            Pause::For(ms) => self.pause_passed(
                                row,
                                Some(ms),
                                format!("step pause of {} s", ms / 1000),
                                format!("step {} passed; pausing {} s", row.step + 1, ms / 1000),
                            ),
                            Pause::UntilPromoted => {
                                let why = format!(
                                    "step {} passed: waiting for `gantry promote {}`",
                                    row.step + 1,
                                    row.service
                                );
                                self.pause_passed(row, None, why.clone(), why)
                            }
                        }
                    }
                    Verdict::Inconclusive(reason) => {
                        let pause_reason = format!(
                            "inconclusive: {reason}; holding at {}%: `gantry resume {}` to judge again, `gantry promote` or `gantry abort`",
                            row.weight, row.service
                        );
                        self.inconclusive(row, &reason, pause_reason)
                    }
                }
            }
            "promoting" => self.promote(row, &slots, replicas),
            _ => Ok(()),
        }
    }

    /// The judge's verdict on the step (or preview) under way, with its exposure since `step_started_ms`.
    fn step_verdict(&self, row: &Row, min_requests: u64, min_duration_ms: u64) -> Verdict {
        let exposure = Exposure {
            min_requests,
            min_duration_ms,
            deadline_ms: step_deadline(min_duration_ms),
            elapsed_ms: self
                .now
                .saturating_sub(row.step_started_ms.unwrap_or(self.now)),
        };
        row.judge
            .as_ref()
            .map_or(Verdict::Continue, |judge| judge.verdict(exposure))
    }

    /// A passed step's (or preview's) pause: `passed`, paused for `ms` or until promoted.
    fn pause_passed(
        &mut self,
        row: &mut Row,
        ms: Option<u64>,
        pause_reason: String,
        message: String,
    ) -> rusqlite::Result<()> {
        row.phase = "passed".to_owned();
        row.status = Status::Paused;
        row.paused_until_ms = ms.map(|ms| self.now + ms);
        row.pause_reason = Some(pause_reason);
        self.event(row, "paused", &message, None)
    }

    /// An inconclusive verdict: recorded, and the rollout holds, paused for a human with `pause_reason`.
    fn inconclusive(
        &mut self,
        row: &mut Row,
        reason: &str,
        pause_reason: String,
    ) -> rusqlite::Result<()> {
        self.decide(row, "inconclusive", reason)?;
        row.status = Status::Paused;
        row.pause_reason = Some(pause_reason);
        self.event(
            row,
            "paused",
            row.pause_reason.as_deref().unwrap_or_default(),
            None,
        )?;
        self.audit(row, "deployment.pause", reason)
    }

    /// Moves to the next canary step, or to promotion after the last.
    fn next_step(&mut self, row: &mut Row) -> rusqlite::Result<()> {
        if row.phase == "passed" || row.phase == "judging" {
            if row.step as usize + 1 < row.policy.steps.len() {
                row.step += 1;
                row.phase = "starting".to_owned();
            } else {
                row.phase = "promoting".to_owned();
            }
        }
        row.step_started_ms = Some(self.now);
        Ok(())
    }

    /// Promotion: the new version at full size, then all traffic to it, then the old instances stop.
    fn promote(
        &mut self,
        row: &mut Row,
        slots: &BTreeMap<Slot, StoredSlot>,
        _replicas: u32,
    ) -> rusqlite::Result<()> {
        if let Some(why) = self.crash(slots, row.to_template) {
            return self.fail(row, Outcome::RolledBackForHealth, why);
        }
        if !self.new_version_ready(row, slots)? {
            return Ok(());
        }
        row.weight = 100.0;
        for (slot, stored) in slots {
            if stored
                .next
                .as_ref()
                .is_some_and(|next| next.template == row.to_template)
            {
                placements::complete_replacement(self.c, slot)?;
            }
        }
        self.changed = true;
        self.finish(
            row,
            Status::Succeeded,
            Outcome::Succeeded,
            format!("promoted: r{} takes all requests", row.to_revision),
        )
    }

    /// Blue-green: `starting` (the new version at full size), `judging` (the routers mirror the preview's share
    /// of safe requests to it; the judge compares each copy's answer with the live one), `passed` (the preview's
    /// pause), then the switch and `scaling_down`. Without mirroring (a preview share of 0), the switch follows
    /// `starting`.
    pub(super) fn blue_green(
        &mut self,
        row: &mut Row,
        samples: Vec<Sample>,
    ) -> rusqlite::Result<()> {
        let judging = matches!(row.phase.as_str(), "judging" | "passed");
        if judging && let Some(reason) = self.judge(row, samples) {
            self.decide(row, "fail", &reason)?;
            return self.fail(row, Outcome::RolledBackByJudge, reason);
        }
        let slots = self.slots(&row.service)?;
        if let Some(why) = self.crash(&slots, row.to_template) {
            return self.fail(row, Outcome::RolledBackForHealth, why);
        }
        // Until the switch the new version must stay at full size: an instance lost (its node gone, drained) is
        // started again, and the preview begins again once all run.
        if matches!(row.phase.as_str(), "judging" | "passed" | "switching")
            && !self.new_version_ready(row, &slots)?
        {
            if row.phase == "passed" {
                row.status = Status::Progressing;
                row.paused_until_ms = None;
                row.pause_reason = None;
            }
            row.phase = "starting".to_owned();
            row.step_started_ms = Some(self.now);
            self.changed = true;
            return self.event(
                row,
                "step",
                "an instance of the new version is gone: starting it again; the preview begins again once all run",
                None,
            );
        }
        if row.status == Status::Paused {
            // A passed preview's pause ends (or `gantry resume` ended it): the switch.
            if row.phase == "passed" && row.paused_until_ms.is_some_and(|until| until <= self.now) {
                row.status = Status::Progressing;
                row.paused_until_ms = None;
                row.pause_reason = None;
                return self.switch(row);
            }
            return Ok(());
        }
        match row.phase.as_str() {
            "starting" => {
                if self.stalled(row) {
                    return self.fail(
                        row,
                        Outcome::RolledBackForHealth,
                        format!("the new version was not healthy at full size within the progress deadline of {} s", row.policy.progress_deadline_ms / 1000),
                    );
                }
                if !self.new_version_ready(row, &slots)? {
                    return Ok(());
                }
                let preview = row.policy.preview;
                if preview.mirror_percent <= 0.0 {
                    return self.switch(row);
                }
                let routed = platform::current(self.c)?
                    .get(&row.service)
                    .is_some_and(|service| service.spec.port.is_some());
                if !routed {
                    self.event(
                        row,
                        "preview",
                        "no preview: the service has no routed port, so no requests to mirror",
                        None,
                    )?;
                    return self.switch(row);
                }
                row.phase = "judging".to_owned();
                row.step_started_ms = Some(self.now);
                row.judge = None;
                self.changed = true;
                let message = format!(
                    "preview: r{} runs at full size; {}% of safe requests (GET, HEAD, OPTIONS) are mirrored to it and judged against the live answers ({} needed, at least {} s)",
                    row.to_revision,
                    preview.mirror_percent,
                    preview.min_requests,
                    preview.min_duration_ms / 1000
                );
                self.event(row, "preview", &message, None)?;
                self.audit(row, "deployment.preview", &message)
            }
            "judging" => {
                let preview = row.policy.preview;
                match self.step_verdict(row, preview.min_requests, preview.min_duration_ms) {
                    Verdict::Continue | Verdict::Fail(_) => Ok(()),
                    Verdict::Pass => {
                        let reason = format!(
                            "no regression in {} mirrored requests",
                            row.judge.as_ref().map_or(0, Judge::step_requests)
                        );
                        self.decide(row, "pass", &reason)?;
                        match preview.pause {
                            Pause::None => self.switch(row),
                            Pause::For(ms) => self.pause_passed(
                                row,
                                Some(ms),
                                format!("preview pause of {} s", ms / 1000),
                                format!(
                                    "preview passed; pausing {} s before the switch",
                                    ms / 1000
                                ),
                            ),
                            Pause::UntilPromoted => {
                                let why = format!(
                                    "preview passed: waiting for `gantry promote {}` to switch",
                                    row.service
                                );
                                self.pause_passed(row, None, why.clone(), why)
                            }
                        }
                    }
                    Verdict::Inconclusive(reason) => {
                        let reason =
                            reason.replace("the canary served", "the new version answered");
                        let pause_reason = format!(
                            "inconclusive: {reason} (only safe requests are mirrored); the old version keeps all requests: `gantry resume {}` to judge again, `gantry promote` to switch or `gantry abort`",
                            row.service
                        );
                        self.inconclusive(row, &reason, pause_reason)
                    }
                }
            }
            // `gantry promote` during the preview.
            "switching" => self.switch(row),
            "scaling_down" => {
                if row.paused_until_ms.is_some_and(|until| until <= self.now) {
                    for (slot, stored) in &slots {
                        if stored
                            .next
                            .as_ref()
                            .is_some_and(|next| next.template == row.to_template)
                        {
                            placements::complete_replacement(self.c, slot)?;
                        }
                    }
                    row.paused_until_ms = None;
                    self.changed = true;
                    return self.finish(
                        row,
                        Status::Succeeded,
                        Outcome::Succeeded,
                        format!(
                            "r{} takes all requests; the old version stopped",
                            row.to_revision
                        ),
                    );
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Whether every placed slot runs the new version (or its replacement at it is available), beginning the
    /// replacements that are missing.
    fn new_version_ready(
        &mut self,
        row: &Row,
        slots: &BTreeMap<Slot, StoredSlot>,
    ) -> rusqlite::Result<bool> {
        let mut all_ready = true;
        for (slot, stored) in slots.iter().filter(|(_, s)| s.node.is_some()) {
            if stored.template == row.to_template && stored.next.is_none() {
                continue;
            }
            all_ready &= self.new_instance_ready(row, slot, stored)?;
        }
        Ok(all_ready)
    }

    /// Blue-green's switch: all requests to the new version at once; the old stays `scale_down_delay`.
    fn switch(&mut self, row: &mut Row) -> rusqlite::Result<()> {
        row.weight = 100.0;
        row.phase = "scaling_down".to_owned();
        row.paused_until_ms = Some(self.now + row.policy.scale_down_delay_ms);
        self.changed = true;
        let message = format!(
            "switched: all requests to r{}; the old version stays {} s for an instant switch back",
            row.to_revision,
            row.policy.scale_down_delay_ms / 1000
        );
        self.event(
            row,
            "weight",
            &message,
            Some(&serde_json::json!({"weight": 100.0})),
        )?;
        self.audit(row, "deployment.switch", &message)
    }
}
