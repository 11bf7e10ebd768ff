//! The tantivy schema of each signal, and how a row becomes a tantivy document.
//!
//! Indexed fields are not stored; each document keeps its whole row once, as JSON in the `doc` field, which the
//! zstd-compressed doc store packs well. Attributes are indexed as raw `path=value` terms in `attrs` and `res`, maps
//! and arrays flattened into one term per scalar (see [`terms`](super::terms)); a structured (map) log body's keys
//! are indexed in `attrs` too, under the reserved path [`BODY_ROOT`](super::terms::BODY_ROOT).

use gantry_proto::{Attributes, LogRecord, Signal, SpanRecord};
use serde::{Deserialize, Serialize};
use tantivy::TantivyDocument;
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, Schema, TextFieldIndexing, TextOptions,
};

use super::terms::{body_terms, value_terms};
use crate::model::{MetricPoint, rfc3339, severity_name, value_text};

/// The directory of a signal's partitions under `DATA_DIR/index`: `logs`, `spans`, `metrics` (the traces signal
/// keeps the directory name it had before signals were named after OTLP, so existing data directories open as they
/// are).
pub fn dir_name(signal: Signal) -> &'static str {
    match signal {
        Signal::Logs => "logs",
        Signal::Traces => "spans",
        Signal::Metrics => "metrics",
    }
}

/// Field handles of a signal's schema. Fields a signal lacks are `None`.
#[derive(Debug, Clone)]
pub struct Fields {
    /// The schema itself.
    pub schema: Schema,
    /// Event time (span start), ns: indexed and fast.
    pub ts: Field,
    /// `service.name`.
    pub service: Field,
    /// `path=value` terms of the record's attributes (and, for logs, of a structured body under [`BODY_ROOT`]).
    pub attrs: Field,
    /// `path=value` terms of the resource attributes.
    pub res: Field,
    /// The row as JSON.
    pub doc: Field,
    /// Logs: severity number.
    pub severity: Option<Field>,
    /// Logs: the body, tokenized with positions.
    pub body: Option<Field>,
    /// Logs and spans: trace id hex.
    pub trace_id: Option<Field>,
    /// Logs and spans: span id hex.
    pub span_id: Option<Field>,
    /// Spans: parent span id hex.
    pub parent_span_id: Option<Field>,
    /// Spans and metrics: operation or metric name.
    pub name: Option<Field>,
    /// Spans: `service.version`.
    pub version: Option<Field>,
    /// Spans: kind number (1 internal .. 5 consumer).
    pub kind: Option<Field>,
    /// Spans: status code (0 unset, 1 ok, 2 error).
    pub status: Option<Field>,
    /// Spans: duration, ns.
    pub duration: Option<Field>,
    /// Metrics: series hash.
    pub series: Option<Field>,
    /// Metrics: value.
    pub value: Option<Field>,
}

/// An untokenized string field without field norms: nothing is scored, so norms would only take disk.
fn raw() -> TextOptions {
    TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer("raw")
            .set_index_option(IndexRecordOption::Basic)
            .set_fieldnorms(false),
    )
}

/// [`raw`], also as a fast field (read per document by aggregations).
fn raw_fast() -> TextOptions {
    raw().set_fast("raw")
}

impl Fields {
    /// The schema of a signal.
    pub fn new(signal: Signal) -> Self {
        let mut builder = Schema::builder();
        let ts = builder.add_i64_field("ts", INDEXED | FAST);
        let service = builder.add_text_field("service", raw_fast());
        let attrs = builder.add_text_field("attrs", raw());
        let res = builder.add_text_field("res", raw());
        let doc = builder.add_bytes_field("doc", STORED);
        let mut fields = Fields {
            schema: Schema::builder().build(),
            ts,
            service,
            attrs,
            res,
            doc,
            severity: None,
            body: None,
            trace_id: None,
            span_id: None,
            parent_span_id: None,
            name: None,
            version: None,
            kind: None,
            status: None,
            duration: None,
            series: None,
            value: None,
        };
        match signal {
            Signal::Logs => {
                fields.severity = Some(builder.add_u64_field("severity", INDEXED | FAST));
                let body = TextOptions::default().set_indexing_options(
                    TextFieldIndexing::default()
                        .set_tokenizer("default")
                        .set_index_option(IndexRecordOption::WithFreqsAndPositions)
                        .set_fieldnorms(false),
                );
                fields.body = Some(builder.add_text_field("body", body));
                fields.trace_id = Some(builder.add_text_field("trace_id", raw()));
                fields.span_id = Some(builder.add_text_field("span_id", raw()));
            }
            Signal::Traces => {
                fields.trace_id = Some(builder.add_text_field("trace_id", raw_fast()));
                fields.span_id = Some(builder.add_text_field("span_id", raw()));
                fields.parent_span_id = Some(builder.add_text_field("parent_span_id", raw()));
                fields.name = Some(builder.add_text_field("name", raw_fast()));
                fields.version = Some(builder.add_text_field("version", raw_fast()));
                fields.kind = Some(builder.add_u64_field("kind", INDEXED | FAST));
                fields.status = Some(builder.add_u64_field("status", INDEXED | FAST));
                fields.duration = Some(builder.add_u64_field("duration", INDEXED | FAST));
            }
            Signal::Metrics => {
                fields.name = Some(builder.add_text_field("name", raw_fast()));
                fields.series = Some(builder.add_u64_field("series", FAST));
                fields.value = Some(builder.add_f64_field("value", FAST));
            }
        }
        fields.schema = builder.build();
        fields
    }
}

