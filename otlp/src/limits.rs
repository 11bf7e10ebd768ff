//! What a request may expand to once decoded, measured before it is decoded.
//!
//! OTLP protobuf is compact: an empty log record is 2 bytes on the wire and a few hundred in memory, so 15 KB of
//! gzip can decode into gigabytes. Before a body is decoded, [`measure_protobuf`] and [`measure_json`] walk it
//! without building anything (the protobuf wire format, or the JSON tokens) and count its items (log records,
//! spans, data points), the attributes of the most attributed item, and an estimate of the memory the decoded
//! request takes. [`DecodeLimits::check`] refuses a request past a limit with a message naming it; the receiver also
//! charges the estimate to a memory budget shared by the requests in flight.
//!
//! The protobuf walk follows the OTLP messages (`opentelemetry/proto/*/v1/*.proto`) by field number; the JSON walk
//! follows the OTLP JSON field names (`logRecords`, `spans`, `dataPoints`, `attributes`).

use gantry_proto::Signal;

use crate::encoding::DecodeError;

/// Memory charged per decoded message (a struct, its vectors' headers, allocator overhead), bytes.
const MESSAGE_BYTES: u64 = 160;
/// Memory charged per element of a packed repeated scalar (bucket counts, bounds), bytes.
const SCALAR_BYTES: u64 = 8;
/// Deepest nesting followed (kvlists in kvlists...); deeper is refused as malformed.
const MAX_DEPTH: usize = 64;

/// What a request holds, measured before decoding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// Log records, spans or data points.
    pub items: u64,
    /// Attributes of the most attributed item (its own, its events' and links', nested kvlist entries included).
    pub max_item_attributes: u64,
    /// Estimated memory of the decoded request, bytes.
    pub decoded_bytes: u64,
}

/// The limits a request must stay within.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Most items in one request.
    pub max_items: u64,
    /// Most attributes on one item.
    pub max_item_attributes: u64,
    /// Most estimated memory of one decoded request, bytes.
    pub max_decoded_bytes: u64,
}

impl Default for DecodeLimits {
    /// 100 000 items (exporters send 512 to 8 192), 1 000 attributes per item (SDKs cap at 128 by default), and
    /// 256 MiB decoded.
    fn default() -> Self {
        DecodeLimits {
            max_items: 100_000,
            max_item_attributes: 1_000,
            max_decoded_bytes: 256 << 20,
        }
    }
}

/// A request past a limit: which one, and by how much.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OverLimit(pub String);

impl DecodeLimits {
    /// Checks a measured request.
    ///
    /// # Errors
    /// [`OverLimit`] naming the first limit passed and what to do.
    pub fn check(&self, signal: Signal, shape: &Shape) -> Result<(), OverLimit> {
        if shape.items > self.max_items {
            return Err(OverLimit(format!(
                "the request holds {} {}, more than the {} one request may hold: send smaller batches",
                shape.items,
                signal.items(),
                self.max_items
            )));
        }
        if shape.max_item_attributes > self.max_item_attributes {
            return Err(OverLimit(format!(
                "an item of the request has {} attributes, more than the {} one item may have: drop attributes at the source",
                shape.max_item_attributes, self.max_item_attributes
            )));
        }
        if shape.decoded_bytes > self.max_decoded_bytes {
            return Err(OverLimit(format!(
                "the request would take about {} MiB once decoded, more than the {} MiB one request may take: send smaller batches",
                shape.decoded_bytes >> 20,
                self.max_decoded_bytes >> 20
            )));
        }
        Ok(())
    }
}

/// The OTLP messages the protobuf walk follows (field numbers from `opentelemetry/proto/*/v1/*.proto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Request,
    ResourceGroup,
    Resource,
    ScopeGroup,
    Scope,
    LogRecord,
    Span,
    Event,
    Link,
    Metric,
    NumberData,
    HistogramData,
    ExpHistogramData,
    SummaryData,
    NumberPoint,
    HistogramPoint,
    ExpHistogramPoint,
    SummaryPoint,
    Exemplar,
    Buckets,
    KeyValue,
    AnyValue,
    ArrayValue,
    KvList,
}

