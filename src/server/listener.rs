//! Accepting client connections and serving HTTP on them.
//!
//! One accept loop per listener per worker; each accepted connection becomes a task on
//! that worker that reads an optional PROXY header, terminates TLS when the listener has
//! it, and serves HTTP/1.1 or HTTP/2 (ALPN on TLS, prior knowledge on plain) with
//! hyper, calling [`crate::proxy::handle`] per request. The listener's settings are read
//! from the snapshot current when the connection is accepted; routing uses the snapshot
//! current for each request.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::conn::{CloseSignals, Conn, Proto, Timeouts};
use super::http_conn::serve_http;
use super::proxy_protocol;
use crate::conn_limit::ConnPermit;
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
    let limit = match shared.live.load().listener(&name) {
        Some(l) => Arc::clone(&l.conn_limit),
        None => return,
    };
    loop {
        // A place under `max_connections` first: without one, connections wait in the
        // kernel's accept queue.
        let permit = tokio::select! {
            p = limit.acquire() => p,
            _ = crate::shutdown::flag_set(&mut stop) => break,
            _ = shutting.wait() => break,
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let close = CloseSignals::new(retired.clone());
                    let conn = serve_connection(
                        Arc::clone(&shared),
                        Arc::clone(&name),
                        stream,
                        peer,
                        close,
                        permit,
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

/// Serves one client connection to its end.
#[allow(clippy::manual_async_fn)] // on purpose: see the comment inside
fn serve_connection(
    shared: Arc<Shared>,
    listener: Arc<str>,
    mut stream: TcpStream,
    peer: SocketAddr,
    close: CloseSignals,
    permit: ConnPermit,
) -> impl Future<Output = ()> {
    // A plain fn around an async block: its arguments are stored once, not twice as an
    // async fn's are, which keeps every connection's task smaller.
    async move {
        let tracked = shared.tracker.track();
        let _ = stream.set_nodelay(true);
        let (timeouts, proxy_protocol, tls) = {
            let snap = shared.live.load();
            let Some(l) = snap.listener(&listener) else {
                return;
            };
            let timeouts = Timeouts {
                header: l.header_timeout,
                idle: l.idle_timeout,
                send: l.send_timeout,
            };
            (timeouts, l.proxy_protocol, l.tls.clone())
        };
        let mut peer_ip = peer.ip().to_canonical();
        if proxy_protocol {
            // Boxed: its buffer would otherwise size every connection's task.
            match Box::pin(proxy_protocol::read_header(&mut stream, timeouts.header)).await {
                Ok(Some(src)) => peer_ip = src.ip().to_canonical(),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(listener = %listener, %peer, error = %e, "connection refused");
                    return;
                }
            }
        }
        let conn = Conn {
            info: Arc::new(ConnInfo::new(listener, peer_ip, tls.is_some())),
            shared,
            timeouts,
            close,
            tracked,
            permit,
        };
        match tls {
            None => {
                let proto = match tokio::time::timeout(timeouts.header, sniff(&stream)).await {
                    Ok(Some(p)) => p,
                    _ => return,
                };
                serve_http(conn, stream, proto).await
            }
            // Boxed: a TLS state is large and would otherwise size the task of every plain
            // connection too.
            Some(config) => Box::pin(serve_tls(conn, stream, config)).await,
        }
    }
}

/// Terminates TLS on a client connection, then serves HTTP on it.
async fn serve_tls(conn: Conn, stream: TcpStream, config: Arc<rustls::ServerConfig>) {
    let accept = TlsAcceptor::from(config).accept(stream);
    match tokio::time::timeout(conn.timeouts.header, accept).await {
        Ok(Ok(tls_stream)) => {
            let proto = match tls_stream.get_ref().1.alpn_protocol() {
                Some(b"h2") => Proto::Http2,
                _ => Proto::Http1,
            };
            serve_http(conn, tls_stream, proto).await
        }
        Ok(Err(e)) => {
            tracing::debug!(peer = %conn.info.peer_ip, error = %e, "TLS handshake failed")
        }
        Err(_) => tracing::debug!(peer = %conn.info.peer_ip, "TLS handshake timed out"),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Live, Snapshot};

    /// A connection's task is allocated at the size of its largest state, so hyper's,
    /// TLS's and HTTP/2's states stay boxed rather than inline.
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let toml = "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
                    [pool.p]\nbalancer = \"round-robin\"\nbackends = [\"127.0.0.1:9\"]\n";
        let config = crate::config::parse(toml, "t.toml", std::path::Path::new(".")).unwrap();
        let snapshot = Snapshot::build(Arc::new(config), None).unwrap();
        let shared = Arc::new(Shared::new(Live::new(snapshot), None));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, stop) = watch::channel(false);

        let client = TcpStream::connect(addr);
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (stream, peer) = accepted.unwrap();
        let close = CloseSignals::new(stop.clone());
        let permit = crate::conn_limit::ConnLimit::new(0).acquire().await;
        let task = serve_connection(
            Arc::clone(&shared),
            Arc::from("l"),
            stream,
            peer,
            close,
            permit,
        );
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1024, "connection future is {size} bytes");
        drop((task, client));
    }
}
