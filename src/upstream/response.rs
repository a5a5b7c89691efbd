//! Reading a backend's response head: httparse finds the lines, this module decides what
//! the head means for the proxy.
//!
//! - Hop-by-hop headers (Connection and the names it lists, Keep-Alive, TE, Trailer,
//!   Transfer-Encoding, Upgrade, Proxy-*) never enter the client's header map, so there
//!   is nothing to remove afterwards; a `101` keeps `Upgrade` and gets
//!   `Connection: upgrade`.
//! - The body's framing follows RFC 9112 §6.3: none for a HEAD request, 1xx, 204 and
//!   304; chunked when the last transfer coding is chunked; else Content-Length (values
//!   that disagree are refused); else until the backend closes.
//! - Whether the connection may carry another request: HTTP/1.1 without
//!   `Connection: close`, or HTTP/1.0 with `keep-alive`, and a body framed by length or
//!   chunks.
//!
//! Header values are slices of the bytes read, not copies.

use std::cell::RefCell;

use bytes::{Buf as _, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, StatusCode};

use super::UpstreamError;
use super::hop::{Hop, hop_kind};

/// Header lines a response may have.
pub const MAX_HEADERS: usize = 128;

/// Header names listed in `Connection` that are removed; more are refused.
const MAX_NAMED: usize = 8;

/// How the response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// Exactly this many bytes (0: no body).
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the backend closes the connection.
    Close,
}

/// A final response head.
#[derive(Debug)]
pub struct ResponseHead {
    /// The status.
    pub status: StatusCode,
    /// End-to-end headers, for the client.
    pub headers: HeaderMap,
    /// How the body ends.
    pub framing: BodyFraming,
    /// Whether the connection may carry another request once the body is read.
    pub keep_alive: bool,
}

/// The outcome of one parse attempt.
#[derive(Debug)]
pub enum Parsed {
    /// A final response; its head has been taken from the buffer.
    Final(ResponseHead),
    /// An interim response (100, 102, 103), already dropped from the buffer.
    Interim,
    /// The head is not complete yet.
    Partial,
}

thread_local! {
    static SPARE_MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
    /// Where the lines of the head being parsed sit, and the header names of the
    /// heads parsed before: scratch kept per thread, so a parse initialises no large
    /// array and parses no name it has just seen.
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch { lines: Vec::new(), names: Vec::new() })
    };
}

/// A parse's scratch space.
#[derive(Default)]
struct Scratch {
    lines: Vec<Line>,
    names: Vec<SeenName>,
}

/// The header name last seen at one position of a head, as sent and as parsed.
/// Backends answer with the same headers in the same order, so the name at a
/// position is usually the one seen there before: comparing the bytes costs a
/// fraction of parsing them (and a custom name's parse allocates).
struct SeenName {
    raw: Box<[u8]>,
    name: HeaderName,
}

/// Positions of a head whose names are remembered.
const SEEN_NAMES: usize = 32;

/// The header name `raw`, found at position `at` of the head.
fn header_name(
    seen: &mut Vec<SeenName>,
    at: usize,
    raw: &[u8],
) -> Result<HeaderName, UpstreamError> {
    if let Some(s) = seen.get(at) {
        if *s.raw == *raw {
            return Ok(s.name.clone());
        }
    }
    let name =
        HeaderName::from_bytes(raw).map_err(|_| UpstreamError::Malformed("bad header name"))?;
    if at < SEEN_NAMES {
        let s = SeenName {
            raw: raw.into(),
            name: name.clone(),
        };
        if at < seen.len() {
            seen[at] = s;
        } else if at == seen.len() {
            seen.push(s);
        }
    }
    Ok(name)
}

/// Frees the current worker's spare header maps and parse scratch; called once when
/// the worker stops.
pub fn clear_worker_state() {
    let _ = SPARE_MAPS.try_with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            *s = Vec::new();
        }
    });
    let _ = SCRATCH.try_with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            *s = Scratch::default();
        }
    });
}

/// Spare maps kept per worker thread, at most.
const MAX_SPARES: usize = 512;

