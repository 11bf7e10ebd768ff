//! Spans stored more than once. An SDK that retries an export after a timeout, without a `Gantry-Batch-Id` (standard
//! SDKs never send one), stores the same spans again; every read counts each span once.
//!
//! A span is known by its trace id, span id and kind: Tempo's rule, where the kind keeps apart the client and server
//! halves of a Zipkin-style shared span id. Of several copies, the one that **ended last** is kept (a span sent
//! again after an update carries its final state); copies ending at the same instant are ordered by their JSON, so
//! every read keeps the same one.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use gantry_proto::SpanRecord;
use tantivy::DocId;
use tantivy::columnar::StrColumn;

use crate::StoreError;

/// Whether copy `a` of a span is kept over copy `b`.
fn wins(a: &SpanRecord, b: &SpanRecord) -> bool {
    match a.end_unix_nano.cmp(&b.end_unix_nano) {
        Ordering::Greater => true,
        Ordering::Less => false,
        Ordering::Equal => json(a) < json(b),
    }
}

fn json(span: &SpanRecord) -> Vec<u8> {
    serde_json::to_vec(span).unwrap_or_default()
}

/// One copy of each span (by trace id, span id and kind), the kept copy chosen as the module says; order is not
/// kept.
pub fn unique(spans: Vec<SpanRecord>) -> Vec<SpanRecord> {
    let mut kept: HashMap<(String, String, String), SpanRecord> =
        HashMap::with_capacity(spans.len());
    for span in spans {
        let key = (
            span.trace_id.clone(),
            span.span_id.clone(),
            span.kind.clone(),
        );
        match kept.get_mut(&key) {
            Some(held) => {
                if wins(&span, held) {
                    *held = span;
                }
            }
            None => {
                kept.insert(key, span);
            }
        }
    }
    kept.into_values().collect()
}

/// What every copy of a span shares and the fast fields hold: its trace id (hashed), kind and start. Copies of a
/// span have the same one; two different spans share one only when they are in the same trace, of the same kind,
/// and start at the same nanosecond (or their 64-bit hashes collide), so documents whose key [`Repeats`] are read
/// whole and settled by [`unique`].
pub type CopyKey = u64;

/// The [`CopyKey`] of each document of a segment, from its `trace_id`, `kind` and `ts` fast fields.
pub fn copy_keys(
    trace_id: &StrColumn,
    kind: &tantivy::columnar::Column<u64>,
    ts: &tantivy::columnar::Column<i64>,
    docs: &[DocId],
) -> Result<Vec<CopyKey>, StoreError> {
    let ords: Vec<u64> = docs
        .iter()
        .map(|doc| trace_id.term_ords(*doc).next().unwrap_or(u64::MAX))
        .collect();
    let mut sorted: Vec<u64> = ords
        .iter()
        .copied()
        .filter(|ord| *ord != u64::MAX)
        .collect();
    sorted.sort_unstable();
    sorted.dedup();
    // Each distinct trace id is read once, in dictionary order (the ords come from the column, so all are found).
    let mut hashes = Vec::with_capacity(sorted.len());
    trace_id
        .dictionary()
        .sorted_ords_to_term_cb(&sorted, |bytes| {
            let mut hasher = DefaultHasher::new();
            bytes.hash(&mut hasher);
            hashes.push(hasher.finish());
        })?;
    Ok(docs
        .iter()
        .zip(ords)
        .map(|(doc, ord)| {
            let trace = sorted
                .binary_search(&ord)
                .ok()
                .and_then(|i| hashes.get(i).copied())
                .unwrap_or(0);
            let mut hasher = DefaultHasher::new();
            (trace, kind.first(*doc), ts.first(*doc)).hash(&mut hasher);
            hasher.finish()
        })
        .collect())
}

/// The keys held by more than one document of a partition: only those documents can be copies of each other.
#[derive(Default)]
pub struct Repeats {
    seen: HashSet<CopyKey>,
    repeated: HashSet<CopyKey>,
}

