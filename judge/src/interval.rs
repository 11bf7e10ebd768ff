//! Anytime-valid confidence sequences for what the decision records show: a proportion (an error ratio, the share of
//! pairs where the canary was slower) and a quantile of latency. Both come from Robbins' beta-binomial mixture
//! (Robbins, "Statistical methods related to the law of the iterated logarithm", Ann. Math. Statist. 1970; Howard,
//! Ramdas, McAuliffe, Sekhon, "Time-uniform, nonparametric, nonasymptotic confidence sequences", Ann. Statist.
//! 2021, §3): with `k` successes in `n` trials of probability `p`, `M_n(p) = B(k+1, n-k+1) / (p^k (1-p)^(n-k))` is
//! a nonnegative martingale with `M_0 = 1`, so `{p : M_n(p) < 1/α}` covers `p` at every `n` at once with
//! probability at least `1 - α`.

use serde::{Deserialize, Serialize};

use crate::histogram::Histogram;

/// A closed interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// The lower bound.
    pub low: f64,
    /// The upper bound (`f64::INFINITY` when the data cannot bound it yet; serialized as `null`).
    #[serde(with = "finite_or_null")]
    pub high: f64,
}

/// `ln B(a, b)`.
fn ln_beta(a: f64, b: f64) -> f64 {
    libm::lgamma(a) + libm::lgamma(b) - libm::lgamma(a + b)
}

/// `ln M_n(p)` for `k` successes in `n` trials.
fn ln_mixture(k: u64, n: u64, p: f64) -> f64 {
    let (k, n) = (k as f64, n as f64);
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    ln_beta(k + 1.0, n - k + 1.0) - k * p.ln() - (n - k) * (1.0 - p).ln()
}

/// The `1 - alpha` confidence sequence of a proportion after `k` successes in `n` trials: `[0, 1]` before any
/// trial.
pub fn proportion(k: u64, n: u64, alpha: f64) -> Interval {
    let k = k.min(n);
    if n == 0 {
        return Interval {
            low: 0.0,
            high: 1.0,
        };
    }
    let bound = (1.0 / alpha).ln();
    let estimate = k as f64 / n as f64;
    let inside = |p: f64| ln_mixture(k, n, p) < bound;
    // `ln M_n` is convex in p with its minimum at k/n (where it is below 0 <= bound): bisect each side.
    let low = if k == 0 || inside(0.0) {
        0.0
    } else {
        bisect(0.0, estimate, &inside)
    };
    let high = if k == n || inside(1.0) {
        1.0
    } else {
        bisect(1.0, estimate, &inside)
    };
    Interval { low, high }
}

/// The boundary between `outside` (not in the set) and `inside` (in it), by 60 halvings.
fn bisect(mut outside: f64, mut inside_at: f64, inside: &impl Fn(f64) -> bool) -> f64 {
    for _ in 0..60 {
        let middle = (outside + inside_at) / 2.0;
        if inside(middle) {
            inside_at = middle;
        } else {
            outside = middle;
        }
    }
    inside_at
}

/// The `1 - alpha` confidence sequence of the `q`-quantile of the distribution `histogram` samples: the number of
/// samples at or below the true quantile is Binomial(n, q), so the counts `k` with `M_n(q) < 1/α` bound where it
/// falls among the order statistics. Bounds are the histogram's bucket edges (within its relative error).
pub fn quantile(histogram: &Histogram, q: f64, alpha: f64) -> Interval {
    let n = histogram.count();
    if n == 0 {
        return Interval {
            low: 0.0,
            high: f64::INFINITY,
        };
    }
    let bound = (1.0 / alpha).ln();
    let plausible = |k: u64| {
        // k samples at or below the quantile: the mixture over P(X <= ξ_q) at p = q.
        ln_mixture(k, n, q) < bound
    };
    // The plausible counts form an interval around n·q; find its ends by search from the centre.
    let centre = ((n as f64) * q).round().clamp(0.0, n as f64) as u64;
    let mut lowest = centre;
    while lowest > 0 && plausible(lowest - 1) {
        lowest -= 1;
    }
    let mut highest = centre;
    while highest < n && plausible(highest + 1) {
        highest += 1;
    }
    // With k samples at or below ξ_q, ξ_q lies in [X_(k), X_(k+1)].
    let low = if lowest == 0 {
        0.0
    } else {
        histogram.order_statistic(lowest)
    };
    let high = if highest >= n {
        f64::INFINITY
    } else {
        histogram.order_statistic(highest + 1)
    };
    Interval { low, high }
}

mod finite_or_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        if value.is_finite() {
            serializer.serialize_f64(*value)
        } else {
            serializer.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::INFINITY))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proportion_interval_holds_the_estimate_and_narrows() {
        let small = proportion(5, 50, 0.01);
        let large = proportion(500, 5_000, 0.01);
        for interval in [small, large] {
            assert!(interval.low < 0.1 && 0.1 < interval.high, "{interval:?}");
        }
        assert!(large.high - large.low < small.high - small.low);
        assert_eq!(
            proportion(0, 0, 0.01),
            Interval {
                low: 0.0,
                high: 1.0
            }
        );
        assert_eq!(proportion(0, 10, 0.01).low, 0.0);
        assert_eq!(proportion(10, 10, 0.01).high, 1.0);
    }

    #[test]
    fn a_quantile_interval_brackets_the_quantile() {
        let mut histogram = Histogram::default();
        for value in 1..=10_000u64 {
            histogram.record(value * 1_000);
        }
        let p50 = quantile(&histogram, 0.5, 0.01);
        assert!(
            p50.low < 5_000_000.0 * 1.02 && 5_000_000.0 < p50.high * 1.02,
            "{p50:?}"
        );
        let p99 = quantile(&histogram, 0.99, 0.01);
        assert!(
            p99.low < 9_900_000.0 * 1.02 && 9_900_000.0 < p99.high * 1.02,
            "{p99:?}"
        );
        let few = {
            let mut h = Histogram::default();
            h.record(1_000);
            quantile(&h, 0.99, 0.01)
        };
        assert!(
            few.high.is_infinite(),
            "one sample cannot bound a p99 from above"
        );
    }
}
