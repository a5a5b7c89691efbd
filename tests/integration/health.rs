//! Health: active checks, passive ejection, retries on a dying backend, 503 when
//! nothing is up and recovery without a restart. Checks in the pools' other protocols
//! are in `protocols`.

mod protocols;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use maitred::app::Daemon;
use maitred::backend::Health;

use crate::common::*;

fn health_of(d: &Daemon, pool: &str, backend: &TestBackend) -> Health {
    let snap = d.shared().live.load();
    let p = snap.pool(pool).unwrap();
    let name = backend.addr.to_string();
    p.backends
        .iter()
        .find(|b| *b.name == *name)
        .unwrap()
        .live
        .health()
}

const CHECKS: &str = r#"
[pool.web.health]
path = "/healthz"
interval = "200ms"
timeout = "200ms"
rise = 2
fall = 2
"#;

#[tokio::test]
async fn failing_health_check_takes_backend_out_and_passing_brings_it_back() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let d = start_daemon(&simple_config("round-robin", &[&a, &b], CHECKS)).await;
    assert_eq!(
        health_of(&d, "web", &a),
        Health::Up,
        "first round runs at start-up"
    );
    a.health.store(500, Ordering::SeqCst);
    let t0 = Instant::now();
    assert!(
        wait_until(DEADLINE, || async {
            health_of(&d, "web", &a) == Health::Down
        })
        .await
    );
    // interval × fall + timeout, with slack for a noisy machine.
    assert!(
        t0.elapsed() < Duration::from_millis(200 * 2 + 200 + 2000),
        "took {:?}",
        t0.elapsed()
    );
    let before = a.hits();
    let mut c = Client::connect(addr(&d)).await;
    for _ in 0..20 {
        assert_eq!(c.get("/", &[]).await.body, "backend b\n");
    }
    assert_eq!(a.hits(), before);
    a.health.store(200, Ordering::SeqCst);
    assert!(
        wait_until(DEADLINE, || async {
            health_of(&d, "web", &a) == Health::Up
        })
        .await
    );
    let mut seen_a = false;
    for _ in 0..10 {
        seen_a |= c.get("/", &[]).await.body == "backend a\n";
    }
    assert!(seen_a, "recovered backend takes traffic again");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn backend_dying_under_load_costs_no_client_errors_with_one_retry() {
    let (a, b, c) = (
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    );
    let d = start_daemon(&simple_config("round-robin", &[&a, &b, &c], "retries = 1")).await;
    let target = addr(&d);
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (stop, errors, done) = (stop.clone(), errors.clone(), done.clone());
        clients.push(tokio::spawn(async move {
            let mut client = Client::connect(target).await;
            let end = Instant::now() + Duration::from_secs(20);
            for _ in 0..5000 {
                if stop.load(Ordering::SeqCst) || Instant::now() > end {
                    break;
                }
                match client
                    .send("GET", "/slow?ms=2", &[], bytes::Bytes::new())
                    .await
                {
                    Ok(r) if r.status == 200 => {
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::SeqCst);
                        client = Client::connect(target).await;
                    }
                }
            }
        }));
    }
    assert!(wait_until(DEADLINE, || async { done.load(Ordering::SeqCst) >= 150 }).await);
    a.kill();
    let at_kill = done.load(Ordering::SeqCst);
    assert!(
        wait_until(DEADLINE, || async {
            done.load(Ordering::SeqCst) >= at_kill + 300
        })
        .await
    );
    stop.store(true, Ordering::SeqCst);
    for t in clients {
        t.await.unwrap();
    }
    assert_eq!(
        errors.load(Ordering::SeqCst),
        0,
        "clients saw errors while a backend died"
    );
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn passive_ejection_without_active_checks() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    // The ejection outlasts the requests below even on a loaded machine: once it
    // ends, `a` is tried (and fails) again.
    let extra = "retries = 0\n\n[pool.web.ejection]\nconsecutive_failures = 3\nduration = \"5s\"\n";
    let d = start_daemon(&simple_config("round-robin", &[&a, &b], extra)).await;
    let target = addr(&d);
    let a_addr = a.addr;
    a.kill();
    let mut failures = 0;
    for _ in 0..40 {
        if get(target, "/").await.status != 200 {
            failures += 1;
        }
    }
    assert_eq!(
        failures, 3,
        "exactly the streak that ejects it fails, then it is skipped"
    );
    // Back after the ejection period, once it answers again.
    let a2 = TestBackend::start_on("a", a_addr).await;
    assert!(
        wait_until(DEADLINE, || async {
            get(target, "/").await.body == "backend a\n"
        })
        .await,
        "ejected backend never came back"
    );
    assert!(a2.hits() > 0);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn five_hundreds_in_a_row_eject_too() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let extra =
        "retries = 0\n\n[pool.web.ejection]\nconsecutive_failures = 2\nduration = \"30s\"\n";
    let d = start_daemon(&simple_config("round-robin", &[&a, &b], extra)).await;
    let mut c = Client::connect(addr(&d)).await;
    for _ in 0..10 {
        c.get("/status/500", &[]).await;
    }
    let hits_a = a.hits();
    assert_eq!(hits_a, 2, "a was ejected after two 500s in a row");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn all_backends_down_gives_503_and_recovery_needs_no_restart() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let d = start_daemon(&simple_config("round-robin", &[&a, &b], CHECKS)).await;
    a.health.store(503, Ordering::SeqCst);
    b.health.store(503, Ordering::SeqCst);
    assert!(
        wait_until(DEADLINE, || async {
            health_of(&d, "web", &a) == Health::Down && health_of(&d, "web", &b) == Health::Down
        })
        .await
    );
    let r = get(addr(&d), "/").await;
    assert_eq!(r.status, 503);
    assert!(r.headers.contains_key("retry-after"));
    b.health.store(200, Ordering::SeqCst);
    assert!(
        wait_until(DEADLINE, || async {
            get(addr(&d), "/").await.status == 200
        })
        .await
    );
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn new_backend_with_checks_waits_for_its_first_pass() {
    let a = TestBackend::start("a").await;
    a.health.store(500, Ordering::SeqCst);
    let b = TestBackend::start("b").await;
    let d = start_daemon(&simple_config("round-robin", &[&a, &b], CHECKS)).await;
    assert_eq!(health_of(&d, "web", &a), Health::Down);
    for _ in 0..6 {
        assert_eq!(get(addr(&d), "/").await.body, "backend b\n");
    }
    d.shutdown(Some(Duration::from_secs(1))).await;
}
