//! Metric queries: the points of the matching series, aggregated per time step and per label group.
//!
//! Counters are handled by temporality: a cumulative series contributes its increase between consecutive points
//! (resets taken as a restart from zero), a delta series the sum of its points. A series' rate in a step is the mean
//! of its per-second rates between consecutive points there; the rates of the series of a group add up. Quantiles of histograms merge bucket counts.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound as StdBound;

use gantry_proto::MetricSeries;
use tantivy::DocAddress;
use tantivy::Term;
use tantivy::query::{Query as TantivyQuery, TermQuery};
use tantivy::schema::IndexRecordOption;

use super::partitions::Catalog;
use super::search::{DocIds, searched, stored, within};
use crate::budget::Budget;
use crate::model::{MetricKind, MetricPoint, value_text};
use crate::{Aggregation, MetricQuery, StoreError, TimeRange};
use gantry_proto::Signal;

/// Most points one query may read.
const MAX_POINTS: usize = 5_000_000;

/// One point of a series: time, value, and for histograms the count and bucket counts.
type Point = (i64, f64, Option<(u64, Vec<u64>)>);

struct Series {
    first: MetricPoint,
    /// `(ts, value, histogram counts)` in time order.
    points: Vec<Point>,
}

/// Runs a metric query.
pub fn query(
    catalog: &Catalog,
    budget: &Budget,
    query: &MetricQuery,
) -> Result<Vec<MetricSeries>, StoreError> {
    let step = query.step.as_nanos().max(1) as i64;
    // One step of history before the range gives cumulative series their starting value.
    let read = TimeRange {
        from_ns: query.range.from_ns - step,
        to_ns: query.range.to_ns,
    };
    let series = read_series(catalog, budget, query, &read)?;
    let buckets = ((query.range.to_ns - query.range.from_ns) + step - 1) / step;
    let mut groups: BTreeMap<BTreeMap<String, String>, Vec<Accumulator>> = BTreeMap::new();
    for series in series.values() {
        let labels = group_labels(&series.first, &query.group_by);
        let accumulators = groups
            .entry(labels)
            .or_insert_with(|| (0..buckets).map(|_| Accumulator::default()).collect());
        contribute(series, query, step, accumulators);
    }
    Ok(groups
        .into_iter()
        .map(|(labels, accumulators)| MetricSeries {
            labels,
            points: accumulators
                .into_iter()
                .enumerate()
                .filter_map(|(i, acc)| {
                    let value = acc.finish(query.aggregation)?;
                    Some(((query.range.from_ns + i as i64 * step) / 1_000_000, value))
                })
                .collect(),
        })
        .filter(|series| !series.points.is_empty())
        .collect())
}

fn read_series(
    catalog: &Catalog,
    budget: &Budget,
    query: &MetricQuery,
    range: &TimeRange,
) -> Result<HashMap<u64, Series>, StoreError> {
    let fields = catalog.fields(Signal::Metrics);
    let mut all: HashMap<u64, Series> = HashMap::new();
    let mut total = 0usize;
    for partition in searched(catalog, budget, Signal::Metrics, range, &query.filter)? {
        budget.check()?;
        let searcher = partition.reader.searcher();
        let name: Box<dyn TantivyQuery> = Box::new(TermQuery::new(
            Term::from_field_text(fields.name.expect("metrics schema"), &query.name),
            IndexRecordOption::Basic,
        ));
        let compiled = within(
            Signal::Metrics,
            fields,
            &searcher,
            budget,
            &query.filter,
            StdBound::Included(range.from_ns),
            StdBound::Excluded(range.to_ns),
            vec![name],
        )?;
        for (segment, docs) in budget.search(&searcher, &compiled, &DocIds)? {
            total += docs.len();
            if total > MAX_POINTS {
                return Err(StoreError::Invalid(format!(
                    "the query reads more than {MAX_POINTS} points: narrow the time range or the filter"
                )));
            }
            let fast = searcher.segment_reader(segment).fast_fields();
            let (hash, ts, value) = (fast.u64("series")?, fast.i64("ts")?, fast.f64("value")?);
            for doc in docs {
                budget.tick()?;
                let address = DocAddress::new(segment, doc);
                let key = hash.first(doc).unwrap_or(0);
                let series = match all.get_mut(&key) {
                    Some(series) => series,
                    None => {
                        let first: MetricPoint = stored(&searcher, fields, address)?;
                        all.entry(key).or_insert(Series {
                            first,
                            points: Vec::new(),
                        })
                    }
                };
                let histogram = if series.first.kind == MetricKind::Histogram {
                    let point: MetricPoint = stored(&searcher, fields, address)?;
                    point.histogram.map(|h| (h.count, h.counts))
                } else {
                    None
                };
                series.points.push((
                    ts.first(doc).unwrap_or(0),
                    value.first(doc).unwrap_or(0.0),
                    histogram,
                ));
            }
        }
    }
    for series in all.values_mut() {
        series.points.sort_by_key(|point| point.0);
    }
    Ok(all)
}

