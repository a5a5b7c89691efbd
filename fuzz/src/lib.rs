//! What each fuzz target checks, in one place: the targets in `fuzz_targets/` call these
//! functions, and `tests/fuzz_corpus.rs` (a stable test of the main crate, which
//! includes this file) replays every seed corpus through them, so CI exercises the
//! same checks on every run without a nightly toolchain.
//!
//! Each function takes the fuzzer's raw bytes and panics only when the parser it
//! drives misbehaves: a panic inside the parser, or an answer that breaks one of the
//! properties stated on the function. Anything a parser is allowed to refuse is simply
//! refused. Nothing here may depend on more than `maitred`, `bytes`, `http` and std.

use std::path::Path;

use bytes::BytesMut;
use http::header;
use maitred::balancer::{AffinityKey, Token};
use maitred::server::head_scan::{HeadProblem, HeadScan};
use maitred::server::proxy_protocol;
use maitred::upstream::body::{self, State, Step};
use maitred::upstream::response::{self, BodyFraming, Parsed};

/// Cuts `bytes` into pieces whose lengths follow from `seed`, so that one fuzz input
/// tries one way of splitting its bytes across reads.
fn pieces(bytes: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut x = u32::from(seed) | 1;
    while !rest.is_empty() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = (x as usize % 17 + 1).min(rest.len());
        out.push(&rest[..n]);
        rest = &rest[n..];
    }
    out
}

/// The verdicts of a fresh [`HeadScan`] fed `chunks` one after another: one per head
/// (pipelined heads included), in order.
fn scan_heads(chunks: &[&[u8]]) -> Vec<Result<(), HeadProblem>> {
    let mut scan = HeadScan::default();
    let mut verdicts = Vec::new();
    for c in chunks {
        scan.feed(c, |v| verdicts.push(v));
    }
    verdicts
}

/// Request head scanner: the first byte picks a split, the rest is what the client
/// sent (one or more pipelined requests). The verdicts are the same whether the bytes
/// arrive at once (the whole-head fast path), a byte at a time, or in uneven pieces
/// (the line-by-line scanner).
pub fn head_scan(data: &[u8]) {
    let Some((&seed, bytes)) = data.split_first() else {
        return;
    };
    let whole = scan_heads(&[bytes]);
    let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(whole, scan_heads(&bytewise), "whole vs byte at a time");
    assert_eq!(whole, scan_heads(&pieces(bytes, seed)), "whole vs pieces");
}

/// Header names that never reach the client from a backend's response head (and any
/// `Proxy-*` name).
const HOP_BY_HOP: [&str; 4] = ["keep-alive", "te", "trailer", "transfer-encoding"];

/// Backend response head parser: the first byte picks the request's method (bit 0:
/// HEAD), the rest is what the backend sent. Interim responses are skipped as the
/// proxy does. A final head is taken from the front of the buffer exactly; it holds
/// no hop-by-hop header (`Connection` and `Upgrade` only on a 101), no Content-Length
/// beside chunked framing, a close-delimited body is never kept alive, and parsing
/// the same bytes again gives the same head.
pub fn response_head(data: &[u8]) {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let method = if pick & 1 == 1 {
        http::Method::HEAD
    } else {
        http::Method::GET
    };
    let mut req = http::Request::new(()).into_parts().0;
    req.method = method;
    let mut buf = BytesMut::from(bytes);
    // Each interim response takes at least its status line from the buffer.
    for _ in 0..=bytes.len() {
        let before = buf.len();
        let again = buf.clone();
        let parsed = match response::parse(&mut buf, &req) {
            Ok(p) => p,
            Err(_) => return,
        };
        match parsed {
            Parsed::Partial => {
                assert_eq!(buf.len(), before, "a partial head consumes nothing");
                return;
            }
            Parsed::Interim => assert!(buf.len() < before, "an interim head is consumed"),
            Parsed::Final(head) => {
                assert!(buf.len() < before, "a final head is consumed");
                assert_eq!(&buf[..], &again[before - buf.len()..], "the rest is kept");
                check_final_head(&head);
                let mut twice = again;
                match response::parse(&mut twice, &req) {
                    Ok(Parsed::Final(h)) => {
                        assert_eq!((h.status, &h.headers), (head.status, &head.headers));
                        assert_eq!((h.framing, h.keep_alive), (head.framing, head.keep_alive));
                    }
                    other => panic!("the same bytes parsed again gave {other:?}"),
                }
                return;
            }
        }
    }
    panic!("more interim responses than bytes");
}

