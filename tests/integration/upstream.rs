//! The backend side of the proxy against a backend that writes its HTTP/1.1 by hand:
//! response framings (chunked, until close, HEAD, 204), interim responses, malformed
//! responses, connection reuse and backends that close pooled connections, an answer
//! that comes before the upload ends, request body framing, and a truncated body.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;

/// What the scripted backend does with one request, decided from its head.
enum Act {
    /// Read the body, write these bytes, keep the connection.
    Reply(&'static [u8]),
    /// Read the body, write these bytes, close the connection.
    ReplyAndClose(&'static [u8]),
    /// Write these bytes at once without reading the body, then close.
    AnswerEarly(&'static [u8]),
}

/// One request as the scripted backend read it.
#[derive(Debug, Clone)]
struct Got {
    conn: usize,
    head: String,
    body: Vec<u8>,
}

/// A backend whose every answer is written byte for byte by the test.
struct Scripted {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
    conns: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    async fn start(act: fn(&str) -> Act) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(AtomicUsize::new(0));
        let (g, c) = (Arc::clone(&got), Arc::clone(&conns));
        let task = tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            while let Ok((s, _)) = listener.accept().await {
                let n = c.fetch_add(1, Ordering::SeqCst);
                tasks.spawn(serve(s, n, act, Arc::clone(&g)));
            }
        });
        Scripted {
            addr,
            got,
            conns,
            task,
        }
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

async fn serve(mut s: TcpStream, conn: usize, act: fn(&str) -> Act, got: Arc<Mutex<Vec<Got>>>) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = read_until(&mut s, &mut buf, b"\r\n\r\n").await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let action = act(&head);
        if let Act::AnswerEarly(bytes) = action {
            let _ = s.write_all(bytes).await;
            got.lock().unwrap().push(Got {
                conn,
                head,
                body: Vec::new(),
            });
            return;
        }
        let lower = head.to_ascii_lowercase();
        let body = if lower.contains("transfer-encoding: chunked") {
            read_chunked(&mut s, &mut buf).await
        } else if let Some(n) = header_value(&lower, "content-length") {
            let n: usize = n.parse().unwrap();
            while buf.len() < n {
                if read_more(&mut s, &mut buf).await == 0 {
                    return;
                }
            }
            buf.drain(..n).collect()
        } else {
            Vec::new()
        };
        got.lock().unwrap().push(Got { conn, head, body });
        match action {
            Act::Reply(bytes) => {
                if s.write_all(bytes).await.is_err() {
                    return;
                }
            }
            Act::ReplyAndClose(bytes) | Act::AnswerEarly(bytes) => {
                let _ = s.write_all(bytes).await;
                return;
            }
        }
    }
}

fn header_value<'a>(lower_head: &'a str, name: &str) -> Option<&'a str> {
    lower_head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == name).then(|| v.trim())
    })
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 16 * 1024];
    let n = tokio::time::timeout(DEADLINE, s.read(&mut chunk))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    buf.extend_from_slice(&chunk[..n]);
    n
}

async fn read_until(s: &mut TcpStream, buf: &mut Vec<u8>, pat: &[u8]) -> Option<usize> {
    loop {
        if let Some(p) = buf.windows(pat.len()).position(|w| w == pat) {
            return Some(p);
        }
        if read_more(s, buf).await == 0 {
            return None;
        }
    }
}

async fn read_chunked(s: &mut TcpStream, buf: &mut Vec<u8>) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let Some(end) = read_until(s, buf, b"\r\n").await else {
            return body;
        };
        let size = usize::from_str_radix(std::str::from_utf8(&buf[..end]).unwrap(), 16).unwrap();
        buf.drain(..end + 2);
        while buf.len() < size + 2 {
            if read_more(s, buf).await == 0 {
                return body;
            }
        }
        if size == 0 {
            buf.drain(..2);
            return body;
        }
        body.extend(buf.drain(..size));
        buf.drain(..2);
    }
}

fn config(backends: &[SocketAddr], retries: u32) -> String {
    config_for("round-robin", backends, &format!("retries = {retries}"))
}

async fn start(act: fn(&str) -> Act) -> (Scripted, std::sync::Arc<maitred::app::Daemon>) {
    let b = Scripted::start(act).await;
    let d = start_daemon(&config(&[b.addr], 0)).await;
    (b, d)
}