fn add_attributes(doc: &mut TantivyDocument, field: Field, attributes: &Attributes) {
    for (key, value) in attributes {
        add_value(doc, field, key, value);
    }
}

/// The terms of one attribute (see [`value_terms`]).
fn add_value(doc: &mut TantivyDocument, field: Field, key: &str, value: &serde_json::Value) {
    value_terms(key, value, term_adder(doc, field));
}

/// Adds `path=text` to `field` of `doc`.
fn term_adder(doc: &mut TantivyDocument, field: Field) -> impl FnMut(&str, &str) + '_ {
    let mut term = String::new();
    move |path, text| {
        term.clear();
        term.push_str(path);
        term.push('=');
        term.push_str(text);
        doc.add_text(field, &term);
    }
}

/// Span kind names to their OTLP numbers.
pub fn kind_number(kind: &str) -> Option<u64> {
    Some(match kind {
        "unspecified" => 0,
        "internal" => 1,
        "server" => 2,
        "client" => 3,
        "producer" => 4,
        "consumer" => 5,
        _ => return None,
    })
}

/// Status names to their OTLP numbers.
pub fn status_number(status: &str) -> Option<u64> {
    Some(match status {
        "unset" => 0,
        "ok" => 1,
        "error" => 2,
        _ => return None,
    })
}

/// A log record as a document. `body` is the record's body when it was a map (an OTLP `kvlistValue`), whose keys
/// become searchable as `body.KEY`; the text of `record.body` is indexed for free text either way.
pub fn log_document(
    fields: &Fields,
    record: &LogRecord,
    body: Option<&serde_json::Value>,
) -> TantivyDocument {
    let mut doc = TantivyDocument::new();
    doc.add_i64(fields.ts, record.timestamp_unix_nano);
    doc.add_text(fields.service, &record.service);
    doc.add_u64(
        fields.severity.expect("logs schema"),
        u64::from(record.severity_number),
    );
    doc.add_text(fields.body.expect("logs schema"), &record.body);
    if !record.trace_id.is_empty() {
        doc.add_text(fields.trace_id.expect("logs schema"), &record.trace_id);
    }
    if !record.span_id.is_empty() {
        doc.add_text(fields.span_id.expect("logs schema"), &record.span_id);
    }
    add_attributes(&mut doc, fields.attrs, &record.attributes);
    add_attributes(&mut doc, fields.res, &record.resource);
    if let Some(body) = body.filter(|body| body.is_object()) {
        body_terms(body, term_adder(&mut doc, fields.attrs));
    }
    doc.add_bytes(
        fields.doc,
        &serde_json::to_vec(&StoredLog::from(record)).expect("rows serialize"),
    );
    doc
}

/// A log record as kept in the doc store: what cannot be derived, under short keys. The RFC 3339 time, a severity
/// text that only repeats the number, and the service (the resource's `service.name`) are rebuilt on reading;
/// stored, they cost about a tenth of the doc store.
#[derive(Debug, Serialize, Deserialize)]
pub struct StoredLog {
    t: i64,
    n: u8,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    s: String,
    b: String,
    #[serde(default, skip_serializing_if = "Attributes::is_empty")]
    a: Attributes,
    #[serde(default, skip_serializing_if = "Attributes::is_empty")]
    r: Attributes,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    ti: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    si: String,
    /// The service, only when the resource does not name it the same way.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    sv: String,
}

fn resource_service(resource: &Attributes) -> String {
    resource
        .get("service.name")
        .map(value_text)
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown_service".to_owned())
}

