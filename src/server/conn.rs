//! The vocabulary every part of serving a client connection shares: what a connection
//! keeps for its whole life ([`Conn`]), what makes it finish ([`CloseSignals`]), its
//! timeouts, the HTTP it speaks and the streams it may run on.
//!
//! The listener makes these, the HTTP serving code and the parking lot pass them
//! between each other; this file holds the types alone, so each of those may import it
//! without importing another's logic.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::conn_limit::ConnPermit;
use crate::proxy::ConnInfo;
use crate::shared::Shared;
use crate::shutdown::Tracked;

/// A client stream maitred serves HTTP on: plain TCP or TLS over TCP.
pub(super) trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The TCP socket underneath, waited on while the connection is parked.
    fn socket(&self) -> &TcpStream;
}

impl ClientStream for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }
}

impl ClientStream for tokio_rustls::server::TlsStream<TcpStream> {
    fn socket(&self) -> &TcpStream {
        self.get_ref().0
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

/// A client connection's timeouts, from its listener.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    /// `header_timeout`: from a request's first byte to the end of its head.
    pub header: Duration,
    /// `idle_timeout`: no request in progress.
    pub idle: Duration,
    /// `send_timeout`: no progress writing a response.
    pub send: Duration,
}

/// What a client connection keeps for its whole life, parked or served.
#[derive(Debug)]
pub(super) struct Conn {
    /// The daemon.
    pub shared: Arc<Shared>,
    /// The client connection as the proxy sees it.
    pub info: Arc<ConnInfo>,
    /// Its listener's timeouts.
    pub timeouts: Timeouts,
    /// What makes it finish.
    pub close: CloseSignals,
    /// Counts it among the connections a graceful shutdown waits for.
    pub tracked: Tracked,
    /// Its place under the listener's `max_connections`.
    pub permit: ConnPermit,
}

/// What makes an open client connection finish gracefully: its listener's stop flag,
/// set when a reload removes the listener and when the daemon shuts down (one flag
/// keeps the waiting small: a parked connection holds little else).
#[derive(Debug, Clone)]
pub(super) struct CloseSignals {
    stop: watch::Receiver<bool>,
}

impl CloseSignals {
    /// The signals of a connection accepted on the listener whose stop flag is `stop`.
    pub(super) fn new(stop: watch::Receiver<bool>) -> CloseSignals {
        CloseSignals { stop }
    }

    /// Resolves once the connection should finish.
    pub(super) async fn wait(&mut self) {
        crate::shutdown::flag_set(&mut self.stop).await
    }

    /// Whether the connection should finish now.
    pub(super) fn is_set(&self) -> bool {
        *self.stop.borrow()
    }

    /// Whether `other` is the same listener's signal.
    pub(super) fn same_as(&self, other: &CloseSignals) -> bool {
        self.stop.same_channel(&other.stop)
    }
}
