//! HTTP/2 to backends (DESIGN §12): `protocol = "h2c"` and `"h2"` pools in front of real
//! HTTP/2 servers on loopback ([`backends`]): HTTP/1.1 and HTTP/2 clients, request and
//! response bodies streaming both ways, trailers, TLS with ALPN, the backend's stream
//! limit, GOAWAY, REFUSED_STREAM, PINGs, idle close, the body timeouts (and gRPC's
//! exemption), clients that leave, backends that die, reloads and affinity.

mod backends;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;

use crate::common::*;

use backends::*;

/// One worker (so per-worker connection counts are exact) in front of an h2c pool.
fn h2c_config(backends: &[SocketAddr], extra_pool: &str) -> String {
    config_for(
        "round-robin",
        backends,
        &format!("protocol = \"h2c\"\n{extra_pool}"),
    )
    .replace("threads = 2", "threads = 1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_http2_clients_reach_an_h2c_backend() {
    let backend = H2Backend::start(Opts::default(), echo()).await;
    let d = start_daemon(&h2c_config(&[backend.addr], "")).await;
    let mut c = Client::connect(addr(&d)).await;

    let r = c
        .get("/hello?x=1", &[("host", "app.test"), ("te", "trailers")])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, "GET /hello ");
    assert_eq!(r.headers["x-seen-authority"], "app.test");
    assert_eq!(r.headers["x-seen-xff"], "127.0.0.1");
    assert_eq!(r.headers["x-seen-proto"], "http");
    assert_eq!(r.headers["x-seen-xfh"], "app.test");
    assert_eq!(r.headers["x-seen-te"], "trailers");

    let r = c
        .send("POST", "/upload", &[], Bytes::from_static(b"hello body"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "POST /upload hello body");
    assert_eq!(
        r.headers["x-seen-te"], "",
        "no TE unless the client sent trailers"
    );

    // An HTTP/2 client: the response's trailers arrive too.
    let mut h2 = h2_client(addr(&d)).await;
    let req = Request::post("http://app.test/h2")
        .body(full("from h2"))
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap();
    assert_eq!(trailers["x-trailer"], "done");
    assert_eq!(collected.to_bytes(), "POST /h2 from h2");
    assert_eq!(backend.conns(), 1, "one multiplexed connection");
    assert!(wait_until(DEADLINE, || async { in_flight(&d) == 0 }).await);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

/// Errors counted against every backend of the daemon.
/// The HTTP/2 connections `/status` and `/metrics` show for the pool's first backend.
async fn shown_http2_conns(d: &maitred::app::Daemon) -> (u64, u64) {
    let status: serde_json::Value =
        serde_json::from_str(&crate::admin::admin_get(d, "/status").await.body).unwrap();
    assert_eq!(status["pools"]["web"]["protocol"], "h2c");
    let shown = status["pools"]["web"]["backends"][0]["http2_connections"]
        .as_u64()
        .unwrap();
    let metrics = crate::admin::admin_get(d, "/metrics").await.body;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("maitred_backend_http2_connections{pool=\"web\""))
        .unwrap_or_else(|| panic!("no HTTP/2 connection gauge in {metrics}"));
    let gauge = line.rsplit(' ').next().unwrap().parse().unwrap();
    (shown, gauge)
}

const ADMIN: &str = "\n[admin]\nbind = \"127.0.0.1:0\"\n";

fn backend_errors(d: &maitred::app::Daemon) -> u64 {
    over_backends(d, |b| b.errors())
}

fn h2_tls_config(backend: SocketAddr, dir: &std::path::Path) -> String {
    config_for(
        "round-robin",
        &[backend],
        &format!(
            "protocol = \"h2\"\nretries = 0\n\n[pool.web.tls]\nca = \"{}/ca.pem\"\nserver_name = \"backend.test\"\n",
            dir.display()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_with_a_test_ca_works_and_a_backend_without_alpn_h2_is_a_502() {
    let (dir, backend) = tls_echo_backend(&[b"h2"]).await;
    let d = start_daemon(&h2_tls_config(backend.addr, &dir)).await;
    let mut c = Client::connect(addr(&d)).await;
    let r = c.get("/secure", &[("host", "app.test")]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, "GET /secure ");
    assert_eq!(r.headers["x-seen-authority"], "app.test");
    d.shutdown(Some(Duration::from_secs(1))).await;

    // A backend that ignores ALPN (it would answer in HTTP/1.1): refused as a connect
    // failure, counted against it.
    let (dir, backend) = tls_echo_backend(&[]).await;
    let d = start_daemon(&h2_tls_config(backend.addr, &dir)).await;
    let r = get(addr(&d), "/").await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(
        backend_errors(&d) >= 1,
        "a connect failure is the backend's"
    );
    d.shutdown(Some(Duration::from_secs(1))).await;
}

async fn concurrent_gets(addr: SocketAddr, n: usize) -> Vec<u16> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        set.spawn(async move {
            let mut c = Client::connect(addr).await;
            c.get(&format!("/{i}"), &[]).await.status
        });
    }
    let mut statuses = Vec::new();
    while let Some(s) = set.join_next().await {
        statuses.push(s.unwrap());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_opens_connections_only_as_the_backends_stream_limit_requires() {
    for (limit, most) in [(10, 10), (1000, 1)] {
        let backend = H2Backend::start(
            Opts {
                max_streams: Some(limit),
                ..Opts::default()
            },
            holding(100),
        )
        .await;
        let d = start_daemon(&(h2c_config(&[backend.addr], "") + ADMIN)).await;
        let statuses = concurrent_gets(addr(&d), 100).await;
        assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
        let conns = backend.conns();
        assert!(
            (1..=most).contains(&conns),
            "limit {limit}: {conns} connections for 100 concurrent requests"
        );
        // Still open (idle, within keepalive_timeout), and so shown.
        assert_eq!(backend.open(), conns);
        assert_eq!(shown_http2_conns(&d).await, (conns as u64, conns as u64));
        d.shutdown(Some(Duration::from_secs(1))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_sends_goaway_under_load_fails_no_request() {
    let ok = handler(|req: Request<Incoming>, _| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        tokio::time::sleep(Duration::from_millis(2)).await;
        Response::new(full(format!("{}", body.len())))
    });
    let backend = H2Backend::start(
        Opts {
            goaway_after: Some(7),
            ..Opts::default()
        },
        ok,
    )
    .await;
    let d = start_daemon(&h2c_config(&[backend.addr], "retries = 0\n")).await;
    let a = addr(&d);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..4 {
        set.spawn(async move {
            let mut c = Client::connect(a).await;
            let mut statuses = Vec::new();
            for i in 0..30 {
                // Every other request carries a body, which must go again whole if
                // its stream was refused.
                let r = if i % 2 == 0 {
                    c.get(&format!("/{i}"), &[]).await
                } else {
                    let body = Bytes::from(vec![b'x'; 1000 * i]);
                    c.send("POST", &format!("/{i}"), &[], body).await.unwrap()
                };
                statuses.push(r.status);
            }
            statuses
        });
    }
    let mut statuses = Vec::new();
    while let Some(s) = set.join_next().await {
        statuses.extend(s.unwrap());
    }
    assert_eq!(statuses.len(), 120);
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert!(
        backend.conns() > 1,
        "the backend's GOAWAYs made new connections"
    );
    assert_eq!(backend_errors(&d), 0);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stream_is_sent_again_and_not_held_against_the_backend() {
    let (backend, task) = refusing_every_other_stream().await;
    let d = start_daemon(&h2c_config(&[backend], "retries = 0\n")).await;
    let mut c = Client::connect(addr(&d)).await;
    for _ in 0..3 {
        let r = c.get("/", &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body, "second time ");
    }
    // A body already sent on the refused stream is sent again whole.
    let r = c
        .send("POST", "/p", &[], Bytes::from_static(b"payload"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, "second time payload");
    assert_eq!(backend_errors(&d), 0);
    let snap = d.shared().live.load();
    let stats = &snap.pools[0].stats;
    assert_eq!(stats.stale_retries.load(Ordering::Relaxed), 4);
    d.shutdown(Some(Duration::from_secs(1))).await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_mid_response_ends_the_response_and_frees_the_slot() {
    let backend = H2Backend::start(Opts::default(), stalling()).await;
    let d = start_daemon(&h2c_config(&[backend.addr], "")).await;
    let stream = tokio::net::TcpStream::connect(addr(&d)).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", "x")
        .body(full(""))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "partial");
    assert_eq!(in_flight(&d), 1);
    drop(backend);
    let rest = tokio::time::timeout(DEADLINE, body.collect()).await;
    assert!(
        matches!(rest, Ok(Err(_))),
        "the response ends with an error: {rest:?}"
    );
    assert!(wait_until(DEADLINE, || async { in_flight(&d) == 0 }).await);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_request_to_an_http2_pool_goes_without_the_upgrade() {
    let backend = H2Backend::start(Opts::default(), echo()).await;
    let d = start_daemon(&h2c_config(&[backend.addr], "")).await;
    let answer = raw_until_closed(
        addr(&d),
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(answer.contains("GET /ws"), "{answer}");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_to_an_http2_backend_is_a_408_not_held_against_it() {
    let backend = H2Backend::start(Opts::default(), echo()).await;
    let config = h2c_config(&[backend.addr], "").replace(
        "pool = \"web\"\n",
        "pool = \"web\"\nclient_body_timeout = \"1s\"\n",
    );
    let d = start_daemon(&config).await;
    let answer = raw(
        addr(&d),
        b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789",
        DEADLINE,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(backend_errors(&d), 0);
    assert!(wait_until(DEADLINE, || async { in_flight(&d) == 0 }).await);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_response_bodies_stream_both_ways_at_once() {
    // The backend answers at once and echoes the request body as it arrives: each
    // piece must come back before the client sends the next.
    let echo_stream = handler(|req: Request<Incoming>, _| async move {
        Response::new(req.into_body().map_err(|e| Box::new(e) as BoxError).boxed())
    });
    let backend = H2Backend::start(Opts::default(), echo_stream).await;
    let d = start_daemon(&h2c_config(&[backend.addr], "")).await;
    let mut h2 = h2_client(addr(&d)).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
    let req = Request::post("http://app.test/chat")
        .header("content-type", "application/grpc")
        .body(body)
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    for i in 0..5 {
        let piece = Bytes::from(format!("ping {i}"));
        tx.send(Ok(Frame::data(piece.clone()))).await.unwrap();
        let mut got = Vec::new();
        while got.len() < piece.len() {
            let frame = tokio::time::timeout(DEADLINE, body.frame())
                .await
                .expect("the echo comes back while the request is still open")
                .unwrap()
                .unwrap();
            got.extend_from_slice(&frame.into_data().unwrap());
        }
        assert_eq!(got, piece);
    }
    drop(tx);
    let rest = tokio::time::timeout(DEADLINE, body.collect())
        .await
        .unwrap()
        .unwrap();
    assert!(rest.to_bytes().is_empty());
    assert!(wait_until(DEADLINE, || async { in_flight(&d) == 0 }).await);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_streams_closes_after_keepalive_timeout() {
    let backend = H2Backend::start(Opts::default(), echo()).await;
    let config = h2c_config(&[backend.addr], "keepalive_timeout = \"1s\"\n") + ADMIN;
    let d = start_daemon(&config).await;
    assert_eq!(get(addr(&d), "/").await.status, 200);
    assert_eq!(backend.open(), 1);
    assert_eq!(shown_http2_conns(&d).await, (1, 1));
    assert!(
        wait_until(DEADLINE, || async { backend.open() == 0 }).await,
        "the idle connection is closed"
    );
    assert!(
        wait_until(DEADLINE, || async { shown_http2_conns(&d).await == (0, 0) }).await,
        "a closed connection is no longer shown"
    );
    // The next request opens another.
    assert_eq!(get(addr(&d), "/").await.status, 200);
    assert_eq!(backend.conns(), 2);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_http2_body_is_cut_after_read_timeout_except_for_grpc() {
    let backend = H2Backend::start(Opts::default(), stalling()).await;
    let d = start_daemon(&h2c_config(&[backend.addr], "read_timeout = \"500ms\"\n")).await;
    let mut h2 = h2_client(addr(&d)).await;
    let req = Request::get("http://x/").body(full("")).unwrap();
    let resp = h2.send_request(req).await.unwrap();
    let rest = tokio::time::timeout(DEADLINE, resp.into_body().collect()).await;
    assert!(
        matches!(rest, Ok(Err(_))),
        "the stalled body is cut: {rest:?}"
    );
    assert!(wait_until(DEADLINE, || async { in_flight(&d) == 0 }).await);
    assert_eq!(backend_errors(&d), 1, "a stalled backend body is its error");

    // A gRPC call may idle: it is not cut.
    let mut body = stalled_grpc_call(&mut h2, "/svc/Method").await;
    let more = tokio::time::timeout(Duration::from_millis(1500), body.frame()).await;
    assert!(
        more.is_err(),
        "still open after three read_timeouts: {more:?}"
    );
    assert_eq!(in_flight(&d), 1);
    drop(body);
    assert!(wait_until(DEADLINE, || async { in_flight(&d) == 0 }).await);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

/// A gRPC call to `path` on a [`stalling`] backend: its answer's body after the first
/// piece ("partial"), still open.
async fn stalled_grpc_call(
    h2: &mut hyper::client::conn::http2::SendRequest<BoxBody>,
    path: &str,
) -> Incoming {
    let req = Request::post(format!("http://x{path}"))
        .header("content-type", "application/grpc")
        .body(full(""))
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "partial");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stops_answering_pings_has_its_connection_closed() {
    let backend = H2Backend::start(Opts::default(), stalling()).await;
    let relay = Relay::start(backend.addr).await;
    let pool = "keepalive_timeout = \"1s\"\nconnect_timeout = \"1s\"\n";
    let d = start_daemon(&h2c_config(&[relay.addr], pool)).await;
    let mut h2 = h2_client(addr(&d)).await;
    // A gRPC call, which no read_timeout cuts: only the PINGs can tell the backend is gone.
    let body = stalled_grpc_call(&mut h2, "/svc/Watch").await;
    relay.frozen.store(true, Ordering::SeqCst);
    // The call ends, as a gRPC call, with UNAVAILABLE in its trailers.
    let rest = tokio::time::timeout(DEADLINE, body.collect()).await;
    let trailers = match &rest {
        Ok(Ok(c)) => c.trailers().cloned(),
        _ => None,
    };
    assert_eq!(
        trailers.as_ref().and_then(|t| t.get("grpc-status")),
        Some(&http::HeaderValue::from_static("14")),
        "the call ends with UNAVAILABLE: {rest:?}"
    );
    assert!(wait_until(DEADLINE, || async { in_flight(&d) == 0 }).await);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_resets_its_stream_at_the_backend() {
    let cancelled = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&cancelled);
    let endless = handler(move |_req, _| {
        let guard = DropCount(Arc::clone(&seen));
        async move {
            let first = futures_util::stream::iter([Ok::<_, BoxError>(Frame::data(
                Bytes::from_static(b"partial"),
            ))]);
            // The rest never comes; the stream holds the guard until hyper drops it.
            let rest = futures_util::stream::unfold(guard, |g| async move {
                std::future::pending::<()>().await;
                Some((Ok::<_, BoxError>(Frame::data(Bytes::new())), g))
            });
            Response::new(StreamBody::new(futures_util::StreamExt::chain(first, rest)).boxed())
        }
    });
    let backend = H2Backend::start(Opts::default(), endless).await;
    let d = start_daemon(&h2c_config(&[backend.addr], "")).await;
    let stream = tokio::net::TcpStream::connect(addr(&d)).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", "x")
        .body(full(""))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let mut body = resp.into_body();
    assert!(body.frame().await.is_some());
    assert_eq!(in_flight(&d), 1);
    // The client leaves.
    drop(body);
    drop(sender);
    conn.abort();
    assert!(
        wait_until(DEADLINE, || async { cancelled.load(Ordering::SeqCst) == 1 }).await,
        "the backend's stream was reset"
    );
    assert!(wait_until(DEADLINE, || async { in_flight(&d) == 0 }).await);
    assert_eq!(backend_errors(&d), 0);
    // Only the stream was reset: the connection stays for the next request.
    assert_eq!((backend.conns(), backend.open()), (1, 1));
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_protocol_never_reuses_the_old_connections() {
    let (backend, conns, task) = either_version().await;
    let dir = scratch_dir("h2-reload");
    let path = dir.join("maitred.toml");
    let h2c = h2c_config(&[backend], "");
    let http1 = h2c.replace("protocol = \"h2c\"", "protocol = \"http1\"");
    std::fs::write(&path, &h2c).unwrap();
    let d = start_daemon_file(&path).await;
    let body = |r: Reply| (r.status, r.body);
    assert_eq!(body(get(addr(&d), "/").await), (200, "HTTP/2.0".into()));
    // An unchanged pool keeps its connection across a reload.
    d.reload(false).await.unwrap();
    assert_eq!(body(get(addr(&d), "/").await), (200, "HTTP/2.0".into()));
    assert_eq!(conns.load(Ordering::SeqCst), 1);
    std::fs::write(&path, &http1).unwrap();
    d.reload(false).await.unwrap();
    assert_eq!(body(get(addr(&d), "/").await), (200, "HTTP/1.1".into()));
    assert_eq!(conns.load(Ordering::SeqCst), 2);
    // Back to h2c: a new transport, so a new connection, though the old one is open.
    std::fs::write(&path, &h2c).unwrap();
    d.reload(false).await.unwrap();
    assert_eq!(body(get(addr(&d), "/").await), (200, "HTTP/2.0".into()));
    assert_eq!(conns.load(Ordering::SeqCst), 3);
    d.shutdown(Some(Duration::from_secs(1))).await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_affinity_holds_per_request_over_http2_backends() {
    let named =
        |name: &'static str| handler(move |_req, _| async move { Response::new(full(name)) });
    let backends = [
        H2Backend::start(Opts::default(), named("a")).await,
        H2Backend::start(Opts::default(), named("b")).await,
        H2Backend::start(Opts::default(), named("c")).await,
    ];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let pool = "protocol = \"h2c\"\n\n[pool.web.affinity]\ncookie = \"srv\"\nsecret = \"s\"\n";
    let d = start_daemon(&config_for("cookie-affinity", &addrs, pool)).await;
    let mut c = Client::connect(addr(&d)).await;
    let first = c.get("/", &[]).await;
    assert_eq!(first.status, 200);
    let jar = first.headers["set-cookie"].to_str().unwrap();
    let jar = jar.split(';').next().unwrap().to_string();
    for _ in 0..6 {
        let r = c.get("/", &[("cookie", &jar)]).await;
        assert_eq!(r.body, first.body);
        assert!(r.headers.get("set-cookie").is_none());
    }
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_head_past_the_limit_is_a_bad_gateway() {
    let huge = handler(|_req, _| async move {
        let mut r = Response::new(full("body"));
        let value = "x".repeat(100 * 1024);
        r.headers_mut().insert("x-huge", value.parse().unwrap());
        r
    });
    let backend = H2Backend::start(Opts::default(), huge).await;
    let d = start_daemon(&h2c_config(&[backend.addr], "retries = 0\n")).await;
    let r = get(addr(&d), "/").await;
    assert_eq!(r.status, 502, "{:?}", r.headers.keys().collect::<Vec<_>>());
    assert!(wait_until(DEADLINE, || async { in_flight(&d) == 0 }).await);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_breaks_under_a_get_sends_it_once_more_on_a_fresh_one() {
    let (backend, conns, task) = dropping_first_connection().await;
    let d = start_daemon(&h2c_config(&[backend], "retries = 0\n")).await;
    let r = get(addr(&d), "/").await;
    assert_eq!((r.status, r.body.as_str()), (200, "fresh"));
    assert_eq!(conns.load(Ordering::SeqCst), 2);
    assert_eq!(
        backend_errors(&d),
        0,
        "a broken connection is not a failure"
    );
    let snap = d.shared().live.load();
    assert_eq!(snap.pools[0].stats.stale_retries.load(Ordering::Relaxed), 1);
    d.shutdown(Some(Duration::from_secs(1))).await;
    task.abort();
}
