//! OTLP/JSON decoding (OTLP specification, "JSON Protobuf Encoding"): the proto3 JSON mapping read in full and
//! strictly, driven by OTLP's own descriptors, with the path of the offending field in every error.
//!
//! The rules, for every field of the three signals (the descriptors shipped with `opentelemetry-proto` are the
//! schema, so no field can be forgotten):
//! - keys are the lowerCamelCase JSON names or the original snake_case names; unknown keys are ignored, as OTLP
//!   requires; `null` is the field's default; a key given twice is an error;
//! - 64- and 32-bit integers are JSON numbers or decimal strings (`"42"`, `"1e3"`), integral and in range;
//! - doubles are JSON numbers or strings holding one, or `"NaN"`, `"Infinity"`, `"-Infinity"` (stored values that
//!   are not finite are then rejected one by one by the store, with their reason);
//! - enums are numbers or value names (`"AGGREGATION_TEMPORALITY_DELTA"`); an unknown name is an error;
//! - `traceId`, `spanId` and `parentSpanId` are hex (OTLP's exception); other bytes are base64;
//! - a oneof (`asDouble`/`asInt`, `gauge`/`sum`/..., `stringValue`/`intValue`/...) takes one member at most.
//!
//! Anything else is a [`DecodeError::Malformed`] naming the field by its path, for example
//! `invalid OTLP JSON at resourceMetrics[0].scopeMetrics[0].metrics[0].gauge.dataPoints[0].asInt: "abc" is not a
//! 64-bit integer (a JSON number or a decimal string) at line 1 column 120`. Nothing is read as a silent 0 or
//! dropped silently, which the serde code generated in `opentelemetry-proto` does inside its flattened oneofs
//! (`asDouble: "1.5"` became no value, an enum name the loss of the whole metric). `prost-reflect` reads the
//! descriptors; the decoder writes each message's protobuf encoding as it reads (no tree of JSON values is built),
//! and the generated types decode it at the end.

use std::borrow::Cow;
use std::fmt;
use std::sync::LazyLock;

use gantry_proto::{ExportRequest, Signal};
use prost::Message;
use prost::encoding::{self as wire, WireType};
use prost_reflect::{DescriptorPool, EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::encoding::DecodeError;

/// The OTLP descriptors: the schema the decoder walks.
static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(opentelemetry_proto::DESCRIPTORS)
        .expect("the OTLP descriptors shipped with opentelemetry-proto decode")
});

/// The full name of the export request message of `signal`.
fn request_name(signal: Signal) -> &'static str {
    match signal {
        Signal::Logs => "opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest",
        Signal::Traces => "opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest",
        Signal::Metrics => "opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceRequest",
    }
}

/// Decodes an OTLP/JSON export request of `signal`.
///
/// # Errors
/// [`DecodeError::Malformed`] naming the field (its path, as the sender wrote its keys) and what to send instead.
pub(crate) fn decode(signal: Signal, body: &[u8]) -> Result<ExportRequest, DecodeError> {
    let desc = POOL
        .get_message_by_name(request_name(signal))
        .expect("the OTLP descriptors hold the three export requests");
    let mut json = serde_json::Deserializer::from_slice(body);
    let mut track = serde_path_to_error::Track::new();
    let message = MessageSeed(&desc)
        .deserialize(serde_path_to_error::Deserializer::new(
            &mut json, &mut track,
        ))
        .and_then(|message| json.end().map(|()| message));
    let message = message.map_err(|error| {
        // `?` stands for a key the syntax error came before.
        let path = track.path().to_string();
        let path = path.trim_end_matches(".?");
        DecodeError::Malformed(if path == "." || path == "?" {
            format!("invalid OTLP JSON: {error}")
        } else {
            format!("invalid OTLP JSON at {path}: {error}")
        })
    })?;
    let invalid =
        |error: prost::DecodeError| DecodeError::Malformed(format!("invalid OTLP JSON: {error}"));
    Ok(match signal {
        Signal::Logs => ExportRequest::Logs(Message::decode(message.as_slice()).map_err(invalid)?),
        Signal::Traces => {
            ExportRequest::Traces(Message::decode(message.as_slice()).map_err(invalid)?)
        }
        Signal::Metrics => {
            ExportRequest::Metrics(Message::decode(message.as_slice()).map_err(invalid)?)
        }
    })
}

/// A message: a JSON object, read into its protobuf encoding (the generated types then decode it).
struct MessageSeed<'a>(&'a MessageDescriptor);

