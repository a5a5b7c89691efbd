//! Opening an HTTP/2 connection to a backend, and the task that drives it for its life.
//!
//! One task per connection, spawned on the worker's runtime: it connects (TCP, for
//! `h2` the TLS handshake, which must agree on ALPN `h2`), performs the HTTP/2
//! handshake and sends a first PING. The backend's SETTINGS is the first frame it
//! sends, so once the PING's answer is back its SETTINGS_MAX_CONCURRENT_STREAMS is
//! known and the connection can be offered to requests. All of it within
//! `connect_timeout`.
//!
//! The same task then drives the connection (h2's `Connection` does the reading and
//! writing for every stream) until it ends: a PING every `keepalive_timeout` (between
//! [`MIN_PING_INTERVAL`] and [`PING_INTERVAL`]) that must be answered within `connect_timeout` (between
//! [`MIN_PONG_TIMEOUT`] and [`MAX_PONG_TIMEOUT`]), so a backend that vanished without a
//! word is noticed even while a long stream (gRPC) waits on it; no stream for the
//! pool's `keepalive_timeout` closes it; after a GOAWAY h2 finishes the streams in
//! flight and ends the connection.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Ping, PingPong};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, sleep_until, timeout, timeout_at};

use super::ConnectFailure;
use crate::backend_tls::BackendTls;
use crate::upstream::{MAX_HEAD, connect};

/// The longest and the shortest time between two PINGs on a connection.
const PING_INTERVAL: Duration = Duration::from_secs(10);
const MIN_PING_INTERVAL: Duration = Duration::from_secs(1);

/// The bounds on how long a PING may go unanswered before the connection is closed:
/// never less than a second (a busy backend on a noisy host), never more than ten.
const MIN_PONG_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_PONG_TIMEOUT: Duration = Duration::from_secs(10);

/// The receive window of each stream: what a backend may send ahead of the client's
/// reading (h2's default, 64 KiB, throttles any fast backend).
const STREAM_WINDOW: u32 = 512 * 1024;

/// The receive window of the whole connection, shared by its streams: a stream whose
/// client stopped reading holds at most its own window of it, so it takes 32 such
/// streams (each cut by `send_timeout` in the end) to stall the others.
const CONN_WINDOW: u32 = 16 << 20;

/// What the driver needs to open a connection.
#[derive(Debug)]
pub(super) struct Spec {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The backend as configured (for TLS, the name verified unless `server_name`).
    pub name: Arc<str>,
    /// For `h2`: TLS.
    pub tls: Option<Arc<BackendTls>>,
    /// The bound on opening it.
    pub connect_timeout: Duration,
    /// No stream for this long closes it.
    pub keepalive: Duration,
}

impl Spec {
    /// Time between PINGs.
    fn ping_interval(&self) -> Duration {
        self.keepalive.clamp(MIN_PING_INTERVAL, PING_INTERVAL)
    }

    /// How long a PING may go unanswered.
    fn pong_timeout(&self) -> Duration {
        self.connect_timeout
            .clamp(MIN_PONG_TIMEOUT, MAX_PONG_TIMEOUT)
    }
}

/// The state of an open connection shared by its driver and its streams.
///
/// Written and read on the worker's thread only (atomics because response bodies must
/// be `Send`), so `Relaxed` suffices.
#[derive(Debug)]
pub(super) struct ConnState {
    /// Streams counted on the connection (by the worker's list, per checkout).
    pub active: AtomicUsize,
    /// No new stream may go on it (GOAWAY, failure, or its driver ended it).
    closed: AtomicBool,
    /// Milliseconds after `born` when `active` last fell to zero.
    idle_since_ms: AtomicU64,
    born: Instant,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            active: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
            born: Instant::now(),
        }
    }

    /// No new stream goes on this connection.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    /// Whether the connection takes no new stream.
    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// One stream fewer; the last one starts the idle clock.
    pub(super) fn stream_done(&self) {
        if self.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.idle_since_ms.store(ms, Ordering::Relaxed);
        }
    }

    /// Since when the connection has had no stream; `None` while it has some.
    fn idle_since(&self) -> Option<Instant> {
        if self.active.load(Ordering::Relaxed) != 0 {
            return None;
        }
        let ms = self.idle_since_ms.load(Ordering::Relaxed);
        Some(self.born + Duration::from_millis(ms))
    }
}

