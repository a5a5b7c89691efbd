//! A pool's `queue_timeout` through the real daemon: requests that find every backend
//! at `max_connections` wait for a slot, first come first served, and the backend never
//! sees more than its limit; past `queue_timeout` the overflow gets 503 with
//! Retry-After; a client that leaves gives up its place; `/status` and `/metrics` show
//! the queue.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use maitred::app::Daemon;

use crate::admin::{admin_get, status};
use crate::common::*;

/// One backend pool with the given limit and queue, and an admin listener.
fn queued_config(backend: &TestBackend, max: u32, queue_timeout: &str) -> String {
    format!(
        "{}\n[admin]\nbind = \"127.0.0.1:0\"\n",
        simple_config(
            "round-robin",
            &[backend],
            &format!("max_connections = {max}\nqueue_timeout = \"{queue_timeout}\""),
        )
    )
}

/// Requests waiting in the pool's queue now.
fn queued(d: &Daemon) -> usize {
    d.shared().live.load().pools[0].queued()
}

/// Sends a request on a fresh connection and leaves it unread: it holds its place (or
/// its slot) until the stream is dropped.
async fn send_and_hold(d: &Daemon, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr(d)).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

#[tokio::test]
async fn a_burst_beyond_max_connections_waits_its_turn_and_is_all_served() {
    let b = TestBackend::start("a").await;
    let d = start_daemon(&queued_config(&b, 4, "5s")).await;
    let target = addr(&d);
    let burst: Vec<_> = (0..40)
        .map(|_| tokio::spawn(async move { get(target, "/slow?ms=200").await }))
        .collect();
    assert!(
        wait_until(DEADLINE, || async { queued(&d) > 0 }).await,
        "nobody queued"
    );
    let mut statuses = Vec::new();
    for r in burst {
        statuses.push(r.await.unwrap().status);
    }
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(b.hits(), 40);
    assert!(
        b.concurrency.max() <= 4,
        "{} requests at the backend at once",
        b.concurrency.max()
    );
    assert_eq!(queued(&d), 0);
    let pool = &status(&d).await["pools"]["web"];
    assert_eq!(pool["queue"], 0);
    assert_eq!(pool["queue_timeouts"], 0);
    assert_eq!(pool["unavailable"], 0);
    let metrics = admin_get(&d, "/metrics").await.body;
    assert!(
        metrics.contains("maitred_queue_length{pool=\"web\"} 0"),
        "{metrics}"
    );
    let waited = metrics
        .lines()
        .find_map(|l| l.strip_prefix("maitred_queue_wait_seconds_count{pool=\"web\"} "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(waited.is_some_and(|n| n >= 30), "{metrics}");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn waiting_requests_reach_the_backend_in_arrival_order() {
    let b = TestBackend::start("a").await;
    let d = start_daemon(&queued_config(&b, 1, "30s")).await;
    let holder = send_and_hold(&d, "/slow?ms=500").await;
    assert!(wait_until(DEADLINE, || async { in_flight(&d) == 1 }).await);
    let target = addr(&d);
    let mut waiters = Vec::new();
    for n in 0..8 {
        waiters.push(tokio::spawn(async move {
            get(target, &format!("/slow?ms=10&n={n}")).await.status
        }));
        // The next one is sent only once this one is in line: arrival order is known.
        assert!(wait_until(DEADLINE, || async { queued(&d) == n + 1 }).await);
    }
    for w in waiters {
        assert_eq!(w.await.unwrap(), 200);
    }
    let order: Vec<String> = b
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter_map(|s| s.path.split_once("n=").map(|(_, n)| n.to_string()))
        .collect();
    assert_eq!(order, ["0", "1", "2", "3", "4", "5", "6", "7"]);
    drop(holder);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn past_queue_timeout_the_overflow_gets_503_with_retry_after() {
    let b = TestBackend::start("a").await;
    let d = start_daemon(&queued_config(&b, 2, "100ms")).await;
    let holders = [
        send_and_hold(&d, "/slow?ms=20000").await,
        send_and_hold(&d, "/slow?ms=20000").await,
    ];
    assert!(wait_until(DEADLINE, || async { in_flight(&d) == 2 }).await);
    let target = addr(&d);
    let started = Instant::now();
    let overflow: Vec<_> = (0..3)
        .map(|_| tokio::spawn(async move { get(target, "/").await }))
        .collect();
    for r in overflow {
        let reply = r.await.unwrap();
        assert_eq!(reply.status, 503);
        assert!(reply.headers.contains_key("retry-after"));
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(100),
        "answered before queue_timeout: {took:?}"
    );
    assert!(took < DEADLINE, "the overflow waited for a slot: {took:?}");
    assert_eq!(b.hits(), 2, "the overflow reached the backend");
    let pool = &status(&d).await["pools"]["web"];
    assert_eq!(pool["queue_timeouts"], 3);
    assert_eq!(pool["unavailable"], 3);
    assert_eq!(pool["queue"], 0);
    drop(holders);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn a_client_that_leaves_gives_up_its_place_in_the_queue() {
    let b = TestBackend::start("a").await;
    let d = start_daemon(&queued_config(&b, 1, "30s")).await;
    let holder = send_and_hold(&d, "/slow?ms=5000").await;
    assert!(wait_until(DEADLINE, || async { in_flight(&d) == 1 }).await);
    let leaver = send_and_hold(&d, "/slow?ms=10&who=leaver").await;
    assert!(wait_until(DEADLINE, || async { queued(&d) == 1 }).await);
    let target = addr(&d);
    let stayer = tokio::spawn(async move { get(target, "/slow?ms=10&who=stayer").await });
    assert!(wait_until(DEADLINE, || async { queued(&d) == 2 }).await);
    drop(leaver);
    assert!(
        wait_until(DEADLINE, || async { queued(&d) == 1 }).await,
        "a client that left still holds its place"
    );
    assert_eq!(stayer.await.unwrap().status, 200);
    let paths: Vec<String> = b
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.path.clone())
        .collect();
    assert!(!paths.iter().any(|p| p.contains("leaver")), "{paths:?}");
    drop(holder);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn an_http2_stream_reset_while_queued_leaves_the_queue() {
    let b = TestBackend::start("a").await;
    let d = start_daemon(&queued_config(&b, 1, "30s")).await;
    let holder = send_and_hold(&d, "/slow?ms=5000").await;
    assert!(wait_until(DEADLINE, || async { in_flight(&d) == 1 }).await);
    let io = TokioIo::new(TcpStream::connect(addr(&d)).await.unwrap());
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<Bytes>>(io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://h2.test/slow?ms=10&who=leaver")
        .body(Empty::new())
        .unwrap();
    let waiting = tokio::spawn(sender.send_request(req));
    assert!(wait_until(DEADLINE, || async { queued(&d) == 1 }).await);
    // Dropping the response future resets the stream.
    waiting.abort();
    assert!(
        wait_until(DEADLINE, || async { queued(&d) == 0 }).await,
        "a reset stream still holds its place"
    );
    assert_eq!(in_flight(&d), 1, "the holder keeps its slot");
    drop(holder);
    d.shutdown(Some(Duration::from_secs(1))).await;
}