impl<'de> DeserializeSeed<'de> for MessageSeed<'_> {
    type Value = Vec<u8>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MessageSeed<'_> {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a JSON object ({})", self.0.name())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let desc = self.0;
        let mut encoded = Vec::new();
        // The fields given, by number, for the checks of duplicates and oneofs.
        let mut given: Vec<u32> = Vec::new();
        while let Some(Key(key)) = map.next_key::<Key>()? {
            let Some(field) = desc
                .get_field_by_json_name(&key)
                .or_else(|| desc.get_field_by_name(&key))
            else {
                // OTLP: "receivers MUST ignore message fields with unknown names".
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            if !map.next_value_seed(FieldSeed(&field, &mut encoded))? {
                continue;
            }
            if given.contains(&field.number()) {
                return Err(de::Error::custom(format_args!(
                    "`{key}` is given twice: send each field once"
                )));
            }
            if let Some(oneof) = field.containing_oneof()
                && let Some(other) = oneof.fields().find(|f| given.contains(&f.number()))
            {
                return Err(de::Error::custom(format_args!(
                    "`{key}` and `{}` are both set, but they are alternatives: send one of {}",
                    other.json_name(),
                    names(oneof.fields().map(|f| f.json_name().to_owned())),
                )));
            }
            given.push(field.number());
        }
        Ok(encoded)
    }
}

/// An object's key, borrowed from the body unless it holds escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a key")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A field's value, appended to its message's encoding: `null` (the field's default: nothing is written, and the
/// seed answers `false`), a list, or one value of the field's kind.
struct FieldSeed<'a>(&'a FieldDescriptor, &'a mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        KindSeed::of(self.0).expecting(f)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(false)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(false)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        let FieldSeed(field, encoded) = self;
        if field.is_map() {
            // No OTLP logs, traces or metrics message has a map field.
            return Err(de::Error::custom(format_args!(
                "`{}` is a map field, which OTLP/JSON decoding does not support",
                field.json_name()
            )));
        }
        let (seed, kind) = (KindSeed::of(field), field.kind());
        if field.is_list() {
            deserializer.deserialize_seq(ListSeed(seed, &kind, field.number(), encoded))?;
        } else {
            encode(
                &kind,
                field.number(),
                seed.deserialize(deserializer)?,
                encoded,
            );
        }
        Ok(true)
    }
}

/// A repeated field: a JSON array of values of one kind, each appended to the message's encoding (unpacked, which
/// every protobuf decoder reads).
struct ListSeed<'a>(KindSeed, &'a Kind, u32, &'a mut Vec<u8>);

impl<'de> Visitor<'de> for ListSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a JSON array, each item ")?;
        self.0.expecting(f)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let ListSeed(seed, kind, number, encoded) = self;
        while let Some(value) = seq.next_element_seed(seed.clone())? {
            encode(kind, number, value, encoded);
        }
        Ok(())
    }
}

/// One value read, checked against its field's kind and range.
enum Read {
    Int(i128),
    Double(f64),
    Bool(bool),
    /// A string's UTF-8, bytes, or a message's encoding.
    Bytes(Vec<u8>),
}

/// Appends field `number` holding `value` to a message's protobuf encoding.
fn encode(kind: &Kind, number: u32, value: Read, encoded: &mut Vec<u8>) {
    // The values were checked against the range of their kind when read: the casts keep them whole.
    match (kind, value) {
        (Kind::Int32 | Kind::Enum(_), Read::Int(n)) => {
            wire::int32::encode(number, &(n as i32), encoded)
        }
        (Kind::Sint32, Read::Int(n)) => wire::sint32::encode(number, &(n as i32), encoded),
        (Kind::Sfixed32, Read::Int(n)) => wire::sfixed32::encode(number, &(n as i32), encoded),
        (Kind::Int64, Read::Int(n)) => wire::int64::encode(number, &(n as i64), encoded),
        (Kind::Sint64, Read::Int(n)) => wire::sint64::encode(number, &(n as i64), encoded),
        (Kind::Sfixed64, Read::Int(n)) => wire::sfixed64::encode(number, &(n as i64), encoded),
        (Kind::Uint32, Read::Int(n)) => wire::uint32::encode(number, &(n as u32), encoded),
        (Kind::Fixed32, Read::Int(n)) => wire::fixed32::encode(number, &(n as u32), encoded),
        (Kind::Uint64, Read::Int(n)) => wire::uint64::encode(number, &(n as u64), encoded),
        (Kind::Fixed64, Read::Int(n)) => wire::fixed64::encode(number, &(n as u64), encoded),
        (Kind::Double, Read::Double(v)) => wire::double::encode(number, &v, encoded),
        (Kind::Float, Read::Double(v)) => wire::float::encode(number, &(v as f32), encoded),
        (Kind::Bool, Read::Bool(v)) => wire::bool::encode(number, &v, encoded),
        (_, Read::Bytes(bytes)) => {
            wire::encode_key(number, WireType::LengthDelimited, encoded);
            wire::encode_varint(bytes.len() as u64, encoded);
            encoded.extend_from_slice(&bytes);
        }
        (kind, _) => unreachable!("a value read for a field of kind {kind:?} is of that kind"),
    }
}