impl From<&LogRecord> for StoredLog {
    fn from(record: &LogRecord) -> Self {
        Self {
            t: record.timestamp_unix_nano,
            n: record.severity_number,
            s: if record.severity == severity_name(record.severity_number) {
                String::new()
            } else {
                record.severity.clone()
            },
            b: record.body.clone(),
            a: record.attributes.clone(),
            r: record.resource.clone(),
            ti: record.trace_id.clone(),
            si: record.span_id.clone(),
            sv: if record.service == resource_service(&record.resource) {
                String::new()
            } else {
                record.service.clone()
            },
        }
    }
}

impl From<StoredLog> for LogRecord {
    fn from(stored: StoredLog) -> Self {
        let service = if stored.sv.is_empty() {
            resource_service(&stored.r)
        } else {
            stored.sv
        };
        LogRecord {
            timestamp: rfc3339(stored.t),
            timestamp_unix_nano: stored.t,
            severity: if stored.s.is_empty() {
                severity_name(stored.n).to_owned()
            } else {
                stored.s
            },
            severity_number: stored.n,
            service,
            body: stored.b,
            attributes: stored.a,
            resource: stored.r,
            trace_id: stored.ti,
            span_id: stored.si,
        }
    }
}

/// A span as a document.
pub fn span_document(fields: &Fields, span: &SpanRecord) -> TantivyDocument {
    let mut doc = TantivyDocument::new();
    doc.add_i64(fields.ts, span.start_unix_nano);
    doc.add_text(fields.service, &span.service);
    doc.add_text(fields.trace_id.expect("spans schema"), &span.trace_id);
    doc.add_text(fields.span_id.expect("spans schema"), &span.span_id);
    doc.add_text(
        fields.parent_span_id.expect("spans schema"),
        &span.parent_span_id,
    );
    doc.add_text(fields.name.expect("spans schema"), &span.name);
    doc.add_text(fields.version.expect("spans schema"), &span.version);
    doc.add_u64(
        fields.kind.expect("spans schema"),
        kind_number(&span.kind).unwrap_or(0),
    );
    doc.add_u64(
        fields.status.expect("spans schema"),
        status_number(&span.status).unwrap_or(0),
    );
    let duration = (span.end_unix_nano - span.start_unix_nano).max(0) as u64;
    doc.add_u64(fields.duration.expect("spans schema"), duration);
    add_attributes(&mut doc, fields.attrs, &span.attributes);
    add_attributes(&mut doc, fields.res, &span.resource);
    doc.add_bytes(
        fields.doc,
        &serde_json::to_vec(span).expect("rows serialize"),
    );
    doc
}

/// A metric point as a document.
pub fn point_document(fields: &Fields, point: &MetricPoint) -> TantivyDocument {
    let mut doc = TantivyDocument::new();
    doc.add_i64(fields.ts, point.ts_ns);
    doc.add_text(fields.service, &point.service);
    doc.add_text(fields.name.expect("metrics schema"), &point.name);
    doc.add_u64(fields.series.expect("metrics schema"), series_hash(point));
    doc.add_f64(fields.value.expect("metrics schema"), point.value);
    add_attributes(&mut doc, fields.attrs, &point.attributes);
    add_attributes(&mut doc, fields.res, &point.resource);
    doc.add_bytes(
        fields.doc,
        &serde_json::to_vec(point).expect("rows serialize"),
    );
    doc
}

/// A stable hash of a point's identity: name, attributes and resource (FNV-1a, so it is the same across restarts).
pub fn series_hash(point: &MetricPoint) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    };
    feed(point.name.as_bytes());
    for attributes in [&point.attributes, &point.resource] {
        for (key, value) in attributes {
            feed(key.as_bytes());
            feed(value_text(value).as_bytes());
        }
        feed(b"|");
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_logs_rebuild_the_record() {
        let mut resource = Attributes::new();
        resource.insert("service.name".into(), "payments".into());
        let record = LogRecord {
            timestamp: rfc3339(1_700_000_000_123_456_789),
            timestamp_unix_nano: 1_700_000_000_123_456_789,
            severity: "WARN".into(),
            severity_number: 13,
            service: "payments".into(),
            body: "slow".into(),
            attributes: [("order_id".to_owned(), serde_json::json!(1003))]
                .into_iter()
                .collect(),
            resource: resource.clone(),
            trace_id: "5b8efff798038103d269b633813fc60c".into(),
            span_id: String::new(),
        };
        let check = |record: LogRecord| {
            let bytes = serde_json::to_vec(&StoredLog::from(&record)).unwrap();
            let back: LogRecord = serde_json::from_slice::<StoredLog>(&bytes).unwrap().into();
            assert_eq!(back, record);
        };
        check(record.clone());
        check(LogRecord {
            severity: "Warning".into(),
            service: "unknown_service".into(),
            resource: Attributes::new(),
            ..record.clone()
        });
    }
}
