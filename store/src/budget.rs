//! The cost budget of one query: a deadline, a cap on the index terms it may examine while expanding ranges and
//! prefixes, a stop as soon as its caller is gone, and a gate that lets only a few *expensive* queries run at once.
//!
//! A query starts cheap. Once it has worked for [`QueryLimits::expensive_after`] it is expensive, and must hold one
//! of [`QueryLimits::max_expensive`] permits to go on: it waits for one (its deadline still running) and gives it
//! back when it ends. So a burst of heavy queries runs a few at a time and leaves the other cores to ingest and to
//! cheap queries, which never wait: the admission scheme of ClickHouse's `max_concurrent_queries` applied only to
//! the queries that turned out to be heavy, rather than to every query.
//!
//! The work checks its budget at checkpoints: every [`CHECK_EVERY`] terms examined or documents read, before each
//! partition and before each index segment is searched. Between two checkpoints (one segment's scoring) a query
//! cannot be stopped.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tantivy::collector::Collector;
use tantivy::{Searcher, SegmentOrdinal, SegmentReader, TantivyError};

use crate::StoreError;

/// Work units (terms examined, documents read) between two looks at the clock and the cancel flag.
pub const CHECK_EVERY: u64 = 1024;

/// No leaf is being compiled.
const NO_LEAF: usize = usize::MAX;

/// The limits every query runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// Longest a query may run, waiting for a permit included; beyond it the query ends with
    /// [`StoreError::TooExpensive`].
    pub timeout: Duration,
    /// Most index terms a query may examine while expanding attribute ranges and prefixes, summed over its clauses
    /// and the partitions it searches.
    pub max_expanded_terms: u64,
    /// Expensive queries that may run at once; more wait for a permit.
    pub max_expensive: usize,
    /// Work after which a query counts as expensive.
    pub expensive_after: Duration,
}

impl QueryLimits {
    /// 30 s, 10,000,000 terms (about a second of work), half the cores (at least one) for expensive queries, which
    /// are those running longer than 100 ms.
    pub fn default_embedded() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            timeout: Duration::from_secs(30),
            max_expanded_terms: 10_000_000,
            max_expensive: (cores / 2).max(1),
            expensive_after: Duration::from_millis(100),
        }
    }

    /// No limit at all (internal reads and tests).
    pub fn unlimited() -> Self {
        Self {
            timeout: Duration::from_secs(365 * 24 * 3600),
            max_expanded_terms: u64::MAX,
            max_expensive: usize::MAX,
            expensive_after: Duration::from_secs(365 * 24 * 3600),
        }
    }
}

/// Counts of how queries ended and how many are expensive now, for `/metrics`.
#[derive(Debug, Default)]
pub struct QueryCounters {
    /// Expensive queries holding a permit now.
    pub expensive_running: AtomicU64,
    /// Expensive queries waiting for a permit now.
    pub expensive_waiting: AtomicU64,
    /// Queries ended by the term cap, since start.
    pub refused_expanded_terms: AtomicU64,
    /// Queries ended by their deadline while working, since start.
    pub refused_timeout: AtomicU64,
    /// Queries ended by their deadline while waiting for a permit, since start.
    pub refused_busy: AtomicU64,
    /// Queries stopped because their caller went away, since start.
    pub cancelled: AtomicU64,
}

/// A snapshot of [`QueryCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryStats {
    /// Expensive queries holding a permit.
    pub expensive_running: u64,
    /// Expensive queries waiting for a permit.
    pub expensive_waiting: u64,
    /// Queries ended by the term cap, since start.
    pub refused_expanded_terms: u64,
    /// Queries ended by their deadline while working, since start.
    pub refused_timeout: u64,
    /// Queries ended by their deadline while waiting for a permit, since start.
    pub refused_busy: u64,
    /// Queries stopped because their caller went away, since start.
    pub cancelled: u64,
}

impl QueryCounters {
    /// The counts now.
    pub fn snapshot(&self) -> QueryStats {
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        QueryStats {
            expensive_running: get(&self.expensive_running),
            expensive_waiting: get(&self.expensive_waiting),
            refused_expanded_terms: get(&self.refused_expanded_terms),
            refused_timeout: get(&self.refused_timeout),
            refused_busy: get(&self.refused_busy),
            cancelled: get(&self.cancelled),
        }
    }
}