/// Gives a header map (a request's, once sent) back for the next response head, so a
/// response costs no map allocation.
pub fn recycle(mut map: HeaderMap) {
    map.clear();
    SPARE_MAPS.with(|s| {
        let mut spares = s.borrow_mut();
        if spares.len() < MAX_SPARES {
            spares.push(map);
        }
    });
}

fn spare_map() -> HeaderMap {
    SPARE_MAPS
        .with(|s| s.borrow_mut().pop())
        .unwrap_or_default()
}

/// Where one header line sits in the head: name and value as byte ranges.
#[derive(Debug, Clone, Copy)]
struct Line {
    name: (u32, u32),
    value: (u32, u32),
}

fn range_in(base: usize, part: &[u8]) -> (u32, u32) {
    let start = part.as_ptr() as usize - base;
    (start as u32, (start + part.len()) as u32)
}

/// Parses the response head at the start of `buf`, the answer to `req`.
#[inline]
pub fn parse(buf: &mut BytesMut, req: &Parts) -> Result<Parsed, UpstreamError> {
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut scratch) => parse_with(buf, req, &mut scratch),
        Err(_) => parse_with(buf, req, &mut Scratch::default()),
    })
}

fn parse_with(
    buf: &mut BytesMut,
    req: &Parts,
    scratch: &mut Scratch,
) -> Result<Parsed, UpstreamError> {
    let Scratch { lines, names } = scratch;
    lines.clear();
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_response_with_uninit_headers(&mut resp, buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(UpstreamError::HeadTooLarge),
        Err(_) => return Err(UpstreamError::Malformed("response head does not parse")),
    };
    let code = resp.code.unwrap_or(0);
    if (100..200).contains(&code) && code != 101 {
        buf.advance(len);
        return Ok(Parsed::Interim);
    }
    let status =
        StatusCode::from_u16(code).map_err(|_| UpstreamError::Malformed("bad status code"))?;
    let http11 = resp.version == Some(1);
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;

    let base = buf.as_ptr() as usize;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut named: [(u32, u32); MAX_NAMED] = [(0, 0); MAX_NAMED];
    let mut n_named = 0;
    let mut length: Option<u64> = None;
    // More than one Content-Length line, or a list in one: sent on as one value.
    let mut length_repeated = false;
    let mut coded = false;
    let mut codings = 0u32;
    let mut chunked = false;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        match hop_kind(name) {
            Hop::No => {
                if name.eq_ignore_ascii_case(b"content-length") {
                    let n = parse_length(h.value)?;
                    if length.is_some_and(|l| l != n) {
                        return Err(UpstreamError::Malformed("differing Content-Length values"));
                    }
                    length_repeated |= length.is_some() || h.value.contains(&b',');
                    length = Some(n);
                }
                lines.push(Line {
                    name: range_in(base, name),
                    value: range_in(base, h.value),
                });
            }
            Hop::Connection => {
                for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive_token = true;
                    } else if token.is_empty()
                        || token.eq_ignore_ascii_case(b"upgrade")
                        || hop_kind(token) != Hop::No
                    {
                    } else if n_named == MAX_NAMED {
                        return Err(UpstreamError::Malformed(
                            "Connection names too many headers",
                        ));
                    } else {
                        named[n_named] = range_in(base, token);
                        n_named += 1;
                    }
                }
            }
            Hop::TransferEncoding => {
                for coding in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    if !coding.is_empty() {
                        coded = true;
                        codings += 1;
                        chunked = coding.eq_ignore_ascii_case(b"chunked");
                    }
                }
            }
            Hop::Upgrade if switching => {
                lines.push(Line {
                    name: range_in(base, name),
                    value: range_in(base, h.value),
                });
            }
            Hop::Upgrade | Hop::Te | Hop::Trailer | Hop::KeepAlive | Hop::Proxy => {}
        }
    }
    let framing = if req.method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || switching
    {
        BodyFraming::Length(0)
    } else if coded {
        // Only `chunked` alone can be undone here; `gzip` (alone, before or after
        // chunked) would reach the client as an undeclared coding.
        if !chunked || codings > 1 {
            return Err(UpstreamError::Malformed(
                "transfer coding other than chunked",
            ));
        }
        BodyFraming::Chunked
    } else if let Some(n) = length {
        BodyFraming::Length(n)
    } else {
        BodyFraming::Close
    };
    let keep_alive = (if http11 {
        !close
    } else {
        keep_alive_token && !close
    }) && framing != BodyFraming::Close
        && !switching;

    let head = buf.split_to(len).freeze();
    let mut map = spare_map();
    map.reserve(lines.len() + usize::from(switching));
    for (at, line) in lines.iter().enumerate() {
        let name = &head[line.name.0 as usize..line.name.1 as usize];
        if (coded || length_repeated) && name.eq_ignore_ascii_case(b"content-length") {
            continue; // Transfer-Encoding overrides it (RFC 9112 §6.3), or sent once below
        }
        if n_named > 0
            && named[..n_named]
                .iter()
                .any(|r| name.eq_ignore_ascii_case(&head[r.0 as usize..r.1 as usize]))
        {
            continue;
        }
        let name = header_name(names, at, name)?;
        let value = HeaderValue::from_maybe_shared(
            head.slice(line.value.0 as usize..line.value.1 as usize),
        )
        .map_err(|_| UpstreamError::Malformed("bad header value"))?;
        map.append(name, value);
    }
    if let (Some(n), true, false) = (length, length_repeated, coded) {
        map.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    if switching {
        map.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    Ok(Parsed::Final(ResponseHead {
        status,
        headers: map,
        framing,
        keep_alive,
    }))
}

/// A Content-Length value: digits, or a list of equal digit runs (`5, 5`).
fn parse_length(v: &[u8]) -> Result<u64, UpstreamError> {
    let bad = UpstreamError::Malformed("bad Content-Length");
    let mut out: Option<u64> = None;
    for part in v.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Err(bad);
        }
        let n = part
            .iter()
            .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
        if out.is_some_and(|o| o != n) {
            return Err(UpstreamError::Malformed("differing Content-Length values"));
        }
        out = Some(n);
    }
    out.ok_or(bad)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::Request;

    fn get() -> Parts {
        Request::get("/").body(()).unwrap().into_parts().0
    }

    fn head_of(bytes: &[u8], req: &Parts) -> (ResponseHead, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        match parse(&mut buf, req).unwrap() {
            Parsed::Final(h) => (h, buf),
            other => panic!("not final: {other:?}"),
        }
    }

    #[test]
    fn names_remembered_by_position_follow_what_each_head_says() {
        let names = |bytes: &[u8]| -> Vec<String> {
            let (h, _) = head_of(bytes, &get());
            h.headers.keys().map(|k| k.as_str().to_string()).collect()
        };
        let first = b"HTTP/1.1 200 OK\r\nX-Trace: a\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(names(first), ["x-trace", "content-length"]);
        // Another name at a remembered position, one at a new position, other case.
        assert_eq!(
            names(b"HTTP/1.1 200 OK\r\nX-Other: b\r\nCONTENT-LENGTH: 0\r\nVary: x\r\n\r\n"),
            ["x-other", "content-length", "vary"]
        );
        assert_eq!(names(first), ["x-trace", "content-length"]);
        assert_eq!(
            names(b"HTTP/1.1 204 No Content\r\n\r\n"),
            Vec::<String>::new()
        );
        assert_eq!(names(first), ["x-trace", "content-length"]);
    }

    #[test]
    fn content_length_response_keeps_end_to_end_headers_only() {
        let (h, rest) = head_of(
            b"HTTP/1.1 200 OK\r\nServer: x\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
              Keep-Alive: timeout=5\r\nContent-Length: 5\r\nProxy-Thing: y\r\nX-End: 2\r\n\r\nhello",
            &get(),
        );
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.framing, BodyFraming::Length(5));
        assert!(h.keep_alive);
        let names: Vec<&str> = h.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["server", "content-length", "x-end"]);
        assert_eq!(&rest[..], b"hello");
    }

    #[test]
    fn framing_follows_rfc9112() {
        let cases: [(&[u8], Method, BodyFraming, bool); 8] = [
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                Method::GET,
                BodyFraming::Chunked,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                Method::HEAD,
                BodyFraming::Length(0),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\n\r\n",
                Method::GET,
                BodyFraming::Close,
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
                Method::HEAD,
                BodyFraming::Length(0),
                true,
            ),
            (
                b"HTTP/1.1 204 No Content\r\n\r\n",
                Method::GET,
                BodyFraming::Length(0),
                true,
            ),
            (
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                Method::GET,
                BodyFraming::Length(0),
                true,
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
                Method::GET,
                BodyFraming::Length(1),
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
                Method::GET,
                BodyFraming::Length(1),
                true,
            ),
        ];
        for (bytes, method, framing, keep) in cases {
            let mut req = get();
            req.method = method;
            let (h, _) = head_of(bytes, &req);
            assert_eq!(
                (h.framing, h.keep_alive),
                (framing, keep),
                "{}",
                String::from_utf8_lossy(bytes)
            );
            assert!(h.headers.get(header::TRANSFER_ENCODING).is_none());
        }
        let (h, _) = head_of(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            &get(),
        );
        assert!(!h.keep_alive);
        let (h, _) = head_of(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            &get(),
        );
        assert!(h.headers.get(header::CONTENT_LENGTH).is_none());
    }

    #[test]
    fn interim_responses_are_skipped_and_partial_heads_wait() {
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Len"[..]);
        assert!(matches!(parse(&mut buf, &get()).unwrap(), Parsed::Interim));
        assert!(matches!(parse(&mut buf, &get()).unwrap(), Parsed::Partial));
        buf.extend_from_slice(b"gth: 0\r\n\r\n");
        assert!(matches!(parse(&mut buf, &get()).unwrap(), Parsed::Final(_)));
        assert!(buf.is_empty());
    }

    #[test]
    fn switching_protocols_keeps_upgrade() {
        let (h, _) = head_of(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n",
            &get(),
        );
        assert_eq!(h.headers["upgrade"], "websocket");
        assert_eq!(h.headers["connection"], "upgrade");
        assert_eq!(h.framing, BodyFraming::Length(0));
        assert!(!h.keep_alive);
    }

    #[test]
    fn bad_heads_are_refused() {
        for bytes in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTX/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(bytes);
            assert!(
                parse(&mut buf, &get()).is_err(),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn transfer_codings_other_than_chunked_alone_are_refused() {
        for te in ["gzip", "chunked, gzip", "gzip, chunked", "chunked, chunked"] {
            let bytes = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n");
            let mut buf = BytesMut::from(bytes.as_bytes());
            assert!(parse(&mut buf, &get()).is_err(), "{te}");
        }
        let two_lines =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut buf = BytesMut::from(&two_lines[..]);
        assert!(parse(&mut buf, &get()).is_err());
    }

    #[test]
    fn repeated_equal_content_lengths_are_sent_as_one() {
        for bytes in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\ncontent-length: 4\r\n\r\n",
        ] {
            let (h, _) = head_of(bytes, &get());
            assert_eq!(h.framing, BodyFraming::Length(4));
            let values: Vec<_> = h.headers.get_all(header::CONTENT_LENGTH).iter().collect();
            assert_eq!(values, ["4"], "{}", String::from_utf8_lossy(bytes));
        }
        let (h, _) = head_of(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", &get());
        assert_eq!(h.headers[header::CONTENT_LENGTH], "7");
    }

    #[test]
    fn recycled_maps_are_reused_empty() {
        let mut m = HeaderMap::new();
        m.insert("x-a", HeaderValue::from_static("1"));
        recycle(m);
        let (h, _) = head_of(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", &get());
        assert_eq!(h.headers.len(), 1);
        assert!(h.headers.get("x-a").is_none());
    }
}
