//! Talking to one backend: take a pooled keep-alive connection or open a new one within
//! `connect_timeout`, send the request, wait for the response head within
//! `response_timeout`.
//!
//! Connections are [`UpConn`]s kept per backend in [`super::conn_pool`]; the exchange
//! itself is [`super::upstream`]. A failure says whether any of the request reached the
//! backend, which decides whether it may go to another one.

use std::time::Duration;

use http::request::Parts;

use super::body::UpBody;
use super::error::ProxyError;
use super::headers::Forwarded;
use super::upstream::{Failure, ResponseHead, UpConn};
use crate::backend::Backend;

/// Takes a usable idle connection to `backend`, or opens one.
pub async fn checkout(backend: &Backend, connect_timeout: Duration) -> Result<UpConn, ProxyError> {
    if let Some(conn) = backend.live.conns.take() {
        return Ok(conn);
    }
    match tokio::time::timeout(connect_timeout, UpConn::connect(backend.addr)).await {
        Err(_) => Err(ProxyError::ConnectTimeout),
        Ok(Err(e)) => Err(ProxyError::Connect(e)),
        Ok(Ok(c)) => Ok(c),
    }
}

/// The outcome of one send: the response head, or the error and whether the request
/// reached the backend.
pub type SendOutcome = Result<ResponseHead, (ProxyError, bool)>;

/// Sends the request on `conn` and waits for the response head.
pub async fn send(
    conn: &mut UpConn,
    parts: &Parts,
    forwarded: &Forwarded,
    body: &mut UpBody,
    timeout: Duration,
) -> SendOutcome {
    match tokio::time::timeout(timeout, conn.exchange(parts, forwarded, body)).await {
        Err(_) => Err((ProxyError::ResponseTimeout, true)),
        Ok(Ok(head)) => Ok(head),
        Ok(Err(Failure { error, delivered })) => Err((ProxyError::Upstream(error), delivered)),
    }
}
