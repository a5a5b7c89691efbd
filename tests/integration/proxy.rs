//! Proxying: round-robin spread, weights, routes, forwarded headers, error statuses,
//! malformed requests, client timeouts.

use std::time::Duration;

use bytes::Bytes;

use crate::common::*;

#[tokio::test]
async fn round_robin_over_three_backends_is_exactly_even() {
    let (a, b, c) = (
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    );
    let d = start_daemon(&simple_config("round-robin", &[&a, &b, &c], "")).await;
    let mut client = Client::connect(addr(&d)).await;
    for _ in 0..300 {
        assert_eq!(client.get("/", &[]).await.status, 200);
    }
    assert_eq!((a.hits(), b.hits(), c.hits()), (100, 100, 100));
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn weights_one_to_three_split_25_75_and_interleave() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let toml = simple_config("round-robin", &[], "").replace(
        "backends = []",
        &format!(
            "backends = [\"{}\", {{ addr = \"{}\", weight = 3 }}]",
            a.addr, b.addr
        ),
    );
    let d = start_daemon(&toml).await;
    let mut client = Client::connect(addr(&d)).await;
    let mut order = Vec::new();
    for _ in 0..400 {
        order.push(client.get("/", &[]).await.body);
    }
    assert_eq!((a.hits(), b.hits()), (100, 300));
    // With 1:3 a run of three is unavoidable, never four (DESIGN §4).
    assert!(order.windows(4).all(|w| !(w.iter().all(|x| *x == w[0]))));
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn weights_one_one_three_never_three_in_a_row() {
    let (a, b, c) = (
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    );
    let toml = simple_config("round-robin", &[], "").replace(
        "backends = []",
        &format!(
            "backends = [\"{}\", \"{}\", {{ addr = \"{}\", weight = 3 }}]",
            a.addr, b.addr, c.addr
        ),
    );
    let d = start_daemon(&toml).await;
    let mut client = Client::connect(addr(&d)).await;
    let mut order = Vec::new();
    for _ in 0..500 {
        order.push(client.get("/", &[]).await.body);
    }
    assert_eq!((a.hits(), b.hits(), c.hits()), (100, 100, 300));
    assert!(order.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])));
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn routes_pick_the_right_pool() {
    let (web, cart, beta, wild) = (
        TestBackend::start("web").await,
        TestBackend::start("cart").await,
        TestBackend::start("beta").await,
        TestBackend::start("wild").await,
    );
    let toml = format!(
        r#"
[server]
threads = 1
access_log = "off"

[[listener]]
name = "main"
bind = "127.0.0.1:0"
pool = "web"

[[listener.route]]
host = "shop.example.com"
path_prefix = "/cart"
pool = "cart"

[[listener.route]]
header = {{ name = "x-tenant", value = "beta" }}
pool = "beta"

[[listener.route]]
host = "*.example.com"
pool = "wild"

[pool.web]
balancer = "round-robin"
backends = ["{}"]

[pool.cart]
balancer = "round-robin"
backends = ["{}"]

[pool.beta]
balancer = "round-robin"
backends = ["{}"]

[pool.wild]
balancer = "round-robin"
backends = ["{}"]
"#,
        web.addr, cart.addr, beta.addr, wild.addr
    );
    let d = start_daemon(&toml).await;
    let a = addr(&d);
    type Case<'a> = (&'a str, &'a str, Option<(&'a str, &'a str)>, &'a str);
    let cases: [Case; 7] = [
        ("shop.example.com", "/cart", None, "cart"),
        ("SHOP.example.com:8080", "/cart/items?x=1", None, "cart"),
        ("shop.example.com", "/cartoon", None, "wild"),
        ("other.org", "/", Some(("x-tenant", "beta")), "beta"),
        ("a.b.example.com", "/", None, "wild"),
        ("example.com", "/", None, "web"),
        ("other.org", "/cart", None, "web"),
    ];
    for (host, path, header, want) in cases {
        // The client helper sets its own Host, so these go raw.
        let mut req = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n");
        if let Some((k, v)) = header {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("connection: close\r\n\r\n");
        let out = raw(a, req.as_bytes(), Duration::from_secs(5)).await;
        assert!(
            out.contains(&format!("backend {want}")),
            "{host}{path} → {out}"
        );
    }
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn forwarded_headers_added_and_hop_by_hop_dropped() {
    let b = TestBackend::start("a").await;
    let d = start_daemon(&simple_config("round-robin", &[&b], "")).await;
    let mut c = Client::connect(addr(&d)).await;
    let r = c
        .get(
            "/path?q=1",
            &[
                ("x-forwarded-for", "203.0.113.7"),
                ("connection", "x-drop-me"),
                ("x-drop-me", "secret"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("proxy-authorization", "Basic eA=="),
                ("x-keep-me", "yes"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = b.last_seen().unwrap();
    let h = &seen.headers;
    assert_eq!(h["host"], "test.local");
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "test.local");
    assert_eq!(h["x-keep-me"], "yes");
    for gone in ["x-drop-me", "keep-alive", "te", "proxy-authorization"] {
        assert!(!h.contains_key(gone), "{gone} was forwarded");
    }
    assert_eq!(seen.path, "/path?q=1");
    assert!(!r.headers.contains_key("keep-alive"));
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn refused_backend_gives_502() {
    let (_held, gone) = refusing_addr();
    let toml = simple_config("round-robin", &[], "retries = 0")
        .replace("backends = []", &format!("backends = [\"{gone}\"]"));
    let d = start_daemon(&toml).await;
    let r = get(addr(&d), "/").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.headers["content-type"], "text/plain; charset=utf-8");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn no_available_backend_gives_503_with_retry_after() {
    let b = TestBackend::start("a").await;
    let toml = simple_config("round-robin", &[], "").replace(
        "backends = []",
        &format!(
            "backends = [{{ addr = \"{}\", state = \"disabled\" }}]",
            b.addr
        ),
    );
    let d = start_daemon(&toml).await;
    let r = get(addr(&d), "/").await;
    assert_eq!(r.status, 503);
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(b.hits(), 0);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn slow_backend_gives_504() {
    let b = TestBackend::start("a").await;
    let d = start_daemon(&simple_config(
        "round-robin",
        &[&b],
        "response_timeout = \"300ms\"",
    ))
    .await;
    let r = get(addr(&d), "/slow?ms=3000").await;
    assert_eq!(r.status, 504);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused_unforwarded() {
    let b = TestBackend::start("a").await;
    let d = start_daemon(&simple_config("round-robin", &[&b], "")).await;
    let a = addr(&d);
    let smuggle = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let out = raw(a, smuggle, Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let te_first = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n";
    let out = raw(a, te_first, Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let bare_lf = b"GET / HTTP/1.1\nHost: x\n\n";
    let out = raw(a, bare_lf, Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let bad_chunk =
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n";
    let out = raw_until_closed(a, bad_chunk).await;
    assert!(!out.contains("backend a"), "{out}");
    let obs_fold = b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n";
    let out = raw(a, obs_fold, Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let space_colon = b"GET / HTTP/1.1\r\nHost : x\r\n\r\n";
    let out = raw(a, space_colon, Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let gzip_te = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n";
    let out = raw(a, gzip_te, Duration::from_secs(5)).await;
    assert!(
        out.starts_with("HTTP/1.1 4") || out.starts_with("HTTP/1.1 501"),
        "{out}"
    );
    // Chunked is final, so the body is framed and the connection could go on: the
    // client asks for the close that ends the read.
    let coded = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n0\r\n\r\n";
    let out = raw_until_closed(a, coded).await;
    assert!(out.starts_with("HTTP/1.1 501"), "{out}");
    let two_lengths =
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd";
    let out = raw(a, two_lengths, Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(b.hits(), 0, "a malformed request reached the backend");
    // A clean request on a fresh connection still works.
    assert_eq!(get(a, "/").await.status, 200);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let b = TestBackend::start("a").await;
    let d = start_daemon(&simple_config("round-robin", &[&b], "")).await;
    let big = "x".repeat(512 * 1024);
    let req = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let out = raw(addr(&d), req.as_bytes(), Duration::from_secs(5)).await;
    assert!(
        out.starts_with("HTTP/1.1 431"),
        "{}",
        &out[..out.len().min(100)]
    );
    assert_eq!(b.hits(), 0);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn slow_header_sender_is_cut_off_and_idle_connection_closed() {
    let b = TestBackend::start("a").await;
    let toml = simple_config("round-robin", &[&b], "").replace(
        "pool = \"web\"\n",
        "pool = \"web\"\nheader_timeout = \"300ms\"\nidle_timeout = \"600ms\"\n",
    );
    let d = start_daemon(&toml).await;
    let a = addr(&d);
    // Slowloris: half a head, then silence.
    let started = std::time::Instant::now();
    let out = raw(a, b"GET / HTTP/1.1\r\nHost: x\r\n", Duration::from_secs(10)).await;
    assert!(!out.contains("backend"), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "slow head was not cut off"
    );
    // Idle keep-alive connection: closed after idle_timeout.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("backend a"));
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert_eq!(closed, Ok(true), "idle connection stayed open");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn bodies_stream_both_ways() {
    let b = TestBackend::start("a").await;
    let d = start_daemon(&simple_config("round-robin", &[&b], "")).await;
    let mut c = Client::connect(addr(&d)).await;
    let body = Bytes::from(vec![b'z'; 3 * 1024 * 1024 + 17]);
    let r = c.send("POST", "/sink", &[], body.clone()).await.unwrap();
    assert_eq!(r.body.trim(), body.len().to_string());
    let r = c.send("POST", "/echo", &[], body.clone()).await.unwrap();
    assert_eq!(r.body.len(), body.len());
    let r = c.get("/big?mb=4", &[]).await;
    assert_eq!(r.body.len(), 4 * 1024 * 1024);
    // A chunked upload is forwarded (re-chunked), not refused.
    let chunked = b"POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let out = raw(addr(&d), chunked, Duration::from_secs(5)).await;
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("11\n"),
        "{out}"
    );
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_still_gets_a_quick_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = TestBackend::start("a").await;
    let d = start_daemon(&simple_config("round-robin", &[&b], "")).await;
    let mut s = tokio::net::TcpStream::connect(addr(&d)).await.unwrap();
    // The end of the client's sending side arrives with the request; an answer that
    // comes before the client-gone check (a request older than 100 ms whose client
    // closed is cancelled, DESIGN §6) still reaches it.
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .expect("the answer and the close within the deadline")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("backend a\n"), "{text}");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

/// A daemon whose `admin.example.com` route leads to pool `admin`, anything else to
/// pool `web`.
async fn admin_and_public(
    admin: &TestBackend,
    web: &TestBackend,
) -> std::sync::Arc<maitred::app::Daemon> {
    let toml = format!(
        r#"
[server]
threads = 1
access_log = "off"

[[listener]]
name = "main"
bind = "127.0.0.1:0"
pool = "web"

[[listener.route]]
host = "admin.example.com"
pool = "admin"

[pool.web]
balancer = "round-robin"
backends = ["{}"]

[pool.admin]
balancer = "round-robin"
backends = ["{}"]
"#,
        web.addr, admin.addr
    );
    start_daemon(&toml).await
}

#[tokio::test]
async fn an_absolute_target_is_the_host_everywhere_and_a_disagreeing_host_is_refused() {
    let (admin, web) = (
        TestBackend::start("admin").await,
        TestBackend::start("web").await,
    );
    let d = admin_and_public(&admin, &web).await;
    let a = addr(&d);
    let confused = b"GET http://public.example.com/ HTTP/1.1\r\nHost: admin.example.com\r\nConnection: close\r\n\r\n";
    let out = raw(a, confused, DEADLINE).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("disagrees"), "{out}");
    let other_port = b"GET http://admin.example.com:8080/ HTTP/1.1\r\nHost: admin.example.com\r\nConnection: close\r\n\r\n";
    let out = raw(a, other_port, DEADLINE).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(
        (admin.hits(), web.hits()),
        (0, 0),
        "a confused request was forwarded"
    );

    // The same origin in another case and with the default port spelled out: routing,
    // X-Forwarded-Host and Host all follow the target.
    let same = b"GET http://ADMIN.example.com:80/x HTTP/1.1\r\nHost: admin.example.com\r\nConnection: close\r\n\r\n";
    let out = raw(a, same, DEADLINE).await;
    assert!(out.contains("backend admin"), "{out}");
    let seen = admin.last_seen().unwrap();
    assert_eq!(seen.headers["host"], "ADMIN.example.com:80");
    assert_eq!(seen.headers["x-forwarded-host"], "ADMIN.example.com:80");
    assert_eq!(seen.path, "/x");
    let public = b"GET http://public.example.com/y HTTP/1.1\r\nHost: public.example.com\r\nConnection: close\r\n\r\n";
    let out = raw(a, public, DEADLINE).await;
    assert!(out.contains("backend web"), "{out}");
    let seen = web.last_seen().unwrap();
    assert_eq!(seen.headers["host"], "public.example.com");
    assert_eq!(seen.headers["x-forwarded-host"], "public.example.com");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn connection_never_removes_host_or_the_forwarding_headers() {
    let b = TestBackend::start("a").await;
    let d = start_daemon(&simple_config("round-robin", &[&b], "")).await;
    let mut c = Client::connect(addr(&d)).await;
    let r = c
        .get(
            "/",
            &[
                (
                    "connection",
                    "host, x-forwarded-host, x-forwarded-for, x-forwarded-proto",
                ),
                ("x-forwarded-for", "203.0.113.7"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let h = b.last_seen().unwrap().headers;
    assert_eq!(h["host"], "test.local");
    assert_eq!(h["x-forwarded-host"], "test.local");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn malformed_hosts_are_refused_unforwarded() {
    let b = TestBackend::start("a").await;
    let d = start_daemon(&simple_config("round-robin", &[&b], "")).await;
    let a = addr(&d);
    for host in ["", "a@b", "a/b?c", "a b", ":80", "a:99999", "[::1", "x:y"] {
        let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let out = raw(a, req.as_bytes(), DEADLINE).await;
        assert!(out.starts_with("HTTP/1.1 400"), "Host {host:?}: {out}");
    }
    let userinfo = b"GET http://user@a.test/ HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
    let out = raw(a, userinfo, DEADLINE).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(b.hits(), 0, "a request with a malformed host was forwarded");
    let ok = b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n";
    let out = raw(a, ok, DEADLINE).await;
    assert!(out.contains("backend a"), "{out}");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

/// Sends `parts` one write after another on one connection and reads until the
/// daemon closes it.
async fn pipelined(a: std::net::SocketAddr, parts: &[&[u8]]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
    for p in parts {
        s.write_all(p).await.unwrap();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn statuses(out: &str) -> Vec<&str> {
    out.match_indices("HTTP/1.1 ")
        .map(|(i, _)| &out[i + 9..i + 12])
        .collect()
}

#[tokio::test]
async fn every_pipelined_head_is_checked_however_it_arrives() {
    let b = TestBackend::start("a").await;
    let d = start_daemon(&simple_config("round-robin", &[&b], "")).await;
    let a = addr(&d);
    let get: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let sized: &[u8] = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    let chunked: &[u8] =
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let bare_lf: &[u8] = b"GET / HTTP/1.1\nHost: x\n\n";
    let smuggle: &[u8] =
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let mut expected_hits = 0;
    for first in [get, sized, chunked] {
        for bad in [bare_lf, smuggle] {
            // Coalesced in one write, and split inside the bad head.
            let whole = [first, bad].concat();
            let cut = first.len() + 7;
            for parts in [vec![&whole[..]], vec![&whole[..cut], &whole[cut..]]] {
                let out = pipelined(a, &parts).await;
                assert_eq!(statuses(&out), ["200", "400"], "{out}");
                expected_hits += 1;
                assert_eq!(
                    b.hits(),
                    expected_hits,
                    "a refused head reached the backend"
                );
            }
        }
    }
    // Clean pipelined requests are all served.
    let close: &[u8] = b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let out = pipelined(a, &[&[get, sized, chunked, close].concat()]).await;
    assert_eq!(statuses(&out), ["200", "200", "200", "200"], "{out}");
    assert_eq!(b.hits(), expected_hits + 4);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn http2_authority_is_the_host_and_a_disagreeing_host_is_refused() {
    let (admin, web) = (
        TestBackend::start("admin").await,
        TestBackend::start("web").await,
    );
    let d = admin_and_public(&admin, &web).await;
    let mut sender = h2_client(addr(&d)).await;
    let confused = http::Request::get("http://public.example.com/")
        .header("host", "admin.example.com")
        .body(full(""))
        .unwrap();
    let resp = sender.send_request(confused).await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!((admin.hits(), web.hits()), (0, 0));
    let plain = http::Request::get("http://admin.example.com/h2")
        .body(full(""))
        .unwrap();
    let resp = sender.send_request(plain).await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = admin.last_seen().unwrap();
    assert_eq!(seen.headers["host"], "admin.example.com");
    assert_eq!(seen.headers["x-forwarded-host"], "admin.example.com");
    d.shutdown(Some(Duration::from_secs(1))).await;
}