fn check_final_head(head: &response::ResponseHead) {
    for name in HOP_BY_HOP {
        assert!(!head.headers.contains_key(name), "{name} forwarded");
    }
    for name in head.headers.keys() {
        // `Proxy-` with nothing after it names no Proxy-* header (`proxy::headers`).
        let proxy = name.as_str().len() > 6 && name.as_str().starts_with("proxy-");
        assert!(!proxy, "{name} forwarded");
    }
    let switching = head.status == http::StatusCode::SWITCHING_PROTOCOLS;
    if !switching {
        assert!(!head.headers.contains_key(header::CONNECTION));
        assert!(!head.headers.contains_key(header::UPGRADE));
    }
    if head.framing == BodyFraming::Chunked {
        assert!(!head.headers.contains_key(header::CONTENT_LENGTH));
    }
    if head.framing == BodyFraming::Close {
        assert!(
            !head.keep_alive,
            "a close-delimited body cannot be kept alive"
        );
    }
}

/// How a decode run ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The body ended; these bytes (read or not) were left over after it.
    End(Vec<u8>),
    /// The decoder wants more than there is.
    More,
    /// The framing is refused.
    Refused,
}

/// Decodes `chunks` fed one after another, as reads from the backend arrive.
fn decode_all(framing: BodyFraming, chunks: &[&[u8]]) -> (Vec<u8>, Outcome) {
    let mut state = State::new(framing);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut chunks = chunks.iter();
    // Every step either yields data, takes a chunk, or ends: bounded by the input.
    let total: usize = chunks.clone().map(|c| c.len() + 1).sum();
    for _ in 0..=2 * total + 2 {
        match body::decode(&mut state, &mut buf) {
            Ok(Step::Data(d)) => {
                assert!(!d.is_empty(), "an empty data frame");
                out.extend_from_slice(&d);
            }
            Ok(Step::More) => match chunks.next() {
                Some(c) => buf.extend_from_slice(c),
                None => return (out, Outcome::More),
            },
            Ok(Step::End) => {
                let mut rest = buf.to_vec();
                chunks.for_each(|c| rest.extend_from_slice(c));
                return (out, Outcome::End(rest));
            }
            Err(_) => return (out, Outcome::Refused),
        }
    }
    panic!("the decoder made no progress");
}

/// Backend body decoder: the first byte picks the framing (chunked mostly, else a
/// length or close-delimited) and a split, the rest is what the backend sent. The
/// body, where it ends and whether it is refused do not depend on how the bytes were
/// split across reads; a refused body passes on no more than a prefix of the whole.
pub fn chunked_body(data: &[u8]) {
    let Some((&seed, wire)) = data.split_first() else {
        return;
    };
    let framing = match seed % 8 {
        0 => BodyFraming::Close,
        1 => BodyFraming::Length(u64::from(seed) * 3),
        _ => BodyFraming::Chunked,
    };
    let whole = decode_all(framing, &[wire]);
    let bytewise: Vec<&[u8]> = wire.chunks(1).collect();
    for split in [bytewise, pieces(wire, seed)] {
        let (body, outcome) = decode_all(framing, &split);
        assert_eq!(outcome, whole.1, "outcome depends on the split");
        if outcome == Outcome::Refused {
            assert!(whole.0.starts_with(&body) || body.starts_with(&whole.0));
        } else {
            assert_eq!(body, whole.0, "body depends on the split");
        }
    }
}