fn group_labels(point: &MetricPoint, group_by: &[String]) -> BTreeMap<String, String> {
    if group_by.is_empty() {
        let mut labels: BTreeMap<String, String> = point
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), value_text(v)))
            .collect();
        labels.insert("service.name".to_owned(), point.service.clone());
        return labels;
    }
    group_by
        .iter()
        .map(|key| {
            let value = point
                .attributes
                .get(key)
                .or_else(|| point.resource.get(key))
                .map(value_text)
                .unwrap_or_else(|| {
                    if key == "service" {
                        point.service.clone()
                    } else {
                        String::new()
                    }
                });
            (key.clone(), value)
        })
        .collect()
}

#[derive(Default)]
struct Accumulator {
    values: Vec<f64>,
    rate: Option<f64>,
    sum: Option<f64>,
    bounds: Option<Vec<f64>>,
    counts: Vec<u64>,
}

impl Accumulator {
    fn add_rate(&mut self, value: f64) {
        *self.rate.get_or_insert(0.0) += value;
    }

    fn add_sum(&mut self, value: f64) {
        *self.sum.get_or_insert(0.0) += value;
    }

    fn add_counts(&mut self, bounds: &[f64], counts: &[u64]) {
        // A point whose counts do not fit the series' bounds (a changed or malformed layout) cannot be merged.
        if counts.len() != bounds.len() + 1 {
            return;
        }
        match &self.bounds {
            None => {
                self.bounds = Some(bounds.to_vec());
                self.counts = counts.to_vec();
            }
            Some(known) if known.as_slice() == bounds && self.counts.len() == counts.len() => {
                for (total, n) in self.counts.iter_mut().zip(counts) {
                    *total += n;
                }
            }
            // Series with other bucket layouts cannot be merged exactly; they are left out of the quantile.
            Some(_) => {}
        }
    }

    fn finish(self, aggregation: Aggregation) -> Option<f64> {
        match aggregation {
            Aggregation::Rate => self.rate,
            Aggregation::Sum => self
                .sum
                .or_else(|| (!self.values.is_empty()).then(|| self.values.iter().sum())),
            Aggregation::Avg => (!self.values.is_empty())
                .then(|| self.values.iter().sum::<f64>() / self.values.len() as f64),
            Aggregation::Min => self.values.iter().copied().reduce(f64::min),
            Aggregation::Max => self.values.iter().copied().reduce(f64::max),
            Aggregation::Quantile(q) => match &self.bounds {
                Some(bounds) => histogram_quantile(bounds, &self.counts, q),
                None => {
                    let mut values = self.values;
                    values.sort_by(f64::total_cmp);
                    let rank =
                        ((q * values.len() as f64).ceil() as usize).clamp(1, values.len().max(1));
                    values.get(rank - 1).copied()
                }
            },
        }
    }
}

