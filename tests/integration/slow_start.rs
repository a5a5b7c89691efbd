//! Slow start (DESIGN §11): a backend that joins ramps from 10 % to 100 % of its share
//! of new work, for every balancer, and moves no client already bound.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use maitred::app::Daemon;

use crate::admin::status;
use crate::common::*;

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn with_admin(cfg: String) -> String {
    format!("{cfg}\n[admin]\nbind = \"127.0.0.1:0\"\n")
}

/// A backend's ramp in `/status`.
async fn status_ramp(d: &Daemon, pool: &str, addr: SocketAddr) -> f64 {
    let s = status(d).await;
    let backends = s["pools"][pool]["backends"].as_array().unwrap().clone();
    let b = backends.iter().find(|b| b["addr"] == addr.to_string());
    b.unwrap()["ramp"].as_f64().unwrap()
}

/// Keeps `clients` keep-alive clients sending GETs to `target` until `stop`.
fn load(
    target: SocketAddr,
    clients: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|_| {
            let stop = Arc::clone(stop);
            tokio::spawn(async move {
                let mut c = Client::connect(target).await;
                let end = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::SeqCst) && Instant::now() < end {
                    if c.send("GET", "/", &[], bytes::Bytes::new()).await.is_err() {
                        c = Client::connect(target).await;
                    }
                }
            })
        })
        .collect()
}

/// The newcomer's share of the requests the backends saw between two samples of
/// their hit counts.
fn share(before: &[usize], after: &[usize], newcomer: usize) -> f64 {
    let total: usize = after.iter().zip(before).map(|(a, b)| a - b).sum();
    (after[newcomer] - before[newcomer]) as f64 / total.max(1) as f64
}

