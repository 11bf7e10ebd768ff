//! A sparse histogram of latencies with log-spaced buckets (2% wide), small enough to keep in the rollout's row of
//! the state database and precise enough for quantiles and their confidence sequences.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Bucket `i` holds values in `[GROWTH^i, GROWTH^(i+1))` nanoseconds.
const GROWTH: f64 = 1.02;

/// Latencies in nanoseconds, bucketed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Count per bucket index.
    buckets: BTreeMap<u32, u64>,
    /// Samples.
    count: u64,
}

impl Histogram {
    /// Counts one latency, nanoseconds.
    pub fn record(&mut self, nanos: u64) {
        let index = (nanos.max(1) as f64).ln() / GROWTH.ln();
        *self.buckets.entry(index.floor() as u32).or_default() += 1;
        self.count += 1;
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `k`-th smallest sample (1-based), as its bucket's geometric middle, nanoseconds; 0 when empty.
    pub fn order_statistic(&self, k: u64) -> f64 {
        let mut seen = 0;
        for (index, count) in &self.buckets {
            seen += count;
            if seen >= k {
                return GROWTH.powf(f64::from(*index) + 0.5);
            }
        }
        self.buckets
            .keys()
            .next_back()
            .map_or(0.0, |index| GROWTH.powf(f64::from(*index) + 0.5))
    }

    /// The `q`-quantile (nearest rank), nanoseconds; 0 when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        let rank = ((self.count as f64) * q).ceil().max(1.0) as u64;
        self.order_statistic(rank.min(self.count))
    }
}

#[cfg(test)]
mod tests {
    use super::Histogram;

    #[test]
    fn quantiles_within_the_bucket_width() {
        let mut histogram = Histogram::default();
        for value in 1..=1000u64 {
            histogram.record(value * 1_000_000);
        }
        let p50 = histogram.quantile(0.5);
        assert!((p50 / 500e6 - 1.0).abs() < 0.02, "{p50}");
        let p99 = histogram.quantile(0.99);
        assert!((p99 / 990e6 - 1.0).abs() < 0.02, "{p99}");
        assert_eq!(Histogram::default().quantile(0.5), 0.0);
    }
}