impl Kind {
    /// Whether the message is an item: a log record, a span or a data point.
    fn is_item(self) -> bool {
        matches!(
            self,
            Kind::LogRecord
                | Kind::Span
                | Kind::NumberPoint
                | Kind::HistogramPoint
                | Kind::ExpHistogramPoint
                | Kind::SummaryPoint
        )
    }
}

/// The kind of the sub-message in field `field` of a `kind` message of `signal`, if the walk follows it.
fn child(signal: Signal, kind: Kind, field: u32) -> Option<Kind> {
    use Kind::*;
    Some(match (kind, field) {
        (Request, 1) => ResourceGroup,
        (ResourceGroup, 1) => Resource,
        (ResourceGroup, 2) => ScopeGroup,
        (Resource, 1) => KeyValue,
        (ScopeGroup, 1) => Scope,
        (ScopeGroup, 2) => match signal {
            Signal::Logs => LogRecord,
            Signal::Traces => Span,
            Signal::Metrics => Metric,
        },
        (Scope, 3) => KeyValue,
        (LogRecord, 5) => AnyValue,
        (LogRecord, 6) => KeyValue,
        (Span, 9) => KeyValue,
        (Span, 11) => Event,
        (Span, 13) => Link,
        (Event, 3) => KeyValue,
        (Link, 4) => KeyValue,
        (Metric, 5 | 7) => NumberData,
        (Metric, 9) => HistogramData,
        (Metric, 10) => ExpHistogramData,
        (Metric, 11) => SummaryData,
        (Metric, 12) => KeyValue,
        (NumberData, 1) => NumberPoint,
        (HistogramData, 1) => HistogramPoint,
        (ExpHistogramData, 1) => ExpHistogramPoint,
        (SummaryData, 1) => SummaryPoint,
        (NumberPoint, 7) | (HistogramPoint, 9) | (ExpHistogramPoint, 1) | (SummaryPoint, 7) => {
            KeyValue
        }
        (NumberPoint, 5) | (HistogramPoint, 8) | (ExpHistogramPoint, 11) => Exemplar,
        (ExpHistogramPoint, 8 | 9) => Buckets,
        (Exemplar, 7) => KeyValue,
        (KeyValue, 2) => AnyValue,
        (AnyValue, 5) => ArrayValue,
        (AnyValue, 6) => KvList,
        (ArrayValue, 1) => AnyValue,
        (KvList, 1) => KeyValue,
        _ => return None,
    })
}

/// One field as read off the wire: its number, its wire type, and its payload when length-delimited.
type Field<'a> = (u32, u8, &'a [u8]);

/// A protobuf wire reader over one message's bytes.
struct Wire<'a> {
    bytes: &'a [u8],
}

fn malformed() -> DecodeError {
    DecodeError::Malformed(
        "invalid OTLP protobuf: a field runs past the end of its message".to_owned(),
    )
}

impl<'a> Wire<'a> {
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.bytes.split_first().ok_or_else(malformed)?;
            self.bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.bytes.len() {
            return Err(malformed());
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    /// The next field: (number, wire type, length-delimited payload when the type is 2).
    fn field(&mut self) -> Result<Option<Field<'a>>, DecodeError> {
        if self.bytes.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (number, wire_type) = ((key >> 3) as u32, (key & 7) as u8);
        let payload = match wire_type {
            0 => {
                self.varint()?;
                &[][..]
            }
            1 => self.take(8)?,
            2 => {
                let len = self.varint()?;
                self.take(usize::try_from(len).map_err(|_| malformed())?)?
            }
            5 => self.take(4)?,
            _ => {
                return Err(DecodeError::Malformed(format!(
                    "invalid OTLP protobuf: wire type {wire_type}"
                )));
            }
        };
        Ok(Some((number, wire_type, payload)))
    }
}