/// An open connection: the handle that opens streams, its shared state, and the
/// future that drives it until it ends (to be spawned, or awaited by the task that
/// opened it).
pub(super) struct Opened {
    pub send: SendRequest<Bytes>,
    pub state: Arc<ConnState>,
    pub drive: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// Opens a connection as `spec` says, within its `connect_timeout`.
pub(super) async fn open(spec: Spec) -> Result<Opened, ConnectFailure> {
    let deadline = Instant::now() + spec.connect_timeout;
    let tcp = match timeout_at(deadline, connect::tcp(spec.addr)).await {
        Err(_) => return Err(ConnectFailure::Timeout),
        Ok(Err(e)) => return Err(ConnectFailure::io(&e)),
        Ok(Ok(tcp)) => tcp,
    };
    let Some(tls) = spec.tls.clone() else {
        return start(tcp, spec, deadline).await;
    };
    let stream = match timeout_at(deadline, connect::tls(&tls, tcp, &spec.name)).await {
        Err(_) => return Err(ConnectFailure::Timeout),
        Ok(Err(e)) => return Err(ConnectFailure::io(&e)),
        Ok(Ok(s)) => s,
    };
    if !connect::negotiated_h2(&stream) {
        tracing::warn!(backend = %spec.name, "TLS to backend: ALPN did not select h2; connection refused");
        return Err(ConnectFailure::Failed {
            kind: std::io::ErrorKind::InvalidData,
            message: format!("{}: backend did not agree to HTTP/2 (ALPN h2)", spec.name),
        });
    }
    start(stream, spec, deadline).await
}

/// The HTTP/2 handshake and the first PING on `io`.
async fn start<T>(io: T, spec: Spec, deadline: Instant) -> Result<Opened, ConnectFailure>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_header_list_size(MAX_HEAD as u32)
        .enable_push(false);
    let (send, mut conn) = match timeout_at(deadline, builder.handshake::<_, Bytes>(io)).await {
        Err(_) => return Err(ConnectFailure::Timeout),
        Ok(Err(e)) => return Err(h2_failure(&e)),
        Ok(Ok(pair)) => pair,
    };
    let Some(mut ping) = conn.ping_pong() else {
        return Err(ConnectFailure::Failed {
            kind: std::io::ErrorKind::Other,
            message: "HTTP/2 connection gave no PING handle".to_string(),
        });
    };
    let mut conn = Box::pin(conn);
    let warmed = timeout_at(deadline, async {
        tokio::select! {
            ended = conn.as_mut() => Err(match ended {
                Err(e) => h2_failure(&e),
                Ok(()) => ConnectFailure::Failed {
                    kind: std::io::ErrorKind::UnexpectedEof,
                    message: "backend closed the HTTP/2 connection at once".to_string(),
                },
            }),
            pong = ping.ping(Ping::opaque()) => pong.map(|_| ()).map_err(|e| h2_failure(&e)),
        }
    })
    .await;
    match warmed {
        Err(_) => return Err(ConnectFailure::Timeout),
        Ok(Err(failure)) => return Err(failure),
        Ok(Ok(())) => {}
    }
    let state = Arc::new(ConnState::new());
    let shared = Arc::clone(&state);
    let drive = Box::pin(async move {
        drive(conn.as_mut(), ping, &shared, &spec).await;
        shared.close();
    });
    Ok(Opened { send, state, drive })
}

/// Drives an open connection until it ends, is found dead, or has been idle for the
/// keep-alive timeout.
async fn drive<F>(
    mut conn: std::pin::Pin<&mut F>,
    mut ping: PingPong,
    state: &ConnState,
    spec: &Spec,
) where
    F: std::future::Future<Output = Result<(), h2::Error>>,
{
    let mut next_ping = Instant::now() + spec.ping_interval();
    // Each turn waits for the connection's end, its idle deadline or the next PING.
    loop {
        let wake = match state.idle_since() {
            Some(since) => (since + spec.keepalive).min(next_ping),
            None => next_ping,
        };
        tokio::select! {
            ended = conn.as_mut() => return log_end(ended, spec),
            () = sleep_until(wake) => {}
        }
        let now = Instant::now();
        if state
            .idle_since()
            .is_some_and(|since| now >= since + spec.keepalive)
        {
            tracing::debug!(backend = %spec.name, "idle HTTP/2 connection to backend closed");
            return;
        }
        if now < next_ping {
            continue;
        }
        let answered = tokio::select! {
            ended = conn.as_mut() => return log_end(ended, spec),
            pong = timeout(spec.pong_timeout(), ping.ping(Ping::opaque())) => matches!(pong, Ok(Ok(_))),
        };
        if !answered {
            tracing::warn!(
                backend = %spec.name,
                timeout = %humantime::format_duration(spec.pong_timeout()),
                "backend did not answer an HTTP/2 PING; connection closed"
            );
            return;
        }
        next_ping = Instant::now() + spec.ping_interval();
    }
}

fn log_end(ended: Result<(), h2::Error>, spec: &Spec) {
    if let Err(e) = ended {
        tracing::debug!(backend = %spec.name, error = %e, "HTTP/2 connection to backend ended");
    }
}

fn h2_failure(e: &h2::Error) -> ConnectFailure {
    ConnectFailure::Failed {
        kind: e
            .get_io()
            .map_or(std::io::ErrorKind::InvalidData, std::io::Error::kind),
        message: format!("HTTP/2 handshake with backend: {e}"),
    }
}
