//! Simulated request streams, seeded and deterministic: the judge's tests and `gantry bench judge` run the same
//! scenarios. Requests go to the canary with probability `canary_share`; each fails with its version's error ratio;
//! latencies are log-normal (median `latency_median_ms`, log-sd `latency_sigma`), the canary's multiplied by
//! `canary_latency_factor` (so every quantile, the p99 among them, moves by that factor).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{Judge, JudgeConfig, Metric, Observation};

/// One simulated canary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scenario {
    /// The canary's share of requests, in (0, 1).
    pub canary_share: f64,
    /// The stable version's error ratio.
    pub stable_error: f64,
    /// The canary's error ratio.
    pub canary_error: f64,
    /// Median latency of the stable version, milliseconds.
    pub latency_median_ms: f64,
    /// Log-sd of latency.
    pub latency_sigma: f64,
    /// The canary's latency as a multiple of the stable's.
    pub canary_latency_factor: f64,
    /// The rollout ends (undetected) after this many canary requests.
    pub max_canary_requests: u64,
}

impl Scenario {
    /// Identical versions: 10% canary, 1% errors, 50 ms median.
    pub fn same(max_canary_requests: u64) -> Scenario {
        Scenario {
            canary_share: 0.1,
            stable_error: 0.01,
            canary_error: 0.01,
            latency_median_ms: 50.0,
            latency_sigma: 0.5,
            canary_latency_factor: 1.0,
            max_canary_requests,
        }
    }
}

/// How one simulated rollout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// The metric that failed the canary and the canary requests seen by then; `None`: never failed.
    pub detected: Option<(Metric, u64)>,
}

/// Runs one rollout of `scenario` with `seed`.
pub fn run(scenario: &Scenario, config: JudgeConfig, seed: u64) -> Run {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut judge = Judge::new(config);
    let mut time_ns = 0u64;
    while judge.canary_requests() < scenario.max_canary_requests {
        let canary = rng.random::<f64>() < scenario.canary_share;
        let error_ratio = if canary {
            scenario.canary_error
        } else {
            scenario.stable_error
        };
        let factor = if canary {
            scenario.canary_latency_factor
        } else {
            1.0
        };
        let latency_ms = scenario.latency_median_ms
            * (scenario.latency_sigma * standard_normal(&mut rng)).exp()
            * factor;
        time_ns += 1_000_000;
        let observation = Observation {
            canary,
            canary_share: scenario.canary_share,
            error: rng.random::<f64>() < error_ratio,
            latency_ns: (latency_ms * 1e6) as u64,
            trace_id: String::new(),
            time_ns,
        };
        if let Some(metric) = judge.observe(&observation) {
            return Run {
                detected: Some((metric, judge.canary_requests())),
            };
        }
    }
    Run { detected: None }
}

/// Runs one blue-green preview of `scenario` with `seed`: every request is mirrored, so both versions answer each
/// (independently, each with its error ratio and latency); `canary_share` is not used.
pub fn run_mirrored(scenario: &Scenario, config: JudgeConfig, seed: u64) -> Run {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut judge = Judge::new(config);
    let mut time_ns = 0u64;
    while judge.canary_requests() < scenario.max_canary_requests {
        let mut latency = |factor: f64| {
            let ms = scenario.latency_median_ms
                * (scenario.latency_sigma * standard_normal(&mut rng)).exp()
                * factor;
            (ms * 1e6) as u64
        };
        let (stable_latency_ns, canary_latency_ns) =
            (latency(1.0), latency(scenario.canary_latency_factor));
        time_ns += 1_000_000;
        let pair = crate::Pair {
            stable_error: rng.random::<f64>() < scenario.stable_error,
            canary_error: rng.random::<f64>() < scenario.canary_error,
            stable_latency_ns,
            canary_latency_ns,
            trace_id: String::new(),
            time_ns,
        };
        if let Some(metric) = judge.observe_pair(&pair) {
            return Run {
                detected: Some((metric, judge.canary_requests())),
            };
        }
    }
    Run { detected: None }
}