/// The permits of expensive queries.
#[derive(Debug)]
pub struct Gate {
    running: Mutex<usize>,
    freed: Condvar,
    limit: usize,
    counters: Arc<QueryCounters>,
}

impl Gate {
    /// A gate of `limit` permits, counting into `counters`.
    pub fn new(limit: usize, counters: Arc<QueryCounters>) -> Self {
        Self {
            running: Mutex::new(0),
            freed: Condvar::new(),
            limit: limit.max(1),
            counters,
        }
    }

    /// Waits for a permit until `deadline` or until `cancelled`: `None` then.
    fn acquire(self: &Arc<Self>, deadline: Instant, cancelled: &AtomicBool) -> Option<Permit> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let mut waiting = false;
        let granted = loop {
            if *running < self.limit {
                *running += 1;
                break true;
            }
            let now = Instant::now();
            if now >= deadline || cancelled.load(Ordering::Relaxed) {
                break false;
            }
            if !waiting {
                waiting = true;
                self.counters
                    .expensive_waiting
                    .fetch_add(1, Ordering::Relaxed);
            }
            // Woken when a permit is freed; the slice bounds how late a cancel is noticed.
            let slice = (deadline - now).min(Duration::from_millis(50));
            running = self
                .freed
                .wait_timeout(running, slice)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        };
        if waiting {
            self.counters
                .expensive_waiting
                .fetch_sub(1, Ordering::Relaxed);
        }
        granted.then(|| {
            self.counters
                .expensive_running
                .fetch_add(1, Ordering::Relaxed);
            Permit { gate: self.clone() }
        })
    }
}

/// One expensive query's permit, given back when dropped.
#[derive(Debug)]
struct Permit {
    gate: Arc<Gate>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut running = self.gate.running.lock().unwrap_or_else(|p| p.into_inner());
        *running = running.saturating_sub(1);
        self.gate
            .counters
            .expensive_running
            .fetch_sub(1, Ordering::Relaxed);
        self.gate.freed.notify_one();
    }
}

/// The budget of one query. Shared (`Sync`) so that tantivy's collectors can check it.
#[derive(Debug)]
pub struct Budget {
    limits: QueryLimits,
    started: Instant,
    cancelled: Arc<AtomicBool>,
    gate: Option<Arc<Gate>>,
    permit: Mutex<Option<Permit>>,
    counters: Arc<QueryCounters>,
    /// Terms examined so far.
    terms: AtomicU64,
    /// Work units since the last checkpoint.
    ticks: AtomicU64,
    /// The leaf being compiled (its index in reading order), or [`NO_LEAF`].
    leaf: AtomicUsize,
    /// Why the query was stopped, once it was: kept to be returned through tantivy, which only carries its own
    /// errors.
    failure: Mutex<Option<StoreError>>,
}

impl Budget {
    /// A budget under `limits`, starting now, waiting at `gate` once expensive.
    pub fn new(limits: QueryLimits, gate: Arc<Gate>) -> Self {
        let counters = gate.counters.clone();
        Self::build(limits, Some(gate), counters)
    }

    /// No limit, no gate (internal reads and tests).
    pub fn unlimited() -> Self {
        Self::build(
            QueryLimits::unlimited(),
            None,
            Arc::new(QueryCounters::default()),
        )
    }

    fn build(limits: QueryLimits, gate: Option<Arc<Gate>>, counters: Arc<QueryCounters>) -> Self {
        Self {
            limits,
            started: Instant::now(),
            cancelled: Arc::new(AtomicBool::new(false)),
            gate,
            permit: Mutex::new(None),
            counters,
            terms: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
            leaf: AtomicUsize::new(NO_LEAF),
            failure: Mutex::new(None),
        }
    }

    /// A guard that stops the query when dropped (its caller went away) unless [`CancelOnDrop::disarm`]ed.
    pub fn cancel_on_drop(&self) -> CancelOnDrop {
        CancelOnDrop {
            cancelled: Some(self.cancelled.clone()),
        }
    }

    /// Notes that leaf `index` (reading order) is being compiled, so that a stop names it; `None` once done.
    pub fn in_leaf(&self, index: Option<usize>) {
        self.leaf.store(index.unwrap_or(NO_LEAF), Ordering::Relaxed);
    }

