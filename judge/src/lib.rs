//! Gantry's canary judge: a canary version against its stable version, judged on every request as it arrives, with
//! tests whose false-alarm rate holds however often they are looked at.
//!
//! - **Errors**: who gets each error, given the routers' weights ([`evalue::ErrorTest`]). Needs no estimate of
//!   either version's error ratio, and compares the two over the same time window by construction.
//! - **Latency**: a sign test on pairs of canary and stable requests close in time ([`evalue::LatencyTest`]), with
//!   an optional allowed relative increase.
//! - **Error logs** (optional, the log rule): who gets each `severity >= ERROR` log record, given the routers'
//!   weights: the error test again, on log records instead of failed requests.
//!
//! Blue-green's new version takes no share of live traffic: it is judged on **mirrored pairs** instead
//! ([`Judge::observe_pair`]), each safe request answered by both versions. Errors become McNemar's comparison of
//! the discordant pairs (the error test at a share of 1/2), latency the sign test on exact pairs.
//!
//! The false-rollback rate `α` (default 1% per deployment) is split between the tests ([`ERROR_SHARE`], and
//! [`LOG_SHARE`] with the log rule); each test is a
//! test supermartingale under its null, so the chance that any ever crosses `1/α_m` for a canary no worse than
//! its stable is at most `α` (Ville's inequality). A verdict is [`Verdict::Fail`] the moment a test crosses,
//! [`Verdict::Pass`] once the step's minimum exposure is reached without a crossing, and
//! [`Verdict::Inconclusive`] when the step's deadline comes first: never a silent pass.
//!
//! Everything here is pure and serializable: the plane keeps a judge in its state database and resumes it after a
//! restart. `sim` simulates request streams for the tests and `gantry bench judge`.

pub mod evalue;
pub mod histogram;
pub mod interval;
pub mod sim;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use evalue::{ErrorTest, LatencyTest};
use histogram::Histogram;
use interval::Interval;

/// Canary requests kept waiting for a stable request to pair with, and stable requests kept for pairing, at most.
const PAIRING_QUEUE: usize = 64;
/// The error test's share of `α`; the latency test has the rest. Errors get more: they are what a bad release
/// shows first, and detection in a handful of requests is where the threshold costs most.
pub const ERROR_SHARE: f64 = 0.8;
/// The log rule's share of `α`, when it is on (taken from the latency test's: errors keep theirs).
pub const LOG_SHARE: f64 = 0.1;
/// Exemplar trace ids a record carries, at most.
pub const EXEMPLARS: usize = 5;
/// Trace ids the log rule remembers, so that a request's several error log records count once.
pub const LOGGED_TRACES: usize = 4096;

/// What the judge is asked to tolerate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct JudgeConfig {
    /// The false-rollback rate per deployment, in (0, 1): 0.01 by default.
    pub alpha: f64,
    /// An error-ratio increase (canary minus stable, absolute: 0.01 is one percentage point) too small to fail a
    /// canary for, even when it is certain; `None`: any certain increase fails it.
    pub max_error_ratio_increase: Option<f64>,
    /// The allowed relative latency increase (0.1: 10% slower); `None`: 0.
    pub max_latency_increase: Option<f64>,
    /// An absolute latency difference too small to count, nanoseconds ([`LATENCY_SLACK_NS`] by default): a new
    /// process's cold connections and caches, or another node, cost fractions of a millisecond that a sign test
    /// would otherwise find, given enough requests.
    #[serde(default = "default_slack")]
    pub latency_slack_ns: u64,
    /// The log rule: also compare `severity >= ERROR` log records per request ([`Judge::observe_log_error`]).
    #[serde(default)]
    pub log_errors: bool,
}

/// The default [`JudgeConfig::latency_slack_ns`]: 1 ms.
pub const LATENCY_SLACK_NS: u64 = 1_000_000;

fn default_slack() -> u64 {
    LATENCY_SLACK_NS
}

impl Default for JudgeConfig {
    fn default() -> JudgeConfig {
        JudgeConfig {
            alpha: 0.01,
            max_error_ratio_increase: None,
            max_latency_increase: None,
            latency_slack_ns: LATENCY_SLACK_NS,
            log_errors: false,
        }
    }
}

