//! Severity, timestamp, message and attributes from a record's text: JSON lines, logfmt, or a configured regex; the raw text otherwise.

use std::borrow::Cow;
use std::fmt;

use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use regex::Regex;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// What was understood of one record, borrowing from its text wherever it can.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Parsed<'a> {
    /// The event time, if the record carried one.
    pub time_unix_nano: Option<u64>,
    /// OTLP severity number (0 when unknown) and the text as written, upper-cased.
    pub severity: Option<(i32, Cow<'a, str>)>,
    /// The message (the whole record when nothing was parsed).
    pub body: Cow<'a, str>,
    /// Every other field.
    pub attributes: Vec<(Cow<'a, str>, Attr<'a>)>,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr<'a> {
    /// Text.
    Str(Cow<'a, str>),
    /// A whole number.
    Int(i64),
    /// Any other number.
    Double(f64),
    /// `true` or `false`.
    Bool(bool),
}

impl Attr<'_> {
    /// As an OTLP value.
    pub fn to_any_value(&self) -> AnyValue {
        let value = match self {
            Attr::Str(s) => any_value::Value::StringValue(s.to_string()),
            Attr::Int(n) => any_value::Value::IntValue(*n),
            Attr::Double(f) => any_value::Value::DoubleValue(*f),
            Attr::Bool(b) => any_value::Value::BoolValue(*b),
        };
        AnyValue { value: Some(value) }
    }
}

/// `level` upper-cased, borrowed when it already is.
fn upper(level: Cow<'_, str>) -> Cow<'_, str> {
    if level.bytes().any(|b| b.is_ascii_lowercase()) {
        Cow::Owned(level.to_ascii_uppercase())
    } else {
        level
    }
}

const LEVEL_KEYS: [&str; 3] = ["level", "severity", "lvl"];
const TIME_KEYS: [&str; 3] = ["time", "timestamp", "ts"];
const MSG_KEYS: [&str; 2] = ["msg", "message"];

/// Parses `text` (one record, possibly several lines): JSON object, then logfmt, then `regex`;
/// the raw text is the body when none applies. Continuation lines of a multi-line record are
/// appended to the parsed message.
pub fn parse<'a>(text: &'a str, regex: Option<&Regex>) -> Parsed<'a> {
    let trimmed = text.trim();
    if trimmed.starts_with('{')
        && let Some(parsed) = parse_json(trimmed)
    {
        return parsed;
    }
    let (first, rest) = match text.split_once('\n') {
        Some((first, rest)) => (first, Some(rest)),
        None => (text, None),
    };
    let mut parsed = match parse_logfmt(first).or_else(|| regex.and_then(|r| parse_regex(r, first)))
    {
        Some(parsed) => parsed,
        None => {
            return Parsed {
                body: Cow::Borrowed(text),
                ..Parsed::default()
            };
        }
    };
    if let Some(rest) = rest {
        let body = parsed.body.to_mut();
        body.push('\n');
        body.push_str(rest);
    }
    parsed
}

/// A JSON object, walked once: fields go straight into the record (no `serde_json::Value` tree, no map), strings
/// are borrowed from the line when they hold no escapes, and attributes keep the line's order.
fn parse_json(text: &str) -> Option<Parsed<'_>> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let JsonRecord(parsed) = JsonRecord::deserialize(&mut deserializer).ok()?;
    deserializer.end().ok()?;
    Some(parsed)
}

struct JsonRecord<'de>(Parsed<'de>);

impl<'de> Deserialize<'de> for JsonRecord<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RecordVisitor)
    }
}

struct RecordVisitor;

impl<'de> Visitor<'de> for RecordVisitor {
    type Value = JsonRecord<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonRecord<'de>, A::Error> {
        let mut parsed = Parsed::default();
        let mut body = None;
        while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
            let value: Field<'de> = map.next_value()?;
            let k = key.as_ref();
            if parsed.severity.is_none() && LEVEL_KEYS.contains(&k) {
                if let Some(severity) = value.severity() {
                    parsed.severity = Some(severity);
                    continue;
                }
            } else if parsed.time_unix_nano.is_none() && TIME_KEYS.contains(&k) {
                if let Some(time) = value.time() {
                    parsed.time_unix_nano = Some(time);
                    continue;
                }
            } else if body.is_none() && MSG_KEYS.contains(&k) {
                body = Some(value.into_text());
                continue;
            }
            parsed.attributes.push((key, value.into_attr()));
        }
        parsed.body = body.unwrap_or_default();
        Ok(JsonRecord(parsed))
    }
}

