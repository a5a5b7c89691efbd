//! Test harness: real backend servers on loopback that count what they see, the daemon
//! started in-process (or as the binary) on port 0, small HTTP clients, and waiting for
//! a condition with a deadline.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use maitred::app::Daemon;
use maitred::config;

/// Generous deadline for conditions on a noisy 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Requests in flight on every pool of the daemon.
pub fn in_flight(d: &Daemon) -> u32 {
    d.shared()
        .live
        .load()
        .pools
        .iter()
        .map(|p| p.in_flight())
        .sum()
}

/// `read` summed over every backend of every pool.
pub fn over_backends(d: &Daemon, read: impl Fn(&maitred::backend::BackendLive) -> u64) -> u64 {
    d.shared()
        .live
        .load()
        .pools
        .iter()
        .flat_map(|p| p.backends.iter())
        .map(|b| read(&b.live))
        .sum()
}

/// Polls `cond` until it holds or `limit` passes.
pub async fn wait_until<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a test backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
}

/// A backend server on loopback.
///
/// Paths: `/` and anything else answers `backend NAME`; `/healthz` answers the status in
/// `health`; `/slow?ms=N` waits N ms first; `/status/N` answers N; `/echo` streams the
/// request body back; `/sink` reads the body and answers its length; `/big?mb=N`
/// streams N MiB. `delay` holds every answer back; a non-zero `fixed_status` answers
/// every request (but the health check) with that status at once (a 429 with
/// `Retry-After: 30`).
pub struct TestBackend {
    pub addr: SocketAddr,
    state: Arc<BackendState>,
    tasks: Arc<Mutex<JoinSet<()>>>,
    stopped: Arc<AtomicBool>,
}

/// What a test backend shares with the connections it serves: how it behaves and what
/// it saw. A [`TestBackend`] derefs to it (`b.delay.store(…)`, `b.seen.lock()`).
pub struct BackendState {
    pub name: String,
    pub hits: AtomicUsize,
    pub health: AtomicU16,
    pub seen: Mutex<Vec<Seen>>,
    /// Milliseconds every request waits before it is answered.
    pub delay: std::sync::atomic::AtomicU64,
    /// Requests being answered now, and the most ever answered at once (health
    /// probes aside).
    pub concurrency: Arc<Concurrency>,
    /// When not 0, the status every request is answered with at once.
    pub fixed_status: AtomicU16,
}

impl std::ops::Deref for TestBackend {
    type Target = BackendState;

    fn deref(&self) -> &BackendState {
        &self.state
    }
}

impl TestBackend {
    pub async fn start(name: &str) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(name, listener)
    }

    /// Starts again on a given address (a backend that comes back).
    pub async fn start_on(name: &str, addr: SocketAddr) -> TestBackend {
        let end = Instant::now() + DEADLINE;
        loop {
            match TcpListener::bind(addr).await {
                Ok(l) => return Self::serve(name, l),
                Err(e) if Instant::now() < end => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot rebind {addr}: {e}"),
            }
        }
    }

    fn serve(name: &str, listener: TcpListener) -> TestBackend {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(BackendState {
            name: name.to_string(),
            hits: AtomicUsize::new(0),
            health: AtomicU16::new(200),
            seen: Mutex::new(Vec::new()),
            delay: std::sync::atomic::AtomicU64::new(0),
            concurrency: Arc::new(Concurrency::default()),
            fixed_status: AtomicU16::new(0),
        });
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let stopped = Arc::new(AtomicBool::new(false));
        let (shared, t) = (Arc::clone(&state), Arc::clone(&tasks));
        tasks.lock().unwrap().spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = Arc::clone(&shared);
                let conn = async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        respond_as(Arc::clone(&shared), req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                };
                t.lock().unwrap().spawn(conn);
            }
        });
        TestBackend {
            addr,
            state,
            tasks,
            stopped,
        }
    }

    /// Kills the server: the listener and every open connection close at once.
    pub fn kill(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.tasks.lock().unwrap().abort_all();
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn last_seen(&self) -> Option<Seen> {
        self.seen.lock().unwrap().last().cloned()
    }
}