impl Repeats {
    /// Notes one document's key.
    pub fn note(&mut self, key: CopyKey) {
        if !self.seen.insert(key) {
            self.repeated.insert(key);
        }
    }

    /// Whether a key was seen more than once.
    pub fn is_repeated(&self, key: CopyKey) -> bool {
        self.repeated.contains(&key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(span_id: &str, kind: &str, end: i64, status: &str) -> SpanRecord {
        SpanRecord {
            trace_id: "5b8efff798038103d269b633813fc60c".into(),
            span_id: span_id.into(),
            name: "GET /".into(),
            service: "api".into(),
            kind: kind.into(),
            start_unix_nano: 100,
            end_unix_nano: end,
            duration_ms: (end - 100) as f64 / 1e6,
            status: status.into(),
            ..SpanRecord::default()
        }
    }

    /// `unique` of `spans` keeps exactly `expected` (compared as sets of span id, kind, end and status).
    fn check(spans: Vec<SpanRecord>, expected: &[(&str, &str, i64, &str)]) {
        let mut kept: Vec<(String, String, i64, String)> = unique(spans)
            .into_iter()
            .map(|s| (s.span_id, s.kind, s.end_unix_nano, s.status))
            .collect();
        kept.sort();
        let mut expected: Vec<(String, String, i64, String)> = expected
            .iter()
            .map(|(id, kind, end, status)| {
                (id.to_string(), kind.to_string(), *end, status.to_string())
            })
            .collect();
        expected.sort();
        assert_eq!(kept, expected);
    }

    #[test]
    fn one_copy_of_each_span() {
        let a = span("aaaaaaaaaaaaaaaa", "server", 200, "ok");
        let b = span("bbbbbbbbbbbbbbbb", "server", 300, "unset");
        check(vec![], &[]);
        check(
            vec![a.clone()],
            &[("aaaaaaaaaaaaaaaa", "server", 200, "ok")],
        );
        // Sent twice, or three times, among other spans.
        check(
            vec![a.clone(), b.clone(), a.clone()],
            &[
                ("aaaaaaaaaaaaaaaa", "server", 200, "ok"),
                ("bbbbbbbbbbbbbbbb", "server", 300, "unset"),
            ],
        );
        check(
            vec![a.clone(), a.clone(), a.clone()],
            &[("aaaaaaaaaaaaaaaa", "server", 200, "ok")],
        );
        // The copy that ended last wins, whichever order they come in.
        let later = span("aaaaaaaaaaaaaaaa", "server", 250, "error");
        for spans in [
            vec![a.clone(), later.clone()],
            vec![later.clone(), a.clone()],
        ] {
            check(spans, &[("aaaaaaaaaaaaaaaa", "server", 250, "error")]);
        }
        // Copies ending at once: the same one whatever the order.
        let other = span("aaaaaaaaaaaaaaaa", "server", 200, "error");
        let first = unique(vec![a.clone(), other.clone()]);
        let second = unique(vec![other.clone(), a.clone()]);
        assert_eq!(first, second);
        // The same span id with another kind (Zipkin's shared client and server span) is another span.
        check(
            vec![a.clone(), span("aaaaaaaaaaaaaaaa", "client", 210, "ok")],
            &[
                ("aaaaaaaaaaaaaaaa", "server", 200, "ok"),
                ("aaaaaaaaaaaaaaaa", "client", 210, "ok"),
            ],
        );
        // The same span id in another trace is another span.
        let mut elsewhere = a.clone();
        elsewhere.trace_id = "00000000000000000000000000000001".into();
        assert_eq!(unique(vec![a.clone(), elsewhere]).len(), 2);
    }

    #[test]
    fn repeats_are_the_keys_seen_twice() {
        let mut repeats = Repeats::default();
        for key in [1, 2, 3, 2, 4, 2] {
            repeats.note(key);
        }
        let repeated: Vec<u64> = (1..=4).filter(|k| repeats.is_repeated(*k)).collect();
        assert_eq!(repeated, [2]);
    }
}