/// A JSON string, borrowed from the line when it has no escapes.
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// One field's value.
enum Field<'de> {
    Str(Cow<'de, str>),
    Int(i64),
    Uint(u64),
    Float(f64),
    Bool(bool),
    Null,
    /// An object or array, as JSON text.
    Nested(String),
}

impl<'de> Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl<'de> Visitor<'de> for FieldVisitor {
            type Value = Field<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Field<'de>, E> {
                Ok(Field::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Field<'de>, E> {
                Ok(Field::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Field<'de>, E> {
                Ok(Field::Str(Cow::Owned(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Field<'de>, E> {
                Ok(Field::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Field<'de>, E> {
                Ok(match i64::try_from(v) {
                    Ok(v) => Field::Int(v),
                    Err(_) => Field::Uint(v),
                })
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Field<'de>, E> {
                Ok(Field::Float(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Field<'de>, E> {
                Ok(Field::Bool(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Field<'de>, E> {
                Ok(Field::Null)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Field<'de>, A::Error> {
                let value = Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Field::Nested(value.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Field<'de>, A::Error> {
                let value = Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(Field::Nested(value.to_string()))
            }
        }
        deserializer.deserialize_any(FieldVisitor)
    }
}

impl<'de> Field<'de> {
    /// A level as a string, or Bunyan / pino numeric levels.
    fn severity(&self) -> Option<(i32, Cow<'de, str>)> {
        let n = match self {
            Field::Str(s) => return Some((severity_number(s), upper(s.clone()))),
            Field::Int(n) => *n,
            Field::Uint(_) => i64::MAX,
            _ => return None,
        };
        let (number, text) = match n {
            ..=10 => (1, "TRACE"),
            11..=20 => (5, "DEBUG"),
            21..=30 => (9, "INFO"),
            31..=40 => (13, "WARN"),
            41..=50 => (17, "ERROR"),
            _ => (21, "FATAL"),
        };
        Some((number, Cow::Borrowed(text)))
    }

    fn time(&self) -> Option<u64> {
        match self {
            Field::Str(s) => parse_time(s),
            Field::Int(n) => epoch_int_to_nanos(u64::try_from(*n).ok()?),
            Field::Uint(n) => epoch_int_to_nanos(*n),
            Field::Float(f) => epoch_to_nanos(*f),
            _ => None,
        }
    }

    /// The value as text, as JSON writes it (strings unquoted).
    fn into_text(self) -> Cow<'de, str> {
        match self {
            Field::Str(s) => s,
            Field::Int(n) => Cow::Owned(n.to_string()),
            Field::Uint(n) => Cow::Owned(n.to_string()),
            Field::Float(f) => Cow::Owned(Value::from(f).to_string()),
            Field::Bool(b) => Cow::Borrowed(if b { "true" } else { "false" }),
            Field::Null => Cow::Borrowed("null"),
            Field::Nested(text) => Cow::Owned(text),
        }
    }

    fn into_attr(self) -> Attr<'de> {
        match self {
            Field::Bool(b) => Attr::Bool(b),
            Field::Int(n) => Attr::Int(n),
            Field::Uint(n) => Attr::Double(n as f64),
            Field::Float(f) => Attr::Double(f),
            other => Attr::Str(other.into_text()),
        }
    }
}

/// Parses `key=value key="quoted value"` pairs; `None` unless the whole line is pairs and one
/// of them is a level or a message.
fn parse_logfmt(line: &str) -> Option<Parsed<'_>> {
    let pairs = logfmt_pairs(line)?;
    let known = pairs
        .iter()
        .any(|(k, _)| LEVEL_KEYS.contains(k) || MSG_KEYS.contains(k));
    if !known {
        return None;
    }
    Some(from_fields(
        pairs
            .into_iter()
            .map(|(k, v)| (Cow::Borrowed(k), v))
            .collect(),
    ))
}

fn from_fields<'a>(fields: Vec<(Cow<'a, str>, Cow<'a, str>)>) -> Parsed<'a> {
    let mut parsed = Parsed::default();
    let mut body = None;
    for (key, value) in fields {
        let k = key.as_ref();
        if parsed.severity.is_none() && LEVEL_KEYS.contains(&k) {
            parsed.severity = Some((severity_number(&value), upper(value)));
            continue;
        }
        if parsed.time_unix_nano.is_none()
            && TIME_KEYS.contains(&k)
            && let Some(time) = parse_time(&value)
        {
            parsed.time_unix_nano = Some(time);
            continue;
        }
        if body.is_none() && MSG_KEYS.contains(&k) {
            body = Some(value);
            continue;
        }
        parsed.attributes.push((key, Attr::Str(value)));
    }
    parsed.body = body.unwrap_or_default();
    parsed
}

/// `key=value` pairs over the whole line, borrowed from it (a quoted value with escapes is the only copy).
fn logfmt_pairs(line: &str) -> Option<Vec<(&str, Cow<'_, str>)>> {
    let line = line.trim();
    let bytes = line.as_bytes();
    let mut pairs = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let key_start = i;
        while i < bytes.len() && bytes[i] != b'=' {
            let c = bytes[i];
            if !(c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-' | b'@')) {
                return None;
            }
            i += 1;
        }
        if i == key_start || i == bytes.len() {
            return None;
        }
        let key = &line[key_start..i];
        i += 1; // '='
        let value = if bytes.get(i) == Some(&b'"') {
            i += 1;
            let start = i;
            let mut unescaped: Option<String> = None;
            loop {
                match *bytes.get(i)? {
                    b'"' => break,
                    b'\\' => {
                        let text = unescaped.get_or_insert_with(|| line[start..i].to_owned());
                        // The escaped character may be multi-byte: take it whole.
                        let next = line[i + 1..].chars().next()?;
                        match next {
                            'n' => text.push('\n'),
                            't' => text.push('\t'),
                            other => text.push(other),
                        }
                        i += 1 + next.len_utf8();
                        continue;
                    }
                    _ => {}
                }
                let c = line[i..].chars().next()?;
                if let Some(text) = unescaped.as_mut() {
                    text.push(c);
                }
                i += c.len_utf8();
            }
            let value = match unescaped {
                Some(text) => Cow::Owned(text),
                None => Cow::Borrowed(&line[start..i]),
            };
            i += 1; // closing quote
            if bytes.get(i).is_some_and(|c| !c.is_ascii_whitespace()) {
                return None;
            }
            value
        } else {
            let start = i;
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                if bytes[i] == b'"' || bytes[i] == b'=' {
                    return None;
                }
                i += 1;
            }
            Cow::Borrowed(&line[start..i])
        };
        pairs.push((key, value));
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
    }
    (!pairs.is_empty()).then_some(pairs)
}

fn parse_regex<'a>(regex: &Regex, line: &'a str) -> Option<Parsed<'a>> {
    let caps = regex.captures(line)?;
    let fields = regex
        .capture_names()
        .flatten()
        .filter_map(|name| {
            let value = caps.name(name)?.as_str();
            Some((Cow::Owned(name.to_owned()), Cow::Borrowed(value)))
        })
        .collect();
    Some(from_fields(fields))
}

