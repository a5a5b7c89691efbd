//! Writing a request head for a backend, and framing its body.
//!
//! The head is written from the request's parts as they stand after the header rewrite
//! (hop-by-hop headers already gone, forwarding headers added), always as HTTP/1.1 in
//! origin form. A body the client framed with Content-Length goes as it is; any other
//! body (chunked from an HTTP/1.1 client, or an HTTP/2 stream without a length) is sent
//! chunked.

use http::header;
use http::request::Parts;
use http_body::Body as _;

use crate::proxy::body::UpBody;
use crate::proxy::headers::Forwarded;

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
pub fn framing(parts: &Parts, body: &UpBody) -> Framing {
    if body.is_end_stream() {
        Framing::None
    } else if parts.headers.contains_key(header::CONTENT_LENGTH) {
        Framing::Length
    } else {
        Framing::Chunked
    }
}

/// Appends the request head to `out`: the request's headers but for any
/// X-Forwarded-For/-Proto/-Host the client sent, then `forwarded`'s.
pub fn encode_head(out: &mut Vec<u8>, parts: &Parts, forwarded: &Forwarded, framing: Framing) {
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let target = if target.is_empty() { "/" } else { target };
    let method = parts.method.as_str();
    let mut size = method.len() + target.len() + 14;
    for (name, value) in &parts.headers {
        size += name.as_str().len() + value.len() + 4;
    }
    for (name, value) in forwarded.lines() {
        size += name.len() + value.len() + 4;
    }
    out.reserve(size + 28);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if !Forwarded::replaces(name) {
            line(out, name.as_str(), value.as_bytes());
        }
    }
    for (name, value) in forwarded.lines() {
        line(out, name, value);
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

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
    use crate::proxy::headers::{ForwardedFor, IpText};
    use http::Request;

    fn parts(req: Request<()>) -> Parts {
        req.into_parts().0
    }

    fn fwd() -> Forwarded {
        Forwarded {
            for_: ForwardedFor::Client(IpText::new([10, 0, 0, 1].into())),
            proto: "http",
            host: None,
        }
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