#[tokio::test]
async fn every_response_framing_reaches_the_client_whole() {
    let (b, d) = start(|head| {
        let path = head.split(' ').nth(1).unwrap_or("");
        match path {
            "/chunked" => Act::Reply(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: chunked\r\n\r\n\
                  5\r\nhello\r\n1;ext=y\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n",
            ),
            "/close" => {
                Act::ReplyAndClose(b"HTTP/1.1 200 OK\r\nX-Kind: close\r\n\r\nuntil the end")
            }
            "/empty" => Act::Reply(b"HTTP/1.1 204 No Content\r\nX-Kind: empty\r\n\r\n"),
            _ => Act::Reply(
                b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX-Kind: length\r\n\r\nhello length",
            ),
        }
    })
    .await;
    let a = addr(&d);
    let mut c = Client::connect(a).await;
    for _ in 0..2 {
        let r = c.get("/chunked", &[]).await;
        assert_eq!((r.status, r.body.as_str()), (200, "hello world"));
        assert!(r.headers.get("x-trailer").is_none());
        let r = c.get("/close", &[]).await;
        assert_eq!((r.status, r.body.as_str()), (200, "until the end"));
        let r = c.get("/empty", &[]).await;
        assert_eq!((r.status, r.body.as_str()), (204, ""));
        let r = c.get("/length", &[]).await;
        assert_eq!((r.status, r.body.as_str()), (200, "hello length"));
        assert_eq!(r.headers["content-length"], "12");
        let r = c.send("HEAD", "/length", &[], Bytes::new()).await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, ""));
        assert_eq!(r.headers["content-length"], "12");
    }
    // Only the close-delimited answers cost a connection: 2 of them, plus the one the
    // other eight requests shared (or one more after each close).
    let conns = b.conns.load(Ordering::SeqCst);
    assert!(conns <= 4, "{conns} backend connections for 10 requests");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn interim_responses_are_skipped_and_malformed_ones_get_502() {
    let (_b, d) = start(|head| match head.split(' ').nth(1).unwrap_or("") {
        "/interim" => Act::Reply(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ),
        "/garbage" => Act::ReplyAndClose(b"HTTX/1.1 200 OK\r\n\r\n"),
        "/lengths" => Act::ReplyAndClose(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        ),
        "/smuggle" => Act::ReplyAndClose(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nabc"),
        _ => Act::ReplyAndClose(b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n"),
    })
    .await;
    let a = addr(&d);
    let r = get(a, "/interim").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    for path in ["/garbage", "/lengths", "/smuggle", "/badheader"] {
        let r = get(a, path).await;
        assert_eq!(r.status, 502, "{path}");
    }
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn connections_are_reused_and_one_the_backend_closed_is_never_sent_a_request() {
    let (b, d) = start(|head| {
        if head.contains("/then-close") {
            // Keep-alive is promised, then the connection is closed anyway.
            Act::ReplyAndClose(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbye")
        } else {
            Act::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        }
    })
    .await;
    let a = addr(&d);
    let mut c = Client::connect(a).await;
    for _ in 0..5 {
        assert_eq!(c.get("/", &[]).await.body, "ok");
    }
    assert_eq!(
        b.conns.load(Ordering::SeqCst),
        1,
        "keep-alive pool not used"
    );
    assert!(b.got().iter().all(|g| g.conn == 0));
    // A POST is never retried once sent, so any stale connection used would show.
    for i in 0..10 {
        let r = c
            .send("POST", "/then-close", &[], Bytes::from_static(b"data"))
            .await
            .unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "bye"), "request {i}");
    }
    // The first POST used the pooled connection; each closed the one it had.
    assert_eq!(b.conns.load(Ordering::SeqCst), 10);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn an_answer_before_the_upload_ends_reaches_the_client() {
    let (b, d) = start(|_| {
        Act::AnswerEarly(
            b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large",
        )
    })
    .await;
    let a = addr(&d);
    let mut s = TcpStream::connect(a).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&[b'x'; 64 * 1024]).await.unwrap();
    let text = read_until_end(&mut s, b"too large").await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.ends_with("too large"), "{text}");
    assert_eq!(b.got().len(), 1);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn request_bodies_are_framed_for_the_backend() {
    let (b, d) = start(|_| Act::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")).await;
    let a = addr(&d);
    let chunked = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
                    5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let out = raw_until(a, chunked, b"ok").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let sized = b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world";
    let out = raw_until(a, sized, b"ok").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let empty = b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
    let out = raw_until(a, empty, b"ok").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let got = b.got();
    assert_eq!(got.len(), 3);
    let c = &got[0];
    assert!(
        c.head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{}",
        c.head
    );
    assert_eq!(c.body, b"hello world");
    let s = &got[1];
    assert!(
        s.head.to_ascii_lowercase().contains("content-length: 11"),
        "{}",
        s.head
    );
    assert!(
        !s.head.to_ascii_lowercase().contains("transfer-encoding"),
        "{}",
        s.head
    );
    assert_eq!(s.body, b"hello world");
    assert!(
        got[2]
            .head
            .to_ascii_lowercase()
            .contains("content-length: 0")
    );
    assert!(got[2].body.is_empty());
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn a_truncated_body_cuts_the_client_connection() {
    let (_b, d) = start(|head| {
        if head.contains("/short") {
            Act::ReplyAndClose(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf!")
        } else {
            Act::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        }
    })
    .await;
    let a = addr(&d);
    let out = raw(a, b"GET /short HTTP/1.1\r\nHost: x\r\n\r\n", DEADLINE).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("content-length: 10"), "{out}");
    assert!(
        out.ends_with("\r\n\r\nhalf!"),
        "the connection should close after 5 bytes: {out}"
    );
    assert_eq!(get(a, "/next").await.body, "ok");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

/// Sends raw bytes and reads until the answer ends with `end` (or the deadline).
async fn raw_until(a: SocketAddr, bytes: &[u8], end: &[u8]) -> String {
    let mut s = TcpStream::connect(a).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_until_end(&mut s, end).await
}

/// Reads until what came ends with `end`, the peer closes, or the deadline passes.
async fn read_until_end(s: &mut TcpStream, end: &[u8]) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, async {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = s.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
            if out.ends_with(end) {
                break;
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn http2_uploads_reach_the_backend_framed() {
    let (b, d) = start(|_| Act::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")).await;
    let mut sender = h2_client(addr(&d)).await;
    let sized = http::Request::post("http://h2.test/sized")
        .header("content-length", "11")
        .body(full("hello world"))
        .unwrap();
    let pieces = futures_util::stream::iter([
        Ok::<_, BoxError>(hyper::body::Frame::data(Bytes::from_static(b"hello "))),
        Ok(hyper::body::Frame::data(Bytes::from_static(b"world"))),
    ]);
    let streamed = http::Request::post("http://h2.test/streamed")
        .body(http_body_util::BodyExt::boxed(
            http_body_util::StreamBody::new(pieces),
        ))
        .unwrap();
    for req in [sized, streamed] {
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    let got = b.got();
    assert_eq!(got.len(), 2);
    for g in &got {
        assert_eq!(g.body, b"hello world", "{}", g.head);
        assert!(g.head.starts_with("POST /"), "{}", g.head);
    }
    assert!(
        got[0].head.contains("content-length: 11"),
        "{}",
        got[0].head
    );
    assert!(
        got[1].head.contains("transfer-encoding: chunked"),
        "{}",
        got[1].head
    );
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn a_request_the_backend_dropped_is_retried_only_if_idempotent() {
    // One backend closes every connection without answering; the other answers.
    let dropper = Scripted::start(|_| Act::ReplyAndClose(b"")).await;
    let good =
        Scripted::start(|_| Act::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")).await;
    let d = start_daemon(&config(&[dropper.addr, good.addr], 1)).await;
    let a = addr(&d);
    let mut c = Client::connect(a).await;
    let mut post_statuses = Vec::new();
    for i in 0..6 {
        let r = c.get(&format!("/g{i}"), &[]).await;
        assert_eq!((r.status, r.body.as_str()), (200, "ok"), "GET /g{i}");
        let r = Client::connect(a)
            .await
            .send("POST", &format!("/p{i}"), &[], Bytes::from_static(b"once"))
            .await
            .unwrap();
        post_statuses.push(r.status);
    }
    let heads = |b: &Scripted| -> Vec<String> {
        b.got()
            .iter()
            .map(|g| g.head.split(' ').nth(1).unwrap_or("").to_owned())
            .collect()
    };
    let (dropped, served) = (heads(&dropper), heads(&good));
    // Every GET the dropper swallowed was sent again and answered.
    for p in dropped.iter().filter(|p| p.starts_with("/g")) {
        assert!(served.contains(p), "{p} was not retried: {served:?}");
    }
    // A POST reached exactly one backend: 502 if that was the dropper, never resent.
    for (i, status) in post_statuses.iter().enumerate() {
        let p = format!("/p{i}");
        let at_dropper = dropped.contains(&p);
        let at_good = served.contains(&p);
        assert!(
            at_dropper != at_good,
            "{p}: dropper {at_dropper}, good {at_good}"
        );
        assert_eq!(*status, if at_dropper { 502 } else { 200 }, "{p}");
    }
    assert!(
        dropped.iter().any(|p| p.starts_with("/p")) && dropped.iter().any(|p| p.starts_with("/g")),
        "round-robin never sent the dropper both kinds: {dropped:?}"
    );
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn repeated_content_lengths_go_on_as_one_and_other_codings_get_502() {
    let (b, d) = start(|head| match head.split(' ').nth(1).unwrap_or("") {
        "/list" => Act::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello"),
        "/lines" => {
            Act::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello")
        }
        "/gzip" => Act::ReplyAndClose(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc"),
        _ => Act::ReplyAndClose(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
    })
    .await;
    let a = addr(&d);
    for path in ["/list", "/lines"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let out = raw_until(a, req.as_bytes(), b"hello").await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        let lower = out.to_ascii_lowercase();
        assert_eq!(lower.matches("content-length").count(), 1, "{out}");
        assert!(lower.contains("content-length: 5\r\n"), "{out}");
    }
    for path in ["/gzip", "/chunked-gzip"] {
        let r = get(a, path).await;
        assert_eq!(r.status, 502, "{path}: {}", r.body);
    }
    assert_eq!(b.got().len(), 4);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

/// A backend that agrees to every upgrade it is asked for (with or without a proper
/// `Upgrade` in its 101), answers 200 otherwise, and answers bytes that follow a 101
/// (sent as `tunnel …\r\n\r\n`) from inside the tunnel.
fn upgrading_backend(head: &str) -> Act {
    let lower = head.to_ascii_lowercase();
    if head.starts_with("tunnel") {
        return Act::Reply(b"through the tunnel");
    }
    if !lower.contains("\r\nupgrade:") {
        return Act::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain");
    }
    if head.contains(" /bare-101 ") {
        return Act::Reply(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\r\n");
    }
    if head.contains(" /declined ") {
        return Act::Reply(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope");
    }
    Act::Reply(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n")
}

fn upgrade_request(path: &str, version: &str, upgrade: &str) -> String {
    format!(
        "GET {path} HTTP/{version}\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
         Upgrade: {upgrade}\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
    )
}

#[tokio::test]
async fn only_listed_upgrades_are_tunnelled_and_others_go_on_as_plain_requests() {
    let b = Scripted::start(upgrading_backend).await;
    let toml = config(&[b.addr], 0).replace(
        "pool = \"web\"\n",
        "pool = \"web\"\nupgrades = [\"websocket\", \"foo\"]\n",
    );
    let d = start_daemon(&toml).await;
    let a = addr(&d);

    // A listed protocol: the 101 goes through and bytes flow both ways.
    let mut s = TcpStream::connect(a).await.unwrap();
    s.write_all(upgrade_request("/foo", "1.1", "foo").as_bytes())
        .await
        .unwrap();
    let head = read_until_end(&mut s, b"\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Tunnel bytes are not request heads: a bare LF among them is no matter.
    s.write_all(b"tunnel ping\nbare LF\r\n\r\n").await.unwrap();
    let through = read_until_end(&mut s, b"through the tunnel").await;
    assert_eq!(through, "through the tunnel");
    drop(s);

    // h2c, an unlisted protocol, and an HTTP/1.0 upgrade go on as plain requests,
    // without Upgrade, and the connection closes after the answer.
    for (version, upgrade) in [("1.1", "h2c"), ("1.1", "bar"), ("1.0", "foo")] {
        let req = upgrade_request("/plain", version, upgrade);
        let out = raw(a, req.as_bytes(), DEADLINE).await;
        assert!(
            out.contains(" 200 OK\r\n"),
            "{upgrade} over {version}: {out}"
        );
        assert!(
            out.to_ascii_lowercase().contains("connection: close"),
            "{out}"
        );
        assert!(out.ends_with("plain"), "{out}");
        let seen = b.got().last().unwrap().head.to_ascii_lowercase();
        for gone in ["upgrade:", "http2-settings", "connection: upgrade"] {
            assert!(
                !seen.contains(gone),
                "{upgrade} over {version}: {gone} in {seen}"
            );
        }
    }
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn a_101_without_upgrade_is_a_502_and_a_declined_upgrade_closes_the_connection() {
    let (b, d) = start(upgrading_backend).await;
    let a = addr(&d);
    let out = raw(
        a,
        upgrade_request("/bare-101", "1.1", "websocket").as_bytes(),
        DEADLINE,
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");

    // Declined: the answer says the connection closes, and it does, even with another
    // request sent behind the upgrade request.
    let mut req = upgrade_request("/declined", "1.1", "websocket");
    req.push_str("GET /after HTTP/1.1\r\nHost: x\r\n\r\n");
    let out = raw(a, req.as_bytes(), DEADLINE).await;
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    assert!(
        out.to_ascii_lowercase().contains("connection: close"),
        "{out}"
    );
    assert!(out.ends_with("nope"), "{out}");
    assert!(b.got().iter().all(|g| !g.head.contains("/after")));
    d.shutdown(Some(Duration::from_secs(1))).await;
}