/// OTLP severity number for a level name (0 when unknown).
pub fn severity_number(level: &str) -> i32 {
    const NAMES: [(&str, i32); 20] = [
        ("trace", 1),
        ("trc", 1),
        ("debug", 5),
        ("dbg", 5),
        ("info", 9),
        ("inf", 9),
        ("information", 9),
        ("notice", 9),
        ("warn", 13),
        ("warning", 13),
        ("wrn", 13),
        ("error", 17),
        ("err", 17),
        ("eror", 17),
        ("fatal", 21),
        ("critical", 21),
        ("crit", 21),
        ("panic", 21),
        ("emerg", 21),
        ("alert", 21),
    ];
    NAMES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(level))
        .map_or(0, |&(_, number)| number)
}

/// RFC 3339 (also with a space instead of `T`) or a number of seconds, milliseconds,
/// microseconds or nanoseconds since the epoch (told apart by magnitude).
pub fn parse_time(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Ok(i) = text.parse::<u64>() {
        return epoch_int_to_nanos(i);
    }
    if let Ok(n) = text.parse::<f64>() {
        return epoch_to_nanos(n);
    }
    let parsed = chrono::DateTime::parse_from_rfc3339(text).or_else(|_| {
        if text.len() > 10 && text.as_bytes()[10] == b' ' {
            let mut fixed = text.to_owned();
            fixed.replace_range(10..11, "T");
            chrono::DateTime::parse_from_rfc3339(&fixed)
        } else {
            chrono::DateTime::parse_from_rfc3339("invalid")
        }
    });
    let nanos = parsed.ok()?.timestamp_nanos_opt()?;
    u64::try_from(nanos).ok()
}

