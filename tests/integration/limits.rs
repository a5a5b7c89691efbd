//! Limits and timeouts through the real daemon: a client that stops reading, stalls
//! its upload or leaves cannot pin or eject a backend; a backend that stalls mid-body
//! is cut; idle backend connections the backend closes (or that outlive
//! `keepalive_timeout`) are reaped, and a reuse that races the backend's close is sent
//! again on a fresh connection; a listener's `max_connections` holds new connections in
//! the accept queue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use maitred::app::Daemon;
use maitred::backend::BackendLive;

use crate::common::*;

fn idle_backend_conns(d: &Daemon) -> u64 {
    over_backends(d, |b| b.conns.idle() as u64)
}

fn backend_errors(d: &Daemon) -> u64 {
    over_backends(d, BackendLive::errors)
}

/// One listener with `listener_extra` keys in front of `backends` with `pool_extra`.
fn config(backends: &[SocketAddr], listener_extra: &str, pool_extra: &str) -> String {
    config_for("round-robin", backends, pool_extra).replace(
        "pool = \"web\"\n",
        &format!("pool = \"web\"\n{listener_extra}\n"),
    )
}

/// Sends one request on a raw connection and reads nothing back.
async fn request_and_stop_reading(d: &Daemon, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr(d)).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_by_send_timeout_and_frees_its_backend() {
    let b = TestBackend::start("a").await;
    let d = start_daemon(&config(
        &[b.addr],
        "send_timeout = \"1s\"",
        "max_connections = 1",
    ))
    .await;
    // 64 MiB: far more than the socket buffers hold, so the write to the client blocks
    // and the backend's slot stays taken while it does.
    let stalled = request_and_stop_reading(&d, "/big?mb=64").await;
    assert!(wait_until(DEADLINE, || async { in_flight(&d) == 1 }).await);
    // The backend is at its limit meanwhile: a second request is refused.
    assert_eq!(get(addr(&d), "/").await.status, 503);
    // Without reading a byte more, the stalled client loses its connection and the
    // slot comes back.
    assert!(
        wait_until(DEADLINE, || async { in_flight(&d) == 0 }).await,
        "the stalled response still holds the backend"
    );
    assert_eq!(get(addr(&d), "/").await.status, 200);
    assert_eq!(
        backend_errors(&d),
        0,
        "a slow client is not the backend's fault"
    );
    drop(stalled);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn an_http2_stream_without_flow_control_window_is_reset_after_send_timeout() {
    let b = TestBackend::start("a").await;
    let d = start_daemon(&config(&[b.addr], "send_timeout = \"1s\"", "")).await;
    let io = TokioIo::new(TcpStream::connect(addr(&d)).await.unwrap());
    // A window of zero: the client never lets a byte of any body through.
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(0)
        .handshake::<_, Empty<Bytes>>(io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut heads = Vec::new();
    for _ in 0..20 {
        let req = Request::get("http://h2.test/big?mb=1")
            .body(Empty::new())
            .unwrap();
        sender.ready().await.unwrap();
        heads.push(sender.send_request(req));
    }
    let mut responses = Vec::new();
    for h in heads {
        responses.push(tokio::time::timeout(DEADLINE, h).await.unwrap().unwrap());
    }
    // The heads are out and every body holds its backend's slot.
    assert!(in_flight(&d) > 0);
    assert!(
        wait_until(DEADLINE, || async { in_flight(&d) == 0 }).await,
        "{} streams still hold the backend",
        in_flight(&d)
    );
    // Each body ends in an error (the stream was reset), not in data.
    for r in responses {
        let body = tokio::time::timeout(DEADLINE, r.into_body().collect()).await;
        assert!(body.unwrap().is_err());
    }
    assert_eq!(backend_errors(&d), 0);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

/// A POST whose client sends part of its body and then nothing.
async fn stalled_upload(d: &Daemon) -> String {
    let mut s = TcpStream::connect(addr(d)).await.unwrap();
    s.write_all(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn stalled_uploads_get_408_and_never_count_against_the_backends() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let pool = "response_timeout = \"300ms\"\n\
                [pool.web.ejection]\nconsecutive_failures = 2\nduration = \"60s\"";
    let d = start_daemon(&config(
        &[a.addr, b.addr],
        "client_body_timeout = \"1s\"",
        pool,
    ))
    .await;
    let uploads: Vec<_> = (0..20).map(|_| stalled_upload(&d)).collect();
    for answer in futures_util::future::join_all(uploads).await {
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    assert_eq!(backend_errors(&d), 0);
    // Both backends are still up and serve everyone.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        let r = get(addr(&d), "/").await;
        assert_eq!(r.status, 200);
        seen.insert(r.body);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    // A slow upload that does arrive whole is answered, however long it took
    // overall: response_timeout counts only from the end of the body.
    let mut s = TcpStream::connect(addr(&d)).await.unwrap();
    s.write_all(
        b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    for byte in [b"a", b"b", b"c", b"d"] {
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.write_all(byte).await.unwrap();
    }
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("4\n"),
        "{out}"
    );
    let events = &maitred::stats::CLIENT_EVENTS;
    assert!(events.body_timeouts.load(Ordering::Relaxed) >= 20);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

/// A backend that answers every request with a head promising 100 bytes, sends 10 and
/// then nothing, keeping the connection open.
async fn stalling_backend() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
                .await;
            held.push(s);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_backend_that_stalls_mid_body_is_cut_after_read_timeout() {
    let (backend, task) = stalling_backend().await;
    let d = start_daemon(&config(&[backend], "", "read_timeout = \"500ms\"")).await;
    let mut s = TcpStream::connect(addr(&d)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    // The client sees the head and the 10 bytes, then the connection ends: the body
    // is cut rather than left hanging.
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .expect("the stalled body is cut")
        .ok();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("0123456789"), "{out}");
    assert!(wait_until(DEADLINE, || async { in_flight(&d) == 0 }).await);
    assert_eq!(backend_errors(&d), 1, "a stalled backend body is its error");
    task.abort();
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn a_client_that_leaves_cancels_its_request_at_the_backend() {
    let b = TestBackend::start("a").await;
    let d = start_daemon(&config(&[b.addr], "", "")).await;
    let started = Instant::now();
    let s = request_and_stop_reading(&d, "/slow?ms=60000").await;
    assert!(wait_until(DEADLINE, || async { in_flight(&d) == 1 }).await);
    drop(s);
    assert!(
        wait_until(DEADLINE, || async { in_flight(&d) == 0 }).await,
        "the request of a client that left still runs"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    // Its backend connection was closed, not pooled half-answered.
    assert_eq!(idle_backend_conns(&d), 0);
    assert!(
        maitred::stats::CLIENT_EVENTS
            .aborted
            .load(Ordering::Relaxed)
            >= 1
    );
    assert_eq!(backend_errors(&d), 0);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

/// A backend on loopback whose connections are each served by `serve`; counts the
/// connections it accepted.
async fn raw_backend<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(s));
        }
    });
    (addr, accepted)
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";

/// A keep-alive backend that closes a connection after `idle` without a request, as
/// gunicorn and Node do.
async fn short_keepalive_backend(idle: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    raw_backend(move |mut s| async move {
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(idle, s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
            while let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap_or(0));
                if buf.len() < end + 4 + len {
                    break;
                }
                buf.drain(..end + 4 + len);
                if s.write_all(OK).await.is_err() {
                    return;
                }
            }
        }
    })
    .await
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A backend that answers the first request of each connection (keep-alive) and
/// closes the connection without a word when the next one arrives: what a reuse that
/// races the backend's keep-alive timeout looks like from the proxy, every time.
async fn one_answer_per_connection_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    raw_backend(|mut s| async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while find(&buf, b"\r\n\r\n").is_none() {
            match s.read(&mut chunk).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        }
        if s.write_all(OK).await.is_err() {
            return;
        }
        // The next request's first bytes: close without answering.
        let _ = s.read(&mut chunk).await;
    })
    .await
}

#[tokio::test]
async fn a_reused_connection_the_backend_closed_is_sent_again_on_a_fresh_one() {
    let (backend, accepted) = one_answer_per_connection_backend().await;
    // One backend and no retries: only a fresh connection can save the request.
    let d = start_daemon(&config(&[backend], "", "retries = 0")).await;
    let mut c = Client::connect(addr(&d)).await;
    for i in 0..20 {
        let r = c.get("/", &[]).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
    }
    assert!(accepted.load(Ordering::SeqCst) >= 20);
    let stale: u64 = d
        .shared()
        .live
        .load()
        .pools
        .iter()
        .map(|p| p.stats.stale_retries.load(Ordering::Relaxed))
        .sum();
    assert!(stale >= 1, "no request went again on a fresh connection");
    assert_eq!(backend_errors(&d), 0, "a stale connection is not a failure");
    // A POST whose body was written whole is not sent twice: it may have been
    // processed (DESIGN §6).
    let mut saw_502 = false;
    for _ in 0..4 {
        let r = c
            .send("POST", "/", &[], Bytes::from_static(b"data"))
            .await
            .unwrap();
        assert!(r.status == 200 || r.status == 502, "{}", r.status);
        saw_502 |= r.status == 502;
    }
    assert!(saw_502, "a written POST was sent again");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn idle_backend_connections_are_reaped_when_closed_and_after_keepalive_timeout() {
    // A backend that closes idle connections after 300 ms: with no traffic at all,
    // nothing is left in CLOSE_WAIT.
    let (closing, _) = short_keepalive_backend(Duration::from_millis(300)).await;
    let d = start_daemon(&config(&[closing], "", "keepalive_timeout = \"60s\"")).await;
    let replies = futures_util::future::join_all((0..10).map(|_| get(addr(&d), "/"))).await;
    assert!(replies.iter().all(|r| r.status == 200));
    assert!(idle_backend_conns(&d) > 0);
    assert!(
        wait_until(DEADLINE, || async { idle_backend_conns(&d) == 0 }).await,
        "{} closed connections still pooled",
        idle_backend_conns(&d)
    );
    d.shutdown(Some(Duration::from_secs(1))).await;

    // A backend that never closes them: keepalive_timeout does.
    let b = TestBackend::start("a").await;
    let d = start_daemon(&config(&[b.addr], "", "keepalive_timeout = \"1s\"")).await;
    assert_eq!(get(addr(&d), "/").await.status, 200);
    assert_eq!(idle_backend_conns(&d), 1);
    assert!(wait_until(DEADLINE, || async { idle_backend_conns(&d) == 0 }).await);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn connections_beyond_max_connections_wait_in_the_accept_queue() {
    let b = TestBackend::start("a").await;
    let d = start_daemon(&config(&[b.addr], "max_connections = 2", "")).await;
    let limit = |d: &Daemon| {
        d.shared()
            .live
            .load()
            .listener("main")
            .map(|l| l.conn_limit.open())
    };
    let mut first = Client::connect(addr(&d)).await;
    let mut second = Client::connect(addr(&d)).await;
    assert_eq!(first.get("/", &[]).await.status, 200);
    assert_eq!(second.get("/", &[]).await.status, 200);
    assert_eq!(limit(&d), Some(2));
    // The third connects (the kernel queues it) but is not served while two are held.
    let mut third = TcpStream::connect(addr(&d)).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let early = tokio::time::timeout(Duration::from_millis(500), third.read_to_end(&mut out)).await;
    assert!(early.is_err(), "served beyond the limit: {out:?}");
    drop(first);
    tokio::time::timeout(DEADLINE, third.read_to_end(&mut out))
        .await
        .expect("served once a place is free")
        .unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    drop(second);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn an_admin_client_that_never_finishes_its_head_is_closed() {
    let b = TestBackend::start("a").await;
    let toml = format!(
        "{}\n[admin]\nbind = \"127.0.0.1:0\"\n",
        config(&[b.addr], "", "")
    );
    let d = start_daemon(&toml).await;
    let admin = d.admin_addr().unwrap();
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(40), s.read_to_end(&mut out)).await;
    assert!(closed.is_ok(), "the admin connection is still open");
    d.shutdown(Some(Duration::from_secs(1))).await;
}
