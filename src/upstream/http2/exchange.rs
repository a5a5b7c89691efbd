//! One request on one HTTP/2 stream: the head goes out, the body is pumped in a task of
//! its own ([`super::pump`]), and the response head is awaited.
//!
//! While the body is on its way the backend may answer; once it has all gone (or at
//! once, for a request without one), `response_timeout` bounds the wait for the head. A
//! failure says whether the backend never processed the request
//! ([`super::never_processed`]), and hands back the body if it can be sent again
//! ([`super::replay`]), so the request can go on another stream.

use std::time::Duration;

use http::Request;
use tokio::task::{AbortHandle, JoinHandle};

use super::body::H2Body;
use super::conns::Lease;
use super::never_processed;
use super::pump::{self, PumpEnd, PumpLimits};
use super::replay::ReplayBody;
use crate::upstream::UpstreamError;

/// How long a refused stream's pump is given to hand its body back (it is woken by the
/// reset at once).
const HAND_BACK: Duration = Duration::from_secs(1);

/// The bounds of one HTTP/2 exchange; `None` is no bound (gRPC streams may idle).
#[derive(Debug, Clone, Copy)]
pub struct H2Limits {
    /// From the request sent whole until the response head.
    pub response: Duration,
    /// The longest the client's body may make no progress.
    pub client_body: Option<Duration>,
    /// The longest the backend's flow-control window may stay shut to the body.
    pub write_stall: Option<Duration>,
    /// The longest the response body may make no progress.
    pub read: Option<Duration>,
}

/// A response head and its body.
#[derive(Debug)]
pub struct Answer {
    /// The response head.
    pub head: http::response::Parts,
    /// Its body, holding the stream's place on the connection.
    pub body: H2Body,
}

/// A failed exchange.
#[derive(Debug)]
pub struct Failure {
    /// What went wrong.
    pub error: UpstreamError,
    /// The backend never processed the request: it may go again, and it is not the
    /// backend's fault.
    pub refused: bool,
    /// The connection broke (closed or reset without a GOAWAY) before the response
    /// head: as with a stale HTTP/1.1 connection, an idempotent bodiless request may go
    /// once more on a fresh one.
    pub stale: bool,
    /// Some of the request reached the backend, or the client's body was taken: it may
    /// go elsewhere only if it is idempotent and bodiless.
    pub delivered: bool,
    /// The request's body, when it had one and it can be sent again from its start.
    pub body: Option<ReplayBody>,
}

/// Aborts the pump unless its handle is handed on to the response body.
struct PumpGuard(Option<AbortHandle>);

impl Drop for PumpGuard {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

/// Sends `head` (with `body` from its start, if any) on a stream of `lease`'s
/// connection and waits for the response head.
pub async fn send(
    lease: Lease,
    head: Request<()>,
    mut body: Option<ReplayBody>,
    limits: H2Limits,
) -> Result<Answer, Failure> {
    let Lease { mut send, slot } = lease;
    if let Some(b) = body.as_mut() {
        b.rewind();
    }
    let (mut response, stream) = match send.send_request(head, body.is_none()) {
        Ok(pair) => pair,
        Err(e) => {
            // Nothing went out. A connection that received GOAWAY or failed takes no
            // more streams; the request can go on another one.
            let refused = e.is_go_away() || e.is_io();
            if refused {
                slot.close_conn();
            }
            return Err(Failure {
                error: UpstreamError::H2(Box::new(e)),
                refused,
                stale: false,
                delivered: !refused,
                body,
            });
        }
    };
    drop(send);
    let had_body = body.is_some();
    let pump_limits = PumpLimits {
        client_body: limits.client_body,
        write_stall: limits.write_stall,
    };
    let mut pump: Option<JoinHandle<PumpEnd>> =
        body.map(|b| tokio::spawn(pump::run(b, stream, pump_limits)));
    let guard = PumpGuard(pump.as_ref().map(JoinHandle::abort_handle));
    // The body the pump handed back when it ended, while it can be sent again.
    let mut returned = None;
    // While the body is on its way the answer may come; once it is all sent the
    // response timer starts. Each turn ends the pump or the wait.
    let answer = loop {
        let Some(p) = pump.as_mut() else {
            match tokio::time::timeout(limits.response, &mut response).await {
                Ok(r) => break r,
                Err(_) => return Err(sent_failure(UpstreamError::ResponseTimeout)),
            }
        };
        // The pump first: a pump that failed has reset the stream, which also ends the
        // wait for the response, and its failure is the one that tells why.
        tokio::select! {
            biased;
            end = p => {
                pump = None;
                match end {
                    Ok(PumpEnd::Ended(b)) => returned = b.map(|b| *b),
                    Ok(PumpEnd::Failed(e)) => return Err(sent_failure(e)),
                    Err(e) => return Err(sent_failure(UpstreamError::Io(std::io::Error::other(e)))),
                }
            }
            r = &mut response => break r,
        }
    };
    let resp = match answer {
        Ok(resp) => resp,
        Err(e) => {
            let refused = never_processed(&e);
            if e.is_go_away() || e.is_io() {
                slot.close_conn();
            }
            let body = match (refused, pump) {
                (false, _) => None,
                (true, None) => returned,
                (true, Some(p)) => hand_back(p).await,
            };
            return Err(Failure {
                refused,
                stale: e.is_io(),
                delivered: !refused || (had_body && body.is_none()),
                body,
                error: UpstreamError::H2(Box::new(e)),
            });
        }
    };
    let (head, recv) = resp.into_parts();
    let mut guard = guard;
    let pump = guard.0.take();
    Ok(Answer {
        head,
        body: H2Body::new(recv, slot, pump, limits.read),
    })
}

/// The body of a refused stream, if it can be sent again.
async fn hand_back(pump: JoinHandle<PumpEnd>) -> Option<ReplayBody> {
    match tokio::time::timeout(HAND_BACK, pump).await {
        Ok(Ok(PumpEnd::Ended(body))) => body.map(|b| *b),
        _ => None,
    }
}

fn sent_failure(error: UpstreamError) -> Failure {
    Failure {
        error,
        refused: false,
        stale: false,
        delivered: true,
        body: None,
    }
}
