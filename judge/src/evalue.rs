//! The two e-processes of the judge. Each is a fixed-weight mixture, over a grid of alternatives, of likelihood
//! ratios that are test supermartingales under the null; a mixture of test supermartingales with fixed weights
//! summing to 1 is one too, so by Ville's inequality `P(sup_n E_n >= 1/α) <= α` under the null, however often the
//! process is looked at (Ramdas et al., "Game-theoretic statistics and safe anytime-valid inference", Statistical
//! Science 2023, §3).

use serde::{Deserialize, Serialize};

/// The error test: who gets each error. Requests go to the canary with probability `ρ` (the routers' weight, known
/// per request); if the canary's error ratio is `r` times the stable's, an error lands on the canary with probability
/// `θ(r) = ρr / (ρr + 1 - ρ)`. Under no regression (`r <= 1`) that is at most `ρ`, whatever the error ratios, the
/// traffic or its changes over time: conditioning on the errors removes them (Lindon, Ham, Tingley, Bojinov,
/// "Anytime-valid inference for multinomial count data", NeurIPS 2022; Lindon & Malek, "Rapid regression detection
/// in software deployments through sequential testing", KDD 2022, where counts are conditioned the same way).
///
/// For each alternative `r_j > 1` the ratio `θ(r_j)/ρ` (canary error) or `(1-θ(r_j))/(1-ρ)` (stable error) has
/// expectation at most 1 under any `r <= 1` (the likelihood ratio is monotone in `θ`), so each product is a test
/// supermartingale for the composite null.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorTest {
    /// ln of the likelihood ratio of each alternative of [`ERROR_RATIOS`].
    log_ratios: Vec<f64>,
}

/// The alternatives of the error test: the canary's error ratio as a multiple of the stable's.
pub const ERROR_RATIOS: [f64; 8] = [1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 200.0];
/// Their prior weights (sum 1), tuned on the simulation study (`sim`, figures in BENCHMARKS.md): a weight's price
/// is its ln, which matters most where evidence is scarce (a crash caught in a handful of requests), least for a
/// small regression that takes thousands of requests anyway.
pub const ERROR_WEIGHTS: [f64; 8] = [0.05, 0.15, 0.1, 0.15, 0.25, 0.1, 0.1, 0.1];

impl Default for ErrorTest {
    fn default() -> ErrorTest {
        ErrorTest {
            log_ratios: vec![0.0; ERROR_RATIOS.len()],
        }
    }
}

impl ErrorTest {
    /// Counts one error. `canary_share` is the probability, in (0, 1), that the router sent the request to the
    /// canary; `on_canary` whether it did.
    pub fn error(&mut self, canary_share: f64, on_canary: bool) {
        let rho = canary_share.clamp(1e-9, 1.0 - 1e-9);
        for (log_ratio, r) in self.log_ratios.iter_mut().zip(ERROR_RATIOS) {
            let theta = rho * r / (rho * r + 1.0 - rho);
            *log_ratio += if on_canary {
                (theta / rho).ln()
            } else {
                ((1.0 - theta) / (1.0 - rho)).ln()
            };
        }
    }

    /// The e-value now: the mixture of the alternatives' likelihood ratios.
    pub fn e_value(&self) -> f64 {
        mixture(&self.log_ratios, &ERROR_WEIGHTS)
    }
}

/// The latency test: a sign test on pairs. Each canary request is paired with a stable request that arrived near it
/// (the pairing never looks at the values), and scores 1 when the canary's latency exceeds the stable's times
/// `1 + δ` plus a slack `ε` (δ: the allowed increase; ε: a difference too small to count), else 0. Under the null
/// "the canary is not stochastically slower than that" (`X_c <=st (1+δ) X_s + ε`), a score is 1 with probability at
/// most 1/2 (ties score 0), so
/// each alternative `θ_j > 1/2` gives the test supermartingale `Π (θ_j / ½)^z ((1-θ_j) / ½)^(1-z)`. A shift of the
/// whole distribution, of its upper half or of its tail all raise `θ`; a tail-only shift raises it least.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyTest {
    /// ln of the likelihood ratio of each alternative of [`SLOWER_PROBABILITIES`].
    log_ratios: Vec<f64>,
    /// Pairs scored.
    pub pairs: u64,
    /// Pairs where the canary was slower.
    pub slower: u64,
}

/// The alternatives of the latency test: the probability that a canary request is slower than its paired stable
/// request.
pub const SLOWER_PROBABILITIES: [f64; 6] = [0.55, 0.6, 0.65, 0.75, 0.85, 0.95];
/// Their prior weights (sum 1).
pub const SLOWER_WEIGHTS: [f64; 6] = [0.15, 0.15, 0.2, 0.2, 0.15, 0.15];

impl Default for LatencyTest {
    fn default() -> LatencyTest {
        LatencyTest {
            log_ratios: vec![0.0; SLOWER_PROBABILITIES.len()],
            pairs: 0,
            slower: 0,
        }
    }
}

impl LatencyTest {
    /// Scores one pair.
    pub fn pair(&mut self, canary_slower: bool) {
        self.pairs += 1;
        self.slower += u64::from(canary_slower);
        for (log_ratio, theta) in self.log_ratios.iter_mut().zip(SLOWER_PROBABILITIES) {
            *log_ratio += if canary_slower {
                (theta / 0.5).ln()
            } else {
                ((1.0 - theta) / 0.5).ln()
            };
        }
    }

    /// The e-value now.
    pub fn e_value(&self) -> f64 {
        mixture(&self.log_ratios, &SLOWER_WEIGHTS)
    }
}

/// `Σ w_j exp(l_j)`, computed as a log-sum-exp so that large ratios do not overflow before the sum (the result is
/// capped at `f64::MAX`).
fn mixture(log_ratios: &[f64], weights: &[f64]) -> f64 {
    let top = log_ratios
        .iter()
        .zip(weights)
        .map(|(l, w)| l + w.ln())
        .fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = log_ratios
        .iter()
        .zip(weights)
        .map(|(l, w)| (l + w.ln() - top).exp())
        .sum();
    (top + sum.ln()).exp().min(f64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one() {
        assert!((ERROR_WEIGHTS.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((SLOWER_WEIGHTS.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn errors_on_the_canary_raise_the_e_value_and_on_the_stable_lower_it() {
        let mut test = ErrorTest::default();
        assert!((test.e_value() - 1.0).abs() < 1e-12, "starts at 1");
        test.error(0.1, true);
        let one = test.e_value();
        assert!(one > 1.0);
        test.error(0.1, false);
        assert!(test.e_value() < one);
    }

    #[test]
    fn each_ratio_is_a_supermartingale_at_the_null_boundary() {
        // E[ratio] under θ = ρ is exactly 1 for every alternative.
        for rho in [0.01, 0.1, 0.5, 0.9] {
            for r in ERROR_RATIOS {
                let theta = rho * r / (rho * r + 1.0 - rho);
                let expectation = rho * (theta / rho) + (1.0 - rho) * ((1.0 - theta) / (1.0 - rho));
                assert!((expectation - 1.0).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn mixture_does_not_overflow() {
        let mut test = LatencyTest::default();
        for _ in 0..5_000 {
            test.pair(true);
        }
        assert!(test.e_value().is_finite());
    }
}