/// Adds one series' points to the accumulators of its group.
fn contribute(series: &Series, query: &MetricQuery, step: i64, accumulators: &mut [Accumulator]) {
    let kind = series.first.kind;
    let cumulative = series.first.cumulative;
    let bounds = series
        .first
        .histogram
        .as_ref()
        .map(|h| h.bounds.clone())
        .unwrap_or_default();
    let buckets = accumulators.len();
    let bucket_of = |ts: i64| -> Option<usize> {
        (ts >= query.range.from_ns && ts < query.range.to_ns)
            .then(|| ((ts - query.range.from_ns) / step) as usize)
            .filter(|i| *i < buckets)
    };
    let mut previous: Option<&Point> = None;
    let mut last_in_bucket: HashMap<usize, f64> = HashMap::new();
    // Per step: the sum and number of this series' per-second rates.
    let mut rates: HashMap<usize, (f64, u32)> = HashMap::new();
    for point in &series.points {
        let (ts, value, histogram) = point;
        let Some(index) = bucket_of(*ts) else {
            previous = Some(point);
            continue;
        };
        // The time an increase accrued over: since the previous point, or one step for the first.
        let seconds = previous.map_or(step, |(before, _, _)| (ts - before).max(1)) as f64 / 1e9;
        let mut add_increase = |amount: f64| {
            let rate = rates.entry(index).or_default();
            rate.0 += amount / seconds;
            rate.1 += 1;
        };
        let acc = &mut accumulators[index];
        match kind {
            MetricKind::Gauge => acc.values.push(*value),
            MetricKind::Sum | MetricKind::Summary => {
                if cumulative {
                    if let Some((_, before, _)) = previous {
                        let delta = value - before;
                        add_increase(if delta < 0.0 { *value } else { delta });
                    }
                    last_in_bucket.insert(index, *value);
                } else {
                    add_increase(*value);
                    acc.add_sum(*value);
                    acc.values.push(*value);
                }
            }
            MetricKind::Histogram => {
                let Some((count, counts)) = histogram else {
                    continue;
                };
                let (delta_count, delta_counts, delta_sum, known_increase) =
                    match (cumulative, previous) {
                        (true, Some((_, before_sum, Some((before_count, before_counts)))))
                            if count >= before_count && counts.len() == before_counts.len() =>
                        {
                            let deltas: Vec<u64> = counts
                                .iter()
                                .zip(before_counts)
                                .map(|(a, b)| a.saturating_sub(*b))
                                .collect();
                            (count - before_count, deltas, value - before_sum, true)
                        }
                        // A reset (the count went down): the point holds everything since the restart.
                        (true, Some(_)) => (*count, counts.clone(), *value, true),
                        // The first point of a cumulative series: its distribution since the sender started is the best
                        // estimate of the quantiles, but how much of it falls in this step is unknown, so no rate.
                        (true, None) => (*count, counts.clone(), *value, false),
                        (false, _) => (*count, counts.clone(), *value, true),
                    };
                acc.add_counts(&bounds, &delta_counts);
                if known_increase {
                    add_increase(delta_count as f64);
                    acc.add_sum(delta_sum);
                }
                if delta_count > 0 {
                    acc.values.push(delta_sum / delta_count as f64);
                }
            }
        }
        previous = Some(point);
    }
    for (index, (sum, n)) in rates {
        accumulators[index].add_rate(sum / f64::from(n));
    }
    // A cumulative counter's value at the end of each step: what `sum`, `avg`, `min` and `max` report.
    for (index, value) in last_in_bucket {
        let acc = &mut accumulators[index];
        acc.values.push(value);
        acc.add_sum(value);
    }
}

/// Linear interpolation inside the bucket that holds the quantile.
pub(crate) fn histogram_quantile(bounds: &[f64], counts: &[u64], q: f64) -> Option<f64> {
    if counts.len() != bounds.len() + 1 {
        return None;
    }
    let total = counts
        .iter()
        .fold(0u64, |total, n| total.saturating_add(*n));
    if total == 0 {
        return None;
    }
    let target = q * total as f64;
    let mut seen = 0.0;
    for (i, count) in counts.iter().enumerate() {
        let next = seen + *count as f64;
        if next >= target && *count > 0 {
            let lower = if i == 0 {
                0f64.min(bounds.first().copied().unwrap_or(0.0))
            } else {
                bounds.get(i - 1).copied().unwrap_or(0.0)
            };
            let Some(&upper) = bounds.get(i) else {
                return bounds.last().copied().or(Some(0.0));
            };
            let fraction = (target - seen) / *count as f64;
            return Some(lower + (upper - lower) * fraction);
        }
        seen = next;
    }
    bounds.last().copied()
}

#[cfg(test)]
mod tests {
    use super::histogram_quantile;

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let bounds = [10.0, 100.0];
        let check = |counts: &[u64], q: f64, expected: Option<f64>| {
            assert_eq!(
                histogram_quantile(&bounds, counts, q),
                expected,
                "{counts:?} q={q}"
            );
        };
        check(&[10, 0, 0], 0.5, Some(5.0));
        check(&[0, 10, 0], 0.5, Some(55.0));
        check(&[0, 0, 10], 0.99, Some(100.0));
        check(&[0, 0, 0], 0.5, None);
        assert_eq!(
            histogram_quantile(&[], &[1, 1], 0.5),
            None,
            "counts that do not fit the bounds"
        );
    }
}