/// PROXY protocol v1/v2 parser. A complete header is no longer than the input and
/// parses the same from exactly its own bytes; every shorter prefix of it is
/// `Partial` (never an error: a header may arrive in pieces); an input that is
/// `Partial` has only `Partial` prefixes, and a refused prefix means a refused whole.
pub fn proxy_protocol(data: &[u8]) {
    use proxy_protocol::Parsed;
    // Longer than any header (v2: 552 bytes); the checks below are quadratic.
    let data = &data[..data.len().min(1024)];
    let full = proxy_protocol::parse(data);
    match &full {
        Ok(Parsed::Done(len, src)) => {
            assert!(*len > 0 && *len <= data.len(), "header length {len}");
            assert_eq!(
                proxy_protocol::parse(&data[..*len]),
                Ok(Parsed::Done(*len, *src))
            );
            for cut in 0..*len {
                assert_eq!(
                    proxy_protocol::parse(&data[..cut]),
                    Ok(Parsed::Partial),
                    "prefix of {cut} bytes"
                );
            }
        }
        Ok(Parsed::Partial) => {
            for cut in 0..data.len() {
                assert_eq!(proxy_protocol::parse(&data[..cut]), Ok(Parsed::Partial));
            }
        }
        Err(_) => {}
    }
    for cut in 0..data.len() {
        if proxy_protocol::parse(&data[..cut]).is_err() {
            assert!(full.is_err(), "prefix of {cut} refused, whole accepted");
        }
    }
}

/// Affinity cookie codec. Any cookie value decodes or is refused without panicking,
/// and only the exact encoding of a token decodes (so a decoded value re-encodes to
/// itself; a version 1 token, still read, decodes without a client id); a token built
/// from the input round-trips, and no other key and no edit of one character accepts
/// it.
pub fn affinity_token(data: &[u8]) {
    let key = AffinityKey::new(Some("fuzz secret"), "fuzz");
    if let Ok(t) = key.decode(data) {
        if data.len() == maitred::balancer::ENCODED_LEN {
            assert_eq!(
                key.encode(t).as_bytes(),
                data,
                "a non-canonical token decoded"
            );
        } else {
            assert_eq!(t.client, 0, "a version 1 token carries no client id");
        }
    }
    assert_eq!(
        key.decode(data),
        key.decode(data),
        "decode is not repeatable"
    );

    let mut word = [0u8; 18];
    let n = data.len().min(word.len());
    word[..n].copy_from_slice(&data[..n]);
    let [
        b0,
        b1,
        b2,
        b3,
        b4,
        b5,
        b6,
        b7,
        i0,
        i1,
        i2,
        i3,
        i4,
        i5,
        i6,
        i7,
        at,
        to,
    ] = word;
    let token = Token {
        backend: u64::from_be_bytes([b0, b1, b2, b3, b4, b5, b6, b7]),
        issued: u64::from_be_bytes([i0, i1, i2, i3, i4, i5, i6, i7]),
        client: u64::from_be_bytes([i7, b6, i5, b4, i3, b2, i1, b0]),
    };
    let encoded = key.encode(token);
    assert_eq!(encoded.len(), maitred::balancer::ENCODED_LEN);
    assert_eq!(key.decode(encoded.as_bytes()), Ok(token));
    let other = AffinityKey::new(Some("another secret"), "fuzz");
    assert!(
        other.decode(encoded.as_bytes()).is_err(),
        "another key accepted it"
    );
    let mut edited = encoded.into_bytes();
    let at = usize::from(at) % edited.len();
    if edited[at] != to {
        edited[at] = to;
        assert!(key.decode(&edited).is_err(), "an edited token decoded");
    }
}

/// Config loader: any text gives a config or errors, never a panic, and every error
/// can be printed (its position is computed from the text).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = Path::new("/nonexistent/maitred-fuzz");
    if let Err(errors) = maitred::config::parse(text, "fuzz.toml", base) {
        assert!(!errors.0.is_empty(), "an error without errors");
        let printed = errors.to_string();
        assert!(printed.contains("fuzz.toml"), "{printed}");
    }
}