/// One request, as the judge sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Whether the canary served it (else the stable version).
    pub canary: bool,
    /// The probability, in [0, 1], that the router sent it to the canary (the canary's weight share when it was
    /// routed).
    pub canary_share: f64,
    /// Whether it failed (a 5xx, or no answer).
    pub error: bool,
    /// Its duration, nanoseconds.
    pub latency_ns: u64,
    /// Its trace id, hex (an exemplar when it is a failed or slow canary request).
    pub trace_id: String,
    /// When it ended, ns since the Unix epoch.
    pub time_ns: u64,
}

/// One mirrored request: the same request answered by the stable version (the live answer) and by the canary (a
/// copy the router sent it, whose answer was dropped). Blue-green's new version is judged on these.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    /// Whether the canary's answer failed (a 5xx, or none).
    pub canary_error: bool,
    /// Whether the stable version's answer failed.
    pub stable_error: bool,
    /// The canary's duration, nanoseconds.
    pub canary_latency_ns: u64,
    /// The stable version's duration, nanoseconds.
    pub stable_latency_ns: u64,
    /// The request's trace id, hex.
    pub trace_id: String,
    /// When the canary's answer came, ns since the Unix epoch.
    pub time_ns: u64,
}

/// A judged metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// The error ratio.
    Errors,
    /// Latency.
    Latency,
    /// `severity >= ERROR` log records per request (the log rule).
    Logs,
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Metric::Errors => "error ratio",
            Metric::Latency => "latency",
            Metric::Logs => "error logs",
        })
    }
}

/// A step's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "verdict", content = "reason")]
pub enum Verdict {
    /// Not decided yet.
    Continue,
    /// The minimum exposure is reached and no regression was found.
    Pass,
    /// A regression is established: abort at once.
    Fail(String),
    /// Too few canary requests by the step's deadline: hold and ask a human.
    Inconclusive(String),
}

/// What a step must see before it may pass, and how long it may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exposure {
    /// Canary requests at this step's weight.
    pub min_requests: u64,
    /// Time at this weight, milliseconds.
    pub min_duration_ms: u64,
    /// Past this time at this weight without enough requests, the step is inconclusive, milliseconds.
    pub deadline_ms: u64,
    /// Time at this weight so far, milliseconds.
    pub elapsed_ms: u64,
}

/// Per version: requests, errors and latency (of the requests that did not fail).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct VersionStats {
    requests: u64,
    errors: u64,
    latency: Histogram,
}

/// A judge over one deployment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Judge {
    config: JudgeConfig,
    errors: ErrorTest,
    latency: LatencyTest,
    canary: VersionStats,
    stable: VersionStats,
    /// Canary requests since the current step began.
    step_requests: u64,
    /// Stable latencies waiting to be paired, newest last.
    stable_waiting: VecDeque<u64>,
    /// Canary latencies waiting to be paired, oldest first.
    canary_waiting: VecDeque<u64>,
    /// Failed canary requests' trace ids, first ones.
    failed: Vec<String>,
    /// The slowest canary requests: (latency ns, trace id).
    slowest: Vec<(u64, String)>,
    /// The first and last observation, ns since the epoch.
    window: Option<(u64, u64)>,
    /// The first canary request's end, ns since the epoch.
    #[serde(default)]
    canary_first_ns: Option<u64>,
    /// The first metric to cross its threshold, once one has.
    failure: Option<Metric>,
    /// The log rule's test.
    #[serde(default)]
    logs: ErrorTest,
    /// Requests of the canary and of the stable version that wrote a `severity >= ERROR` log record.
    #[serde(default)]
    error_logs: (u64, u64),
    /// The trace ids of the newest requests counted by the log rule, oldest first.
    #[serde(default)]
    logged: VecDeque<String>,
    /// Whether the observations are mirrored pairs (blue-green) rather than routed requests.
    #[serde(default)]
    paired: bool,
}

impl Judge {
    /// A judge with no observation.
    pub fn new(config: JudgeConfig) -> Judge {
        Judge {
            config,
            errors: ErrorTest::default(),
            latency: LatencyTest::default(),
            canary: VersionStats::default(),
            stable: VersionStats::default(),
            step_requests: 0,
            stable_waiting: VecDeque::new(),
            canary_waiting: VecDeque::new(),
            failed: Vec::new(),
            slowest: Vec::new(),
            window: None,
            canary_first_ns: None,
            failure: None,
            logs: ErrorTest::default(),
            error_logs: (0, 0),
            logged: VecDeque::new(),
            paired: false,
        }
    }

