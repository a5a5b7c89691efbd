//! The HTTP/2 backends the tests stand maitred in front of: hyper's server (plain or
//! TLS, with a stream limit, closing with GOAWAY after a number of requests), the `h2`
//! crate's server where a frame hyper never sends is needed (REFUSED_STREAM), a server
//! of either HTTP version, a relay that can freeze, and the handlers they run.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::common::*;

/// What a test backend does with each request (and the index of its connection).
pub type Handler = Arc<
    dyn Fn(Request<Incoming>, usize) -> Pin<Box<dyn Future<Output = Response<BoxBody>> + Send>>
        + Send
        + Sync,
>;

/// An HTTP/2 backend (hyper's server) on loopback, plain or TLS, counting its
/// connections.
pub struct H2Backend {
    pub addr: SocketAddr,
    pub conns: Arc<AtomicUsize>,
    /// Connections not yet closed.
    pub open: Arc<AtomicUsize>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for H2Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How the test backend serves.
#[derive(Clone, Default)]
pub struct Opts {
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_streams: Option<u32>,
    /// Close each connection gracefully (GOAWAY) after this many requests on it.
    pub goaway_after: Option<usize>,
    /// TLS: serve HTTP/2 over TLS with this acceptor.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl H2Backend {
    pub async fn start(opts: Opts, handler: Handler) -> H2Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (counter, still_open) = (Arc::clone(&conns), Arc::clone(&open));
        let task = tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                still_open.fetch_add(1, Ordering::SeqCst);
                let (opts, handler) = (opts.clone(), Arc::clone(&handler));
                let closed = Arc::clone(&still_open);
                tasks.spawn(async move {
                    let _closed = Closed(closed);
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
        H2Backend {
            addr,
            conns,
            open,
            task,
        }
    }

    pub fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

/// Counts a connection closed when its task ends.
pub struct Closed(Arc<AtomicUsize>);

impl Drop for Closed {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub async fn serve_h2<IO>(io: TokioIo<IO>, conn_index: usize, opts: Opts, handler: Handler)
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

pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request<Incoming>, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<BoxBody>> + Send + 'static,
{
    Arc::new(move |req, n| Box::pin(f(req, n)))
}

/// Answers with what it saw: method, path and body in the body, the forwarding
/// headers and TE echoed as `x-seen-*` headers, and a trailer.
pub fn echo() -> Handler {
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
        let body = match req.into_body().collect().await {
            Ok(c) => c.to_bytes(),
            Err(_) => Bytes::new(),
        };
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

/// An [`echo`] backend over TLS offering `alpn`, with a certificate for
/// `backend.test` from a test CA whose certificate is `ca.pem` in the returned
/// directory.
pub async fn tls_echo_backend(alpn: &[&[u8]]) -> (std::path::PathBuf, H2Backend) {
    let ca = crate::test_ca::TestCa::new("h2-tls");
    let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config(&["backend.test"], alpn));
    let opts = Opts {
        tls: Some(acceptor),
        ..Opts::default()
    };
    (ca.dir, H2Backend::start(opts, echo()).await)
}

/// A backend whose handler holds every request until `total` have arrived (or a
/// deadline passes), so they are all in flight at once.
pub fn holding(total: usize) -> Handler {
    let barrier = Arc::new(tokio::sync::Barrier::new(total));
    handler(move |_req, _| {
        let barrier = Arc::clone(&barrier);
        async move {
            let _ = tokio::time::timeout(DEADLINE, barrier.wait()).await;
            Response::new(full("held"))
        }
    })
}

/// An HTTP/2 backend (the h2 crate's server) that resets every other stream (the
/// first, the third, ...) with REFUSED_STREAM and answers the others with 200.
pub async fn refusing_every_other_stream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let streams = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            let streams = Arc::clone(&streams);
            tasks.spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    if streams.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    // Its own task: the connection is driven by `accept` meanwhile.
                    tokio::spawn(async move {
                        let mut body = req.into_body();
                        let mut got = Vec::new();
                        while let Some(Ok(d)) = body.data().await {
                            let _ = body.flow_control().release_capacity(d.len());
                            got.extend_from_slice(&d);
                        }
                        let answer = format!("second time {}", String::from_utf8_lossy(&got));
                        let head = Response::new(());
                        if let Ok(mut send) = respond.send_response(head, false) {
                            let _ = send.send_data(Bytes::from(answer), true);
                        }
                    });
                }
            });
        }
    });
    (addr, task)
}

/// A handler whose body sends one piece and then nothing, forever.
pub fn stalling() -> Handler {
    handler(|_req, _| async move {
        let first = futures_util::stream::iter([Ok::<_, BoxError>(Frame::data(
            Bytes::from_static(b"partial"),
        ))]);
        let rest = futures_util::stream::pending();
        Response::new(StreamBody::new(futures_util::StreamExt::chain(first, rest)).boxed())
    })
}

pub type Reader = Box<dyn tokio::io::AsyncRead + Unpin + Send>;
pub type Writer = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;

/// A TCP relay in front of a backend that can be frozen: from then on no byte passes
/// either way and both sockets stay open, as when a backend's host vanishes.
pub struct Relay {
    pub addr: SocketAddr,
    pub frozen: Arc<std::sync::atomic::AtomicBool>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    pub async fn start(to: SocketAddr) -> Relay {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = Arc::clone(&frozen);
        let task = tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(to).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let pipes: [(Reader, Writer); 2] =
                    [(Box::new(cr), Box::new(sw)), (Box::new(sr), Box::new(cw))];
                for (mut from, mut to) in pipes {
                    let f = Arc::clone(&f);
                    tasks.spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = from.read(&mut buf).await {
                            if n == 0 || f.load(Ordering::SeqCst) {
                                // Frozen (or done): hold both sockets, pass nothing.
                                std::future::pending::<()>().await;
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Relay { addr, frozen, task }
    }
}

/// Counts its drops: the backend's response body, dropped when its stream is reset.
pub struct DropCount(pub Arc<AtomicUsize>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A backend that speaks HTTP/1.1 and h2c (prior knowledge) alike and answers with the
/// version it was asked in, counting its connections.
pub async fn either_version() -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&conns);
    let task = tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tasks.spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    Ok::<_, Infallible>(Response::new(full(format!("{:?}", req.version()))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, conns, task)
}

/// An HTTP/2 backend (the h2 crate's server) whose first connection is closed, with no
/// GOAWAY, as soon as its first request arrives; later connections answer 200. Returns
/// its address, its connection count, and its task.
pub async fn dropping_first_connection()
-> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&conns);
    let task = tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            let first = counter.fetch_add(1, Ordering::SeqCst) == 0;
            tasks.spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    if first {
                        // Dropping the connection closes the socket, no GOAWAY.
                        return;
                    }
                    if let Ok(mut send) = respond.send_response(Response::new(()), false) {
                        let _ = send.send_data(Bytes::from_static(b"fresh"), true);
                    }
                }
            });
        }
    });
    (addr, conns, task)
}
