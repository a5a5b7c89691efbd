//! Writing a request head for a backend, and framing its body.
//!
//! The head is written from the request's parts as they stand after the header rewrite
//! (hop-by-hop headers already gone, forwarding headers added), always as HTTP/1.1 in
//! origin form. A body the client framed with Content-Length goes as it is; any other
//! body (chunked from an HTTP/1.1 client, or an HTTP/2 stream without a length) is sent
//! chunked.

use http::header;
use http::request::Parts;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderName;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// A request body on its way to a backend: none, or the client's, streamed.
#[derive(Debug)]
pub enum RequestBody {
    /// No body.
    Empty,
    /// The client's body, streamed.
    Client(Incoming),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Client(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Client(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Client(b) => b.size_hint(),
        }
    }
}

/// Header lines the request logic adds to a request for its backend (the X-Forwarded-*
/// headers), each in place of any line of that name the client sent. Written straight
/// into the request head, so they cost no header-map insertions.
pub trait AddedHeaders {
    /// Whether a client header of this name is left out because a line replaces it.
    fn replaces(name: &HeaderName) -> bool;
    /// The lines, as (name, value) pairs.
    fn lines(&self) -> impl Iterator<Item = (&'static str, &[u8])>;
}

/// How the request body is framed on the wire to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Content-Length, as the client declared it.
    Length,
    /// `Transfer-Encoding: chunked`, added by maitred.
    Chunked,
}

/// The framing for `body` under `parts`.
pub fn framing(parts: &Parts, body: &RequestBody) -> Framing {
    if body.is_end_stream() {
        Framing::None
    } else if parts.headers.contains_key(header::CONTENT_LENGTH) {
        Framing::Length
    } else {
        Framing::Chunked
    }
}

/// Appends the request head to `out`: the request's headers but for any
/// lines `added` replaces, then `added`'s lines.
/// Not inlined: the exchange that calls it stays small enough to be inlined itself.
#[inline(never)]
pub fn encode_head<A: AddedHeaders>(out: &mut Vec<u8>, parts: &Parts, added: &A, framing: Framing) {
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let target = if target.is_empty() { "/" } else { target };
    let method = parts.method.as_str();
    let mut size = method.len() + target.len() + 14;
    for (name, value) in &parts.headers {
        size += name.as_str().len() + value.len() + 4;
    }
    for (name, value) in added.lines() {
        size += name.len() + value.len() + 4;
    }
    out.reserve(size + 28);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if !A::replaces(name) {
            line(out, name.as_str(), value.as_bytes());
        }
    }
    for (name, value) in added.lines() {
        line(out, name, value);
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[inline(always)]
fn line(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends a piece of the body, framed.
pub fn append_piece(out: &mut Vec<u8>, data: &[u8], framing: Framing) {
    if framing == Framing::Chunked {
        let mut line = [0u8; 20];
        let n = chunk_size_line(&mut line, data.len());
        out.extend_from_slice(&line[..n]);
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

/// Appends the end of the body (the last chunk, when chunked).
pub fn append_end(out: &mut Vec<u8>, framing: Framing) {
    if framing == Framing::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
}

/// Writes the size line of a chunk of `len` bytes into `line`; returns its length.
pub fn chunk_size_line(line: &mut [u8; 20], len: usize) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, out) in line[..digits].iter_mut().enumerate() {
        let shift = 4 * (digits - 1 - i);
        *out = HEX[(len >> shift) & 0xf];
    }
    line[digits] = b'\r';
    line[digits + 1] = b'\n';
    digits + 2
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::Request;

    /// The forwarding lines the request logic adds, as the tests need them.
    struct Fwd {
        host: Option<http::HeaderValue>,
    }

    impl AddedHeaders for Fwd {
        fn replaces(name: &HeaderName) -> bool {
            name.as_str().starts_with("x-forwarded-")
        }

        fn lines(&self) -> impl Iterator<Item = (&'static str, &[u8])> {
            [
                Some(("x-forwarded-for", &b"10.0.0.1"[..])),
                Some(("x-forwarded-proto", &b"http"[..])),
                self.host
                    .as_ref()
                    .map(|h| ("x-forwarded-host", h.as_bytes())),
            ]
            .into_iter()
            .flatten()
        }
    }

    fn parts(req: Request<()>) -> Parts {
        req.into_parts().0
    }

    fn fwd() -> Fwd {
        Fwd { host: None }
    }

    #[test]
    fn head_is_origin_form_http11_with_every_header_in_order() {
        let p = parts(
            Request::get("/a/b?x=1&y")
                .header("host", "example.com")
                .header("x-two", "1")
                .header("x-two", "2")
                .header(
                    "x-bin",
                    http::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
                )
                .header("x-forwarded-proto", "gopher")
                .header("x-forwarded-host", "spoofed")
                .body(())
                .unwrap(),
        );
        let mut out = Vec::new();
        let mut f = fwd();
        f.host = Some(http::HeaderValue::from_static("example.com"));
        encode_head(&mut out, &p, &f, Framing::None);
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(
                b"GET /a/b?x=1&y HTTP/1.1\r\nhost: example.com\r\nx-two: 1\r\nx-two: 2\r\n\
                  x-bin: caf\xc3\xa9\r\nx-forwarded-for: 10.0.0.1\r\nx-forwarded-proto: http\r\n\
                  x-forwarded-host: example.com\r\n\r\n"
            )
        );
    }

    #[test]
    fn chunked_framing_is_declared_and_empty_targets_become_slash() {
        let mut p = parts(Request::post("/").body(()).unwrap());
        p.uri = http::Uri::from_static("http://example.com");
        let mut out = Vec::new();
        encode_head(&mut out, &p, &fwd(), Framing::Chunked);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "POST / HTTP/1.1\r\nx-forwarded-for: 10.0.0.1\r\nx-forwarded-proto: http\r\n\
             transfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn absolute_form_and_asterisk_targets_are_sent_as_origin_form() {
        let mut out = Vec::new();
        let p = parts(Request::get("https://example.com/p?q=1").body(()).unwrap());
        encode_head(&mut out, &p, &fwd(), Framing::None);
        assert!(out.starts_with(b"GET /p?q=1 HTTP/1.1\r\n"));
        out.clear();
        let p = parts(
            Request::builder()
                .method("OPTIONS")
                .uri("*")
                .body(())
                .unwrap(),
        );
        encode_head(&mut out, &p, &fwd(), Framing::None);
        assert!(
            out.starts_with(b"OPTIONS * HTTP/1.1\r\n"),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }

    #[test]
    fn body_pieces_are_framed() {
        let mut out = Vec::new();
        append_piece(&mut out, b"hello", Framing::Chunked);
        append_end(&mut out, Framing::Chunked);
        assert_eq!(out, b"5\r\nhello\r\n0\r\n\r\n");
        out.clear();
        append_piece(&mut out, b"hello", Framing::Length);
        append_end(&mut out, Framing::Length);
        assert_eq!(out, b"hello");
    }

    #[test]
    fn chunk_size_lines_are_lowercase_hex() {
        let mut line = [0u8; 20];
        for (len, want) in [
            (0usize, &b"0\r\n"[..]),
            (1, b"1\r\n"),
            (15, b"f\r\n"),
            (16, b"10\r\n"),
            (4096, b"1000\r\n"),
            (0xabcdef, b"abcdef\r\n"),
        ] {
            let n = chunk_size_line(&mut line, len);
            assert_eq!(&line[..n], want, "{len}");
        }
        let n = chunk_size_line(&mut line, usize::MAX);
        assert_eq!(n, 18);
    }
}