    /// The error test's share of the false-rollback rate: `ERROR_SHARE · α`.
    pub fn error_alpha(&self) -> f64 {
        self.config.alpha * ERROR_SHARE
    }

    /// The latency test's share: the rest of `α` (less the log rule's, when it is on).
    pub fn latency_alpha(&self) -> f64 {
        self.config.alpha * (1.0 - ERROR_SHARE - self.log_share())
    }

    /// The log rule's share: `LOG_SHARE · α` when it is on, else 0.
    pub fn log_alpha(&self) -> f64 {
        self.config.alpha * self.log_share()
    }

    fn log_share(&self) -> f64 {
        if self.config.log_errors {
            LOG_SHARE
        } else {
            0.0
        }
    }

    fn widen_window(&mut self, time_ns: u64) {
        self.window = Some(match self.window {
            None => (time_ns, time_ns),
            Some((first, last)) => (first.min(time_ns), last.max(time_ns)),
        });
    }

    fn canary_seen(&mut self, time_ns: u64) {
        self.step_requests += 1;
        self.canary_first_ns = Some(
            self.canary_first_ns
                .map_or(time_ns, |first| first.min(time_ns)),
        );
    }

    /// Counts one mirrored pair and re-tests; returns the metric that crossed, the first time one does.
    ///
    /// Errors: McNemar's comparison, sequentially. A pair where exactly one version failed is discordant; when the
    /// canary's error ratio is no higher than the stable's, `P(canary failed, stable did not) <= P(stable failed,
    /// canary did not)`, so a discordant pair is the canary's with probability at most 1/2: the error test at a
    /// share of 1/2. Latency: each pair where both answered is scored by the sign test, as routed requests paired
    /// by time are.
    pub fn observe_pair(&mut self, pair: &Pair) -> Option<Metric> {
        self.paired = true;
        self.widen_window(pair.time_ns);
        self.canary_seen(pair.time_ns);
        self.canary.requests += 1;
        self.stable.requests += 1;
        self.canary.errors += u64::from(pair.canary_error);
        self.stable.errors += u64::from(pair.stable_error);
        if pair.canary_error != pair.stable_error {
            self.errors.error(0.5, pair.canary_error);
        }
        if pair.canary_error && self.failed.len() < EXEMPLARS {
            self.failed.push(pair.trace_id.clone());
        }
        if !pair.canary_error && !pair.stable_error {
            self.canary.latency.record(pair.canary_latency_ns);
            self.stable.latency.record(pair.stable_latency_ns);
            let factor = 1.0 + self.config.max_latency_increase.unwrap_or(0.0).max(0.0);
            let slack = self.config.latency_slack_ns as f64;
            self.latency.pair(
                pair.canary_latency_ns as f64 > pair.stable_latency_ns as f64 * factor + slack,
            );
            self.keep_slowest(pair.canary_latency_ns, &pair.trace_id);
        }
        self.retest()
    }

    /// Counts one `severity >= ERROR` log record of either version (the log rule; ignored when it is off) and
    /// re-tests. The rule judges **requests that wrote an error log**, not records: a failing request often writes
    /// several, and each would otherwise be a bet of its own on the same request. So a record counts once per
    /// `trace_id` (the request's trace; the newest [`LOGGED_TRACES`] are remembered), and a record with no trace id
    /// (a timer's, a start-up's: no request's) does not count. `canary_share` is the canary's share of requests
    /// when the record was written. Under "the canary's requests write an error log no more often than the
    /// stable's", a request that wrote one went to the canary with probability at most that share: the error
    /// test's argument, on requests with error logs.
    pub fn observe_log_error(
        &mut self,
        canary: bool,
        canary_share: f64,
        time_ns: u64,
        trace_id: &str,
    ) -> Option<Metric> {
        if !self.config.log_errors || trace_id.is_empty() {
            return None;
        }
        if self.logged.iter().any(|seen| seen == trace_id) {
            return None;
        }
        self.logged.push_back(trace_id.to_owned());
        while self.logged.len() > LOGGED_TRACES {
            self.logged.pop_front();
        }
        self.widen_window(time_ns);
        if canary {
            self.error_logs.0 += 1;
        } else {
            self.error_logs.1 += 1;
        }
        if canary_share > 0.0 && canary_share < 1.0 {
            self.logs.error(canary_share, canary);
        }
        self.retest()
    }

