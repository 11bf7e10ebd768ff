//! The `rollout:` section of a service: strategy, surge and unavailability, canary steps, blue-green's preview
//! and the judge's settings.

use gantry_proto::platform::{
    CanaryStep, IntOrPercent, JudgePolicy, Pause, Preview, RolloutPolicy, Strategy,
};
use serde_saphyr::{Location, Spanned};

use super::raw::{CountOrPercent, PauseValue, RawRollout, RawStrategy};
use super::{Checker, SpecError};

impl Checker<'_> {
    /// The rollout policy of `service` from its `rollout:` (at `at` when absent), with every inconsistent setting
    /// refused at its line, column and field.
    pub(super) fn rollout(
        &self,
        service: &str,
        raw: &RawRollout,
        at: Location,
    ) -> Result<RolloutPolicy, SpecError> {
        let field = |rest: &str| format!("services.{service}.rollout{rest}");
        let strategy = match raw.strategy.unwrap_or(RawStrategy::Rolling) {
            RawStrategy::Rolling => Strategy::Rolling,
            RawStrategy::Canary => Strategy::Canary,
            RawStrategy::BlueGreen => Strategy::BlueGreen,
        };
        let amount = |value: &Option<Spanned<CountOrPercent>>| match value.as_ref().map(|v| v.value)
        {
            Some(CountOrPercent::Count(count)) => IntOrPercent::Count(count),
            Some(CountOrPercent::Percent(percent)) => IntOrPercent::Percent(percent),
            None => IntOrPercent::Percent(25.0),
        };
        let max_surge = amount(&raw.max_surge);
        let max_unavailable = amount(&raw.max_unavailable);
        let zero = |value: IntOrPercent| {
            matches!(value, IntOrPercent::Count(0)) || value == IntOrPercent::Percent(0.0)
        };
        if zero(max_surge) && zero(max_unavailable) {
            let at = raw
                .max_unavailable
                .as_ref()
                .or(raw.max_surge.as_ref())
                .map_or(at, |v| v.referenced);
            return self.error(
                at,
                field(".max_unavailable"),
                "max_surge and max_unavailable cannot both be 0: a rollout could never replace an instance",
            );
        }
        if strategy != Strategy::Canary
            && let Some(step) = raw.steps.first()
        {
            return self.error(
                step.referenced,
                field(".steps"),
                "steps are for `strategy: canary`",
            );
        }
        if strategy == Strategy::Canary && raw.steps.is_empty() {
            return self.error(
                at,
                field(".steps"),
                "a canary needs steps, e.g. `steps: [{weight: 5}, {weight: 25}, {weight: 50}]`",
            );
        }
        let mut steps = Vec::with_capacity(raw.steps.len());
        let mut last = 0.0;
        for (index, step) in raw.steps.iter().enumerate() {
            let weight = step.value.weight.value.0;
            if weight <= last || weight > 100.0 {
                return self.error(
                    step.value.weight.referenced,
                    field(&format!(".steps.{index}.weight")),
                    format!(
                        "weights rise step by step within (0%, 100%): {weight}% follows {last}%"
                    ),
                );
            }
            // At 100% nothing is left to compare the canary with: promotion follows the last step.
            if weight >= 100.0 {
                return self.error(
                    step.value.weight.referenced,
                    field(&format!(".steps.{index}.weight")),
                    "a step at 100% cannot be judged (no stable requests to compare with): the last step is below 100%, promotion follows it",
                );
            }
            last = weight;
            steps.push(CanaryStep {
                weight_percent: weight,
                min_requests: step.value.min_requests.unwrap_or(100),
                min_duration_ms: step.value.min_duration.map_or(30_000, |d| d.0),
                pause: match step.value.pause {
                    None | Some(PauseValue::For(0)) => Pause::None,
                    Some(PauseValue::For(ms)) => Pause::For(ms),
                    Some(PauseValue::UntilPromoted) => Pause::UntilPromoted,
                },
            });
        }
        let progress_deadline = raw
            .progress_deadline
            .as_ref()
            .map_or(600_000, |v| v.value.0);
        if let Some(deadline) = &raw.progress_deadline
            && deadline.value.0 == 0
        {
            return self.error(
                deadline.referenced,
                field(".progress_deadline"),
                "the deadline must be above 0",
            );
        }
        let judge = &raw.judge;
        if let Some(increase) = &judge.max_error_ratio_increase
            && !(0.0..=1.0).contains(&increase.value)
        {
            return self.error(
                increase.referenced,
                field(".judge.max_error_ratio_increase"),
                "an error ratio increase is a fraction in [0, 1] (0.01 = one percentage point)",
            );
        }
        if let Some(increase) = &judge.max_latency_increase
            && increase.value.0 < 0.0
        {
            return self.error(
                increase.referenced,
                field(".judge.max_latency_increase"),
                "a latency increase is a percentage of at least 0",
            );
        }
        if strategy != Strategy::BlueGreen
            && let Some(preview) = &raw.preview
        {
            return self.error(
                preview.referenced,
                field(".preview"),
                "preview is for `strategy: blue-green` (a canary is judged at each step)",
            );
        }
        let mut preview = Preview::default();
        if let Some(raw_preview) = &raw.preview {
            let raw_preview = &raw_preview.value;
            if let Some(mirror) = &raw_preview.mirror {
                if !(0.0..=100.0).contains(&mirror.value.0) {
                    return self.error(
                        mirror.referenced,
                        field(".preview.mirror"),
                        "the mirrored share is a percentage in [0%, 100%] (0% switches without judging)",
                    );
                }
                preview.mirror_percent = mirror.value.0;
            }
            if let Some(min_requests) = raw_preview.min_requests {
                preview.min_requests = min_requests;
            }
            if let Some(min_duration) = raw_preview.min_duration {
                preview.min_duration_ms = min_duration.0;
            }
            preview.pause = match raw_preview.pause {
                None | Some(PauseValue::For(0)) => Pause::None,
                Some(PauseValue::For(ms)) => Pause::For(ms),
                Some(PauseValue::UntilPromoted) => Pause::UntilPromoted,
            };
        }
        if strategy != Strategy::Canary
            && let Some(log_errors) = &judge.log_errors
            && log_errors.value
        {
            return self.error(
                log_errors.referenced,
                field(".judge.log_errors"),
                "the log rule is for `strategy: canary`: a rolling rollout is not judged, and blue-green's mirrored requests write logs beside the live ones'",
            );
        }
        Ok(RolloutPolicy {
            strategy,
            max_surge,
            max_unavailable,
            min_healthy_time_ms: raw.min_healthy_time.map_or(5_000, |v| v.0),
            progress_deadline_ms: progress_deadline,
            steps,
            scale_down_delay_ms: raw.scale_down_delay.map_or(30_000, |v| v.0),
            preview,
            judge: JudgePolicy {
                max_error_ratio_increase: judge.max_error_ratio_increase.as_ref().map(|v| v.value),
                max_latency_increase_percent: judge
                    .max_latency_increase
                    .as_ref()
                    .map(|v| v.value.0),
                log_errors: judge.log_errors.as_ref().is_some_and(|v| v.value),
            },
        })
    }
}