/// How many requests a test backend answers at once: now, and the most so far.
#[derive(Debug, Default)]
pub struct Concurrency {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Concurrency {
    /// Counts one request in until the returned guard drops.
    fn enter(self: &Arc<Self>) -> Busy {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        Busy(Arc::clone(self))
    }

    /// The most requests answered at once so far.
    pub fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

/// One request being answered.
struct Busy(Arc<Concurrency>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.kill();
    }
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

pub fn full(s: impl Into<Bytes>) -> BoxBody {
    Full::new(s.into()).map_err(|never| match never {}).boxed()
}

fn query_num(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

/// Answers one request as `state` says: a fixed status, after the delay, or by path.
async fn respond_as(
    state: Arc<BackendState>,
    req: Request<Incoming>,
) -> Result<Response<BoxBody>, Infallible> {
    let probe = req.uri().path() == "/healthz";
    let _busy = (!probe).then(|| state.concurrency.enter());
    let fixed = state.fixed_status.load(Ordering::SeqCst);
    if fixed != 0 && !probe {
        state.hits.fetch_add(1, Ordering::SeqCst);
        let mut r = Response::new(full(format!("status from {}\n", state.name)));
        *r.status_mut() = StatusCode::from_u16(fixed).unwrap();
        if fixed == 429 {
            r.headers_mut()
                .insert("retry-after", http::HeaderValue::from_static("30"));
        }
        return Ok(r);
    }
    let wait = state.delay.load(Ordering::SeqCst);
    if wait > 0 && !probe {
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    respond(&state, req).await
}

/// A backend's answer to a WebSocket upgrade: 101, then an echo of each text or binary
/// message as text prefixed with `name: `, until the client closes.
pub fn websocket_echo(name: String, req: &mut Request<Incoming>) -> Response<BoxBody> {
    let key = req.headers().get("sec-websocket-key").cloned();
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            use futures_util::{SinkExt, StreamExt};
            let (mut tx, mut rx) = ws.split();
            while let Some(Ok(msg)) = rx.next().await {
                if msg.is_text() || msg.is_binary() {
                    let reply = format!("{name}: {}", msg.into_text().unwrap_or_default());
                    if tx.send(reply.into()).await.is_err() {
                        break;
                    }
                } else if msg.is_close() {
                    break;
                }
            }
        }
    });
    let accept = key
        .map(|k| tokio_tungstenite::tungstenite::handshake::derive_accept_key(k.as_bytes()))
        .unwrap_or_default();
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(full(""))
        .unwrap()
}

async fn respond(
    state: &BackendState,
    mut req: Request<Incoming>,
) -> Result<Response<BoxBody>, Infallible> {
    let BackendState {
        name,
        hits,
        health,
        seen,
        ..
    } = state;
    let name = name.clone();
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        let code = health.load(Ordering::SeqCst);
        let mut r = Response::new(full("health\n"));
        *r.status_mut() = StatusCode::from_u16(code).unwrap();
        return Ok(r);
    }
    hits.fetch_add(1, Ordering::SeqCst);
    seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        path: req.uri().to_string(),
        headers: req.headers().clone(),
    });
    if let Some(ms) = query_num(&req, "ms") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let mut r = Response::new(full(format!("status from {name}\n")));
        *r.status_mut() = StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap();
        return Ok(r);
    }
    if path == "/ws" {
        return Ok(websocket_echo(name, &mut req));
    }
    if path == "/echo" {
        let body = req.into_body();
        return Ok(Response::new(body.map_err(BoxError::from).boxed()));
    }
    if path == "/sink" {
        let mut body = req.into_body();
        let mut n = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(d) = frame.data_ref() {
                n += d.len() as u64;
            }
        }
        return Ok(Response::new(full(format!("{n}\n"))));
    }
    if path == "/big" {
        let mb = query_num(&req, "mb").unwrap_or(1);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures_util::stream::iter(
            (0..mb * 16).map(move |_| Ok::<_, BoxError>(Frame::data(chunk.clone()))),
        );
        return Ok(Response::new(StreamBody::new(stream).boxed()));
    }
    Ok(Response::new(full(format!("backend {name}\n"))))
}