    fn retest(&mut self) -> Option<Metric> {
        if self.failure.is_none() {
            self.failure = self.crossed();
            return self.failure;
        }
        None
    }

    /// Counts one request and re-tests; returns the metric that crossed, the first time one does.
    pub fn observe(&mut self, observation: &Observation) -> Option<Metric> {
        self.widen_window(observation.time_ns);
        if observation.canary {
            self.canary_seen(observation.time_ns);
        }
        let stats = if observation.canary {
            &mut self.canary
        } else {
            &mut self.stable
        };
        stats.requests += 1;
        if observation.error {
            stats.errors += 1;
            if observation.canary_share > 0.0 && observation.canary_share < 1.0 {
                self.errors
                    .error(observation.canary_share, observation.canary);
            }
            if observation.canary && self.failed.len() < EXEMPLARS {
                self.failed.push(observation.trace_id.clone());
            }
        } else {
            stats.latency.record(observation.latency_ns);
            if observation.canary {
                self.canary_waiting.push_back(observation.latency_ns);
                self.keep_slowest(observation.latency_ns, &observation.trace_id);
            } else {
                self.stable_waiting.push_back(observation.latency_ns);
            }
            self.pair();
        }
        self.retest()
    }

    /// Pairs waiting canary requests with the newest waiting stable ones (the pairing never looks at the values).
    fn pair(&mut self) {
        let factor = 1.0 + self.config.max_latency_increase.unwrap_or(0.0).max(0.0);
        let slack = self.config.latency_slack_ns as f64;
        while !self.canary_waiting.is_empty() && !self.stable_waiting.is_empty() {
            let (Some(canary), Some(stable)) = (
                self.canary_waiting.pop_front(),
                self.stable_waiting.pop_back(),
            ) else {
                break;
            };
            self.latency
                .pair(canary as f64 > stable as f64 * factor + slack);
        }
        while self.stable_waiting.len() > PAIRING_QUEUE {
            self.stable_waiting.pop_front();
        }
        while self.canary_waiting.len() > PAIRING_QUEUE {
            self.canary_waiting.pop_front();
        }
    }

    fn keep_slowest(&mut self, latency_ns: u64, trace_id: &str) {
        self.slowest.push((latency_ns, trace_id.to_owned()));
        self.slowest
            .sort_by_key(|(latency, _)| std::cmp::Reverse(*latency));
        self.slowest.truncate(EXEMPLARS);
    }

    /// The metric whose test crossed its threshold (errors first), if any.
    fn crossed(&self) -> Option<Metric> {
        let increase = self.ratio(&self.canary) - self.ratio(&self.stable);
        let large_enough = self
            .config
            .max_error_ratio_increase
            .is_none_or(|allowed| increase > allowed);
        if self.errors.e_value() >= 1.0 / self.error_alpha() && large_enough {
            return Some(Metric::Errors);
        }
        if self.latency.e_value() >= 1.0 / self.latency_alpha() {
            return Some(Metric::Latency);
        }
        if self.config.log_errors && self.logs.e_value() >= 1.0 / self.log_alpha() {
            return Some(Metric::Logs);
        }
        None
    }

    fn ratio(&self, stats: &VersionStats) -> f64 {
        if stats.requests == 0 {
            0.0
        } else {
            stats.errors as f64 / stats.requests as f64
        }
    }

    /// Starts a new step: exposure counts from here (the tests go on over the whole deployment).
    pub fn begin_step(&mut self) {
        self.step_requests = 0;
    }

    /// Canary requests since the step began.
    pub fn step_requests(&self) -> u64 {
        self.step_requests
    }

    /// Canary requests over the deployment.
    pub fn canary_requests(&self) -> u64 {
        self.canary.requests
    }

    /// The first metric that crossed, if one has.
    pub fn failure(&self) -> Option<Metric> {
        self.failure
    }

