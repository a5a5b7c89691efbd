//! HTTP/2 to backends (DESIGN §12): `protocol = "h2c"` and `"h2"` pools in front of real
//! HTTP/2 servers on loopback (hyper's, or the `h2` crate's where a test needs a frame
//! hyper does not send): HTTP/1.1 and HTTP/2 clients, request and response bodies,
//! trailers, TLS with ALPN, the backend's stream limit, GOAWAY, REFUSED_STREAM, and a
//! backend that dies mid-response.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::common::*;

type Handler = Arc<
    dyn Fn(Request<Incoming>, usize) -> Pin<Box<dyn Future<Output = Response<BoxBody>> + Send>>
        + Send
        + Sync,
>;

/// An HTTP/2 backend (hyper's server) on loopback, plain or TLS, counting its
/// connections.
struct H2Backend {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for H2Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How the test backend serves.
#[derive(Clone, Default)]
struct Opts {
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    max_streams: Option<u32>,
    /// Close each connection gracefully (GOAWAY) after this many requests on it.
    goaway_after: Option<usize>,
    /// TLS: serve HTTP/2 over TLS with this acceptor.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl H2Backend {
    async fn start(opts: Opts, handler: Handler) -> H2Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&conns);
        let task = tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let (opts, handler) = (opts.clone(), Arc::clone(&handler));
                tasks.spawn(async move {
                    match opts.tls.clone() {
                        None => serve_h2(TokioIo::new(tcp), n, opts, handler).await,
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(tcp).await {
                                serve_h2(TokioIo::new(s), n, opts, handler).await;
                            }
                        }
                    }
                });
            }
        });
        H2Backend { addr, conns, task }
    }

    fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

async fn serve_h2<IO>(io: TokioIo<IO>, conn_index: usize, opts: Opts, handler: Handler)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let served = Arc::new(AtomicUsize::new(0));
    let enough = Arc::new(tokio::sync::Notify::new());
    let (s, e) = (Arc::clone(&served), Arc::clone(&enough));
    let limit = opts.goaway_after;
    let svc = service_fn(move |req| {
        let n = s.fetch_add(1, Ordering::SeqCst) + 1;
        if limit.is_some_and(|l| n >= l) {
            e.notify_one();
        }
        let fut = handler(req, conn_index);
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    if let Some(m) = opts.max_streams {
        builder.max_concurrent_streams(m);
    }
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        () = enough.notified() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request<Incoming>, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<BoxBody>> + Send + 'static,
{
    Arc::new(move |req, n| Box::pin(f(req, n)))
}

/// Answers with what it saw: method, path and body in the body, the forwarding
/// headers and TE echoed as `x-seen-*` headers, and a trailer.
fn echo() -> Handler {
    handler(|req: Request<Incoming>, _| async move {
        let seen = |name: &str| {
            req.headers()
                .get(name)
                .map(|v| v.to_str().unwrap_or("?").to_string())
                .unwrap_or_default()
        };
        let authority = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let fields = [
            ("x-seen-authority", authority),
            ("x-seen-xff", seen("x-forwarded-for")),
            ("x-seen-proto", seen("x-forwarded-proto")),
            ("x-seen-xfh", seen("x-forwarded-host")),
            ("x-seen-te", seen("te")),
        ];
        let head = format!("{} {}", req.method(), req.uri().path());
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let text = format!("{head} {}", String::from_utf8_lossy(&body));
        let mut trailers = HeaderMap::new();
        trailers.insert("x-trailer", "done".parse().unwrap());
        let frames = vec![
            Ok::<_, BoxError>(Frame::data(Bytes::from(text))),
            Ok(Frame::trailers(trailers)),
        ];
        let mut resp = Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
        for (k, v) in fields {
            resp.headers_mut().insert(k, v.parse().unwrap());
        }
        resp
    })
}

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