/// Measures an OTLP protobuf export request of `signal` without decoding it.
///
/// # Errors
/// [`DecodeError::Malformed`] when the bytes are not a protobuf message (as decoding would).
pub fn measure_protobuf(signal: Signal, bytes: &[u8]) -> Result<Shape, DecodeError> {
    let mut shape = Shape::default();
    walk(signal, Kind::Request, bytes, 0, &mut shape, &mut None)?;
    Ok(shape)
}

/// Walks one message; `attributes` counts the KeyValues of the item being walked, when inside one.
fn walk(
    signal: Signal,
    kind: Kind,
    bytes: &[u8],
    depth: usize,
    shape: &mut Shape,
    attributes: &mut Option<u64>,
) -> Result<(), DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::Malformed(format!(
            "invalid OTLP protobuf: nested deeper than {MAX_DEPTH} levels"
        )));
    }
    shape.decoded_bytes += MESSAGE_BYTES;
    if kind == Kind::KeyValue
        && let Some(count) = attributes
    {
        *count += 1;
    }
    let mut wire = Wire { bytes };
    while let Some((field, wire_type, payload)) = wire.field()? {
        match (wire_type, child(signal, kind, field)) {
            (2, Some(item)) if item.is_item() => {
                shape.items += 1;
                let mut count = Some(0);
                walk(signal, item, payload, depth + 1, shape, &mut count)?;
                shape.max_item_attributes = shape.max_item_attributes.max(count.unwrap_or(0));
            }
            (2, Some(Kind::Buckets)) => {
                // Buckets.bucket_counts (2) is a packed repeated uint64: a byte or more per count.
                shape.decoded_bytes += MESSAGE_BYTES + payload.len() as u64 * SCALAR_BYTES;
            }
            (2, Some(sub)) => walk(signal, sub, payload, depth + 1, shape, attributes)?,
            // Strings, bytes and packed scalars (explicit bounds, bucket counts): at most 8 bytes per wire byte.
            (2, None) => shape.decoded_bytes += payload.len() as u64 * SCALAR_BYTES,
            _ => {}
        }
    }
    Ok(())
}

/// Measures an OTLP JSON export request without building it: counts objects in `logRecords`, `spans` and
/// `dataPoints` arrays as items, the entries of `attributes` arrays inside an item as its attributes, and charges
/// every object, array element and string.
///
/// # Errors
/// [`DecodeError::Malformed`] when the body is not JSON.
pub fn measure_json(body: &[u8]) -> Result<Shape, DecodeError> {
    use serde::de::DeserializeSeed;
    let mut shape = Shape::default();
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    Walker {
        shape: &mut shape,
        role: Role::Other,
        depth: 0,
        item_attributes: None,
    }
    .deserialize(&mut deserializer)
    .and_then(|()| deserializer.end())
    .map_err(|error| DecodeError::Malformed(format!("invalid OTLP JSON: {error}")))?;
    Ok(shape)
}

/// What the JSON value being walked is, from the key it stands under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// An array of items (`logRecords`, `spans`, `dataPoints`).
    Items,
    /// An array of attributes inside an item.
    Attributes,
    /// Anything else.
    Other,
}

struct Walker<'s> {
    shape: &'s mut Shape,
    role: Role,
    depth: usize,
    /// The attribute count of the item being walked, when inside one.
    item_attributes: Option<&'s mut u64>,
}