    /// Counts one term examined while expanding a range or a prefix.
    ///
    /// # Errors
    /// [`StoreError::TooExpensive`] past the term cap or the deadline, [`StoreError::QueriesBusy`] when no permit
    /// came before the deadline, [`StoreError::Cancelled`] once the caller is gone.
    pub fn term(&self) -> Result<(), StoreError> {
        let examined = self.terms.fetch_add(1, Ordering::Relaxed) + 1;
        if examined > self.limits.max_expanded_terms {
            let what = if self.leaf().is_some() {
                "expanding this clause"
            } else {
                "expanding ranges and prefixes"
            };
            let message = format!(
                "{what} passed the limit of {} index terms a query may examine (query_max_expanded_terms): combine \
                 ranges on the same field into one, make prefixes longer, or narrow the time range",
                self.limits.max_expanded_terms,
            );
            self.counters
                .refused_expanded_terms
                .fetch_add(1, Ordering::Relaxed);
            return Err(self.fail(StoreError::TooExpensive {
                message,
                leaf: self.leaf(),
            }));
        }
        self.tick()
    }

    /// Counts one unit of work (a document read); looks at the clock every [`CHECK_EVERY`].
    ///
    /// # Errors
    /// As [`Budget::check`].
    pub fn tick(&self) -> Result<(), StoreError> {
        if self.ticks.fetch_add(1, Ordering::Relaxed) + 1 >= CHECK_EVERY {
            self.ticks.store(0, Ordering::Relaxed);
            self.check()
        } else {
            Ok(())
        }
    }

