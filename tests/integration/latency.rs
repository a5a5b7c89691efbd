//! Latency-aware balancing (`peak-ewma`, DESIGN §13) through the real daemon: a slow
//! backend and one that fails fast both get only a sliver of the traffic, and `/status`
//! and `/metrics` show the estimates.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::admin::admin_get;
use crate::common::*;

/// Requests each test sends, and the clients that send them at once.
const REQUESTS: usize = 600;
const CLIENTS: usize = 6;

/// Sends [`REQUESTS`] GETs of `/` from [`CLIENTS`] keep-alive clients; returns how many
/// were answered 503 or 429.
async fn load(target: std::net::SocketAddr) -> usize {
    let unavailable = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let unavailable = Arc::clone(&unavailable);
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(target).await;
            for _ in 0..REQUESTS / CLIENTS {
                let r = client.get("/", &[]).await;
                match r.status {
                    200 => {}
                    429 | 503 => {
                        unavailable.fetch_add(1, Ordering::SeqCst);
                    }
                    other => panic!("unexpected {other}: {}", r.body),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    unavailable.load(Ordering::SeqCst)
}

/// Backends a and b answering after `delay_ms`; c is the one each test makes misbehave.
async fn three_backends(delay_ms: u64) -> (TestBackend, TestBackend, TestBackend) {
    let (a, b, c) = (
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    );
    a.delay.store(delay_ms, Ordering::SeqCst);
    b.delay.store(delay_ms, Ordering::SeqCst);
    (a, b, c)
}

fn admin_section() -> &'static str {
    "[admin]\nbind = \"127.0.0.1:0\"\n"
}

#[tokio::test]
async fn peak_ewma_sends_few_requests_to_a_slow_backend() {
    // 20 × slower; the base is long enough to stand out of a loaded machine's noise.
    let (a, b, c) = three_backends(10).await;
    c.delay.store(200, Ordering::SeqCst);
    let d = start_daemon(&simple_config("peak-ewma", &[&a, &b, &c], admin_section())).await;
    assert_eq!(load(addr(&d)).await, 0);
    let (ha, hb, hc) = (a.hits(), b.hits(), c.hits());
    assert_eq!(ha + hb + hc, REQUESTS);
    eprintln!("slow backend: {hc} of {REQUESTS} (a {ha}, b {hb})");
    assert!(
        hc * 10 < REQUESTS,
        "slow backend got {hc} of {REQUESTS} (a {ha}, b {hb})"
    );

    let status: serde_json::Value =
        serde_json::from_str(&admin_get(&d, "/status").await.body).unwrap();
    let backends = status["pools"]["web"]["backends"].as_array().unwrap();
    let ewma = |i: usize| backends[i]["latency_ewma_ms"].as_f64().unwrap();
    // 200 ms, decayed by the time since its last answer (10 s time constant).
    assert!(ewma(2) >= 100.0, "slow backend's estimate: {}", ewma(2));
    assert!(ewma(2) > 2.0 * ewma(0).max(ewma(1)), "{backends:?}");
    assert!(backends[2]["cost"].as_f64().unwrap() >= ewma(2));

    let metrics = admin_get(&d, "/metrics").await.body;
    let slow = format!(
        "maitred_backend_latency_ewma_seconds{{pool=\"web\",backend=\"{}\"}} ",
        c.addr
    );
    let line = metrics.lines().find(|l| l.starts_with(&slow));
    let seconds: f64 = line
        .and_then(|l| l[slow.len()..].parse().ok())
        .unwrap_or_else(|| panic!("no {slow} in\n{metrics}"));
    assert!((0.1..1.0).contains(&seconds), "{seconds}");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn peak_ewma_starves_a_backend_that_fails_fast() {
    let (a, b, c) = three_backends(2).await;
    c.fixed_status.store(503, Ordering::SeqCst);
    // Default retries (2): an answered 503 is passed on, not retried, so every 503 the
    // backend gives reaches a client and no more.
    let d = start_daemon(&simple_config("peak-ewma", &[&a, &b, &c], "")).await;
    let unavailable = load(addr(&d)).await;
    let hc = c.hits();
    eprintln!("failing backend: {hc} of {REQUESTS}, clients saw {unavailable} 503s");
    assert!(
        hc * 20 < REQUESTS,
        "failing backend got {hc} of {REQUESTS} (a {}, b {})",
        a.hits(),
        b.hits()
    );
    assert_eq!(unavailable, hc, "each 503 the client saw came from it");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn peak_ewma_honours_retry_after_of_a_429() {
    let (a, b, c) = three_backends(2).await;
    c.fixed_status.store(429, Ordering::SeqCst);
    // A penalty below the others' latency: only the Retry-After (30 s) keeps it out.
    let extra = "[pool.web.latency]\npenalty = \"1ms\"\n";
    let d = start_daemon(&simple_config("peak-ewma", &[&a, &b, &c], extra)).await;
    let refused = load(addr(&d)).await;
    let hc = c.hits();
    eprintln!("backend answering 429: {hc} of {REQUESTS}");
    assert!(
        hc <= CLIENTS,
        "asked to retry after 30 s, it still got {hc} of {REQUESTS}"
    );
    assert_eq!(refused, hc);
    d.shutdown(Some(Duration::from_secs(1))).await;
}
