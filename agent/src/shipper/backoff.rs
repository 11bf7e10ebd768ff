//! Jittered exponential backoff: 100 ms doubling to 30 s, never shorter than the plane's `Retry-After`.

use std::time::Duration;

/// First delay.
pub const INITIAL: Duration = Duration::from_millis(100);
/// Longest delay the doubling reaches.
pub const MAX: Duration = Duration::from_secs(30);

/// Backoff state for one batch.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: INITIAL }
    }
}

impl Backoff {
    /// The delay before the next attempt: a random point in `[d/2, d]` of the current step `d`
    /// (which then doubles, up to [`MAX`]), or `retry_after` when that is longer.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(MAX);
        let jittered = jitter(step, rand::random::<f64>());
        retry_after.map_or(jittered, |after| after.max(jittered))
    }
}

/// `step` scaled into `[step/2, step]` by `unit` in `[0, 1)`.
fn jitter(step: Duration, unit: f64) -> Duration {
    step.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_jitter_and_honours_retry_after() {
        let mut backoff = Backoff::default();
        let mut step = INITIAL;
        for _ in 0..12 {
            let delay = backoff.next_delay(None);
            assert!(
                delay >= step / 2 && delay <= step,
                "{delay:?} for step {step:?}"
            );
            step = (step * 2).min(MAX);
        }
        assert_eq!(step, MAX);
        let mut fresh = Backoff::default();
        assert_eq!(
            fresh.next_delay(Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(jitter(Duration::from_secs(2), 0.0), Duration::from_secs(1));
        assert_eq!(jitter(Duration::from_secs(2), 1.0), Duration::from_secs(2));
    }
}
