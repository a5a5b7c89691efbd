//! HTTP/2 to backends (DESIGN §12, `protocol = "h2c"` and `"h2"`), spoken with the `h2`
//! crate directly.
//!
//! Why not hyper's client (which runs on the same `h2`): it hides what this module
//! decides by. The peer's SETTINGS_MAX_CONCURRENT_STREAMS says when a worker must open
//! another connection rather than queue streams on a full one; REFUSED_STREAM and a
//! graceful GOAWAY's last stream id say that a request was never processed, so it may
//! go again without counting against the backend.
//!
//! - `conns`: each worker's connections to each backend, chosen per request by free
//!   streams, opened one at a time with the requests that wait for it;
//! - `driver`: opening a connection (TCP, TLS with ALPN h2 for `h2`, the handshake and
//!   a first PING that makes the peer's SETTINGS known) and the task that then drives it
//!   (PING keep-alive, idle close, GOAWAY drain);
//! - `exchange`: one request on one stream: its head, the body pump (`pump`), the
//!   response head within `response_timeout`;
//! - [`replay`]: the request body, kept (up to a limit) so a refused stream can go again;
//! - [`body`]: the response body, data then trailers, holding the stream's place.

pub mod body;
mod conns;
mod driver;
mod exchange;
mod pump;
pub mod replay;

pub use body::H2Body;
pub use conns::{Lease, Target, checkout, clear_worker_state, heartbeat};
pub use exchange::{Answer, Failure, H2Limits, send};
pub use replay::ReplayBody;

/// Why a connection to a backend could not be opened; shared by every request that
/// waited for it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectFailure {
    /// Not connected (TCP, TLS, the HTTP/2 handshake and its first PING) within
    /// `connect_timeout`.
    #[error("HTTP/2 connection to backend not ready within connect_timeout")]
    Timeout,
    /// The connection failed or the backend would not speak HTTP/2.
    #[error("{message}")]
    Failed {
        /// The I/O error kind, for the error each waiting request gets.
        kind: std::io::ErrorKind,
        /// What went wrong.
        message: String,
    },
}

impl ConnectFailure {
    /// The failure as an I/O error, one per request that waited for the connection.
    pub fn to_io(&self) -> std::io::Error {
        match self {
            ConnectFailure::Timeout => std::io::Error::from(std::io::ErrorKind::TimedOut),
            ConnectFailure::Failed { kind, message } => std::io::Error::new(*kind, message.clone()),
        }
    }

    fn io(e: &std::io::Error) -> ConnectFailure {
        ConnectFailure::Failed {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

/// Whether a failed stream was never processed by the backend (RFC 9113 §8.7): it was
/// refused (REFUSED_STREAM), or it was above a graceful GOAWAY's last stream id, or the
/// connection had received GOAWAY before it was opened. Such a request may go again,
/// and the backend is not to blame.
pub fn never_processed(e: &h2::Error) -> bool {
    let reason = e.reason();
    (e.is_reset() && e.is_remote() && reason == Some(h2::Reason::REFUSED_STREAM))
        || (e.is_go_away() && e.is_remote() && reason == Some(h2::Reason::NO_ERROR))
}
