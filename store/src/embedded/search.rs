//! Reads: log search with cursors, the log histogram, traces by id, trace search and RED figures per service.
//!
//! Every function here is synchronous and runs on a blocking thread; partitions are searched newest first, and a
//! partition is skipped when it cannot overlap the range.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound as StdBound;

use gantry_proto::{
    HistogramBucket, LogRecord, RedPoint, RedSeries, ServiceEdge, ServiceMap, ServiceRow,
    SpanRecord, TraceSummary,
};
use gantry_query::Query;
use serde::de::DeserializeOwned;
use tantivy::collector::{Collector, SegmentCollector, TopDocs};
use tantivy::query::{BooleanQuery, Occur, Query as TantivyQuery, RangeQuery, TermQuery};
use tantivy::schema::{IndexRecordOption, Value};
use tantivy::{
    DocAddress, DocId, Order, Score, Searcher, SegmentOrdinal, SegmentReader, TantivyDocument, Term,
};

use super::compile::Compiler;
use super::copies;
use super::partitions::{Catalog, Partition};
use crate::budget::Budget;
use gantry_proto::Signal;

use super::schema::{Fields, StoredLog};
use crate::model::rfc3339;
use crate::{Cursor, LogPage, LogSearch, RedQuery, StoreError, TimeRange, TraceSearch};

/// Collects matching doc ids per segment, for reading fast fields afterwards.
pub struct DocIds;

/// The per-segment half of [`DocIds`].
pub struct SegmentDocIds {
    segment: SegmentOrdinal,
    docs: Vec<DocId>,
}

impl Collector for DocIds {
    type Fruit = Vec<(SegmentOrdinal, Vec<DocId>)>;
    type Child = SegmentDocIds;