/// The kinds of integer fields.
#[derive(Clone, Copy, Debug)]
enum Int {
    I32,
    I64,
    U32,
    U64,
}

impl Int {
    fn name(self) -> &'static str {
        match self {
            Int::I32 => "a 32-bit integer",
            Int::I64 => "a 64-bit integer",
            Int::U32 => "an unsigned 32-bit integer",
            Int::U64 => "an unsigned 64-bit integer",
        }
    }

    /// `n` when it is in the range of this kind, or why not.
    fn value(self, n: i128) -> Result<Read, String> {
        let fits = match self {
            Int::I32 => i32::try_from(n).is_ok(),
            Int::I64 => i64::try_from(n).is_ok(),
            Int::U32 => u32::try_from(n).is_ok(),
            Int::U64 => u64::try_from(n).is_ok(),
        };
        if fits {
            Ok(Read::Int(n))
        } else {
            Err(format!("{n} is out of range for {}", self.name()))
        }
    }
}

/// One value of a field's kind. Byte fields named `*trace_id` or `*span_id` are hex, as OTLP/JSON requires.
#[derive(Clone)]
enum KindSeed {
    Int(Int),
    Double,
    Float,
    Bool,
    String,
    Bytes { hex: bool },
    Enum(EnumDescriptor),
    Message(MessageDescriptor),
}

impl KindSeed {
    fn of(field: &FieldDescriptor) -> KindSeed {
        match field.kind() {
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => KindSeed::Int(Int::I32),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => KindSeed::Int(Int::I64),
            Kind::Uint32 | Kind::Fixed32 => KindSeed::Int(Int::U32),
            Kind::Uint64 | Kind::Fixed64 => KindSeed::Int(Int::U64),
            Kind::Double => KindSeed::Double,
            Kind::Float => KindSeed::Float,
            Kind::Bool => KindSeed::Bool,
            Kind::String => KindSeed::String,
            Kind::Bytes => KindSeed::Bytes {
                hex: field.name().ends_with("trace_id") || field.name().ends_with("span_id"),
            },
            Kind::Enum(desc) => KindSeed::Enum(desc),
            Kind::Message(desc) => KindSeed::Message(desc),
        }
    }

    /// What to send, for messages.
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            KindSeed::Int(int) => write!(f, "{} (a JSON number or a decimal string)", int.name()),
            KindSeed::Double | KindSeed::Float => write!(
                f,
                "a number (a JSON number, or a string holding a number, \"NaN\", \"Infinity\" or \"-Infinity\")"
            ),
            KindSeed::Bool => write!(f, "a JSON boolean (true or false)"),
            KindSeed::String => write!(f, "a string"),
            KindSeed::Bytes { hex: true } => write!(
                f,
                "a hex id (OTLP/JSON writes ids in hex, not base64: 32 digits for a trace id, 16 for a span \
                 id, such as \"5b8efff798038103d269b633813fc60c\")"
            ),
            KindSeed::Bytes { hex: false } => write!(f, "a base64 string"),
            KindSeed::Enum(desc) => {
                write!(f, "one of ")?;
                let values: Vec<String> = desc.values().map(|v| v.name().to_owned()).collect();
                match values.as_slice() {
                    [first, .., last] if values.len() > 5 => write!(f, "{first} ... {last}")?,
                    _ => write!(f, "{}", names(values.iter().cloned()))?,
                }
                write!(f, ", or its number")
            }
            KindSeed::Message(desc) => write!(f, "a JSON object ({})", desc.name()),
        }
    }

    fn invalid<E: de::Error>(&self, what: impl fmt::Display) -> E {
        match self {
            KindSeed::Enum(desc) => E::custom(format_args!(
                "{what} is not a value of {}: send {}",
                desc.name(),
                Expecting(self)
            )),
            _ => E::custom(format_args!("{what} is not {}", Expecting(self))),
        }
    }

    fn int<E: de::Error>(&self, int: Int, n: i128) -> Result<Read, E> {
        int.value(n)
            .map_err(|why| E::custom(format_args!("{why}: send {}", Expecting(self))))
    }

    fn double<E: de::Error>(&self, v: f64) -> Result<Read, E> {
        match self {
            KindSeed::Float if v.is_finite() && v.abs() > f32::MAX as f64 => Err(E::custom(
                format_args!("{v:e} is out of range for a 32-bit float"),
            )),
            _ => Ok(Read::Double(v)),
        }
    }

    fn enum_number<E: de::Error>(
        &self,
        n: impl fmt::Display,
        number: Option<i128>,
    ) -> Result<Read, E> {
        match number.filter(|n| i32::try_from(*n).is_ok()) {
            Some(n) => Ok(Read::Int(n)),
            None => Err(self.invalid(n)),
        }
    }
}

