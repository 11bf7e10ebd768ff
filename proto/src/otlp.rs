//! OTLP transport pieces that the plane's receivers and the agent's local receiver share: the body encodings,
//! capped gunzip, and the `google.rpc` messages that carry errors and retry delays.

use std::io::Read;

use prost::Message;

/// How an OTLP/HTTP body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-protobuf`.
    Protobuf,
    /// `application/json` (OTLP JSON).
    Json,
}

impl Encoding {
    /// The encoding named by a `Content-Type` value (parameters ignored), or `None` when OTLP has no such encoding.
    pub fn from_content_type(value: &str) -> Option<Encoding> {
        let media = value.split(';').next().unwrap_or("").trim();
        if media.eq_ignore_ascii_case("application/x-protobuf")
            || media.eq_ignore_ascii_case("application/protobuf")
        {
            Some(Encoding::Protobuf)
        } else if media.eq_ignore_ascii_case("application/json") {
            Some(Encoding::Json)
        } else {
            None
        }
    }

    /// The `Content-Type` of answers in this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// Why a body could not be read as an OTLP request.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Over the size cap once decompressed.
    #[error(
        "the request body is larger than {limit} bytes once decompressed: send smaller batches"
    )]
    TooLarge {
        /// The cap.
        limit: usize,
    },
    /// Not valid gzip, protobuf or JSON.
    #[error("{0}")]
    Malformed(String),
}

/// Decompresses gzip, reading at most `limit` bytes of output (a gzip bomb stops there).
pub fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity((body.len() * 4).min(limit));
    flate2::read::MultiGzDecoder::new(body)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|error| DecodeError::Malformed(format!("the body is not valid gzip: {error}")))?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge { limit });
    }
    Ok(out)
}

/// Decodes one OTLP message in `encoding`.
pub fn decode_message<M>(encoding: Encoding, body: &[u8]) -> Result<M, DecodeError>
where
    M: Message + Default + serde::de::DeserializeOwned,
{
    match encoding {
        Encoding::Protobuf => M::decode(body)
            .map_err(|error| DecodeError::Malformed(format!("invalid OTLP protobuf: {error}"))),
        Encoding::Json => serde_json::from_slice(body)
            .map_err(|error| DecodeError::Malformed(format!("invalid OTLP JSON: {error}"))),
    }
}

/// `google.rpc.Status`, the error body of OTLP/HTTP protobuf responses and gRPC status details.
#[derive(Clone, PartialEq, Message)]
pub struct RpcStatus {
    /// A `google.rpc.Code`.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// What went wrong.
    #[prost(string, tag = "2")]
    pub message: String,
    /// Further detail, e.g. a `RetryInfo`.
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<ProtoAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, Message)]
pub struct ProtoAny {
    /// Type of the packed message.
    #[prost(string, tag = "1")]
    pub type_url: String,
    /// The packed message.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, Message)]
pub struct RetryInfo {
    /// How long to wait.
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, Message)]
pub struct ProtoDuration {
    /// Whole seconds.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// A `RetryInfo` packed in an `Any`.
pub fn retry_info(delay: std::time::Duration) -> ProtoAny {
    ProtoAny {
        type_url: "type.googleapis.com/google.rpc.RetryInfo".to_owned(),
        value: RetryInfo {
            retry_delay: Some(ProtoDuration {
                seconds: delay.as_secs() as i64,
                nanos: delay.subsec_nanos() as i32,
            }),
        }
        .encode_to_vec(),
    }
}

/// `google.rpc.Code` INVALID_ARGUMENT.
const INVALID_ARGUMENT: i32 = 3;
/// `google.rpc.Code` RESOURCE_EXHAUSTED.
const RESOURCE_EXHAUSTED: i32 = 8;
/// `google.rpc.Code` OUT_OF_RANGE.
const OUT_OF_RANGE: i32 = 11;
/// `google.rpc.Code` INTERNAL.
const INTERNAL: i32 = 13;

/// The `google.rpc.Code` that matches an HTTP status of an OTLP answer.
pub fn rpc_code(http_status: u16) -> i32 {
    match http_status {
        400 => 3,
        401 => 16,
        403 => 7,
        413 | 429 => 8,
        503 => 14,
        _ => 2,
    }
}

/// The body of an OTLP/HTTP error answer in `encoding`: a `google.rpc.Status`.
pub fn error_body(encoding: Encoding, http_status: u16, message: &str) -> Vec<u8> {
    let code = rpc_code(http_status);
    match encoding {
        Encoding::Protobuf => RpcStatus {
            code,
            message: message.to_owned(),
            details: Vec::new(),
        }
        .encode_to_vec(),
        Encoding::Json => serde_json::json!({"code": code, "message": message})
            .to_string()
            .into_bytes(),
    }
}

/// Rewrites the codes tonic gives to a caller's mistakes into the ones the OTLP specification asks for: an
/// undecodable message is INVALID_ARGUMENT (tonic: INTERNAL), an oversized one RESOURCE_EXHAUSTED (tonic:
/// OUT_OF_RANGE). Used as a layer around the gRPC server.
pub fn standard_codes<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok());
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .replace("%20", " ");
    let replacement = match code {
        Some(INTERNAL) if message.starts_with("failed to decode Protobuf message") => {
            INVALID_ARGUMENT
        }
        Some(OUT_OF_RANGE) if message.contains("message length too large") => RESOURCE_EXHAUSTED,
        _ => return response,
    };
    headers.insert("grpc-status", http::HeaderValue::from(replacement));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gzip_bomb_stops_at_the_limit() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&vec![0u8; 8 << 20]).unwrap();
        let bomb = encoder.finish().unwrap();
        assert!(matches!(
            gunzip(&bomb, 1 << 20),
            Err(DecodeError::TooLarge { .. })
        ));
        assert_eq!(gunzip(&bomb, 8 << 20).unwrap().len(), 8 << 20);
        assert!(matches!(
            gunzip(b"not gzip", 100),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn content_types() {
        assert_eq!(
            Encoding::from_content_type("application/x-protobuf"),
            Some(Encoding::Protobuf)
        );
        assert_eq!(
            Encoding::from_content_type("Application/JSON; charset=utf-8"),
            Some(Encoding::Json)
        );
        assert_eq!(Encoding::from_content_type("text/plain"), None);
        assert_eq!(Encoding::from_content_type(""), None);
    }
}