    /// A checkpoint: stops a cancelled or overdue query, and makes a query past
    /// [`QueryLimits::expensive_after`] wait for a permit.
    ///
    /// # Errors
    /// [`StoreError::Cancelled`], [`StoreError::TooExpensive`] (deadline) or [`StoreError::QueriesBusy`].
    pub fn check(&self) -> Result<(), StoreError> {
        if let Some(failure) = self.failed() {
            return Err(failure);
        }
        if self.cancelled.load(Ordering::Relaxed) {
            self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
            return Err(self.fail(StoreError::Cancelled));
        }
        let elapsed = self.started.elapsed();
        if elapsed >= self.limits.timeout {
            self.counters
                .refused_timeout
                .fetch_add(1, Ordering::Relaxed);
            let message = format!(
                "the query did not finish within {} ms (query_timeout_ms); it was {}: narrow the time range, \
                 add a selective clause (service, severity, a word), or combine ranges on the same field into one",
                self.limits.timeout.as_millis(),
                if self.leaf().is_some() {
                    "expanding this clause"
                } else {
                    "searching"
                }
            );
            return Err(self.fail(StoreError::TooExpensive {
                message,
                leaf: self.leaf(),
            }));
        }
        if elapsed >= self.limits.expensive_after
            && let Some(gate) = &self.gate
        {
            let mut permit = self.permit.lock().unwrap_or_else(|p| p.into_inner());
            if permit.is_none() {
                let deadline = self.started + self.limits.timeout;
                match gate.acquire(deadline, &self.cancelled) {
                    Some(granted) => *permit = Some(granted),
                    None if self.cancelled.load(Ordering::Relaxed) => {
                        self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
                        return Err(self.fail(StoreError::Cancelled));
                    }
                    None => {
                        self.counters.refused_busy.fetch_add(1, Ordering::Relaxed);
                        return Err(self.fail(StoreError::QueriesBusy {
                            running: gate.limit,
                            retry_after: Duration::from_secs(5),
                        }));
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs `query` on `searcher` with `collector`, checking the budget before each segment.
    ///
    /// # Errors
    /// Why the budget stopped it, or the index's error.
    pub fn search<C: Collector>(
        &self,
        searcher: &Searcher,
        query: &dyn tantivy::query::Query,
        collector: &C,
    ) -> Result<C::Fruit, StoreError> {
        searcher
            .search(
                query,
                &Budgeted {
                    inner: collector,
                    budget: self,
                },
            )
            .map_err(|error| self.failed().unwrap_or_else(|| error.into()))
    }

    fn leaf(&self) -> Option<usize> {
        match self.leaf.load(Ordering::Relaxed) {
            NO_LEAF => None,
            leaf => Some(leaf),
        }
    }

    fn fail(&self, error: StoreError) -> StoreError {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.clone());
        error
    }

    fn failed(&self) -> Option<StoreError> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Stops a query's work when its caller stops waiting for it (an HTTP client that hung up drops the handler).
#[derive(Debug)]
pub struct CancelOnDrop {
    cancelled: Option<Arc<AtomicBool>>,
}

impl CancelOnDrop {
    /// The query finished: nothing to stop.
    pub fn disarm(mut self) {
        self.cancelled = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(cancelled) = &self.cancelled {
            cancelled.store(true, Ordering::Relaxed);
        }
    }
}

/// A collector that checks the budget before each segment.
struct Budgeted<'a, C> {
    inner: &'a C,
    budget: &'a Budget,
}

impl<C: Collector> Collector for Budgeted<'_, C> {
    type Fruit = C::Fruit;
    type Child = C::Child;

    fn for_segment(
        &self,
        segment: SegmentOrdinal,
        reader: &SegmentReader,
    ) -> tantivy::Result<C::Child> {
        self.budget
            .check()
            .map_err(|error| TantivyError::InternalError(error.to_string()))?;
        self.inner.for_segment(segment, reader)
    }

    fn requires_scoring(&self) -> bool {
        self.inner.requires_scoring()
    }

    fn merge_fruits(
        &self,
        fruits: Vec<<C::Child as tantivy::collector::SegmentCollector>::Fruit>,
    ) -> tantivy::Result<C::Fruit> {
        self.inner.merge_fruits(fruits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_expensive: usize) -> QueryLimits {
        QueryLimits {
            timeout: Duration::from_secs(60),
            max_expanded_terms: 10,
            max_expensive,
            expensive_after: Duration::ZERO,
        }
    }

    #[test]
    fn the_term_cap_names_the_leaf_being_expanded() {
        let gate = Arc::new(Gate::new(1, Arc::default()));
        let budget = Budget::new(limits(1), gate.clone());
        budget.in_leaf(Some(3));
        for _ in 0..10 {
            budget.term().expect("within the cap");
        }
        match budget.term() {
            Err(StoreError::TooExpensive { leaf, message }) => {
                assert_eq!(leaf, Some(3));
                assert!(message.contains("limit of 10 index terms"), "{message}");
            }
            other => panic!("expected TooExpensive, got {other:?}"),
        }
        // Once stopped, every later checkpoint says so.
        assert!(matches!(
            budget.check(),
            Err(StoreError::TooExpensive { .. })
        ));
        assert_eq!(gate.counters.snapshot().refused_expanded_terms, 1);
    }

    #[test]
    fn a_cancelled_query_stops_at_its_next_checkpoint() {
        let gate = Arc::new(Gate::new(1, Arc::default()));
        let budget = Budget::new(limits(1), gate.clone());
        budget.check().expect("running");
        drop(budget.cancel_on_drop());
        assert!(matches!(budget.check(), Err(StoreError::Cancelled)));
        assert_eq!(gate.counters.snapshot().cancelled, 1);
        // Its permit went back when it ended. A disarmed guard leaves the query alone.
        drop(budget);
        let budget = Budget::new(limits(1), gate);
        budget.cancel_on_drop().disarm();
        budget.check().expect("not cancelled");
    }

    #[test]
    fn expensive_queries_beyond_the_permits_wait_and_give_up_at_their_deadline() {
        let counters = Arc::new(QueryCounters::default());
        let gate = Arc::new(Gate::new(1, counters.clone()));
        let first = Budget::new(limits(1), gate.clone());
        first.check().expect("the first takes the permit");
        assert_eq!(counters.snapshot().expensive_running, 1);
        let second = Budget::new(
            QueryLimits {
                timeout: Duration::from_millis(200),
                ..limits(1)
            },
            gate.clone(),
        );
        match second.check() {
            Err(StoreError::QueriesBusy { running, .. }) => assert_eq!(running, 1),
            other => panic!("expected QueriesBusy, got {other:?}"),
        }
        assert_eq!(counters.snapshot().refused_busy, 1);
        // The permit goes back when the query ends; the next one gets it.
        drop(first);
        assert_eq!(counters.snapshot().expensive_running, 0);
        let third = Budget::new(limits(1), gate);
        third.check().expect("the freed permit");
        assert_eq!(counters.snapshot().expensive_waiting, 0);
    }
}
