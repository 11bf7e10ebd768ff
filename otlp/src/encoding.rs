//! OTLP/HTTP body encodings (OTLP specification, "OTLP/HTTP": binary protobuf and JSON), capped gunzip, decoding
//! into an [`ExportRequest`], and the `google.rpc.Status` error bodies.

use std::io::Read;

use gantry_proto::{ExportRequest, Signal};
use prost::Message;

/// How an OTLP/HTTP body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-protobuf`.
    Protobuf,
    /// `application/json` (OTLP JSON: the proto3 JSON mapping with hex trace and span ids).
    Json,
}

impl Encoding {
    /// The encoding named by a `Content-Type` value (parameters ignored, case-insensitive), or `None` when OTLP has
    /// no such encoding.
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
        /// The cap, bytes.
        limit: usize,
    },
    /// Not valid gzip, protobuf or OTLP JSON; the message says where.
    #[error("{0}")]
    Malformed(String),
}

/// Decompresses gzip (several members allowed), reading at most `limit` bytes of output, so that a gzip bomb stops
/// there.
///
/// # Errors
/// [`DecodeError::TooLarge`] past `limit`, [`DecodeError::Malformed`] when the bytes are not gzip.
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

/// Decodes an OTLP export request of `signal` from `body` in `encoding`. JSON is read by the rules of
/// [`crate::json`]: every form the proto3 JSON mapping allows, and an error naming the field for anything else.
///
/// # Errors
/// [`DecodeError::Malformed`] with the decoder's message (for JSON: the path of the field and what to send).
pub fn decode(
    signal: Signal,
    encoding: Encoding,
    body: &[u8],
) -> Result<ExportRequest, DecodeError> {
    match encoding {
        Encoding::Protobuf => ExportRequest::decode(signal, body)
            .map_err(|error| DecodeError::Malformed(format!("invalid OTLP protobuf: {error}"))),
        Encoding::Json => crate::json::decode(signal, body),
    }
}

/// The `google.rpc.Code` that matches an HTTP status of an OTLP answer (the mapping of
/// `google/rpc/code.proto`).
pub fn rpc_code(http_status: u16) -> i32 {
    use tonic::Code;
    let code = match http_status {
        400 | 415 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        413 | 429 => Code::ResourceExhausted,
        503 => Code::Unavailable,
        _ => Code::Unknown,
    };
    code as i32
}

/// The body of an OTLP/HTTP error answer in `encoding`: a `google.rpc.Status` (OTLP/HTTP "Failures").
pub fn error_body(encoding: Encoding, http_status: u16, message: &str) -> Vec<u8> {
    let code = rpc_code(http_status);
    match encoding {
        Encoding::Protobuf => tonic_types::pb::Status {
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
        let check = |value: &str, expected: Option<Encoding>| {
            assert_eq!(Encoding::from_content_type(value), expected, "{value}");
        };
        check("application/x-protobuf", Some(Encoding::Protobuf));
        check("application/protobuf", Some(Encoding::Protobuf));
        check("Application/JSON; charset=utf-8", Some(Encoding::Json));
        check("text/plain", None);
        check("", None);
    }

    #[test]
    fn error_bodies_carry_the_rpc_code() {
        let body = error_body(Encoding::Protobuf, 429, "slow down");
        let status = tonic_types::pb::Status::decode(body.as_slice()).unwrap();
        assert_eq!(status.code, tonic::Code::ResourceExhausted as i32);
        assert_eq!(status.message, "slow down");
        let json: serde_json::Value =
            serde_json::from_slice(&error_body(Encoding::Json, 400, "bad")).unwrap();
        assert_eq!(json["code"], 3);
    }
}
