//! The query compiler against a small in-memory index: each case is a query and the records it must find, checked
//! with one `check` helper (every record carries its number in the attribute `doc`).

use std::collections::BTreeSet;

use gantry_proto::{Attributes, LogRecord, Signal};
use tantivy::collector::DocSetCollector;
use tantivy::schema::Value;
use tantivy::{Index, Searcher, TantivyDocument};

use super::Compiler;
use crate::embedded::partitions::index_settings;
use crate::embedded::schema::{Fields, StoredLog, log_document};

const TRACE_ID: &str = "5b8efff798038103d269b633813fc60c";

fn attributes(pairs: &[(&str, serde_json::Value)]) -> Attributes {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// Five records over two services and regions: the same set the end-to-end query test sends.
fn records() -> Vec<LogRecord> {
    let record =
        |n: i64, severity: u8, text: &str, body: &str, user: &str, svc: &str, region: &str| {
            LogRecord {
                timestamp_unix_nano: 1_700_000_000_000_000_000 + n,
                severity: text.to_owned(),
                severity_number: severity,
                service: svc.to_owned(),
                body: body.to_owned(),
                attributes: attributes(&[
                    ("doc", n.into()),
                    ("user", user.into()),
                    ("latency", (n as f64 * 1.5).into()),
                ]),
                resource: attributes(&[("service.name", svc.into()), ("region", region.into())]),
                ..LogRecord::default()
            }
        };
    let mut third = record(3, 17, "ERROR", "the quick brown fox", "bob", "svc-b", "us");
    third.trace_id = TRACE_ID.to_owned();
    vec![
        record(1, 9, "INFO", "alpha beta payment ok", "bob", "svc-a", "eu"),
        record(
            2,
            13,
            "WARN",
            "alpha gamma payout order-1234",
            "alice",
            "svc-a",
            "eu",
        ),
        third,
        record(4, 5, "DEBUG", "beta only here", "carol", "svc-b", "us"),
        record(5, 9, "INFO", "gamma brown quick", "dave", "svc-b", "us"),
    ]
}

fn index() -> (Fields, Searcher) {
    let fields = Fields::new(Signal::Logs);
    let index = Index::builder()
        .schema(fields.schema.clone())
        .settings(index_settings())
        .create_in_ram()
        .unwrap();
    let mut writer = index.writer_with_num_threads(1, 20 << 20).unwrap();
    for record in records() {
        writer.add_document(log_document(&fields, &record)).unwrap();
    }
    writer.commit().unwrap();
    let searcher = index.reader().unwrap().searcher();
    (fields, searcher)
}

/// The `doc` numbers of the records `query` finds, or the compiler's error.
fn search(fields: &Fields, searcher: &Searcher, query: &str) -> Result<BTreeSet<i64>, String> {
    let parsed = gantry_query::parse(query).map_err(|e| format!("parse: {e}"))?;
    let compiled = Compiler::new(Signal::Logs, fields, searcher)
        .compile(&parsed)
        .map_err(|e| e.to_string())?;
    let found = searcher.search(&compiled, &DocSetCollector).unwrap();
    Ok(found
        .into_iter()
        .map(|address| {
            let doc: TantivyDocument = searcher.doc(address).unwrap();
            let bytes = doc
                .get_first(fields.doc)
                .and_then(|v| v.as_bytes())
                .unwrap();
            let record = LogRecord::from(serde_json::from_slice::<StoredLog>(bytes).unwrap());
            record.attributes["doc"].as_i64().unwrap()
        })
        .collect())
}

/// `query` finds exactly the records numbered `expected`.
fn check(query: &str, expected: &[i64]) {
    let (fields, searcher) = index();
    let found = search(&fields, &searcher, query).unwrap_or_else(|e| panic!("{query}: {e}"));
    let expected: BTreeSet<i64> = expected.iter().copied().collect();
    assert_eq!(found, expected, "{query}");
}

/// `query` is refused by the compiler with a message containing `needle`.
fn check_refused(query: &str, needle: &str) {
    let (fields, searcher) = index();
    let error = search(&fields, &searcher, query).expect_err(query);
    assert!(error.contains(needle), "{query}: {error}");
}

#[test]
fn free_text_on_bodies() {
    check("alpha", &[1, 2]);
    check("beta", &[1, 4]);
    check("body:gamma", &[2, 5]);
    check("ALPHA", &[1, 2]);
    check("\"quick brown\"", &[3]);
    check("\"brown quick\"", &[5]);
    check("pay*", &[1, 2]);
    check("order-1234", &[2]);
    check("order", &[2]);
    check("*", &[1, 2, 3, 4, 5]);
    check("", &[1, 2, 3, 4, 5]);
    check("nothing-like-it", &[]);
}

#[test]
fn top_level_fields() {
    check("service:svc-a", &[1, 2]);
    check("service:svc-b", &[3, 4, 5]);
    check("service:svc-*", &[1, 2, 3, 4, 5]);
    check("service:SVC-A", &[]);
    check(&format!("trace_id:{TRACE_ID}"), &[3]);
    check("trace_id:*", &[3]);
}

#[test]
fn severities_by_name_number_and_range() {
    check("severity:error", &[3]);
    check("severity:ERROR", &[3]);
    check("severity:17", &[3]);
    check("severity:>=warn", &[2, 3]);
    check("severity:>warn", &[3]);
    check("severity:>=info", &[1, 2, 3, 5]);
    check("severity:<info", &[4]);
    check("severity:[debug TO info]", &[1, 4, 5]);
}

#[test]
fn attributes_and_resource_attributes() {
    check("attributes.user:bob", &[1, 3]);
    check("user:bob", &[1, 3]);
    check("user:b*", &[1, 3]);
    check("resource.region:us", &[3, 4, 5]);
    check("region:eu", &[1, 2]);
    check("attributes.region:eu", &[]);
    check("doc:3", &[3]);
    check("doc:>3", &[4, 5]);
    check("doc:>=3", &[3, 4, 5]);
    check("doc:[2 TO 4]", &[2, 3, 4]);
    check("doc:{2 TO 4}", &[3]);
    check("doc:[4 TO *]", &[4, 5]);
    check("latency:<=3", &[1, 2]);
    check("user:*", &[1, 2, 3, 4, 5]);
    check("missing:*", &[]);
}

#[test]
fn boolean_structure() {
    check("alpha AND beta", &[1]);
    check("alpha beta", &[1]);
    check("alpha OR fox", &[1, 2, 3]);
    check("alpha AND NOT beta", &[2]);
    check("alpha -beta", &[2]);
    check("NOT service:svc-b", &[1, 2]);
    check("(alpha OR fox) AND service:svc-b", &[3]);
    check("service:(svc-a OR svc-b) AND user:bob", &[1, 3]);
    check("alpha OR beta AND service:svc-b", &[1, 2, 4]);
}

#[test]
fn what_cannot_match_is_refused() {
    check_refused("severity:loud", "severity");
    check_refused("\\-\\-", "word");
    check_refused("severity:err*", "wildcard");
}