impl<'de> DeserializeSeed<'de> for KindSeed {
    type Value = Read;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        match &self {
            KindSeed::Message(desc) => MessageSeed(desc).deserialize(deserializer).map(Read::Bytes),
            _ => deserializer.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for KindSeed {
    type Value = Read;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        KindSeed::expecting(self, f)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Read, E> {
        match self {
            KindSeed::Bool => Ok(Read::Bool(v)),
            _ => Err(self.invalid(v)),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Read, E> {
        match &self {
            KindSeed::Int(int) => self.int(*int, v.into()),
            KindSeed::Double | KindSeed::Float => self.double(v as f64),
            KindSeed::Enum(_) => self.enum_number(v, Some(v.into())),
            _ => Err(self.invalid(v)),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Read, E> {
        match &self {
            KindSeed::Int(int) => self.int(*int, v.into()),
            KindSeed::Double | KindSeed::Float => self.double(v as f64),
            KindSeed::Enum(_) => self.enum_number(v, Some(v.into())),
            _ => Err(self.invalid(v)),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Read, E> {
        match &self {
            // `1e3` or `1.0`: integral, so an integer (JavaScript senders write nanoseconds so).
            KindSeed::Int(int) if v.fract() == 0.0 && v.abs() < 1e38 => self.int(*int, v as i128),
            KindSeed::Int(int) if v.fract() == 0.0 => Err(E::custom(format_args!(
                "{v:e} is out of range for {}: send {}",
                int.name(),
                Expecting(&self)
            ))),
            KindSeed::Enum(_) => self.enum_number(v, (v.fract() == 0.0).then_some(v as i128)),
            KindSeed::Double | KindSeed::Float => self.double(v),
            _ => Err(self.invalid(v)),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Read, E> {
        match &self {
            KindSeed::String => Ok(Read::Bytes(v.as_bytes().to_vec())),
            KindSeed::Int(int) => match parse_integer(v) {
                Some(n) => self.int(*int, n),
                None => Err(self.invalid(format_args!("{v:?}"))),
            },
            KindSeed::Double | KindSeed::Float => match parse_double(v) {
                Some(n) => self.double(n),
                None => Err(self.invalid(format_args!("{v:?}"))),
            },
            KindSeed::Enum(desc) => match desc.get_value_by_name(v) {
                Some(value) => Ok(Read::Int(value.number().into())),
                None => Err(self.invalid(format_args!("{v:?}"))),
            },
            KindSeed::Bytes { hex: true } => hex::decode(v)
                .map(Read::Bytes)
                .map_err(|_| self.invalid(format_args!("{v:?}"))),
            KindSeed::Bytes { hex: false } => base64(v)
                .map(Read::Bytes)
                .ok_or_else(|| self.invalid(format_args!("{v:?}"))),
            _ => Err(self.invalid(format_args!("the string {v:?}"))),
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<Read, E> {
        Err(self.invalid("null"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<Read, A::Error> {
        Err(self.invalid("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<Read, A::Error> {
        Err(self.invalid("an object"))
    }
}

/// `expecting` as a `Display`.
struct Expecting<'a>(&'a KindSeed);

impl fmt::Display for Expecting<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.expecting(f)
    }
}

/// A decimal integer (`"42"`, `"-7"`), or a number in exponent or decimal notation that is integral (`"1e3"`,
/// `"5.0"`), as the proto3 JSON mapping allows.
fn parse_integer(v: &str) -> Option<i128> {
    if let Ok(n) = v.parse::<i128>() {
        return Some(n);
    }
    let n = parse_double(v)?;
    (n.is_finite() && n.fract() == 0.0 && n.abs() < 2f64.powi(127)).then_some(n as i128)
}

/// A number, or one of the proto3 JSON names of the non-finite doubles. Rust's own spellings (`inf`, `nan`) and
/// numbers out of range (`"1e999"`) are not numbers here.
fn parse_double(v: &str) -> Option<f64> {
    match v {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => v.parse::<f64>().ok().filter(|n| n.is_finite()),
    }
}

/// Standard or URL-safe base64, padded or not (the proto3 JSON mapping accepts both alphabets).
fn base64(v: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    use base64::alphabet::{STANDARD, URL_SAFE};
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const CONFIG: GeneralPurposeConfig = GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent);
    GeneralPurpose::new(&STANDARD, CONFIG)
        .decode(v)
        .or_else(|_| GeneralPurpose::new(&URL_SAFE, CONFIG).decode(v))
        .ok()
}

/// `a, b or c`.
fn names(names: impl Iterator<Item = String>) -> String {
    let names: Vec<String> = names.collect();
    match names.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests;
