//! Talking to one backend: take a pooled keep-alive connection or open a new one within
//! `connect_timeout`, send the request, wait for the response head.
//!
//! Connections are [`UpConn`]s, plain or TLS as the pool's transport says (DESIGN §12),
//! kept per backend in [`crate::upstream::pool`] tagged with that transport; the exchange
//! itself, with its timeouts, is [`crate::upstream`]. A failure says whether any of the
//! request reached the backend, which decides whether it may go to another one, and
//! whether the connection was found closed before any answer, which lets a reused
//! connection's request go again on a fresh one (DESIGN §6).

use http::request::Parts;

use super::error::ProxyError;
use super::headers::Forwarded;
use crate::backend::Backend;
use crate::pool::Pool;
use crate::upstream::{self, Failure, Limits, RequestBody, ResponseHead, UpConn, UpstreamError};

/// A connection for one attempt.
#[derive(Debug)]
pub struct Checkout {
    /// The connection.
    pub conn: UpConn,
    /// It came from the idle pool (it has served a request before), so the backend may
    /// have closed it just now.
    pub reused: bool,
}

/// Takes a usable idle connection to `backend` opened under `pool`'s transport, or
/// opens one within the pool's `connect_timeout`.
pub async fn checkout(backend: &Backend, pool: &Pool) -> Result<Checkout, ProxyError> {
    let transport = pool.transport.id;
    if let Some(conn) = upstream::pool::of(&backend.live).and_then(|p| p.take(transport)) {
        return Ok(Checkout { conn, reused: true });
    }
    connect(backend, pool).await.map(|conn| Checkout {
        conn,
        reused: false,
    })
}

/// Opens a fresh connection to `backend` as `pool`'s transport says (TCP, then for a
/// TLS pool the handshake), all within the pool's `connect_timeout`. A handshake or
/// certificate verification that fails is a failed connect (`connect::tls` has logged
/// why).
pub async fn connect(backend: &Backend, pool: &Pool) -> Result<UpConn, ProxyError> {
    let transport = &pool.transport;
    let open = async {
        let tcp = upstream::connect::tcp(backend.addr).await?;
        match &transport.tls {
            None => Ok(UpConn::plain(tcp, transport.id)),
            // Boxed: the handshake's state would otherwise size every request's
            // future, plain or not.
            Some(tls) => Box::pin(upstream::connect::tls(tls, tcp, &backend.name))
                .await
                .map(|s| UpConn::tls(s, transport.id)),
        }
    };
    match tokio::time::timeout(pool.connect_timeout, open).await {
        Err(_) => Err(ProxyError::ConnectTimeout),
        Ok(Err(e)) => Err(ProxyError::Connect(e)),
        Ok(Ok(c)) => Ok(c),
    }
}

/// A failed send: what the client would be told, and what the exchange knew.
#[derive(Debug)]
pub struct SendFailure {
    /// The error.
    pub error: ProxyError,
    /// Some of the request reached the backend (or the client's body was consumed).
    pub delivered: bool,
    /// The whole request was written.
    pub written: bool,
    /// The connection was found closed or reset before any byte of an answer.
    pub stale: bool,
}

/// Sends the request on `conn` to `backend` and waits for the response head.
pub async fn send(
    conn: &mut UpConn,
    backend: &Backend,
    parts: &Parts,
    forwarded: &Forwarded,
    body: &mut RequestBody,
    limits: Limits,
) -> Result<ResponseHead, SendFailure> {
    conn.exchange(parts, forwarded, body, limits).await.map_err(
        |Failure {
             error,
             delivered,
             written,
             stale,
         }| {
            let error = match error {
                UpstreamError::ResponseTimeout => ProxyError::ResponseTimeout,
                UpstreamError::ClientBodyTimeout => ProxyError::ClientBodyTimeout,
                UpstreamError::Io(e) if is_tls(&e) => {
                    tls_failed(backend, &e);
                    ProxyError::Upstream(UpstreamError::Io(e))
                }
                e => ProxyError::Upstream(e),
            };
            SendFailure {
                error,
                delivered,
                written,
                stale,
            }
        },
    )
}

/// Whether an I/O error is rustls' (an alert from the backend, a record that does not
/// decrypt).
fn is_tls(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
}

/// Logs a TLS failure after the handshake: with TLS 1.3 a backend judges the client
/// certificate only once the handshake is over on maitred's side, so a missing or
/// refused one shows here (`received fatal alert: CertificateRequired`), not in
/// [`upstream::connect::tls`].
#[cold]
fn tls_failed(backend: &Backend, e: &std::io::Error) {
    tracing::warn!(backend = %backend.name, error = %e, "TLS to backend failed");
}