    /// The step's verdict given its exposure so far.
    pub fn verdict(&self, exposure: Exposure) -> Verdict {
        let (new, old) = if self.paired {
            ("the new version", "the live version")
        } else {
            ("the canary", "the stable")
        };
        if let Some(metric) = self.failure {
            let record = self.record();
            return Verdict::Fail(match metric {
                Metric::Errors => format!(
                    "{new}'s error ratio {:.2}% ({} of {}) is above {old}'s {:.2}% ({} of {}) (e-value {} >= {:.0})",
                    record.errors.canary.ratio * 100.0,
                    record.errors.canary.errors,
                    record.errors.canary.requests,
                    record.errors.stable.ratio * 100.0,
                    record.errors.stable.errors,
                    record.errors.stable.requests,
                    compact(record.errors.e_value),
                    record.errors.threshold
                ),
                Metric::Latency => format!(
                    "{new} is slower than {old}: {} of {} paired requests slower by more than {:.0}% and {:.1} ms (e-value {} >= {:.0}); p99 {:.1} ms against {:.1} ms",
                    record.latency.slower,
                    record.latency.pairs,
                    self.config.max_latency_increase.unwrap_or(0.0) * 100.0,
                    self.config.latency_slack_ns as f64 / 1e6,
                    compact(record.latency.e_value),
                    record.latency.threshold,
                    record.latency.canary.p99_ms,
                    record.latency.stable.p99_ms
                ),
                Metric::Logs => {
                    let logs = record.logs.as_ref();
                    format!(
                        "more of the canary's requests write error logs: {:.3} ({} of {}) against the stable's {:.3} ({} of {}) (e-value {} >= {:.0})",
                        logs.map_or(0.0, |l| l.canary_per_request),
                        logs.map_or(0, |l| l.canary),
                        record.errors.canary.requests,
                        logs.map_or(0.0, |l| l.stable_per_request),
                        logs.map_or(0, |l| l.stable),
                        record.errors.stable.requests,
                        compact(logs.map_or(0.0, |l| l.e_value)),
                        logs.map_or(0.0, |l| l.threshold)
                    )
                }
            });
        }
        if self.step_requests >= exposure.min_requests
            && exposure.elapsed_ms >= exposure.min_duration_ms
        {
            return Verdict::Pass;
        }
        if exposure.elapsed_ms >= exposure.deadline_ms {
            return Verdict::Inconclusive(format!(
                "the canary served {} of the {} requests this step needs within its deadline of {} s: too few to judge",
                self.step_requests,
                exposure.min_requests,
                exposure.deadline_ms / 1000
            ));
        }
        Verdict::Continue
    }

    /// The decision record of the judge's state now: each metric's estimates for both versions with their
    /// anytime-valid intervals, the e-values and thresholds, counts, the window and exemplars.
    pub fn record(&self) -> Record {
        let (error_alpha, latency_alpha) = (self.error_alpha(), self.latency_alpha());
        let rate = |stats: &VersionStats| Rate {
            requests: stats.requests,
            errors: stats.errors,
            ratio: self.ratio(stats),
            interval: interval::proportion(stats.errors, stats.requests, error_alpha),
        };
        let latency = |stats: &VersionStats| Latency {
            samples: stats.latency.count(),
            p50_ms: stats.latency.quantile(0.5) / 1e6,
            p99_ms: stats.latency.quantile(0.99) / 1e6,
            p99_interval_ms: {
                let ns = interval::quantile(&stats.latency, 0.99, latency_alpha);
                Interval {
                    low: ns.low / 1e6,
                    high: ns.high / 1e6,
                }
            },
        };
        let mut exemplars = self.failed.clone();
        for (_, trace) in &self.slowest {
            if exemplars.len() >= EXEMPLARS {
                break;
            }
            if !exemplars.contains(trace) {
                exemplars.push(trace.clone());
            }
        }
        Record {
            alpha: self.config.alpha,
            window_start_ns: self.window.map_or(0, |w| w.0),
            window_end_ns: self.window.map_or(0, |w| w.1),
            canary_first_ns: self.canary_first_ns.unwrap_or(0),
            errors: ErrorRecord {
                canary: rate(&self.canary),
                stable: rate(&self.stable),
                e_value: self.errors.e_value(),
                threshold: 1.0 / error_alpha,
                max_increase: self.config.max_error_ratio_increase,
            },
            latency: LatencyRecord {
                canary: latency(&self.canary),
                stable: latency(&self.stable),
                pairs: self.latency.pairs,
                slower: self.latency.slower,
                slower_interval: interval::proportion(
                    self.latency.slower,
                    self.latency.pairs,
                    latency_alpha,
                ),
                e_value: self.latency.e_value(),
                threshold: 1.0 / latency_alpha,
                max_increase: self.config.max_latency_increase,
                slack_ms: self.config.latency_slack_ns as f64 / 1e6,
            },
            logs: self.config.log_errors.then(|| {
                let per_request = |logs: u64, stats: &VersionStats| {
                    if stats.requests == 0 {
                        0.0
                    } else {
                        logs as f64 / stats.requests as f64
                    }
                };
                LogRecord {
                    canary: self.error_logs.0,
                    stable: self.error_logs.1,
                    canary_per_request: per_request(self.error_logs.0, &self.canary),
                    stable_per_request: per_request(self.error_logs.1, &self.stable),
                    e_value: self.logs.e_value(),
                    threshold: 1.0 / self.log_alpha(),
                }
            }),
            paired: self.paired,
            exemplars,
        }
    }
}