impl<'de> serde::de::DeserializeSeed<'de> for Walker<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Walker<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an OTLP JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, text: &str) -> Result<(), E> {
        self.shape.decoded_bytes += text.len() as u64;
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Walker {
            shape,
            role,
            depth,
            mut item_attributes,
        } = self;
        if depth > MAX_DEPTH {
            return Err(serde::de::Error::custom(format!(
                "nested deeper than {MAX_DEPTH} levels"
            )));
        }
        loop {
            shape.decoded_bytes += SCALAR_BYTES;
            let more = match role {
                Role::Items => {
                    shape.items += 1;
                    let mut count = 0u64;
                    let more = seq.next_element_seed(Walker {
                        shape: &mut *shape,
                        role: Role::Other,
                        depth: depth + 1,
                        item_attributes: Some(&mut count),
                    })?;
                    shape.max_item_attributes = shape.max_item_attributes.max(count);
                    more
                }
                Role::Attributes | Role::Other => {
                    if role == Role::Attributes
                        && let Some(count) = item_attributes.as_deref_mut()
                    {
                        *count += 1;
                    }
                    seq.next_element_seed(Walker {
                        shape: &mut *shape,
                        role: Role::Other,
                        depth: depth + 1,
                        item_attributes: item_attributes.as_deref_mut(),
                    })?
                }
            };
            if more.is_none() {
                if role == Role::Items {
                    shape.items -= 1;
                } else if role == Role::Attributes
                    && let Some(count) = item_attributes.as_deref_mut()
                {
                    *count -= 1;
                }
                return Ok(());
            }
        }
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Walker {
            shape,
            depth,
            mut item_attributes,
            ..
        } = self;
        if depth > MAX_DEPTH {
            return Err(serde::de::Error::custom(format!(
                "nested deeper than {MAX_DEPTH} levels"
            )));
        }
        shape.decoded_bytes += MESSAGE_BYTES;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let role = match key.as_ref() {
                "logRecords" | "log_records" | "spans" | "dataPoints" | "data_points" => {
                    Role::Items
                }
                "attributes" | "filteredAttributes" | "filtered_attributes" => Role::Attributes,
                _ => Role::Other,
            };
            map.next_value_seed(Walker {
                shape: &mut *shape,
                role,
                depth: depth + 1,
                item_attributes: item_attributes.as_deref_mut(),
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use prost::Message;

    use super::*;

    fn kv(key: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("v".to_owned())),
            }),
            ..KeyValue::default()
        }
    }

    fn logs(records: usize, attributes: usize) -> ExportLogsServiceRequest {
        let record = LogRecord {
            attributes: (0..attributes).map(|i| kv(&format!("k{i}"))).collect(),
            ..LogRecord::default()
        };
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                    attributes: vec![kv("service.name")],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    log_records: vec![record; records],
                    ..ScopeLogs::default()
                }],
                ..ResourceLogs::default()
            }],
        }
    }

    #[test]
    fn protobuf_and_json_count_the_same_items_and_attributes() {
        let check = |records: usize, attributes: usize| {
            let request = logs(records, attributes);
            let protobuf = measure_protobuf(Signal::Logs, &request.encode_to_vec()).unwrap();
            let json = measure_json(serde_json::to_string(&request).unwrap().as_bytes()).unwrap();
            for shape in [protobuf, json] {
                assert_eq!(shape.items, records as u64, "{records} × {attributes}");
                let expected = if records == 0 { 0 } else { attributes as u64 };
                assert_eq!(
                    shape.max_item_attributes, expected,
                    "{records} × {attributes}"
                );
                assert!(shape.decoded_bytes >= records as u64 * MESSAGE_BYTES);
            }
        };
        check(0, 0);
        check(1, 0);
        check(3, 2);
        check(1000, 5);
    }

    #[test]
    fn empty_records_are_cheap_on_the_wire_and_charged_in_memory() {
        // 4 000 000 empty log records: 8 MB of protobuf, gigabytes decoded.
        let bytes = logs(4_000_000, 0).encode_to_vec();
        let shape = measure_protobuf(Signal::Logs, &bytes).unwrap();
        assert_eq!(shape.items, 4_000_000);
        let refused = DecodeLimits::default()
            .check(Signal::Logs, &shape)
            .unwrap_err();
        assert!(refused.0.contains("4000000 log records"), "{refused}");
        let small = measure_protobuf(Signal::Logs, &logs(10, 3).encode_to_vec()).unwrap();
        assert!(DecodeLimits::default().check(Signal::Logs, &small).is_ok());
    }

    #[test]
    fn limits_name_what_was_passed() {
        let limits = DecodeLimits {
            max_items: 10,
            max_item_attributes: 4,
            max_decoded_bytes: 1 << 20,
        };
        let check = |shape: Shape, needle: &str| {
            let refused = limits.check(Signal::Traces, &shape).unwrap_err();
            assert!(refused.0.contains(needle), "{refused}");
        };
        check(
            Shape {
                items: 11,
                ..Shape::default()
            },
            "11 spans",
        );
        check(
            Shape {
                max_item_attributes: 5,
                ..Shape::default()
            },
            "5 attributes",
        );
        check(
            Shape {
                decoded_bytes: 2 << 20,
                ..Shape::default()
            },
            "2 MiB",
        );
    }

    #[test]
    fn spans_and_every_kind_of_data_point_are_walked_by_their_fields() {
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::metrics::v1::{
            Exemplar, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram,
            HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Summary,
            SummaryDataPoint, exponential_histogram_data_point::Buckets, metric::Data,
        };
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span};
        let attrs = |n: usize| (0..n).map(|i| kv(&format!("a{i}"))).collect::<Vec<_>>();
        let span = Span {
            name: "GET /".into(),
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            attributes: attrs(3),
            events: vec![span::Event {
                name: "e".into(),
                attributes: attrs(2),
                ..Default::default()
            }],
            links: vec![span::Link {
                trace_id: vec![3; 16],
                trace_state: "k=v".into(),
                attributes: attrs(1),
                ..Default::default()
            }],
            ..Span::default()
        };
        let traces = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![span; 4],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let shape = measure_protobuf(Signal::Traces, &traces.encode_to_vec()).unwrap();
        assert_eq!((shape.items, shape.max_item_attributes), (4, 6));
        let exemplar = Exemplar {
            filtered_attributes: attrs(1),
            span_id: vec![2; 8],
            ..Default::default()
        };
        let metric = |data| Metric {
            name: "m".into(),
            data: Some(data),
            ..Metric::default()
        };
        let metrics = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![
                        metric(Data::Gauge(Gauge {
                            data_points: vec![NumberDataPoint {
                                attributes: attrs(2),
                                exemplars: vec![exemplar.clone()],
                                ..Default::default()
                            }],
                        })),
                        metric(Data::Histogram(Histogram {
                            data_points: vec![HistogramDataPoint {
                                attributes: attrs(1),
                                bucket_counts: vec![1, 2, 3],
                                explicit_bounds: vec![1.0, 2.0],
                                exemplars: vec![exemplar],
                                ..Default::default()
                            }],
                            ..Default::default()
                        })),
                        metric(Data::ExponentialHistogram(ExponentialHistogram {
                            data_points: vec![ExponentialHistogramDataPoint {
                                attributes: attrs(4),
                                positive: Some(Buckets {
                                    offset: 3,
                                    bucket_counts: vec![1, 2],
                                }),
                                ..Default::default()
                            }],
                            ..Default::default()
                        })),
                        metric(Data::Summary(Summary {
                            data_points: vec![SummaryDataPoint::default(); 2],
                        })),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let shape = measure_protobuf(Signal::Metrics, &metrics.encode_to_vec()).unwrap();
        assert_eq!((shape.items, shape.max_item_attributes), (5, 4));
        let json = measure_json(serde_json::to_string(&metrics).unwrap().as_bytes()).unwrap();
        assert_eq!((json.items, json.max_item_attributes), (5, 4));
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(measure_protobuf(Signal::Logs, &[0x0a, 0xff, 0xff, 0xff, 0x7f, 0x01]).is_err());
        assert!(measure_json(b"{\"resourceLogs\": [").is_err());
    }
}
