//! gRPC through maitred (DESIGN §12) with real peers: a tonic server behind an h2c (or
//! h2) pool and a tonic client in front. `calls` proxies every kind of call, statuses,
//! trailers, deadlines and failures; `health` checks backends with
//! `grpc.health.v1.Health/Check`. The service is in `echo`.

mod calls;
mod echo;
mod health;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tonic::codegen::Service;
use tonic::service::Routes;
use tonic_health::server::HealthReporter;

use crate::common::*;
use echo::EchoServer;

/// A tonic gRPC server on loopback (HTTP/2 prior knowledge, or TLS with ALPN h2) with
/// `test.Echo` and the standard health service. Every connection and stream runs in
/// the backend's task set, so [`GrpcBackend::kill`] ends them all at once.
pub struct GrpcBackend {
    pub addr: SocketAddr,
    pub health: HealthReporter,
    tasks: Arc<Mutex<JoinSet<()>>>,
    /// Calls the backend has received (health checks included).
    calls: Arc<std::sync::atomic::AtomicUsize>,
}

/// hyper's executor for the backend's streams: they go into its task set.
#[derive(Clone)]
struct InSet(Arc<Mutex<JoinSet<()>>>);

impl<F> hyper::rt::Executor<F> for InSet
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.lock().unwrap().spawn(fut);
    }
}

impl GrpcBackend {
    /// Serves h2c.
    pub async fn start() -> GrpcBackend {
        Self::serve(None).await
    }

    /// Serves HTTP/2 over TLS with `tls` (which should offer ALPN h2).
    pub async fn start_tls(tls: Arc<rustls::ServerConfig>) -> GrpcBackend {
        Self::serve(Some(TlsAcceptor::from(tls))).await
    }

    async fn serve(tls: Option<TlsAcceptor>) -> GrpcBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = EchoServer::default();
        let (health, health_service) = tonic_health::server::health_reporter();
        let routes = Routes::new(echo).add_service(health_service);
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let exec = InSet(Arc::clone(&tasks));
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        tasks.lock().unwrap().spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                let (routes, exec, tls) = (routes.clone(), exec.clone(), tls.clone());
                let conn_exec = exec.clone();
                let counted = Arc::clone(&counted);
                hyper::rt::Executor::execute(&conn_exec, async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let mut routes = routes.clone();
                        async move { routes.call(req).await }
                    });
                    let builder = hyper::server::conn::http2::Builder::new(exec);
                    match tls {
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                        Some(acceptor) => {
                            if let Ok(io) = acceptor.accept(tcp).await {
                                let _ = builder.serve_connection(TokioIo::new(io), svc).await;
                            }
                        }
                    }
                });
            }
        });
        GrpcBackend {
            addr,
            health,
            tasks,
            calls,
        }
    }

    /// Calls received so far (health checks included).
    pub fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Kills the server: the listener, every connection and every stream end at once.
    pub fn kill(&self) {
        self.tasks.lock().unwrap().abort_all();
    }
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One listener in front of an h2c pool `web` of `backends`, with `extra_pool` added to
/// the pool and `extra_listener` to the listener.
pub fn grpc_config(backends: &[SocketAddr], extra_pool: &str, extra_listener: &str) -> String {
    config_for(
        "round-robin",
        backends,
        &format!("protocol = \"h2c\"\n{extra_pool}"),
    )
    .replace(
        "pool = \"web\"\n",
        &format!("pool = \"web\"\n{extra_listener}"),
    )
}

/// A gRPC call as the wire shows it: status, headers, the data received, trailers.
#[derive(Debug)]
pub struct RawCall {
    pub status: u16,
    pub headers: HeaderMap,
    pub data: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl RawCall {
    /// `grpc-status` from the trailers, else from the headers (trailers-only).
    pub fn grpc_status(&self) -> Option<&str> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| self.headers.get("grpc-status"))
            .map(|v| v.to_str().unwrap())
    }
}

/// Sends a gRPC request by hand (HTTP/2 prior knowledge) to `addr`: `path`, a body of
/// one framed `message`, and `headers` (e.g. `grpc-timeout`); reads the whole answer.
pub async fn raw_call(
    addr: SocketAddr,
    path: &str,
    message: Bytes,
    headers: &[(&str, &str)],
) -> RawCall {
    let mut sender = h2_client(addr).await;
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let mut req = Request::post(format!("http://test.local{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(full(framed)).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    RawCall {
        status: parts.status.as_u16(),
        headers: parts.headers,
        trailers: collected.trailers().cloned(),
        data: collected.to_bytes(),
    }
}