/// Runs one canary of `scenario` with the log rule on: each request writes `severity >= ERROR` log records with
/// probability `stable_logs` (stable) or `canary_logs` (canary), in bursts of one to four records of its trace,
/// besides failing with its error ratio; a record with no trace (a timer's) comes every 20 requests.
pub fn run_with_logs(scenario: &Scenario, stable_logs: f64, canary_logs: f64, seed: u64) -> Run {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut judge = Judge::new(JudgeConfig {
        log_errors: true,
        ..JudgeConfig::default()
    });
    let mut time_ns = 0u64;
    let mut request = 0u64;
    while judge.canary_requests() < scenario.max_canary_requests {
        request += 1;
        let canary = rng.random::<f64>() < scenario.canary_share;
        time_ns += 1_000_000;
        let trace_id = format!("{request:032x}");
        let observation = Observation {
            canary,
            canary_share: scenario.canary_share,
            error: rng.random::<f64>()
                < if canary {
                    scenario.canary_error
                } else {
                    scenario.stable_error
                },
            latency_ns: (scenario.latency_median_ms * 1e6) as u64,
            trace_id: trace_id.clone(),
            time_ns,
        };
        let mut crossed = judge.observe(&observation);
        if rng.random::<f64>() < if canary { canary_logs } else { stable_logs } {
            for _ in 0..rng.random_range(1..=4) {
                crossed = crossed.or(judge.observe_log_error(
                    canary,
                    scenario.canary_share,
                    time_ns,
                    &trace_id,
                ));
            }
        }
        if request.is_multiple_of(20) {
            crossed = crossed.or(judge.observe_log_error(true, scenario.canary_share, time_ns, ""));
        }
        if let Some(metric) = crossed {
            return Run {
                detected: Some((metric, judge.canary_requests())),
            };
        }
    }
    Run { detected: None }
}

/// The share of rollouts of `scenario` in which a one-sided Fisher exact test, run once after exactly `canary`
/// canary requests, finds the canary's error ratio above the stable's at level `alpha`. Fisher's test conditions
/// on the total errors as the judge does and is uniformly most powerful unbiased for this comparison at a fixed
/// sample size, so this bounds how often any valid test, sequential or not, can detect the regression by then.
pub fn fisher_limit(scenario: &Scenario, canary: u64, alpha: f64, runs: u64, seed: u64) -> f64 {
    let mut rejected = 0;
    for index in 0..runs {
        let mut rng = StdRng::seed_from_u64(seed + index);
        let (mut canary_requests, mut canary_errors, mut stable_requests, mut stable_errors) =
            (0u64, 0u64, 0u64, 0u64);
        while canary_requests < canary {
            if rng.random::<f64>() < scenario.canary_share {
                canary_requests += 1;
                canary_errors += u64::from(rng.random::<f64>() < scenario.canary_error);
            } else {
                stable_requests += 1;
                stable_errors += u64::from(rng.random::<f64>() < scenario.stable_error);
            }
        }
        let total = canary_requests + stable_requests;
        let errors = canary_errors + stable_errors;
        let p_value: f64 = (canary_errors..=errors.min(canary_requests))
            .map(|x| hypergeometric(x, errors, canary_requests, total))
            .sum();
        rejected += u64::from(errors > 0 && p_value <= alpha);
    }
    rejected as f64 / runs as f64
}

/// P(X = x) for X ~ Hypergeometric(draws, successes, population): `x` of `draws` errors fall on the `successes`
/// canary requests among `population` requests.
fn hypergeometric(x: u64, draws: u64, successes: u64, population: u64) -> f64 {
    let ln_choose = |n: u64, k: u64| {
        libm::lgamma(n as f64 + 1.0)
            - libm::lgamma(k as f64 + 1.0)
            - libm::lgamma((n - k) as f64 + 1.0)
    };
    if x > successes || draws - x > population - successes {
        return 0.0;
    }
    (ln_choose(successes, x) + ln_choose(population - successes, draws - x)
        - ln_choose(population, draws))
    .exp()
}

/// A standard normal draw (Box-Muller).
fn standard_normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Many rollouts of one scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Rollouts run.
    pub runs: u64,
    /// Rollouts failed by the judge.
    pub detected: u64,
    /// Rollouts failed on the error test.
    pub by_errors: u64,
    /// Median canary requests to the verdict among detected rollouts (undetected ones count as the scenario's
    /// maximum, so a median past it means "not caught in most").
    pub median_requests: u64,
    /// 90th percentile of the same.
    pub p90_requests: u64,
}

/// Runs `runs` rollouts of `scenario`, seeds `seed..seed + runs`.
pub fn study(scenario: &Scenario, config: JudgeConfig, runs: u64, seed: u64) -> Summary {
    summarize(scenario, runs, |index| run(scenario, config, seed + index))
}

