//! Stateless and sticky balancing through the real daemon: least-connections under a
//! slow backend, in-flight counts that never leak, consistent hashing, cookie affinity
//! across instances, bounded load, drain.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use maitred::app::Daemon;

use crate::common::*;

async fn no_leak(d: &Daemon, what: &str) {
    assert!(
        wait_until(DEADLINE, || async { in_flight(d) == 0 }).await,
        "in-flight count leaked after {what}: {}",
        in_flight(d)
    );
}

#[tokio::test]
async fn least_connections_sends_fewer_requests_to_a_slow_backend() {
    let (a, b, c) = (
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    );
    // Slow enough to stand out from the latency a loaded machine adds to every answer.
    c.delay.store(300, Ordering::SeqCst);
    let d = start_daemon(&simple_config("least-connections", &[&a, &b, &c], "")).await;
    let target = addr(&d);
    let mut tasks = Vec::new();
    for _ in 0..12 {
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(target).await;
            for _ in 0..25 {
                assert_eq!(client.get("/", &[]).await.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (ha, hb, hc) = (a.hits(), b.hits(), c.hits());
    assert_eq!(ha + hb + hc, 300);
    assert!(
        hc * 3 < ha.min(hb),
        "slow backend got {hc}, others {ha} and {hb}"
    );
    no_leak(&d, "normal responses").await;
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn in_flight_counts_return_to_zero_on_every_path() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let d = start_daemon(&simple_config(
        "least-connections",
        &[&a, &b],
        "response_timeout = \"300ms\"\nretries = 0",
    ))
    .await;
    let target = addr(&d);
    let mut c = Client::connect(target).await;
    c.get("/", &[]).await;
    no_leak(&d, "a normal response").await;
    c.get("/status/500", &[]).await;
    no_leak(&d, "a backend error").await;
    assert_eq!(c.get("/slow?ms=2000", &[]).await.status, 504);
    no_leak(&d, "a response timeout").await;

    // Client gone mid-request: the backend is still thinking when the client leaves.
    {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(target).await.unwrap();
        s.write_all(b"GET /slow?ms=500 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(wait_until(DEADLINE, || async { in_flight(&d) == 1 }).await);
    }
    no_leak(&d, "a client that disconnected mid-request").await;

    // Client gone mid-request-body: it promised 1 MiB and sent 10 bytes.
    {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(target).await.unwrap();
        s.write_all(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n0123456789")
            .await
            .unwrap();
        assert!(wait_until(DEADLINE, || async { in_flight(&d) == 1 }).await);
    }
    no_leak(&d, "a client that disconnected mid-upload").await;

    // Client gone mid-response-body: reads a little of 64 MiB, then leaves.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(target).await.unwrap();
        s.write_all(b"GET /big?mb=64 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 65536];
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0);
        assert_eq!(in_flight(&d), 1);
    }
    no_leak(&d, "a client that disconnected mid-response").await;
    d.shutdown(Some(Duration::from_secs(1))).await;
}

fn hash_config(backends: &[&TestBackend], key: &str, extra: &str) -> String {
    simple_config("hash", backends, &format!("key = \"{key}\"\n{extra}"))
}

#[tokio::test]
async fn hash_on_a_header_is_sticky_and_fails_over_and_back() {
    let backends = [
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    ];
    let refs: Vec<&TestBackend> = backends.iter().collect();
    // Quick checks, but a slow answer on a loaded machine is no failure: with fall = 1
    // a single timed-out probe of a healthy backend would move its users.
    let checks = "\n[pool.web.health]\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"2s\"\nrise = 1\nfall = 1\n";
    let d = start_daemon(&hash_config(&refs, "header:x-user", checks)).await;
    let mut c = Client::connect(addr(&d)).await;
    let mut homes = std::collections::HashMap::new();
    for u in 0..30 {
        let user = format!("user-{u}");
        let first = c.get("/", &[("x-user", &user)]).await.body;
        for _ in 0..3 {
            assert_eq!(c.get("/", &[("x-user", &user)]).await.body, first);
        }
        homes.insert(user, first);
    }
    let spread: std::collections::HashSet<&String> = homes.values().collect();
    assert_eq!(spread.len(), 3, "30 users should reach all 3 backends");
    // Backend b goes down: its users move, nobody else does; then they come back.
    backends[1].health.store(500, Ordering::SeqCst);
    assert!(
        wait_until(DEADLINE, || async {
            d.shared().live.load().pools[0].backends[1].live.health()
                != maitred::backend::Health::Up
        })
        .await
    );
    for (user, home) in &homes {
        let now = c.get("/", &[("x-user", user)]).await.body;
        if home == "backend b\n" {
            assert_ne!(&now, home);
        } else {
            assert_eq!(&now, home, "{user} moved although its backend is healthy");
        }
    }
    backends[1].health.store(200, Ordering::SeqCst);
    assert!(
        wait_until(DEADLINE, || async {
            d.shared().live.load().pools[0].backends[1].live.health()
                == maitred::backend::Health::Up
        })
        .await
    );
    for (user, home) in &homes {
        assert_eq!(
            &c.get("/", &[("x-user", user)]).await.body,
            home,
            "{user} did not come back"
        );
    }
    // No key: round-robin.
    let keyless: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(c.get("/", &[]).await.body);
        }
        v
    };
    assert_eq!(tally(&keyless).len(), 3);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn hot_key_spills_over_bounded_load_while_others_stay() {
    let backends = [
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
        TestBackend::start("d").await,
    ];
    let refs: Vec<&TestBackend> = backends.iter().collect();
    let d = start_daemon(&hash_config(
        &refs,
        "header:x-user",
        "balance_factor = 1.25",
    ))
    .await;
    let target = addr(&d);
    let mut c = Client::connect(target).await;
    let hot_home = c.get("/", &[("x-user", "hot")]).await.body;
    let mut cool = Vec::new();
    for u in 0..40 {
        let user = format!("cool-{u}");
        let home = c.get("/", &[("x-user", &user)]).await.body;
        if home != hot_home {
            cool.push((user, home));
        }
    }
    // Twelve slow requests for the hot key at once.
    let mut slow = Vec::new();
    for _ in 0..12 {
        slow.push(tokio::spawn(async move {
            let mut c = Client::connect(target).await;
            c.get("/slow?ms=700", &[("x-user", "hot")]).await.body
        }));
    }
    let mut served = Vec::new();
    for t in slow {
        served.push(t.await.unwrap());
    }
    let counts = tally(&served);
    let at_home = counts.get(&hot_home).copied().unwrap_or(0);
    assert!(
        (2..12).contains(&at_home),
        "hot key did not spill: {counts:?}"
    );
    for (user, home) in &cool {
        assert_eq!(&c.get("/", &[("x-user", user)]).await.body, home);
    }
    d.shutdown(Some(Duration::from_secs(1))).await;
}

fn cookie_config(backends: &[&TestBackend], secret: &str, max_age: &str) -> String {
    simple_config(
        "cookie-affinity",
        backends,
        &format!(
            "\n[pool.web.affinity]\ncookie = \"srv\"\nsecret = \"{secret}\"\n{max_age}\nhttp_only = true\nsame_site = \"Lax\"\n"
        ),
    )
}

fn set_cookie(r: &Reply) -> Option<String> {
    r.headers
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
}

#[tokio::test]
async fn cookie_affinity_two_instances_agree_only_with_the_same_secret() {
    let backends = [
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    ];
    let refs: Vec<&TestBackend> = backends.iter().collect();
    let one = start_daemon(&cookie_config(&refs, "shared", "")).await;
    let two = start_daemon(&cookie_config(&refs, "shared", "")).await;
    let other = start_daemon(&cookie_config(&refs, "different", "")).await;
    let first = get(addr(&one), "/").await;
    let full = first.headers["set-cookie"].to_str().unwrap().to_string();
    assert!(
        full.contains("; Path=/") && full.contains("HttpOnly") && full.contains("SameSite=Lax"),
        "{full}"
    );
    let jar = set_cookie(&first).unwrap();
    assert!(
        !jar.contains("127.0.0.1"),
        "cookie reveals the address: {jar}"
    );
    for d in [&one, &two] {
        let mut c = Client::connect(addr(d)).await;
        for _ in 0..6 {
            let r = c.get("/", &[("cookie", &jar)]).await;
            assert_eq!(r.body, first.body);
            assert!(set_cookie(&r).is_none(), "a valid cookie is not rewritten");
        }
    }
    // Another secret: the cookie is treated as absent, the client is placed anew.
    let r = get_with(addr(&other), &jar).await;
    assert!(set_cookie(&r).is_some());
    // One edited byte: absent too.
    let mut edited = jar.clone().into_bytes();
    let last = edited.len() - 1;
    edited[last] = if edited[last] == b'A' { b'B' } else { b'A' };
    let r = get_with(addr(&one), &String::from_utf8(edited).unwrap()).await;
    assert!(set_cookie(&r).is_some(), "an edited token was accepted");
    for d in [one, two, other] {
        d.shutdown(Some(Duration::from_secs(1))).await;
    }
}

async fn get_with(a: std::net::SocketAddr, cookie: &str) -> Reply {
    Client::connect(a)
        .await
        .get("/", &[("cookie", cookie)])
        .await
}

#[tokio::test]
async fn cookie_past_half_life_is_reissued_and_expired_is_replaced() {
    let backends = [TestBackend::start("a").await, TestBackend::start("b").await];
    let refs: Vec<&TestBackend> = backends.iter().collect();
    let d = start_daemon(&cookie_config(&refs, "s", "max_age = \"2s\"")).await;
    let first = get(addr(&d), "/").await;
    let jar = set_cookie(&first).unwrap();
    assert!(
        first.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=2")
    );
    let young = get_with(addr(&d), &jar).await;
    assert!(set_cookie(&young).is_none());
    // Past half of max_age: re-issued, same backend.
    let reissued = Arc::new(std::sync::Mutex::new(None));
    let (r2, jar2) = (reissued.clone(), jar.clone());
    let a = addr(&d);
    assert!(
        wait_until(DEADLINE, || {
            let (r2, jar2) = (r2.clone(), jar2.clone());
            async move {
                let r = get_with(a, &jar2).await;
                let fresh = set_cookie(&r);
                let found = fresh.is_some();
                *r2.lock().unwrap() = Some((r.body, fresh));
                found
            }
        })
        .await
    );
    let (body, fresh) = reissued.lock().unwrap().clone().unwrap();
    assert_eq!(body, first.body, "re-issue keeps the backend");
    assert_ne!(fresh.unwrap(), jar);
    // Past max_age: the old token is absent; the response places the client anew.
    assert!(
        wait_until(DEADLINE, || async {
            let r = get_with(a, &jar).await;
            set_cookie(&r).is_some() && {
                let snap = d.shared().live.load();
                snap.pools[0].stats.placements_new.load(Ordering::SeqCst) >= 2
            }
        })
        .await,
        "expired token was not replaced"
    );
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn drained_backend_keeps_cookie_holders_and_gets_no_new_clients() {
    let backends = [TestBackend::start("a").await, TestBackend::start("b").await];
    let refs: Vec<&TestBackend> = backends.iter().collect();
    let d = start_daemon(&cookie_config(&refs, "s", "")).await;
    let first = get(addr(&d), "/").await;
    let jar = set_cookie(&first).unwrap();
    let bound = if first.body == "backend a\n" { 0 } else { 1 };
    d.shared().live.load().pools[0].backends[bound]
        .live
        .set_admin(maitred::config::AdminState::Drain);
    for _ in 0..5 {
        assert_eq!(
            get_with(addr(&d), &jar).await.body,
            first.body,
            "drain dropped a holder"
        );
    }
    for _ in 0..6 {
        let newcomer = get(addr(&d), "/").await;
        assert_ne!(
            newcomer.body, first.body,
            "a drained backend took a new client"
        );
    }
    // Disabled: the holder is re-placed and its cookie rewritten.
    d.shared().live.load().pools[0].backends[bound]
        .live
        .set_admin(maitred::config::AdminState::Disabled);
    let r = get_with(addr(&d), &jar).await;
    assert_ne!(r.body, first.body);
    assert!(set_cookie(&r).is_some());
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn websocket_follows_cookie_affinity() {
    use futures_util::{SinkExt, StreamExt};
    let backends = [
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    ];
    let refs: Vec<&TestBackend> = backends.iter().collect();
    let d = start_daemon(&cookie_config(&refs, "s", "")).await;
    let first = get(addr(&d), "/").await;
    let jar = set_cookie(&first).unwrap();
    let name = first.body.trim().trim_start_matches("backend ").to_string();
    for _ in 0..3 {
        let tcp = tokio::net::TcpStream::connect(addr(&d)).await.unwrap();
        let req = ws_request(addr(&d), Some(&jar));
        let (mut ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
        ws.send("ping".into()).await.unwrap();
        let reply = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), format!("{name}: ping"));
        ws.close(None).await.unwrap();
    }
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn ip_hash_uses_x_forwarded_for_only_from_trusted_proxies() {
    let backends = [
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    ];
    let refs: Vec<&TestBackend> = backends.iter().collect();
    let trusted = simple_config("ip-hash", &refs, "").replace(
        "pool = \"web\"\n",
        "pool = \"web\"\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
    );
    let d = start_daemon(&trusted).await;
    let mut c = Client::connect(addr(&d)).await;
    let mut spread = Vec::new();
    for i in 0..30 {
        let client = format!("203.0.113.{i}");
        let first = c.get("/", &[("x-forwarded-for", &client)]).await.body;
        for _ in 0..2 {
            assert_eq!(
                c.get("/", &[("x-forwarded-for", &client)]).await.body,
                first
            );
        }
        spread.push(first);
    }
    assert!(
        tally(&spread).len() >= 2,
        "clients behind a trusted proxy all hashed alike"
    );
    d.shutdown(Some(Duration::from_secs(1))).await;

    // Untrusted peer: X-Forwarded-For is ignored, every request hashes the peer.
    let untrusted = start_daemon(&simple_config("ip-hash", &refs, "")).await;
    let mut c = Client::connect(addr(&untrusted)).await;
    let mut seen = Vec::new();
    for i in 0..20 {
        seen.push(
            c.get("/", &[("x-forwarded-for", &format!("198.51.100.{i}"))])
                .await
                .body,
        );
    }
    assert_eq!(
        tally(&seen).len(),
        1,
        "a forged X-Forwarded-For moved an untrusted client"
    );
    untrusted.shutdown(Some(Duration::from_secs(1))).await;
}
