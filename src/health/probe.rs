//! One active health check on a fresh connection, spoken in the pool's protocol
//! (HTTP/1.1 or HTTP/2, over TCP or TLS; DESIGN §12): a GET of the configured path
//! judged by the expected status range, or with `grpc` a call of
//! `grpc.health.v1.Health/Check` judged by its answer ([`super::grpc`]). Every wait,
//! the TLS handshake and the body of a gRPC answer included, is inside the probe's
//! timeout.
//!
//! Probes open their own connection each time and share nothing with client traffic, so
//! a saturated pool of client connections can never make a healthy backend look dead,
//! and a probe can never take a slot a client request needs. The TLS handshake is done
//! here rather than through the upstream layer (health is a state leaf and imports no
//! layer), with the pool's own client config, so a probe verifies the backend exactly
//! as client traffic does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use super::grpc;
use crate::backend::CheckResult;
use crate::config::UpstreamProtocol;
use crate::pool::Transport;

/// The most of a gRPC health answer's body that is read; the real one is 7 bytes.
const GRPC_BODY_LIMIT: usize = 64 * 1024;

/// What one probe asks.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    /// Path to GET; with `grpc`, the service name asked about ("" = the whole server).
    pub path: String,
    /// Host header value (HTTP/2: the `:authority`).
    pub host: String,
    /// Whole-probe timeout (connect, TLS, and the answer).
    pub timeout: Duration,
    /// Inclusive passing status range (not with `grpc`).
    pub expect: (u16, u16),
    /// Check with `grpc.health.v1.Health/Check`.
    pub grpc: bool,
    /// The pool's protocol and TLS config.
    pub transport: Transport,
    /// The backend's configured address, whose host its certificate is verified by
    /// (unless the pool sets `server_name`).
    pub backend: Arc<str>,
}

/// Probes `addr` once.
pub async fn probe(addr: SocketAddr, spec: &ProbeSpec) -> CheckResult {
    match tokio::time::timeout(spec.timeout, check(addr, spec)).await {
        Err(_) => CheckResult {
            passed: false,
            detail: "timeout".into(),
        },
        Ok(Err(detail)) => CheckResult {
            passed: false,
            detail,
        },
        Ok(Ok(result)) => result,
    }
}

async fn check(addr: SocketAddr, spec: &ProbeSpec) -> Result<CheckResult, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "refused".to_string(),
        _ => format!("connect: {e}"),
    })?;
    let _ = tcp.set_nodelay(true);
    match spec.transport.protocol {
        UpstreamProtocol::Http1 => exchange(tcp, spec, false).await,
        UpstreamProtocol::H2c => exchange(tcp, spec, true).await,
        UpstreamProtocol::Https => exchange(tls(tcp, spec, false).await?, spec, false).await,
        UpstreamProtocol::H2 => exchange(tls(tcp, spec, true).await?, spec, true).await,
    }
}

/// The TLS handshake with the pool's client config; with `h2`, the backend must agree
/// on it by ALPN.
async fn tls(
    tcp: TcpStream,
    spec: &ProbeSpec,
    h2: bool,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let Some(tls) = &spec.transport.tls else {
        return Err("TLS: the pool has no TLS config".into());
    };
    let name = tls
        .name_for(&spec.backend)
        .ok_or_else(|| "TLS: no name to verify the certificate by".to_string())?;
    let stream = TlsConnector::from(Arc::clone(&tls.config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    if h2 && stream.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err("TLS: the backend did not agree on h2 (ALPN)".into());
    }
    Ok(stream)
}

/// Sends the probe's request on `io` and judges the answer.
async fn exchange<IO>(io: IO, spec: &ProbeSpec, http2: bool) -> Result<CheckResult, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let req = request(spec, http2).map_err(|e| format!("request: {e}"))?;
    // The connection's driver ends with the probe, whichever way it ends.
    let (resp, _driver) = if http2 {
        let (mut sender, conn) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let driver = Driver(tokio::spawn(async move {
            let _ = conn.await;
        }));
        (sender.send_request(req).await, driver)
    } else {
        let (mut sender, conn) = http1::handshake(io)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let driver = Driver(tokio::spawn(async move {
            let _ = conn.await;
        }));
        (sender.send_request(req).await, driver)
    };
    let resp = resp.map_err(|e| format!("exchange: {e}"))?;
    if spec.grpc {
        return judge_grpc(resp).await;
    }
    let status = resp.status().as_u16();
    Ok(CheckResult {
        passed: (spec.expect.0..=spec.expect.1).contains(&status),
        detail: status.to_string(),
    })
}

/// The probe's request: the GET, or the gRPC health call.
fn request(spec: &ProbeSpec, http2: bool) -> Result<Request<Full<Bytes>>, http::Error> {
    let (method, path, body) = if spec.grpc {
        (
            Method::POST,
            grpc::CHECK_PATH,
            grpc::check_request(&spec.path),
        )
    } else {
        (Method::GET, spec.path.as_str(), Bytes::new())
    };
    let mut req = Request::builder()
        .method(method)
        .header(header::USER_AGENT, "maitred-health-check");
    req = if http2 {
        // HTTP/2 carries the host and scheme as pseudo-headers, from the target.
        let scheme = if spec.transport.protocol.is_tls() {
            "https"
        } else {
            "http"
        };
        req.uri(format!("{scheme}://{}{path}", spec.host))
    } else {
        req.uri(path)
            .header(header::HOST, spec.host.as_str())
            .header(header::CONNECTION, "close")
    };
    if spec.grpc {
        req = req
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            )
            .header(header::TE, HeaderValue::from_static("trailers"));
    }
    req.body(Full::new(body))
}

/// Judges a gRPC health answer: HTTP 200, `grpc-status` 0 and `SERVING`.
async fn judge_grpc(resp: Response<Incoming>) -> Result<CheckResult, String> {
    if resp.status() != http::StatusCode::OK {
        return Err(format!("HTTP {}", resp.status().as_u16()));
    }
    let (parts, body) = resp.into_parts();
    let serving = if parts.headers.contains_key("grpc-status") {
        // Trailers-only: the whole answer is in the headers.
        grpc::judge(&parts.headers, None, b"")
    } else {
        let collected = Limited::new(body, GRPC_BODY_LIMIT)
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?;
        let trailers = collected.trailers().cloned();
        grpc::judge(&parts.headers, trailers.as_ref(), &collected.to_bytes())
    }?;
    Ok(CheckResult {
        passed: serving.is_serving(),
        detail: serving.name().to_string(),
    })
}

/// A connection's driver task, ended when the probe is.
struct Driver(JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}
