//! The query compiler against small in-memory indexes: each case is a query and the records it must find, checked
//! with one `check` helper per index (every record carries its number in the attribute `doc`), or the leaf it must be
//! refused at.

use std::collections::BTreeSet;

use gantry_proto::{Attributes, LogRecord, Signal};
use tantivy::collector::DocSetCollector;
use tantivy::schema::Value;
use tantivy::{Index, Searcher, TantivyDocument};

use super::{Compiler, MAX_PREFIX_WORDS};
use crate::StoreError;
use crate::budget::{Budget, Gate, QueryLimits};
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
    let mut records = vec![
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
    ];
    // Values full of characters that mean something to a regular expression or to the query syntax.
    for (record, path) in records.iter_mut().zip([
        "/api/v1.2/orders?id=1&x=[a]",
        "a+b(c)|d^e$f{g}\\h#i~j",
        "café-crème",
        "*star",
        "/api/v1x2/plain",
    ]) {
        record.attributes.insert("path".into(), path.into());
    }
    records
}

fn index() -> (Fields, Searcher) {
    index_of(records().into_iter().map(|record| (record, None)).collect())
}

/// An index of records, each with its structured body if it has one.
fn index_of(records: Vec<(LogRecord, Option<serde_json::Value>)>) -> (Fields, Searcher) {
    let fields = Fields::new(Signal::Logs);
    let index = Index::builder()
        .schema(fields.schema.clone())
        .settings(index_settings())
        .create_in_ram()
        .unwrap();
    let mut writer = index.writer_with_num_threads(1, 20 << 20).unwrap();
    for (record, body) in records {
        writer
            .add_document(log_document(&fields, &record, body.as_ref()))
            .unwrap();
    }
    writer.commit().unwrap();
    let searcher = index.reader().unwrap().searcher();
    (fields, searcher)
}