/// An e-value for people: `1234`, or `3.2e9` past a million.
pub fn compact(e_value: f64) -> String {
    if e_value >= 1e6 {
        format!("{e_value:.1e}")
    } else if e_value >= 10.0 {
        format!("{e_value:.0}")
    } else {
        format!("{e_value:.2}")
    }
}

/// What the judge knew at a verdict: see [`Judge::record`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The deployment's false-rollback rate (each metric's test and intervals use its share).
    pub alpha: f64,
    /// The first observation's end time, ns since the epoch (0: none yet).
    pub window_start_ns: u64,
    /// The last observation's end time, ns since the epoch.
    pub window_end_ns: u64,
    /// The canary's first request's end time, ns since the epoch (0: none yet).
    #[serde(default)]
    pub canary_first_ns: u64,
    /// The error ratio.
    pub errors: ErrorRecord,
    /// Latency.
    pub latency: LatencyRecord,
    /// The log rule's figures, when it is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<LogRecord>,
    /// Whether the versions were compared on mirrored pairs (blue-green: each request answered by both) rather
    /// than on the routers' split of live requests.
    #[serde(default)]
    pub paired: bool,
    /// Trace ids of failed canary requests, then of the slowest ones, at most [`EXEMPLARS`].
    pub exemplars: Vec<String>,
}

/// The log rule's part of a record: requests of each version that wrote a `severity >= ERROR` log record, over
/// the same window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// The canary's requests with an error log.
    pub canary: u64,
    /// The stable version's.
    pub stable: u64,
    /// The canary's per request.
    pub canary_per_request: f64,
    /// The stable version's per request.
    pub stable_per_request: f64,
    /// The e-value.
    pub e_value: f64,
    /// The e-value that fails the canary: `1 / (LOG_SHARE · α)`.
    pub threshold: f64,
}

/// One version's error ratio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    /// Requests.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// `errors / requests` (0 without requests).
    pub ratio: f64,
    /// Its anytime-valid interval.
    pub interval: Interval,
}

/// The error test's part of a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorRecord {
    /// The canary.
    pub canary: Rate,
    /// The stable version, over the same window.
    pub stable: Rate,
    /// The e-value.
    pub e_value: f64,
    /// The e-value that fails the canary: `1 / (ERROR_SHARE · α)`.
    pub threshold: f64,
    /// The smallest increase that may fail the canary, absolute.
    pub max_increase: Option<f64>,
}

/// One version's latency (of requests that did not fail).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Requests measured.
    pub samples: u64,
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// The 99th percentile's anytime-valid interval, milliseconds.
    pub p99_interval_ms: Interval,
}

/// The latency test's part of a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyRecord {
    /// The canary.
    pub canary: Latency,
    /// The stable version, over the same window.
    pub stable: Latency,
    /// Pairs scored.
    pub pairs: u64,
    /// Pairs where the canary was slower (than the stable times `1 + max_increase`).
    pub slower: u64,
    /// The anytime-valid interval of the share of pairs where the canary is slower (0.5: no difference).
    pub slower_interval: Interval,
    /// The e-value.
    pub e_value: f64,
    /// The e-value that fails the canary.
    pub threshold: f64,
    /// The allowed relative increase.
    pub max_increase: Option<f64>,
    /// The absolute difference too small to count, milliseconds.
    #[serde(default)]
    pub slack_ms: f64,
}