/// A loopback address that refuses connections for as long as the returned socket
/// lives: bound, so no other test can take the port meanwhile, but not listening.
pub fn refusing_addr() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// Starts the daemon in-process from TOML text.
pub async fn start_daemon(toml: &str) -> Arc<Daemon> {
    let cfg = config::parse(toml, "test.toml", std::path::Path::new("."))
        .unwrap_or_else(|e| panic!("{e}"));
    Daemon::start(cfg, None).await.unwrap()
}

/// Starts the daemon in-process from a file (so reloads read it).
pub async fn start_daemon_file(path: &std::path::Path) -> Arc<Daemon> {
    let cfg = config::load(path).unwrap_or_else(|e| panic!("{e}"));
    Daemon::start(cfg, Some(path.to_path_buf())).await.unwrap()
}

/// A unique scratch directory under the target dir.
pub fn scratch_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "maitred-test-{}-{}-{}",
        std::process::id(),
        tag,
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A simple config: one listener on port 0 in front of one pool.
pub fn simple_config(balancer: &str, backends: &[&TestBackend], extra_pool: &str) -> String {
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    config_for(balancer, &addrs, extra_pool)
}

/// The same for backends given by address.
pub fn config_for(balancer: &str, backends: &[SocketAddr], extra_pool: &str) -> String {
    let list = backends
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[server]
threads = 2
access_log = "off"
log_level = "warn"
grace_period = "5s"

[[listener]]
name = "main"
bind = "127.0.0.1:0"
pool = "web"

[pool.web]
balancer = "{balancer}"
backends = [{list}]
{extra_pool}
"#
    )
}

/// An HTTP/2 prior-knowledge (h2c) client connection to `addr`, driven in its own task.
pub async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<BoxBody> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

/// A plain HTTP/1.1 response as the test sees it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

/// One HTTP/1.1 client connection.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<BoxBody>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client { sender }
    }

    /// `headers` may name a Host; `test.local` otherwise.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send("GET", path, headers, Bytes::new()).await.unwrap()
    }

    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply, hyper::Error> {
        // A stalled exchange fails the test by name instead of hanging the suite.
        tokio::time::timeout(4 * DEADLINE, self.exchange(method, path, headers, body))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{method} {path}: no complete answer within {:?}",
                    4 * DEADLINE
                )
            })
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply, hyper::Error> {
        self.sender.ready().await?;
        let mut b = Request::builder().method(method).uri(path);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            b = b.header("host", "test.local");
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = self
            .sender
            .send_request(b.body(full(body)).unwrap())
            .await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// One request on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    Client::connect(addr).await.get(path, &[]).await
}

/// Sends raw bytes and returns everything the server answers until it closes or
/// `limit` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], limit: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends raw bytes and returns everything the server answers before it closes the
/// connection; fails the test if it has not closed within the deadline. The close is
/// what proves that nothing more will come.
pub async fn raw_until_closed(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, async {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = s.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(closed.is_ok(), "not closed within {DEADLINE:?}: {text}");
    text
}

/// Counts replies by body.
pub fn tally(replies: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in replies {
        *m.entry(r.clone()).or_insert(0) += 1;
    }
    m
}

/// The main listener's address.
pub fn addr(d: &Daemon) -> SocketAddr {
    d.listener_addr("main").unwrap()
}

/// A WebSocket handshake request for `ws://addr/ws`, with `cookie` when given: what
/// `tokio_tungstenite::client_async` sends through the daemon.
pub fn ws_request(addr: SocketAddr, cookie: Option<&str>) -> http::Request<()> {
    let mut req = http::Request::builder()
        .uri(format!("ws://{addr}/ws"))
        .header("host", "x")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header(
            "sec-websocket-key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        );
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    req.body(()).expect("a valid request")
}
