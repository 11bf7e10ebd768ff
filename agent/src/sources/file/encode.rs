//! A parsed line written straight into OTLP protobuf bytes, without building `LogRecord`, `KeyValue` and `AnyValue`
//! values first: the strings go from the line to the output buffer once. The bytes are exactly prost's for the same
//! record (a test checks), so the plane cannot tell the difference.

use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

use super::parse::{Attr, Parsed};

/// One log record's fields, borrowed.
pub struct Record<'p, 'a> {
    /// Event time (the parsed time, or the time the line was read).
    pub time_unix_nano: u64,
    /// When the agent read the line.
    pub observed_time_unix_nano: u64,
    /// The parsed line.
    pub parsed: &'p Parsed<'a>,
}

/// Tags of `opentelemetry.proto.logs.v1.LogRecord`.
const TIME: u32 = 1;
const SEVERITY_NUMBER: u32 = 2;
const SEVERITY_TEXT: u32 = 3;
const BODY: u32 = 5;
const ATTRIBUTES: u32 = 6;
const OBSERVED_TIME: u32 = 11;
/// Tag of `ScopeLogs.log_records`.
const LOG_RECORDS: u32 = 2;

fn framed(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// `AnyValue` holding a string: `string_value = 1`.
fn string_any_len(s: &str) -> usize {
    framed(s.len())
}

fn attr_any_len(value: &Attr<'_>) -> usize {
    match value {
        Attr::Str(s) => string_any_len(s),
        Attr::Bool(_) => 2,
        Attr::Int(n) => 1 + encoded_len_varint(*n as u64),
        Attr::Double(_) => 9,
    }
}

fn key_value_len(key: &str, value: &Attr<'_>) -> usize {
    let key_len = if key.is_empty() { 0 } else { framed(key.len()) };
    key_len + framed(attr_any_len(value))
}

fn write_str(tag: u32, s: &str, out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(s.len() as u64, out);
    out.extend_from_slice(s.as_bytes());
}

fn write_any(value: &Attr<'_>, out: &mut Vec<u8>) {
    match value {
        Attr::Str(s) => write_str(1, s, out),
        Attr::Bool(b) => {
            encode_key(2, WireType::Varint, out);
            out.push(u8::from(*b));
        }
        Attr::Int(n) => {
            encode_key(3, WireType::Varint, out);
            encode_varint(*n as u64, out);
        }
        Attr::Double(f) => {
            encode_key(4, WireType::SixtyFourBit, out);
            out.extend_from_slice(&f.to_le_bytes());
        }
    }
}

impl Record<'_, '_> {
    fn encoded_len(&self) -> usize {
        let parsed = self.parsed;
        let mut len = 0;
        if self.time_unix_nano != 0 {
            len += 9;
        }
        if let Some((number, text)) = &parsed.severity {
            if *number != 0 {
                len += 1 + encoded_len_varint(*number as i64 as u64);
            }
            if !text.is_empty() {
                len += framed(text.len());
            }
        }
        len += framed(string_any_len(&parsed.body));
        for (key, value) in &parsed.attributes {
            len += framed(key_value_len(key, value));
        }
        if self.observed_time_unix_nano != 0 {
            len += 9;
        }
        len
    }

    /// Appends the record as one `ScopeLogs.log_records` entry (tag, length, `LogRecord`).
    pub fn write_framed(&self, out: &mut Vec<u8>) {
        let parsed = self.parsed;
        encode_key(LOG_RECORDS, WireType::LengthDelimited, out);
        encode_varint(self.encoded_len() as u64, out);
        if self.time_unix_nano != 0 {
            encode_key(TIME, WireType::SixtyFourBit, out);
            out.extend_from_slice(&self.time_unix_nano.to_le_bytes());
        }
        if let Some((number, text)) = &parsed.severity {
            if *number != 0 {
                encode_key(SEVERITY_NUMBER, WireType::Varint, out);
                encode_varint(*number as i64 as u64, out);
            }
            if !text.is_empty() {
                write_str(SEVERITY_TEXT, text, out);
            }
        }
        encode_key(BODY, WireType::LengthDelimited, out);
        encode_varint(string_any_len(&parsed.body) as u64, out);
        write_str(1, &parsed.body, out);
        for (key, value) in &parsed.attributes {
            encode_key(ATTRIBUTES, WireType::LengthDelimited, out);
            encode_varint(key_value_len(key, value) as u64, out);
            if !key.is_empty() {
                write_str(1, key, out);
            }
            encode_key(2, WireType::LengthDelimited, out);
            encode_varint(attr_any_len(value) as u64, out);
            write_any(value, out);
        }
        if self.observed_time_unix_nano != 0 {
            encode_key(OBSERVED_TIME, WireType::SixtyFourBit, out);
            out.extend_from_slice(&self.observed_time_unix_nano.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::file::parse::parse;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::logs::v1::LogRecord;

    /// The same record built as prost values and framed as prost frames a repeated field.
    fn prost_framed(record: &Record<'_, '_>) -> Vec<u8> {
        let parsed = record.parsed;
        let (severity_number, severity_text) = parsed
            .severity
            .clone()
            .map(|(n, t)| (n, t.into_owned()))
            .unwrap_or_default();
        let log = LogRecord {
            time_unix_nano: record.time_unix_nano,
            observed_time_unix_nano: record.observed_time_unix_nano,
            severity_number,
            severity_text,
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(parsed.body.to_string())),
            }),
            attributes: parsed
                .attributes
                .iter()
                .map(|(key, value)| KeyValue {
                    key: key.to_string(),
                    value: Some(value.to_any_value()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let mut out = Vec::new();
        prost::encoding::message::encode(LOG_RECORDS, &log, &mut out);
        out
    }

    #[test]
    fn bytes_equal_prost() {
        let long = format!("level=info msg=\"{}\" n=1", "x".repeat(300));
        let lines = [
            r#"{"level":"error","ts":"2023-11-14T22:13:20.123Z","msg":"boom","n":-3,"ok":true,"f":-0.5,"big":18446744073709551615,"nested":{"a":[1]}}"#,
            "ts=2023-11-14T22:13:20Z level=WARN msg=\"disk full\" pct=91 empty=",
            "plain text line with no structure",
            r#"{"level":"custom","msg":"","":"empty key"}"#,
            long.as_str(),
            "",
        ];
        for line in lines {
            let parsed = parse(line, None);
            for (time, observed) in [(0, 0), (1, u64::MAX), (1_700_000_000_123_000_000, 5)] {
                let record = Record {
                    time_unix_nano: time,
                    observed_time_unix_nano: observed,
                    parsed: &parsed,
                };
                let mut ours = Vec::new();
                record.write_framed(&mut ours);
                assert_eq!(ours, prost_framed(&record), "{line}");
            }
        }
    }
}
