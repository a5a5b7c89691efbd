//! One active health check: a GET of the configured path on a fresh connection, with a
//! timeout, judged by the expected status range.
//!
//! Probes open their own connection each time and share nothing with client traffic, so
//! a saturated pool of client connections can never make a healthy backend look dead,
//! and a probe can never take a slot a client request needs.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::backend::CheckResult;

/// What one probe asks.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    /// Path to GET.
    pub path: String,
    /// Host header value.
    pub host: String,
    /// Whole-probe timeout (connect + response head).
    pub timeout: Duration,
    /// Inclusive passing status range.
    pub expect: (u16, u16),
}

/// Probes `addr` once.
pub async fn probe(addr: SocketAddr, spec: &ProbeSpec) -> CheckResult {
    match tokio::time::timeout(spec.timeout, exchange(addr, spec)).await {
        Err(_) => CheckResult {
            passed: false,
            detail: "timeout".into(),
        },
        Ok(Err(detail)) => CheckResult {
            passed: false,
            detail,
        },
        Ok(Ok(status)) => CheckResult {
            passed: (spec.expect.0..=spec.expect.1).contains(&status),
            detail: status.to_string(),
        },
    }
}

async fn exchange(addr: SocketAddr, spec: &ProbeSpec) -> Result<u16, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "refused".to_string(),
        _ => format!("connect: {e}"),
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let req = Request::get(spec.path.as_str())
        .header(header::HOST, spec.host.as_str())
        .header(header::CONNECTION, "close")
        .header(header::USER_AGENT, "maitred-health-check")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("exchange: {e}"));
    driver.abort();
    Ok(resp?.status().as_u16())
}