/// Integer epoch values, exact: seconds, milliseconds, microseconds or nanoseconds by magnitude.
fn epoch_int_to_nanos(n: u64) -> Option<u64> {
    match n {
        0 => None,
        1..100_000_000_000 => n.checked_mul(1_000_000_000),
        100_000_000_000..100_000_000_000_000 => n.checked_mul(1_000_000),
        100_000_000_000_000..100_000_000_000_000_000 => n.checked_mul(1_000),
        _ => Some(n),
    }
}

fn epoch_to_nanos(n: f64) -> Option<u64> {
    if !n.is_finite() || n <= 0.0 {
        return None;
    }
    let nanos = if n < 1e11 {
        n * 1e9
    } else if n < 1e14 {
        n * 1e6
    } else if n < 1e17 {
        n * 1e3
    } else {
        n
    };
    (nanos < u64::MAX as f64).then_some(nanos as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `text` and compares (time, severity number, severity text, body, attributes as `k=v`).
    fn check(
        text: &str,
        regex: Option<&str>,
        time: Option<u64>,
        severity: Option<(i32, &str)>,
        body: &str,
        attributes: &[&str],
    ) {
        let regex = regex.map(|r| Regex::new(r).unwrap());
        let parsed = parse(text, regex.as_ref());
        assert_eq!(parsed.time_unix_nano, time, "time of {text:?}");
        assert_eq!(
            parsed.severity,
            severity.map(|(n, s)| (n, Cow::Borrowed(s))),
            "severity of {text:?}"
        );
        assert_eq!(parsed.body, body, "body of {text:?}");
        let mut attrs: Vec<String> = parsed
            .attributes
            .iter()
            .map(|(key, value)| {
                let v = match value {
                    Attr::Str(s) => s.to_string(),
                    Attr::Int(i) => i.to_string(),
                    Attr::Bool(b) => b.to_string(),
                    Attr::Double(d) => d.to_string(),
                };
                format!("{key}={v}")
            })
            .collect();
        attrs.sort();
        assert_eq!(attrs, attributes, "attributes of {text:?}");
    }

    const T: u64 = 1_700_000_000_123_000_000;

    #[test]
    fn json_lines() {
        check(
            r#"{"level":"error","time":"2023-11-14T22:13:20.123Z","msg":"boom","user":"ann","n":3,"ok":true}"#,
            None,
            Some(T),
            Some((17, "ERROR")),
            "boom",
            &["n=3", "ok=true", "user=ann"],
        );
        check(
            r#"{"severity":"Warning","ts":1700000000.123,"message":"m"}"#,
            None,
            Some((1700000000.123f64 * 1e9) as u64),
            Some((13, "WARNING")),
            "m",
            &[],
        );
        check(
            r#"{"level":30,"time":1700000000123,"msg":"pino"}"#,
            None,
            Some(T),
            Some((9, "INFO")),
            "pino",
            &[],
        );
        check(r#"{"a":"b"}"#, None, None, None, "", &["a=b"]);
        // Not an object, or broken: raw.
        check("[1,2]", None, None, None, "[1,2]", &[]);
        check("{broken", None, None, None, "{broken", &[]);
        // Escapes, nested values, numbers beyond i64, null, and a message that is not a string.
        check(
            r#"{"msg":{"a":[1,2]},"k\"ey":"tab\tand \u00e9","big":18446744073709551615,"nil":null,"f":1.5}"#,
            None,
            None,
            None,
            r#"{"a":[1,2]}"#,
            &[
                "big=18446744073709552000",
                "f=1.5",
                "k\"ey=tab\tand é",
                "nil=null",
            ],
        );
        check(
            r#"{"level":"info","msg":"x","tags":["a","b"]}"#,
            None,
            None,
            Some((9, "INFO")),
            "x",
            &["tags=[\"a\",\"b\"]"],
        );
        // Trailing text after the object: not a JSON line.
        check(
            r#"{"msg":"x"} tail"#,
            None,
            None,
            None,
            r#"{"msg":"x"} tail"#,
            &[],
        );
        // An unparseable time stays an attribute.
        check(
            r#"{"time":"yesterday","msg":"x"}"#,
            None,
            None,
            None,
            "x",
            &["time=yesterday"],
        );
    }

    #[test]
    fn logfmt() {
        check(
            r#"time=2023-11-14T22:13:20.123Z level=warn msg="disk \"almost\" full" pct=91"#,
            None,
            Some(T),
            Some((13, "WARN")),
            "disk \"almost\" full",
            &["pct=91"],
        );
        check(
            "ts=\"2023-11-14 22:13:20.123Z\" lvl=debug msg=hi\n  detail line",
            None,
            Some(T),
            Some((5, "DEBUG")),
            "hi\n  detail line",
            &[],
        );
        // Escapes (also of a multi-byte character), unicode values, an empty value.
        check(
            r#"level=info msg="tab\tnew\nline \é" city=Zürich empty= q="plain""#,
            None,
            None,
            Some((9, "INFO")),
            "tab\tnew\nline é",
            &["city=Zürich", "empty=", "q=plain"],
        );
        check(
            r#"level=info msg="x"y"#,
            None,
            None,
            None,
            r#"level=info msg="x"y"#,
            &[],
        );
        check(
            r#"level=info msg="ends\"#,
            None,
            None,
            None,
            r#"level=info msg="ends\"#,
            &[],
        );
        // Pairs without a level or message: not logfmt.
        check("a=1 b=2", None, None, None, "a=1 b=2", &[]);
        check("GET /x?a=1 200", None, None, None, "GET /x?a=1 200", &[]);
        check(
            "level=info msg=\"unterminated",
            None,
            None,
            None,
            "level=info msg=\"unterminated",
            &[],
        );
    }

    #[test]
    fn configured_regex_and_raw() {
        let re = r"^(?P<time>\S+) \[(?P<level>\w+)\] (?P<thread>\w+): (?P<msg>.*)$";
        check(
            "2023-11-14T22:13:20.123Z [ERROR] main: failed\n\tat x.y(Z.java:1)",
            Some(re),
            Some(T),
            Some((17, "ERROR")),
            "failed\n\tat x.y(Z.java:1)",
            &["thread=main"],
        );
        check(
            "plain text line",
            Some(re),
            None,
            None,
            "plain text line",
            &[],
        );
        check("plain text line", None, None, None, "plain text line", &[]);
    }

    #[test]
    fn severity_and_time_helpers() {
        for (level, n) in [("INFO", 9), ("err", 17), ("Fatal", 21), ("verbose", 0)] {
            assert_eq!(severity_number(level), n, "{level}");
        }
        for (text, nanos) in [
            ("1700000000", Some(1_700_000_000_000_000_000)),
            ("1700000000123", Some(1_700_000_000_123_000_000)),
            ("1700000000123456", Some(1_700_000_000_123_456_000)),
            ("2023-11-14T23:13:20.123+01:00", Some(T)),
            ("-5", None),
            ("not a time", None),
        ] {
            assert_eq!(parse_time(text), nanos, "{text}");
        }
    }
}
