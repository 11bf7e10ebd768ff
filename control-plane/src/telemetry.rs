//! Gantry's own metrics, rendered in the Prometheus text format at `/metrics`: counters and latency histograms
//! keyed by name and labels.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Upper bounds (seconds) of every latency histogram.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

type Key = (&'static str, String);

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The plane's own counters and histograms.
#[derive(Default)]
pub struct SelfMetrics {
    counters: Mutex<BTreeMap<Key, u64>>,
    histograms: Mutex<BTreeMap<Key, Histogram>>,
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let mut text = String::new();
    for (i, (key, value)) in pairs.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        let escaped = value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(text, "{key}=\"{escaped}\"");
    }
    text
}

impl SelfMetrics {
    /// Adds to a counter.
    pub fn add(&self, name: &'static str, pairs: &[(&str, &str)], value: u64) {
        *self
            .counters
            .lock()
            .expect("metrics lock poisoned")
            .entry((name, labels(pairs)))
            .or_default() += value;
    }

    /// Records one observation (seconds) in a histogram.
    pub fn observe(&self, name: &'static str, pairs: &[(&str, &str)], seconds: f64) {
        let mut histograms = self.histograms.lock().expect("metrics lock poisoned");
        let histogram = histograms.entry((name, labels(pairs))).or_default();
        for (bound, count) in BUCKETS.iter().zip(histogram.counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        histogram.count += 1;
        histogram.sum += seconds;
    }

    /// The Prometheus text exposition, with `gauges` (name, help, value) appended.
    pub fn render(&self, gauges: &[(&str, &str, f64)]) -> String {
        let mut out = String::new();
        let mut last = "";
        for ((name, labels), value) in self.counters.lock().expect("metrics lock poisoned").iter() {
            if *name != last {
                let _ = writeln!(out, "# TYPE {name} counter");
                last = name;
            }
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
        for ((name, labels), histogram) in self
            .histograms
            .lock()
            .expect("metrics lock poisoned")
            .iter()
        {
            if *name != last {
                let _ = writeln!(out, "# TYPE {name} histogram");
                last = name;
            }
            let sep = if labels.is_empty() { "" } else { "," };
            for (bound, count) in BUCKETS.iter().zip(histogram.counts) {
                let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
                histogram.count
            );
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", histogram.sum);
            let _ = writeln!(out, "{name}_count{{{labels}}} {}", histogram.count);
        }
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let metrics = SelfMetrics::default();
        metrics.add("gantry_x_total", &[("signal", "logs")], 2);
        metrics.add("gantry_x_total", &[("signal", "logs")], 3);
        metrics.observe("gantry_y_seconds", &[], 0.003);
        let text = metrics.render(&[("gantry_z", "a gauge", 7.0)]);
        assert!(text.contains("gantry_x_total{signal=\"logs\"} 5"), "{text}");
        assert!(
            text.contains("gantry_y_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gantry_y_seconds_bucket{le=\"0.0025\"} 0"),
            "{text}"
        );
        assert!(text.contains("gantry_z 7"), "{text}");
    }
}