#[tokio::test]
async fn round_robin_newcomer_follows_the_ramp_line() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let dir = scratch_dir("slow-start-rr");
    let path = dir.join("maitred.toml");
    let extra = "slow_start = \"10s\"\n";
    write(
        &path,
        &with_admin(simple_config("round-robin", &[&a], extra)),
    );
    let d = start_daemon_file(&path).await;
    assert_eq!(
        status_ramp(&d, "web", a.addr).await,
        1.0,
        "present at start: no ramp"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(addr(&d), 4, &stop);
    write(
        &path,
        &with_admin(simple_config("round-robin", &[&a, &b], extra)),
    );
    d.reload(false).await.unwrap();
    let t0 = Instant::now();
    let hits = || [a.hits(), b.hits()];
    let mut off_line = Vec::new();
    for at in [2.5f64, 5.0, 7.5] {
        tokio::time::sleep_until((t0 + Duration::from_secs_f64(at - 0.5)).into()).await;
        let before = hits();
        tokio::time::sleep_until((t0 + Duration::from_secs_f64(at + 0.5)).into()).await;
        let got = share(&before, &hits(), 1);
        // Weight × ramp: the ramp is 10 % + 90 % × t / 10 s; beside one equal backend
        // the newcomer's share of requests is ramp / (1 + ramp).
        let ramp = 0.1 + 0.9 * at / 10.0;
        let line = ramp / (1.0 + ramp);
        eprintln!("at {at} s: newcomer share {got:.3}, line {line:.3}");
        if (got - line).abs() > 0.10 {
            off_line.push((at, got, line));
        }
    }
    let full = wait_until(DEADLINE, || async {
        status_ramp(&d, "web", b.addr).await == 1.0
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        let _ = c.await;
    }
    assert!(
        off_line.is_empty(),
        "share off the line by more than 10 points: {off_line:?}"
    );
    assert!(full, "the ramp ends at full share");
    d.shutdown(None).await;
}

/// Three pools behind one listener, by path: least-connections (`/lc`), cookie
/// affinity (`/ck`) and hash of `x-user` (`/h`), each over `backends`, with a 4 s ramp.
fn sticky_config(backends: &[&TestBackend]) -> String {
    let list = backends
        .iter()
        .map(|b| format!("\"{}\"", b.addr))
        .collect::<Vec<_>>()
        .join(", ");
    let pool = |name: &str, balancer: &str, extra: &str| {
        format!(
            "\n[pool.{name}]\nbalancer = \"{balancer}\"\nbackends = [{list}]\nslow_start = \"4s\"\n{extra}"
        )
    };
    let mut s = String::from(
        "[server]\nthreads = 2\naccess_log = \"off\"\nlog_level = \"warn\"\n\n\
         [[listener]]\nname = \"main\"\nbind = \"127.0.0.1:0\"\npool = \"lc\"\n",
    );
    for (prefix, pool) in [("/ck", "ck"), ("/h", "h")] {
        s.push_str(&format!(
            "\n[[listener.route]]\npath_prefix = \"{prefix}\"\npool = \"{pool}\"\n"
        ));
    }
    s.push_str(&pool("lc", "least-connections", ""));
    s.push_str(&pool(
        "ck",
        "cookie-affinity",
        "[pool.ck.affinity]\ncookie = \"srv\"\n",
    ));
    s.push_str(&pool("h", "hash", "key = \"header:x-user\"\n"));
    with_admin(s)
}

/// What the sticky pools look like at one moment.
#[derive(Debug)]
struct Round {
    /// Shares of `b` among new least-connections requests and new cookie clients.
    lc_new: f64,
    ck_new: f64,
    /// Which of the hash keys reached `b`.
    keys_on_b: Vec<bool>,
    /// Whether every bound cookie client reached `a`.
    bound_stayed: bool,
}

async fn round(target: SocketAddr, jar: &[String], keys: usize) -> Round {
    let mut c = Client::connect(target).await;
    let on_b = |r: &Reply| r.body.trim() == "backend b";
    let mut lc = 0;
    let mut ck = 0;
    for _ in 0..60 {
        lc += usize::from(on_b(&c.get("/lc", &[]).await));
        ck += usize::from(on_b(&c.get("/ck", &[]).await));
    }
    let mut keys_on_b = Vec::with_capacity(keys);
    for k in 0..keys {
        let user = format!("user-{k}");
        keys_on_b.push(on_b(&c.get("/h", &[("x-user", &user)]).await));
    }
    let mut bound_stayed = true;
    for cookie in jar {
        bound_stayed &= c.get("/ck", &[("cookie", cookie)]).await.body.trim() == "backend a";
    }
    Round {
        lc_new: lc as f64 / 60.0,
        ck_new: ck as f64 / 60.0,
        keys_on_b,
        bound_stayed,
    }
}

#[tokio::test]
async fn every_balancer_ramps_and_bound_clients_stay() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let dir = scratch_dir("slow-start-sticky");
    let path = dir.join("maitred.toml");
    write(&path, &sticky_config(&[&a]));
    let d = start_daemon_file(&path).await;
    let target = addr(&d);
    let mut c = Client::connect(target).await;
    let mut jar = Vec::new();
    for _ in 0..20 {
        let r = c.get("/ck", &[]).await;
        let set = r.headers["set-cookie"].to_str().unwrap();
        jar.push(set.split(';').next().unwrap().to_string());
    }
    write(&path, &sticky_config(&[&a, &b]));
    d.reload(false).await.unwrap();
    let t0 = Instant::now();
    let early = round(target, &jar, 300).await;
    let early_secs = t0.elapsed().as_secs_f64();
    for pool in ["lc", "ck", "h"] {
        assert!(status_ramp(&d, pool, b.addr).await < 1.0, "{pool}: ramping");
    }
    let ramped = wait_until(DEADLINE, || async {
        let mut full = true;
        for pool in ["lc", "ck", "h"] {
            full &= status_ramp(&d, pool, b.addr).await == 1.0;
        }
        full
    })
    .await;
    assert!(ramped, "every ramp ends");
    let late = round(target, &jar, 300).await;
    let share = |v: &[bool]| v.iter().filter(|x| **x).count() as f64 / v.len() as f64;
    eprintln!(
        "after {early_secs:.2} s of 4: lc {:.2} ck {:.2} hash {:.2}; ramped: lc {:.2} ck {:.2} hash {:.2}",
        early.lc_new,
        early.ck_new,
        share(&early.keys_on_b),
        late.lc_new,
        late.ck_new,
        share(&late.keys_on_b)
    );
    // Early the ramp is at most 10 % + 90 % × elapsed / 4 s of a full share (half).
    let ceiling = 0.5 * (0.1 + 0.9 * early_secs / 4.0) + 0.12;
    assert!(early.lc_new < ceiling, "least-connections: {early:?}");
    assert!(
        early.ck_new < ceiling,
        "cookie-affinity new clients: {early:?}"
    );
    assert!(share(&early.keys_on_b) < ceiling, "hash keys");
    assert!(
        late.lc_new > 0.35 && late.ck_new > 0.35,
        "full share: {late:?}"
    );
    assert!(
        (0.35..0.65).contains(&share(&late.keys_on_b)),
        "hash keys at full share"
    );
    assert!(
        early.bound_stayed && late.bound_stayed,
        "cookie clients never move"
    );
    let moved_back = early
        .keys_on_b
        .iter()
        .zip(&late.keys_on_b)
        .filter(|(e, l)| **e && !**l)
        .count();
    assert_eq!(moved_back, 0, "a hash key that moved stays moved");
    d.shutdown(None).await;
}