/// [`study`] of blue-green previews on mirrored pairs ([`run_mirrored`]).
pub fn study_mirrored(scenario: &Scenario, config: JudgeConfig, runs: u64, seed: u64) -> Summary {
    summarize(scenario, runs, |index| {
        run_mirrored(scenario, config, seed + index)
    })
}

/// [`study`] with the log rule on ([`run_with_logs`]): each request writes an error log record with probability
/// `stable_logs` or `canary_logs`.
pub fn study_logs(
    scenario: &Scenario,
    (stable_logs, canary_logs): (f64, f64),
    runs: u64,
    seed: u64,
) -> Summary {
    summarize(scenario, runs, |index| {
        run_with_logs(scenario, stable_logs, canary_logs, seed + index)
    })
}

fn summarize(scenario: &Scenario, runs: u64, mut one: impl FnMut(u64) -> Run) -> Summary {
    let mut requests = Vec::with_capacity(runs as usize);
    let mut detected = 0;
    let mut by_errors = 0;
    for index in 0..runs {
        match one(index).detected {
            Some((metric, at)) => {
                detected += 1;
                by_errors += u64::from(metric == Metric::Errors);
                requests.push(at);
            }
            None => requests.push(scenario.max_canary_requests + 1),
        }
    }
    requests.sort_unstable();
    let rank = |q: f64| requests[((requests.len() as f64 - 1.0) * q).round() as usize];
    Summary {
        runs,
        detected,
        by_errors,
        median_requests: rank(0.5),
        p90_requests: rank(0.9),
    }
}

