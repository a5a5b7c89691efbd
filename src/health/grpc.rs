//! The gRPC health-checking protocol (`grpc.health.v1.Health/Check`) on the wire: the
//! request message framed for gRPC, and the judgement of an answer.
//!
//! Two one-field protobuf messages do not justify a code generator in the daemon, so
//! they are encoded and decoded here by hand: a gRPC message is a 5-byte prefix
//! (compressed flag, big-endian length) before the protobuf bytes; `HealthCheckRequest`
//! is field 1, a string (`service`); `HealthCheckResponse` is field 1, an enum varint
//! (`status`: 0 UNKNOWN, 1 SERVING, 2 NOT_SERVING, 3 SERVICE_UNKNOWN).

use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderMap;

/// The method a gRPC health check calls.
pub const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// The `grpc-status` of a call that succeeded.
const OK: u32 = 0;

/// `HealthCheckResponse.status` of a service that takes calls.
const SERVING: u64 = 1;

/// The gRPC-framed `HealthCheckRequest { service }`.
pub fn check_request(service: &str) -> Bytes {
    let mut message = BytesMut::with_capacity(service.len() + 16);
    if !service.is_empty() {
        message.put_u8(0x0a); // field 1, length-delimited
        put_varint(&mut message, service.len() as u64);
        message.put_slice(service.as_bytes());
    }
    let mut framed = BytesMut::with_capacity(message.len() + 5);
    framed.put_u8(0); // not compressed
    framed.put_u32(message.len() as u32);
    framed.put_slice(&message);
    framed.freeze()
}

/// `HealthCheckResponse.status`: what the service says of itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServingStatus(u64);

impl ServingStatus {
    /// The service takes calls: the only passing answer.
    pub fn is_serving(self) -> bool {
        self.0 == SERVING
    }

    /// The status's name in `grpc.health.v1`, for the check's detail.
    pub fn name(self) -> &'static str {
        match self.0 {
            SERVING => "SERVING",
            2 => "NOT_SERVING",
            3 => "SERVICE_UNKNOWN",
            _ => "UNKNOWN",
        }
    }
}

/// Judges a finished call: its `grpc-status` (from the trailers, or from the headers
/// of a trailers-only answer) and the body's message. `Err` says why the call failed.
pub fn judge(
    headers: &HeaderMap,
    trailers: Option<&HeaderMap>,
    body: &[u8],
) -> Result<ServingStatus, String> {
    let status = trailers
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| headers.get("grpc-status"))
        .ok_or_else(|| "no grpc-status".to_string())?;
    let code = std::str::from_utf8(status.as_bytes())
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .ok_or_else(|| "malformed grpc-status".to_string())?;
    if code != OK {
        return Err(format!("grpc-status {code}"));
    }
    serving_status(body).map(ServingStatus)
}

/// The `status` field of the one framed `HealthCheckResponse` in `body`.
fn serving_status(body: &[u8]) -> Result<u64, String> {
    let Some((prefix, rest)) = body.split_first_chunk::<5>() else {
        return Err("no response message".into());
    };
    if prefix[0] != 0 {
        return Err("compressed response message".into());
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    let message = rest
        .get(..len)
        .ok_or_else(|| "truncated response message".to_string())?;
    status_field(message).ok_or_else(|| "malformed response message".to_string())
}

/// Field 1 (varint) of a protobuf message, skipping any other field; absent = 0 (the
/// protobuf default, UNKNOWN).
fn status_field(mut message: &[u8]) -> Option<u64> {
    let mut status = 0;
    while !message.is_empty() {
        let key = take_varint(&mut message)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = take_varint(&mut message)?,
            (_, 0) => {
                take_varint(&mut message)?;
            }
            (_, 1) => message = message.get(8..)?,
            (_, 2) => {
                let len = usize::try_from(take_varint(&mut message)?).ok()?;
                message = message.get(len..)?;
            }
            (_, 5) => message = message.get(4..)?,
            _ => return None,
        }
    }
    Some(status)
}

fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn take_varint(input: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = input.split_first()?;
        *input = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&(message.len() as u32).to_be_bytes());
        v.extend_from_slice(message);
        v
    }

    fn ok_trailers() -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static("0"));
        t
    }

    #[test]
    fn the_request_names_the_service_or_is_empty_for_the_whole_server() {
        assert_eq!(&check_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &check_request("shop.Cart")[..],
            &[&[0, 0, 0, 0, 11, 0x0a, 9][..], b"shop.Cart"].concat()[..]
        );
        let long = "s".repeat(200);
        let req = check_request(&long);
        assert_eq!(&req[..8], &[0, 0, 0, 0, 203, 0x0a, 0xc8, 0x01]);
    }

    #[test]
    fn only_serving_with_grpc_status_0_passes() {
        let h = HeaderMap::new();
        let t = ok_trailers();
        let status = |message: &[u8]| judge(&h, Some(&t), &framed(message)).map(|s| s.name());
        assert!(judge(&h, Some(&t), &framed(&[0x08, 1])).is_ok_and(|s| s.is_serving()));
        assert_eq!(status(&[0x08, 1]), Ok("SERVING"));
        assert_eq!(status(&[0x08, 2]), Ok("NOT_SERVING"));
        assert_eq!(status(&[0x08, 3]), Ok("SERVICE_UNKNOWN"));
        // An empty message is UNKNOWN (0), the protobuf default.
        assert_eq!(status(&[]), Ok("UNKNOWN"));
        assert!(judge(&h, Some(&t), &framed(&[])).is_ok_and(|s| !s.is_serving()));
        // Unknown fields of every wire type are skipped.
        let with_extras = [0x10, 5, 0x1a, 2, b'a', b'b', 0x25, 0, 0, 0, 0, 0x08, 1];
        assert_eq!(status(&with_extras), Ok("SERVING"));
    }

    #[test]
    fn a_failed_call_says_its_grpc_status() {
        let mut trailers_only = HeaderMap::new();
        trailers_only.insert("grpc-status", http::HeaderValue::from_static("12"));
        assert_eq!(
            judge(&trailers_only, None, b""),
            Err("grpc-status 12".into())
        );
        assert_eq!(
            judge(&HeaderMap::new(), None, &framed(&[0x08, 1])),
            Err("no grpc-status".into())
        );
        let t = ok_trailers();
        assert_eq!(
            judge(&HeaderMap::new(), Some(&t), &[0, 0, 0, 0, 9, 0x08]),
            Err("truncated response message".into())
        );
        assert_eq!(
            judge(&HeaderMap::new(), Some(&t), &[1, 0, 0, 0, 2, 0x08, 1]),
            Err("compressed response message".into())
        );
        assert_eq!(
            judge(&HeaderMap::new(), Some(&t), b""),
            Err("no response message".into())
        );
    }
}