    fn for_segment(
        &self,
        segment: SegmentOrdinal,
        _: &SegmentReader,
    ) -> tantivy::Result<SegmentDocIds> {
        Ok(SegmentDocIds {
            segment,
            docs: Vec::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(
        &self,
        fruits: Vec<Vec<(SegmentOrdinal, Vec<DocId>)>>,
    ) -> tantivy::Result<Self::Fruit> {
        Ok(fruits.into_iter().flatten().collect())
    }
}

impl SegmentCollector for SegmentDocIds {
    type Fruit = Vec<(SegmentOrdinal, Vec<DocId>)>;

    fn collect(&mut self, doc: DocId, _: Score) {
        self.docs.push(doc);
    }

    fn harvest(self) -> Self::Fruit {
        vec![(self.segment, self.docs)]
    }
}

/// Counts matching documents per time bucket straight from the `ts` column.
struct TsHistogram {
    from_ns: i64,
    width: i64,
    buckets: usize,
}

struct SegmentTsHistogram {
    ts: tantivy::columnar::Column<i64>,
    from_ns: i64,
    width: i64,
    counts: Vec<u64>,
}

impl Collector for TsHistogram {
    type Fruit = Vec<u64>;
    type Child = SegmentTsHistogram;

    fn for_segment(
        &self,
        _: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<SegmentTsHistogram> {
        Ok(SegmentTsHistogram {
            ts: segment.fast_fields().i64("ts")?,
            from_ns: self.from_ns,
            width: self.width,
            counts: vec![0; self.buckets],
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<Vec<u64>>) -> tantivy::Result<Vec<u64>> {
        let mut total = vec![0; self.buckets];
        for fruit in fruits {
            for (sum, count) in total.iter_mut().zip(fruit) {
                *sum += count;
            }
        }
        Ok(total)
    }
}

impl SegmentCollector for SegmentTsHistogram {
    type Fruit = Vec<u64>;

    fn collect(&mut self, doc: DocId, _: Score) {
        if let Some(ts) = self.ts.first(doc) {
            let last = self.counts.len() as i64 - 1;
            self.counts[((ts - self.from_ns) / self.width).clamp(0, last) as usize] += 1;
        }
    }

    fn harvest(self) -> Vec<u64> {
        self.counts
    }
}

/// The query of a partition: the user's query, within a time range.
#[allow(clippy::too_many_arguments)]
pub fn within(
    signal: Signal,
    fields: &Fields,
    searcher: &Searcher,
    budget: &Budget,
    query: &Query,
    lower: StdBound<i64>,
    upper: StdBound<i64>,
    extra: Vec<Box<dyn TantivyQuery>>,
) -> Result<Box<dyn TantivyQuery>, StoreError> {
    let mut clauses = vec![(
        Occur::Must,
        Compiler::new(signal, fields, searcher, budget).compile(query)?,
    )];
    let ts = |value: i64| Term::from_field_i64(fields.ts, value);
    clauses.push((
        Occur::Must,
        Box::new(RangeQuery::new(lower.map(ts), upper.map(ts))),
    ));
    clauses.extend(extra.into_iter().map(|query| (Occur::Must, query)));
    Ok(Box::new(BooleanQuery::new(clauses)))
}

/// The partitions of `signal` overlapping `range`; when there are none, `query` is still compiled (against an empty
/// index), so that a query the store refuses is refused whether or not there is data in the range.
pub fn searched(
    catalog: &Catalog,
    budget: &Budget,
    signal: Signal,
    range: &TimeRange,
    query: &Query,
) -> Result<Vec<std::sync::Arc<Partition>>, StoreError> {
    let partitions = catalog.overlapping(signal, range);
    if partitions.is_empty() {
        let fields = catalog.fields(signal);
        let empty = tantivy::Index::create_in_ram(fields.schema.clone());
        let searcher = empty.reader()?.searcher();
        Compiler::new(signal, fields, &searcher, budget).compile(query)?;
    }
    Ok(partitions)
}

/// Reads the row stored in a document.
pub fn stored<T: DeserializeOwned>(
    searcher: &Searcher,
    fields: &Fields,
    address: DocAddress,
) -> Result<T, StoreError> {
    let doc: TantivyDocument = searcher.doc(address)?;
    let bytes = doc
        .get_first(fields.doc)
        .and_then(|value| value.as_bytes())
        .ok_or_else(|| StoreError::Internal("a document lacks its stored row".to_owned()))?;
    serde_json::from_slice(bytes)
        .map_err(|error| StoreError::Internal(format!("a stored row is corrupt: {error}")))
}

/// A page of logs, newest first, resuming after a cursor.
pub fn search_logs(
    catalog: &Catalog,
    budget: &Budget,
    search: &LogSearch,
) -> Result<LogPage, StoreError> {
    let fields = catalog.fields(Signal::Logs);
    let (upper, mut skip) = match search.cursor {
        Some(cursor) => (StdBound::Included(cursor.ts_ns), cursor.seen_at_ts as usize),
        None => (StdBound::Excluded(search.range.to_ns), 0),
    };
    let range = TimeRange {
        from_ns: search.range.from_ns,
        to_ns: search
            .cursor
            .map_or(search.range.to_ns, |c| c.ts_ns.saturating_add(1)),
    };
    let mut hits: Vec<LogRecord> = Vec::new();
    for partition in searched(catalog, budget, Signal::Logs, &range, &search.query)? {
        budget.check()?;
        let searcher = partition.reader.searcher();
        let query = within(
            Signal::Logs,
            fields,
            &searcher,
            budget,
            &search.query,
            StdBound::Included(search.range.from_ns),
            upper,
            vec![],
        )?;
        let wanted = search.limit + 1 - hits.len() + skip;
        let top: Vec<(Option<i64>, DocAddress)> = budget.search(
            &searcher,
            &query,
            &TopDocs::with_limit(wanted).order_by_fast_field("ts", Order::Desc),
        )?;
        for (ts, address) in top {
            if skip > 0 && ts == search.cursor.map(|c| c.ts_ns) {
                skip -= 1;
                continue;
            }
            hits.push(stored::<StoredLog>(&searcher, fields, address)?.into());
        }
        skip = 0;
        if hits.len() > search.limit {
            break;
        }
    }
    let next = if hits.len() > search.limit {
        hits.truncate(search.limit);
        let last = hits
            .last()
            .expect("limit is at least 1")
            .timestamp_unix_nano;
        let mut seen = hits
            .iter()
            .filter(|hit| hit.timestamp_unix_nano == last)
            .count() as u32;
        if let Some(cursor) = search.cursor
            && cursor.ts_ns == last
        {
            seen += cursor.seen_at_ts;
        }
        Some(Cursor {
            ts_ns: last,
            seen_at_ts: seen,
        })
    } else {
        None
    };
    Ok(LogPage { hits, next })
}

/// Matching log counts per time bucket.
pub fn log_histogram(
    catalog: &Catalog,
    budget: &Budget,
    query: &Query,
    range: TimeRange,
    buckets: usize,
) -> Result<Vec<HistogramBucket>, StoreError> {
    let fields = catalog.fields(Signal::Logs);
    let width = ((range.to_ns - range.from_ns) / buckets as i64).max(1);
    let mut counts = vec![0u64; buckets];
    for partition in searched(catalog, budget, Signal::Logs, &range, query)? {
        budget.check()?;
        let searcher = partition.reader.searcher();
        let compiled = within(
            Signal::Logs,
            fields,
            &searcher,
            budget,
            query,
            StdBound::Included(range.from_ns),
            StdBound::Excluded(range.to_ns),
            vec![],
        )?;
        let partial = budget.search(
            &searcher,
            &compiled,
            &TsHistogram {
                from_ns: range.from_ns,
                width,
                buckets,
            },
        )?;
        for (total, count) in counts.iter_mut().zip(partial) {
            *total += count;
        }
    }
    Ok(counts
        .into_iter()
        .enumerate()
        .map(|(i, count)| HistogramBucket {
            start_unix_ms: (range.from_ns + i as i64 * width) / 1_000_000,
            count,
        })
        .collect())
}

fn spans_of(
    partition: &Partition,
    budget: &Budget,
    fields: &Fields,
    trace_id: &str,
) -> Result<Vec<SpanRecord>, StoreError> {
    let searcher = partition.reader.searcher();
    let query = TermQuery::new(
        Term::from_field_text(fields.trace_id.expect("spans schema"), trace_id),
        IndexRecordOption::Basic,
    );
    let mut spans = Vec::new();
    for (segment, docs) in budget.search(&searcher, &query, &DocIds)? {
        for doc in docs {
            budget.tick()?;
            spans.push(stored(&searcher, fields, DocAddress::new(segment, doc))?);
        }
    }
    Ok(spans)
}

/// Every span of a trace, each once (see [`copies`]), in start order, whatever partition it is in.
pub fn trace(
    catalog: &Catalog,
    budget: &Budget,
    trace_id: &str,
) -> Result<Vec<SpanRecord>, StoreError> {
    let fields = catalog.fields(Signal::Traces);
    let everything = TimeRange {
        from_ns: i64::MIN,
        to_ns: i64::MAX,
    };
    let mut spans = Vec::new();
    for partition in catalog.overlapping(Signal::Traces, &everything) {
        budget.check()?;
        spans.extend(spans_of(&partition, budget, fields, trace_id)?);
    }
    let mut spans = copies::unique(spans);
    spans.sort_by(|a: &SpanRecord, b| {
        a.start_unix_nano
            .cmp(&b.start_unix_nano)
            .then(a.span_id.cmp(&b.span_id))
    });
    Ok(spans)
}

/// A trace's summary from its spans.
pub fn summarize(trace_id: &str, spans: &[SpanRecord]) -> Option<TraceSummary> {
    let ids: HashSet<&str> = spans.iter().map(|span| span.span_id.as_str()).collect();
    let root = spans
        .iter()
        .find(|span| span.parent_span_id.is_empty())
        .or_else(|| {
            spans
                .iter()
                .find(|span| !ids.contains(span.parent_span_id.as_str()))
        })
        .or(spans.first())?;
    let start = spans.iter().map(|span| span.start_unix_nano).min()?;
    let end = spans.iter().map(|span| span.end_unix_nano).max()?;
    Some(TraceSummary {
        trace_id: trace_id.to_owned(),
        root_service: root.service.clone(),
        root_name: root.name.clone(),
        start_unix_nano: start,
        duration_ms: (end - start) as f64 / 1e6,
        span_count: spans.len() as u64,
        error: spans.iter().any(|span| span.status == "error"),
    })
}

/// Traces with a span matching the search, newest first.
pub fn search_traces(
    catalog: &Catalog,
    budget: &Budget,
    search: &TraceSearch,
) -> Result<Vec<TraceSummary>, StoreError> {
    let fields = catalog.fields(Signal::Traces);
    let mut ids: Vec<String> = Vec::new();
    for partition in searched(
        catalog,
        budget,
        Signal::Traces,
        &search.range,
        &search.query,
    )? {
        budget.check()?;
        let searcher = partition.reader.searcher();
        let mut extra: Vec<Box<dyn TantivyQuery>> = Vec::new();
        let exact = |field: tantivy::schema::Field, value: &str| -> Box<dyn TantivyQuery> {
            Box::new(TermQuery::new(
                Term::from_field_text(field, value),
                IndexRecordOption::Basic,
            ))
        };
        if let Some(service) = &search.service {
            extra.push(exact(fields.service, service));
        }
        if let Some(operation) = &search.operation {
            extra.push(exact(fields.name.expect("spans schema"), operation));
        }
        if let Some(ms) = search.min_duration_ms {
            let ns = (ms * 1e6).max(0.0) as u64;
            let field = fields.duration.expect("spans schema");
            extra.push(Box::new(RangeQuery::new(
                StdBound::Included(Term::from_field_u64(field, ns)),
                StdBound::Unbounded,
            )));
        }
        if search.errors_only {
            let field = fields.status.expect("spans schema");
            extra.push(Box::new(TermQuery::new(
                Term::from_field_u64(field, 2),
                IndexRecordOption::Basic,
            )));
        }
        let query = within(
            Signal::Traces,
            fields,
            &searcher,
            budget,
            &search.query,
            StdBound::Included(search.range.from_ns),
            StdBound::Excluded(search.range.to_ns),
            extra,
        )?;
        // Newest matching spans first; several may share a trace, so look further than the limit.
        let top: Vec<(Option<i64>, DocAddress)> = budget.search(
            &searcher,
            &query,
            &TopDocs::with_limit(search.limit * 20).order_by_fast_field("ts", Order::Desc),
        )?;
        let column = |segment: SegmentOrdinal| {
            searcher
                .segment_reader(segment)
                .fast_fields()
                .str("trace_id")
        };
        let mut columns = HashMap::new();
        for (_, address) in top {
            let column = match columns.entry(address.segment_ord) {
                std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::hash_map::Entry::Vacant(entry) => {
                    entry.insert(column(address.segment_ord)?)
                }
            };
            let Some(column) = column else {
                continue;
            };
            let mut id = String::new();
            if let Some(ord) = column.term_ords(address.doc_id).next() {
                column.ord_to_str(ord, &mut id)?;
            }
            if !id.is_empty() && !ids.contains(&id) {
                ids.push(id);
                if ids.len() == search.limit {
                    break;
                }
            }
        }
        if ids.len() == search.limit {
            break;
        }
    }
    let mut summaries = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(summary) = summarize(&id, &trace(catalog, budget, &id)?) {
            summaries.push(summary);
        }
    }
    Ok(summaries)
}

/// The requests of one group (service, version and maybe operation), bucketed by start time.
struct Red {
    /// Per bucket: durations (ns) and errors.
    buckets: Vec<(Vec<u64>, u64)>,
    last_seen: i64,
}

impl Red {
    fn new(buckets: usize) -> Red {
        Red {
            buckets: vec![(Vec::new(), 0); buckets],
            last_seen: 0,
        }
    }

    fn add(&mut self, bucket: usize, duration_ns: u64, error: bool, ts: i64) {
        if let Some((durations, errors)) = self.buckets.get_mut(bucket) {
            durations.push(duration_ns);
            *errors += u64::from(error);
        }
        self.last_seen = self.last_seen.max(ts);
    }
}

/// How [`red`] buckets and groups requests.
struct Grouping {
    from_ns: i64,
    step_ns: i64,
    buckets: usize,
    by_operation: bool,
    by_version: bool,
}

impl Grouping {
    fn bucket(&self, ts: i64) -> usize {
        (((ts - self.from_ns).max(0) / self.step_ns) as usize).min(self.buckets - 1)
    }
}

/// RED per service and version, from server and consumer spans, each span counted once.
pub fn services(
    catalog: &Catalog,
    budget: &Budget,
    range: TimeRange,
) -> Result<Vec<ServiceRow>, StoreError> {
    Ok(red(
        catalog,
        budget,
        &RedQuery {
            range,
            buckets: 1,
            service: None,
            by_operation: false,
            by_version: true,
        },
    )?
    .into_iter()
    .map(|series| series.total)
    .collect())
}

/// RED over time per service and version (or per operation and version of one service), from server and consumer
/// spans, each span counted once.
///
/// A partition is read twice from its fast fields: first the [`CopyKey`](copies::CopyKey) of every matching span,
/// then each span whose key no other span has is counted as it is; the few whose key repeats are read whole and
/// counted once each ([`copies::unique`]). Copies of a span share its start, so they are always in the same
/// partition. Besides the durations of the range, this holds about 24 bytes per matching span of one partition at a
/// time.
///
/// A routed service (one whose requests pass Gantry's service routers) gets its figures from the routers' spans
/// alone (`gantry.router: true`): they see every request, and counting the service's own server spans too would
/// count each request twice. Any other service gets them from its own server and consumer spans. Grouped by
/// operation, a routed service's routers' spans are named after the route, so its operations come from its own
/// spans.
///
/// # Errors
/// [`StoreError::Invalid`] for a bucket count outside 1-1000; the budget's errors.
pub fn red(
    catalog: &Catalog,
    budget: &Budget,
    query: &RedQuery,
) -> Result<Vec<RedSeries>, StoreError> {
    if !(1..=1000).contains(&query.buckets) {
        return Err(StoreError::Invalid(
            "`buckets` must be between 1 and 1000".to_owned(),
        ));
    }
    let range = query.range;
    let step_ns = ((range.to_ns - range.from_ns) / query.buckets as i64).max(1);
    let grouping = Grouping {
        from_ns: range.from_ns,
        step_ns,
        buckets: query.buckets,
        by_operation: query.by_operation,
        by_version: query.by_version,
    };
    let service_filter = query.service.as_ref().map(|service| Query::Term {
        field: Some("service".to_owned()),
        value: service.clone(),
    });
    let with_service = |filter: Query| match &service_filter {
        Some(service) => Query::And(vec![service.clone(), filter]),
        None => filter,
    };
    let router = Query::Term {
        field: Some("attributes.gantry.router".to_owned()),
        value: "true".to_owned(),
    };
    let own = red_groups(
        catalog,
        budget,
        &range,
        &with_service(Query::Not(Box::new(router.clone()))),
        &grouping,
    )?;
    let groups = if query.by_operation {
        own
    } else {
        let routed = red_groups(catalog, budget, &range, &with_service(router), &grouping)?;
        let routed_services: HashSet<String> = routed
            .keys()
            .map(|(service, _, _)| service.clone())
            .collect();
        let mut groups = routed;
        groups.extend(
            own.into_iter()
                .filter(|((service, _, _), _)| !routed_services.contains(service)),
        );
        groups
    };
    // A range reaching into the future only counts up to now for the request rate.
    let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
    let seconds = ((range.to_ns.min(now_ns) - range.from_ns) as f64 / 1e9).max(1e-3);
    Ok(groups
        .into_iter()
        .map(|((service, version, operation), red)| {
            let mut all: Vec<u64> = Vec::new();
            let mut errors = 0;
            let mut points = Vec::with_capacity(red.buckets.len());
            for (index, (mut durations, bucket_errors)) in red.buckets.into_iter().enumerate() {
                durations.sort_unstable();
                points.push(RedPoint {
                    start_unix_ms: (range.from_ns + index as i64 * step_ns) / 1_000_000,
                    requests: durations.len() as u64,
                    errors: bucket_errors,
                    p99_ms: percentile(&durations, 0.99) / 1e6,
                });
                errors += bucket_errors;
                all.extend(durations);
            }
            all.sort_unstable();
            let requests = all.len() as u64;
            let quantile = |q: f64| percentile(&all, q) / 1e6;
            RedSeries {
                total: ServiceRow {
                    service,
                    version,
                    requests,
                    errors,
                    request_rate: requests as f64 / seconds,
                    error_ratio: errors as f64 / requests.max(1) as f64,
                    p50_ms: quantile(0.5),
                    p95_ms: quantile(0.95),
                    p99_ms: quantile(0.99),
                    last_seen: rfc3339(red.last_seen),
                },
                operation,
                step_ms: step_ns / 1_000_000,
                points,
            }
        })
        .collect())
}

/// A group of [`red_groups`]: service, version and operation (empty unless grouped by operation).
type RedKey = (String, String, String);

/// The RED figures of the server and consumer spans matching `filter` in `range`, by service, version and (when
/// `grouping` says so) operation.
fn red_groups(
    catalog: &Catalog,
    budget: &Budget,
    range: &TimeRange,
    filter: &Query,
    grouping: &Grouping,
) -> Result<BTreeMap<RedKey, Red>, StoreError> {
    let fields = catalog.fields(Signal::Traces);
    let kind = fields.kind.expect("spans schema");
    let mut groups: BTreeMap<RedKey, Red> = BTreeMap::new();
    for partition in catalog.overlapping(Signal::Traces, range) {
        budget.check()?;
        let searcher = partition.reader.searcher();
        let kinds: Vec<Box<dyn TantivyQuery>> = vec![Box::new(BooleanQuery::new(
            [2u64, 5]
                .into_iter()
                .map(|n| {
                    let query: Box<dyn TantivyQuery> = Box::new(TermQuery::new(
                        Term::from_field_u64(kind, n),
                        IndexRecordOption::Basic,
                    ));
                    (Occur::Should, query)
                })
                .collect(),
        ))];
        let query = within(
            Signal::Traces,
            fields,
            &searcher,
            budget,
            filter,
            StdBound::Included(range.from_ns),
            StdBound::Excluded(range.to_ns),
            kinds,
        )?;
        let found = budget.search(&searcher, &query, &DocIds)?;
        let mut keys = Vec::with_capacity(found.len());
        let mut repeats = copies::Repeats::default();
        for (segment, docs) in &found {
            let fast = searcher.segment_reader(*segment).fast_fields();
            let segment_keys = match fast.str("trace_id")? {
                Some(trace_id) => {
                    copies::copy_keys(&trace_id, &fast.u64("kind")?, &fast.i64("ts")?, docs)?
                }
                None => Vec::new(),
            };
            segment_keys.iter().for_each(|key| repeats.note(*key));
            keys.push(segment_keys);
        }
        let mut candidates = Vec::new();
        for ((segment, docs), keys) in found.into_iter().zip(keys) {
            let fast = searcher.segment_reader(segment).fast_fields();
            let Some(service) = fast.str("service")? else {
                continue;
            };
            let version = if grouping.by_version {
                fast.str("version")?
            } else {
                None
            };
            let name = if grouping.by_operation {
                fast.str("name")?
            } else {
                None
            };
            let duration = fast.u64("duration")?;
            let status = fast.u64("status")?;
            let ts = fast.i64("ts")?;
            let mut names: HashMap<(u64, u64, u64), RedKey> = HashMap::new();
            for (i, doc) in docs.into_iter().enumerate() {
                budget.tick()?;
                if keys.get(i).is_some_and(|key| repeats.is_repeated(*key)) {
                    candidates.push(DocAddress::new(segment, doc));
                    continue;
                }
                let service_ord = service.term_ords(doc).next().unwrap_or(u64::MAX);
                let version_ord = version
                    .as_ref()
                    .and_then(|version| version.term_ords(doc).next())
                    .unwrap_or(u64::MAX);
                let name_ord = name
                    .as_ref()
                    .and_then(|name| name.term_ords(doc).next())
                    .unwrap_or(u64::MAX);
                let ords = (service_ord, version_ord, name_ord);
                let key = match names.get(&ords) {
                    Some(key) => key.clone(),
                    None => {
                        let (mut s, mut v, mut n) = (String::new(), String::new(), String::new());
                        if service_ord != u64::MAX {
                            service.ord_to_str(service_ord, &mut s)?;
                        }
                        if let (Some(version), true) = (&version, version_ord != u64::MAX) {
                            version.ord_to_str(version_ord, &mut v)?;
                        }
                        if let (Some(name), true) = (&name, name_ord != u64::MAX) {
                            name.ord_to_str(name_ord, &mut n)?;
                        }
                        names.insert(ords, (s.clone(), v.clone(), n.clone()));
                        (s, v, n)
                    }
                };
                let start = ts.first(doc).unwrap_or(0);
                groups
                    .entry(key)
                    .or_insert_with(|| Red::new(grouping.buckets))
                    .add(
                        grouping.bucket(start),
                        duration.first(doc).unwrap_or(0),
                        status.first(doc) == Some(2),
                        start,
                    );
            }
        }
        let mut spans = Vec::with_capacity(candidates.len());
        for address in candidates {
            spans.push(stored::<SpanRecord>(&searcher, fields, address)?);
        }
        for span in copies::unique(spans) {
            let operation = if grouping.by_operation {
                span.name.clone()
            } else {
                String::new()
            };
            let version = if grouping.by_version {
                span.version.clone()
            } else {
                String::new()
            };
            groups
                .entry((span.service.clone(), version, operation))
                .or_insert_with(|| Red::new(grouping.buckets))
                .add(
                    grouping.bucket(span.start_unix_nano),
                    (span.end_unix_nano - span.start_unix_nano).max(0) as u64,
                    span.status == "error",
                    span.start_unix_nano,
                );
        }
    }
    Ok(groups)
}

/// The most metric names [`metric_names`] returns.
pub const MAX_METRIC_NAMES: usize = 10_000;

/// The names of the metrics in the partitions overlapping `range`, from the term dictionaries of their `name`
/// field (a partition reaching past the range may add names only seen outside it), sorted.
///
/// # Errors
/// The budget's; a failing index read.
pub fn metric_names(
    catalog: &Catalog,
    budget: &Budget,
    range: TimeRange,
) -> Result<Vec<String>, StoreError> {
    let fields = catalog.fields(Signal::Metrics);
    let name = fields
        .name
        .ok_or_else(|| StoreError::Internal("the metrics schema lacks `name`".to_owned()))?;
    let mut names = std::collections::BTreeSet::new();
    for partition in catalog.overlapping(Signal::Metrics, &range) {
        budget.check()?;
        let searcher = partition.reader.searcher();
        for segment in searcher.segment_readers() {
            let index = segment.inverted_index(name)?;
            let mut terms = index.terms().stream()?;
            while terms.advance() {
                budget.tick()?;
                if let Ok(text) = std::str::from_utf8(terms.key()) {
                    names.insert(text.to_owned());
                }
                if names.len() >= MAX_METRIC_NAMES {
                    return Ok(names.into_iter().collect());
                }
            }
        }
    }
    Ok(names.into_iter().collect())
}

/// The service map of `range`: the newest `max_spans` spans (by start) are read whole; each server or consumer span
/// whose parent is a span of another service is one request from that service to its own, failed when its status
/// is an error. Spans of the range past the cap are counted but not read ([`ServiceMap::spans_read`] says how many
/// were); the map then covers the part of the range from the oldest span read.
///
/// # Errors
/// The budget's.
pub fn service_map(
    catalog: &Catalog,
    budget: &Budget,
    range: TimeRange,
    max_spans: usize,
) -> Result<ServiceMap, StoreError> {
    let fields = catalog.fields(Signal::Traces);
    // (start, partition index, address) of every span of the range; the newest `max_spans` are read.
    let partitions = catalog.overlapping(Signal::Traces, &range);
    let mut found: Vec<(i64, usize, DocAddress)> = Vec::new();
    for (index, partition) in partitions.iter().enumerate() {
        budget.check()?;
        let searcher = partition.reader.searcher();
        let query = within(
            Signal::Traces,
            fields,
            &searcher,
            budget,
            &Query::All,
            StdBound::Included(range.from_ns),
            StdBound::Excluded(range.to_ns),
            Vec::new(),
        )?;
        for (segment, docs) in budget.search(&searcher, &query, &DocIds)? {
            let ts = searcher.segment_reader(segment).fast_fields().i64("ts")?;
            for doc in docs {
                budget.tick()?;
                found.push((
                    ts.first(doc).unwrap_or(0),
                    index,
                    DocAddress::new(segment, doc),
                ));
            }
        }
    }
    let matched = found.len() as u64;
    if found.len() > max_spans {
        found.select_nth_unstable_by(max_spans, |a, b| b.0.cmp(&a.0));
        found.truncate(max_spans);
    }
    let covered_from_ns = found.iter().map(|f| f.0).min().unwrap_or(range.from_ns);
    let mut spans = Vec::with_capacity(found.len());
    let searchers: Vec<_> = partitions.iter().map(|p| p.reader.searcher()).collect();
    for (_, index, address) in &found {
        budget.tick()?;
        spans.push(stored::<SpanRecord>(&searchers[*index], fields, *address)?);
    }
    let spans = copies::unique(spans);
    let owner: HashMap<(&str, &str), &str> = spans
        .iter()
        .map(|s| {
            (
                (s.trace_id.as_str(), s.span_id.as_str()),
                s.service.as_str(),
            )
        })
        .collect();
    let mut edges: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    let mut services: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for span in &spans {
        let entry = services.entry(span.service.clone()).or_default();
        let serves = span.kind == "server" || span.kind == "consumer";
        let failed = span.status == "error";
        if serves {
            entry.0 += 1;
            entry.1 += u64::from(failed);
        }
        let parent = owner.get(&(span.trace_id.as_str(), span.parent_span_id.as_str()));
        if let (true, Some(parent)) = (serves, parent)
            && *parent != span.service
        {
            let edge = edges
                .entry(((*parent).to_owned(), span.service.clone()))
                .or_default();
            edge.0 += 1;
            edge.1 += u64::from(failed);
        }
    }
    Ok(ServiceMap {
        edges: edges
            .into_iter()
            .map(|((client, server), (requests, errors))| ServiceEdge {
                client,
                server,
                requests,
                errors,
            })
            .collect(),
        services: services
            .into_iter()
            .map(|(service, (requests, errors))| (service, requests, errors))
            .collect(),
        spans_read: spans.len() as u64,
        spans_matched: matched,
        covered_from_ns,
        took_ms: 0,
    })
}

/// Nearest-rank percentile of sorted values (0 when empty).
pub fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<u64> = (1..=100).collect();
        for (q, expected) in [
            (0.5, 50.0),
            (0.95, 95.0),
            (0.99, 99.0),
            (1.0, 100.0),
            (0.0, 1.0),
        ] {
            assert_eq!(percentile(&values, q), expected, "q={q}");
        }
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