/// The `doc` numbers of the records `query` finds, or the compiler's error.
fn search(fields: &Fields, searcher: &Searcher, query: &str) -> Result<BTreeSet<i64>, String> {
    let parsed = gantry_query::parse(query).map_err(|e| format!("parse: {e}"))?;
    let compiled = Compiler::new(Signal::Logs, fields, searcher, &Budget::unlimited())
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

/// `query` is refused by the compiler at the leaf starting at character `position`, with a message containing
/// `needle`.
fn check_refused(query: &str, position: usize, needle: &str) {
    let (fields, searcher) = index();
    let parsed = gantry_query::parse(query).unwrap();
    let error = Compiler::new(Signal::Logs, &fields, &searcher, &Budget::unlimited())
        .compile(&parsed)
        .map(drop)
        .expect_err(query);
    let StoreError::Query { message, leaf } = error else {
        panic!("{query}: not a refusal of a leaf: {error}");
    };
    let (_, positions) = gantry_query::parse_located(query).unwrap();
    assert_eq!(positions[leaf], position, "{query}: {message}");
    assert!(message.contains(needle), "{query}: {message}");
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
    check_refused("severity:loud", 9, "severity");
    check_refused("\\-\\-", 0, "word");
    check_refused("alpha severity:err*", 15, "wildcard");
    check_refused("alpha OR (beta AND severity:loud)", 28, "severity");
}

#[test]
fn prefixes_on_exact_fields_are_byte_prefixes() {
    check("path:/api/v1.2/orders?id=1&x=[*", &[1]);
    check("path:/api/v1.*", &[1]);
    check("path:/api/v1*", &[1, 5]);
    check("path:a+b\\(c\\)|d^e$f{g}\\\\h#i~*", &[2]);
    check("path:a+b\\(c\\)|d^e$f{g}\\\\h#i~j", &[2]);
    check("path:café-c*", &[3]);
    check("path:CAFÉ*", &[]);
    check("path:\\**", &[4]);
    check("path:\\*star", &[4]);
    check("path:*", &[1, 2, 3, 4, 5]);
    check("trace_id:5b8e*", &[3]);
    check("trace_id:5B8E*", &[]);
    check("service:svc-*", &[1, 2, 3, 4, 5]);
    check("service:svc-a*", &[1, 2]);
}

#[test]
fn ranges_on_bodies_compare_single_words() {
    check("body:[alpha TO beta]", &[1, 2, 4]);
    check("body:>quick", &[3]);
    check("body:>=QUICK", &[3, 5]);
    check_refused("body:[order-1 TO z]", 5, "single words");
    check_refused("alpha body:<\"a b\"", 11, "single words");
}

/// Bodies that real senders' module paths, URLs and key-value text put punctuation into.
fn punctuated() -> Vec<(LogRecord, Option<serde_json::Value>)> {
    let record = |n: i64, body: &str| LogRecord {
        timestamp_unix_nano: 1_700_000_000_000_000_000 + n,
        body: body.to_owned(),
        attributes: attributes(&[("doc", n.into())]),
        ..LogRecord::default()
    };
    let mut records = vec![
        record(11, "vector::sources::kafka_consumer started"),
        record(12, "vector::sinks::kafka_producer stopped"),
        record(13, "kafka consumer lag"),
        record(14, "kafka_connect_worker"),
        record(15, "kafkaconsumer"),
        record(16, "consumer kafka"),
        record(17, "GET /api/v1/orders?id=42 200"),
        record(18, "user.name=alice logged in"),
    ];
    // More words after `k_` than tantivy's default phrase-prefix expansion (50): all must be found.
    records.extend((0..60).map(|i| record(100 + i, &format!("k_x{i:03} done"))));
    records.into_iter().map(|record| (record, None)).collect()
}

/// `query` finds exactly the records numbered `expected` among [`punctuated`] ones (the `k_x` series as 100..160).
fn check_punctuated(query: &str, expected: &[i64]) {
    let (fields, searcher) = index_of(punctuated());
    let found = search(&fields, &searcher, query).unwrap_or_else(|e| panic!("{query}: {e}"));
    let expected: BTreeSet<i64> = expected.iter().copied().collect();
    assert_eq!(found, expected, "{query}");
}

#[test]
fn prefixes_spanning_punctuation_match_the_words_in_order() {
    let every_k: Vec<i64> = (100..160).collect();
    check_punctuated("kafka_con*", &[11, 13, 14]);
    check_punctuated("KAFKA_CON*", &[11, 13, 14]);
    check_punctuated("body:kafka_con*", &[11, 13, 14]);
    check_punctuated("vector\\:\\:sources\\:\\:kafka*", &[11]);
    check_punctuated("vector\\:\\:s*", &[11, 12]);
    check_punctuated("\\:\\:sources\\:\\:kafka_consumer\\ st*", &[11]);
    check_punctuated("kafka*", &[11, 12, 13, 14, 15, 16]);
    check_punctuated("kafka_*", &[11, 12, 13, 14, 16]);
    check_punctuated("kafka_consumer", &[11, 13]);
    check_punctuated("\"kafka_consumer\"", &[11, 13]);
    check_punctuated("/api/v1/ord*", &[17]);
    check_punctuated("/api/v1/orders?id=4*", &[17]);
    check_punctuated("user.name=ali*", &[18]);
    check_punctuated("kafka_zzz*", &[]);
    check_punctuated("k_x*", &every_k);
    check_punctuated("k_x05*", &(150..160).collect::<Vec<_>>());
    check_punctuated("k_x059\\ d*", &[159]);
    check_punctuated("kafka_con* -vector", &[13, 14]);
}

#[test]
fn what_the_body_index_cannot_see_is_refused() {
    let long = "x".repeat(40);
    // A literal star, quoted or escaped: the index keeps no punctuation.
    check_refused("\"kafka_con*\"", 0, "literal `*`");
    check_refused("a kafka_con\\**", 2, "literal `*`");
    check_refused("body:\"*\"", 5, "literal `*`");
    // Nothing but punctuation.
    check_refused("\\-\\-*", 0, "no word");
    check_refused("\\:\\:*", 0, "no word");
    // Words the tokenizer drops: 40 bytes or longer.
    check_refused(&format!("\"commit {long}\""), 0, &long);
    check_refused(&format!("a commit-{long}"), 2, "not indexed");
    check_refused(&format!("{long}*"), 0, "not indexed");
    check_refused(&format!("kafka_{long}*"), 0, "not indexed");
    // 39 bytes is a word like any other.
    check(&format!("{}*", "x".repeat(39)), &[]);
}

#[test]
fn a_prefix_too_broad_is_refused() {
    let words: Vec<String> = (0..=MAX_PREFIX_WORDS).map(|i| format!("w{i}")).collect();
    let body = format!("k {}", words.join(" "));
    let record = LogRecord {
        body,
        attributes: attributes(&[("doc", 1.into())]),
        ..LogRecord::default()
    };
    let (fields, searcher) = index_of(vec![(record, None)]);
    let parsed = gantry_query::parse("k_w*").unwrap();
    let error = Compiler::new(Signal::Logs, &fields, &searcher, &Budget::unlimited())
        .compile(&parsed)
        .map(drop)
        .expect_err("too broad");
    assert!(
        matches!(&error, StoreError::Query { leaf: 0, message } if message.contains("longer")),
        "{error}"
    );
    // One word: no expansion is needed, so no limit.
    assert_eq!(search(&fields, &searcher, "w*"), Ok(BTreeSet::from([1])));
    assert_eq!(search(&fields, &searcher, "k_w0"), Ok(BTreeSet::from([1])));
}

/// Records whose values are maps and arrays: the OTLP specification's `examples/logs.json`, nested HTTP and
/// Kubernetes data, the same paths as literal dotted keys, structured bodies, and a body that is JSON text.
fn nested() -> Vec<(LogRecord, Option<serde_json::Value>)> {
    use serde_json::json;
    let record = |n: i64, attrs: serde_json::Value, body: &str| LogRecord {
        timestamp_unix_nano: 1_700_000_000_000_000_000 + n,
        body: body.to_owned(),
        attributes: {
            let mut map: Attributes = serde_json::from_value(attrs).unwrap();
            map.insert("doc".into(), n.into());
            map
        },
        ..LogRecord::default()
    };
    let structured = |n: i64, attrs: serde_json::Value, body: serde_json::Value| {
        (record(n, attrs, &body.to_string()), Some(body))
    };
    let mut k8s = record(
        22,
        json!({
            "http": {"request": {"method": "GET", "headers": {"accept": ["json", "xml"]}}, "status": 503},
            "tags": [1, 5, 12],
        }),
        "",
    );
    k8s.resource = attributes(&[("k8s", json!({"pod": {"name": "web-1"}}))]);
    let body = json!({
        "user": {"id": 42, "name": "alice"},
        "event": "login",
        "items": [{"sku": "a1"}, {"sku": "b2"}],
    });
    k8s.body = body.to_string();
    vec![
        (
            record(
                21,
                json!({
                    "string.attribute": "some string",
                    "boolean.attribute": true,
                    "int.attribute": 10,
                    "double.attribute": 637.704,
                    "array.attribute": ["many", "values"],
                    "map.attribute": {"some.map.key": "some value"},
                }),
                "Example log record",
            ),
            None,
        ),
        (k8s, Some(body)),
        structured(
            23,
            json!({
                "http.request.method": "POST",
                "http.status": 200,
                "map.attribute.some.map.key": "other value",
            }),
            json!({"event": "logout", "user.id": 7}),
        ),
        (record(24, json!({}), r#"{"event": "login"}"#), None),
        (record(25, json!({"a=b": "c", "a": "x"}), "equals"), None),
    ]
}

/// `query` finds exactly the records numbered `expected` among [`nested`] ones.
fn check_nested(query: &str, expected: &[i64]) {
    let (fields, searcher) = index_of(nested());
    let found = search(&fields, &searcher, query).unwrap_or_else(|e| panic!("{query}: {e}"));
    let expected: BTreeSet<i64> = expected.iter().copied().collect();
    assert_eq!(found, expected, "{query}");
}

#[test]
fn nested_attributes_are_searched_by_dotted_path() {
    // The OTLP specification's own example.
    check_nested("map.attribute.some.map.key:\"some value\"", &[21]);
    check_nested(
        "attributes.map.attribute.some.map.key:\"some value\"",
        &[21],
    );
    check_nested("map.attribute.some.map.key:some*", &[21]);
    check_nested("map.attribute.some.map.key:*", &[21, 23]);
    check_nested("map.attribute:*", &[21, 23]);
    check_nested("string.attribute:\"some string\"", &[21]);
    check_nested("boolean.attribute:true", &[21]);
    check_nested("int.attribute:10", &[21]);
    check_nested("int.attribute:>=10", &[21]);
    check_nested("double.attribute:>600", &[21]);
    // Deeper maps, and the same path written as one literal key.
    check_nested("http.request.method:GET", &[22]);
    check_nested("http.request.method:POST", &[23]);
    check_nested("http.request.method:*", &[22, 23]);
    check_nested("http:*", &[22, 23]);
    check_nested("http.request:*", &[22, 23]);
    check_nested("http.status:>=500", &[22]);
    check_nested("http.status:[200 TO 503]", &[22, 23]);
    check_nested("http.req:*", &[]);
    // Resource attributes.
    check_nested("resource.k8s.pod.name:web-1", &[22]);
    check_nested("k8s.pod.name:web-*", &[22]);
    check_nested("attributes.k8s.pod.name:web-1", &[]);
    // A map's compact JSON is no longer a value of its key.
    check_nested(
        "map.attribute:\"{\\\"some.map.key\\\":\\\"some value\\\"}\"",
        &[],
    );
}

#[test]
fn arrays_match_any_element() {
    check_nested("array.attribute:many", &[21]);
    check_nested("array.attribute:values", &[21]);
    check_nested("array.attribute:\"many\"", &[21]);
    check_nested("array.attribute:va*", &[21]);
    check_nested("array.attribute:*", &[21]);
    check_nested("array.attribute:other", &[]);
    check_nested("http.request.headers.accept:xml", &[22]);
    check_nested("tags:5", &[22]);
    check_nested("tags:>10", &[22]);
    check_nested("tags:[2 TO 4]", &[]);
    check_nested("tags:<1", &[]);
    check_nested("tags:1 tags:12", &[22]);
}

#[test]
fn structured_bodies_are_searched_by_key() {
    check_nested("body.user.id:42", &[22]);
    check_nested("body.user.id:7", &[23]);
    check_nested("body.user.id:>10", &[22]);
    check_nested("body.user.name:alice", &[22]);
    check_nested("body.event:login", &[22]);
    check_nested("body.event:log*", &[22, 23]);
    check_nested("body.event:*", &[22, 23]);
    check_nested("body.user:*", &[22, 23]);
    check_nested("body.items.sku:b2", &[22]);
    check_nested("body.missing:*", &[]);
    // A body sent as text is searched as text only, even when the text is JSON.
    check_nested("login", &[22, 24]);
    check_nested("body:login", &[22, 24]);
    // Attributes are not the body, nor the body attributes.
    check_nested("attributes.body.event:login", &[]);
    check_nested("event:login", &[]);
}

#[test]
fn keys_holding_equals_are_not_mistaken_for_others() {
    check_nested("a:x", &[25]);
    check_nested("a:b=c", &[]);
    check_nested("a:b*", &[]);
    check_nested("a:*", &[25]);
}

/// Ranges on an attribute with many values examine each value: past the query's term cap the query stops, naming
/// the clause that was being expanded, however the examined terms are spread over clauses.
#[test]
fn the_term_cap_stops_the_clause_that_passes_it() {
    let records: Vec<(LogRecord, Option<serde_json::Value>)> = (0..100)
        .map(|i| {
            let record = LogRecord {
                body: "x".to_owned(),
                attributes: attributes(&[("doc", i.into()), ("f", (f64::from(i) / 10.0).into())]),
                ..LogRecord::default()
            };
            (record, None)
        })
        .collect();
    let (fields, searcher) = index_of(records);
    // Each range examines every `f=` term (100 of them): the third clause passes a cap of 250.
    let limits = QueryLimits {
        max_expanded_terms: 250,
        ..QueryLimits::unlimited()
    };
    let gate = std::sync::Arc::new(Gate::new(1, Default::default()));
    let budget = Budget::new(limits, gate);
    let query = "f:[0 TO 1] OR f:[2 TO 3] OR f:[4 TO 5] OR f:[6 TO 7]";
    let parsed = gantry_query::parse(query).unwrap();
    let error = Compiler::new(Signal::Logs, &fields, &searcher, &budget)
        .compile(&parsed)
        .map(drop)
        .expect_err("past the cap");
    let StoreError::TooExpensive { message, leaf } = error else {
        panic!("not TooExpensive: {error}");
    };
    assert_eq!(leaf, Some(2), "{message}");
    assert!(message.contains("limit of 250 index terms"), "{message}");
    // Under the cap the same ranges answer exactly.
    assert_eq!(
        search(&fields, &searcher, "f:[0 TO 1] OR f:[9.5 TO 10]"),
        Ok((0..=10).chain(95..100).collect())
    );
}
