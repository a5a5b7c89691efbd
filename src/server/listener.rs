//! Accepting client connections and serving HTTP on them.
//!
//! One accept loop per listener per worker; each accepted connection becomes a task on
//! that worker that reads an optional PROXY header, terminates TLS when the listener has
//! it, and serves HTTP/1.1 or HTTP/2 (ALPN on TLS, prior knowledge on plain) with
//! hyper, calling [`crate::proxy::handle`] per request. The listener's settings are read
//! from the snapshot current when the connection is accepted; routing uses the snapshot
//! current for each request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::http_conn::serve_http;
use super::proxy_protocol;
use crate::proxy::ConnInfo;
use crate::shared::Shared;
use crate::shutdown::Shutdown;

/// Pause after an accept error (out of file descriptors, …) before trying again, so a
/// full process does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// Accepts connections on `listener` until this listener is stopped or the daemon
/// shuts down.
pub async fn accept_loop(
    listener: TcpListener,
    name: Arc<str>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    shutdown: Shutdown,
) {
    let mut shutting = shutdown.clone();
    let retired = stop.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let close = CloseSignals {
                        shutdown: shutdown.clone(),
                        retired: retired.clone(),
                    };
                    let conn = serve_connection(
                        Arc::clone(&shared),
                        Arc::clone(&name),
                        stream,
                        peer,
                        close,
                    );
                    tokio::spawn(conn);
                }
                Err(e) => {
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            _ = crate::shutdown::flag_set(&mut stop) => break,
            _ = shutting.wait() => break,
        }
    }
}

/// What makes an open client connection finish gracefully: the daemon shutting down,
/// or its listener removed by a reload.
#[derive(Debug, Clone)]
pub(super) struct CloseSignals {
    shutdown: Shutdown,
    retired: watch::Receiver<bool>,
}

impl CloseSignals {
    /// Resolves once the connection should finish.
    pub(super) async fn wait(&mut self) {
        tokio::select! {
            _ = self.shutdown.wait() => {}
            _ = crate::shutdown::flag_set(&mut self.retired) => {}
        }
    }
}

/// Serves one client connection to its end.
async fn serve_connection(
    shared: Arc<Shared>,
    listener: Arc<str>,
    mut stream: TcpStream,
    peer: SocketAddr,
    close: CloseSignals,
) {
    let _tracked = shared.tracker.track();
    let _ = stream.set_nodelay(true);
    let (timeouts, proxy_protocol, tls) = {
        let snap = shared.live.load();
        let Some(l) = snap.listener(&listener) else {
            return;
        };
        (
            (l.header_timeout, l.idle_timeout),
            l.proxy_protocol,
            l.tls.clone(),
        )
    };
    let mut peer_ip = peer.ip().to_canonical();
    if proxy_protocol {
        match proxy_protocol::read_header(&mut stream, timeouts.0).await {
            Ok(Some(src)) => peer_ip = src.ip().to_canonical(),
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(listener = %listener, %peer, error = %e, "connection refused");
                return;
            }
        }
    }
    let info = ConnInfo {
        listener,
        peer_ip,
        tls: tls.is_some(),
    };
    match tls {
        None => {
            let proto = match tokio::time::timeout(timeouts.0, sniff(&stream)).await {
                Ok(Some(p)) => p,
                _ => return,
            };
            serve_http(shared, info, stream, proto, timeouts, close).await
        }
        Some(config) => {
            // Boxed, as is the TLS connection's service below: a TLS state is large and
            // would otherwise size the task of every plain connection too.
            let accept = Box::pin(TlsAcceptor::from(config).accept(stream));
            match tokio::time::timeout(timeouts.0, accept).await {
                Ok(Ok(tls_stream)) => {
                    let proto = match tls_stream.get_ref().1.alpn_protocol() {
                        Some(b"h2") => Proto::Http2,
                        _ => Proto::Http1,
                    };
                    Box::pin(serve_http(shared, info, tls_stream, proto, timeouts, close)).await
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

/// Which HTTP a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Proto {
    Http1,
    Http2,
    /// Not known from the first bytes: let hyper-util's auto builder decide.
    Auto,
}

/// The HTTP/2 connection preface a prior-knowledge (h2c) client starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Tells HTTP/2 prior knowledge from HTTP/1 by the connection's first bytes, without
/// consuming them, so each connection gets the one protocol's server and no per-request
/// detection layer. `None` when the client closed without sending anything.
async fn sniff(stream: &TcpStream) -> Option<Proto> {
    let mut first = [0u8; 4];
    let n = stream.peek(&mut first).await.ok()?;
    Some(match n {
        0 => return None,
        4 if first[..] == H2_PREFACE[..4] => Proto::Http2,
        4 => Proto::Http1,
        _ if H2_PREFACE.starts_with(&first[..n]) => Proto::Auto,
        _ => Proto::Http1,
    })
}