/// The study behind the tests and BENCHMARKS.md: (name, scenario, rollouts).
pub fn scenarios() -> Vec<(&'static str, Scenario, u64)> {
    let base = Scenario::same(2_000);
    vec![
        (
            "A/A: identical versions, 2,000 canary requests each",
            base,
            2_000,
        ),
        (
            "crash: canary 50% errors (stable 1%)",
            Scenario {
                canary_error: 0.5,
                max_canary_requests: 1_000,
                ..base
            },
            400,
        ),
        (
            "10x errors: canary 10% (stable 1%)",
            Scenario {
                canary_error: 0.1,
                max_canary_requests: 2_000,
                ..base
            },
            400,
        ),
        (
            "2x errors: canary 2% (stable 1%)",
            Scenario {
                canary_error: 0.02,
                max_canary_requests: 20_000,
                ..base
            },
            200,
        ),
        (
            "latency: canary +50% at every quantile (p99 +50%)",
            Scenario {
                canary_latency_factor: 1.5,
                max_canary_requests: 2_000,
                ..base
            },
            400,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Exposure, Verdict};

    #[test]
    fn the_study_meets_its_targets() {
        let config = JudgeConfig::default();
        let mut figures = Vec::new();
        for (name, scenario, runs) in scenarios() {
            let summary = study(&scenario, config, runs, 1);
            println!(
                "{name}: {runs} rollouts, failed {} ({} on errors), canary requests to the verdict: median {}, p90 {}",
                summary.detected, summary.by_errors, summary.median_requests, summary.p90_requests
            );
            figures.push(summary);
        }
        let false_rate = figures[0].detected as f64 / figures[0].runs as f64;
        assert!(
            false_rate <= config.alpha,
            "A/A false rollbacks {false_rate}"
        );
        // The crash target was 5: see BENCHMARKS.md for why the same-window error test cannot reach it at α = 1%.
        assert!(figures[1].median_requests <= 8, "crash: {:?}", figures[1]);
        assert!(figures[2].median_requests <= 50, "10x: {:?}", figures[2]);
        assert!(figures[3].median_requests <= 2_000, "2x: {:?}", figures[3]);
        assert!(
            figures[4].detected * 10 >= figures[4].runs * 9,
            "latency: {:?}",
            figures[4]
        );
    }

    #[test]
    fn mirrored_pairs_hold_alpha_and_catch_a_bad_green() {
        let config = JudgeConfig::default();
        let same = Scenario::same(1_000);
        let false_alarms = (0..500)
            .filter(|seed| run_mirrored(&same, config, *seed).detected.is_some())
            .count();
        println!("mirrored A/A: {false_alarms} of 500 previews failed");
        assert!(
            false_alarms as f64 / 500.0 <= config.alpha,
            "{false_alarms}"
        );
        let bad = Scenario {
            canary_error: 0.2,
            ..same
        };
        let mut at: Vec<u64> = (0..200)
            .map(|seed| {
                let run = run_mirrored(&bad, config, seed);
                assert!(matches!(run.detected, Some((Metric::Errors, _))), "{run:?}");
                run.detected.map_or(u64::MAX, |(_, n)| n)
            })
            .collect();
        at.sort_unstable();
        println!(
            "mirrored 20% errors: caught after a median of {} pairs",
            at[100]
        );
        assert!(at[100] <= 60, "{}", at[100]);
        let slow = Scenario {
            canary_latency_factor: 1.5,
            ..same
        };
        let caught = (0..200)
            .filter(|seed| {
                matches!(
                    run_mirrored(&slow, config, *seed).detected,
                    Some((Metric::Latency, _))
                )
            })
            .count();
        assert!(caught >= 190, "{caught}");
    }

    #[test]
    fn the_log_rule_holds_alpha_and_catches_more_error_logs() {
        let same = Scenario::same(1_000);
        // Bursts of records from one request, and records of no request, count as one request and as none.
        let false_alarms = (0..500)
            .filter(|seed| run_with_logs(&same, 0.05, 0.05, *seed).detected.is_some())
            .count();
        assert!(false_alarms <= 5, "{false_alarms}");
        let caught: Vec<Run> = (0..100)
            .map(|seed| run_with_logs(&same, 0.02, 0.2, seed))
            .collect();
        let by_logs = caught
            .iter()
            .filter(|run| matches!(run.detected, Some((Metric::Logs, _))))
            .count();
        assert!(by_logs >= 95, "{by_logs}");
        let judge = Judge::new(JudgeConfig::default());
        assert!(judge.record().logs.is_none(), "off by default");
    }

    #[test]
    fn the_fixed_sample_limit_grows_with_the_sample() {
        let (_, crash, _) = scenarios()[1];
        let alpha = JudgeConfig::default().alpha * crate::ERROR_SHARE;
        let at = |n| fisher_limit(&crash, n, alpha, 1_000, 1);
        let (five, twelve) = (at(5), at(12));
        println!(
            "fixed-sample Fisher exact test on crashes: rejects {:.0}% at 5 canary requests, {:.0}% at 12",
            five * 100.0,
            twelve * 100.0
        );
        assert!(five < twelve && twelve > 0.9, "{five} {twelve}");
        let (_, same, _) = scenarios()[0];
        assert!(
            fisher_limit(&same, 100, alpha, 1_000, 1) <= 0.02,
            "the test holds its level"
        );
    }

    #[test]
    fn a_canary_with_three_requests_by_its_deadline_is_inconclusive() {
        let mut judge = Judge::new(JudgeConfig::default());
        for index in 0..3 {
            judge.observe(&Observation {
                canary: true,
                canary_share: 0.05,
                error: false,
                latency_ns: 10_000_000,
                trace_id: format!("{index:032x}"),
                time_ns: index,
            });
        }
        let exposure = |elapsed_ms| Exposure {
            min_requests: 100,
            min_duration_ms: 30_000,
            deadline_ms: 300_000,
            elapsed_ms,
        };
        assert_eq!(judge.verdict(exposure(60_000)), Verdict::Continue);
        assert!(matches!(
            judge.verdict(exposure(300_000)),
            Verdict::Inconclusive(reason) if reason.contains("3 of the 100")
        ));
    }

    #[test]
    fn simulations_are_deterministic() {
        let scenario = Scenario {
            canary_error: 0.1,
            ..Scenario::same(2_000)
        };
        let config = JudgeConfig::default();
        assert_eq!(run(&scenario, config, 7), run(&scenario, config, 7));
    }

    #[test]
    fn a_judge_resumes_from_its_serialized_state() {
        let scenario = Scenario::same(100);
        let mut judge = Judge::new(JudgeConfig::default());
        let mut rng = StdRng::seed_from_u64(3);
        for time_ns in 0..500 {
            judge.observe(&Observation {
                canary: rng.random::<f64>() < scenario.canary_share,
                canary_share: scenario.canary_share,
                error: rng.random::<f64>() < 0.05,
                latency_ns: rng.random_range(1_000_000..9_000_000),
                trace_id: String::new(),
                time_ns,
            });
        }
        let text = serde_json::to_string(&judge).unwrap();
        let back: Judge = serde_json::from_str(&text).unwrap();
        assert_eq!(back.record(), judge.record());
    }
}
