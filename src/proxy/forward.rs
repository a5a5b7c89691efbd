//! Talking to one backend: take a pooled keep-alive connection or open a new one within
//! `connect_timeout`, send the request, wait for the response head within
//! `response_timeout`.
//!
//! Connections are hyper's low-level HTTP/1.1 `SendRequest` handles kept per backend in
//! [`super::conn_pool`]; each connection's I/O runs in its own task. A failure says
//! whether the request was still unsent (so it may go to another backend whatever its
//! method) by handing the request back.

use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::UpBody;
use super::error::ProxyError;
use crate::backend::Backend;

/// Takes a ready idle connection to `backend`, or opens one. An idle connection the
/// backend has closed is dropped here; one that closes while the request is being sent
/// hands the request back (see [`send`]).
pub async fn checkout(
    backend: &Backend,
    connect_timeout: Duration,
) -> Result<SendRequest<UpBody>, ProxyError> {
    while let Some(mut sender) = backend.live.conns.take() {
        if sender.is_ready() || sender.ready().await.is_ok() {
            return Ok(sender);
        }
    }
    connect(backend, connect_timeout).await
}

/// Opens a new HTTP/1.1 connection to `backend`.
pub async fn connect(
    backend: &Backend,
    timeout: Duration,
) -> Result<SendRequest<UpBody>, ProxyError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(backend.addr)).await {
        Err(_) => return Err(ProxyError::ConnectTimeout),
        Ok(Err(e)) => return Err(ProxyError::Connect(e)),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(ProxyError::Upstream)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "backend connection ended with an error");
        }
    });
    Ok(sender)
}

/// The outcome of one send: a response, or an error with the request if it was never
/// written to the connection.
pub type SendOutcome = Result<Response<Incoming>, (ProxyError, Option<Request<UpBody>>)>;

/// Sends `req` on `sender` and waits for the response head.
pub async fn send(
    sender: &mut SendRequest<UpBody>,
    req: Request<UpBody>,
    timeout: Duration,
) -> SendOutcome {
    match tokio::time::timeout(timeout, sender.try_send_request(req)).await {
        Err(_) => Err((ProxyError::ResponseTimeout, None)),
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(mut e)) => {
            let unsent = e.take_message();
            Err((ProxyError::Upstream(e.into_error()), unsent))
        }
    }
}
