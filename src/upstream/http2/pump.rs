//! The request body of an HTTP/2 stream, pumped from the client to the backend.
//!
//! It runs in a task of its own, beside the wait for the response and the response
//! body: a gRPC bidirectional stream keeps sending after the response head has
//! arrived. Data goes only as fast as the backend's flow-control window opens
//! (`reserve_capacity` / `poll_capacity`), so nothing is buffered beyond one piece of
//! the client's body; the client's trailers follow the data.
//!
//! Bounds: `client_body_timeout` on each piece from the client (none for gRPC, whose
//! calls may idle), and a stall bound on the backend's window. A pump that fails resets
//! the stream. When it ends, the body comes back if it can be sent again
//! ([`super::replay`]), so a stream the backend refused can be replayed.

use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use h2::{Reason, SendStream};

use super::replay::{Piece, ReplayBody};
use crate::upstream::UpstreamError;

/// How the pump ended.
#[derive(Debug)]
pub(super) enum PumpEnd {
    /// The whole body was sent, or the backend reset or closed the stream; the body,
    /// if it can be sent again from its start (boxed: the failure is small).
    Ended(Option<Box<ReplayBody>>),
    /// The client's body failed or stalled, or the backend's window stayed shut: the
    /// stream was reset.
    Failed(UpstreamError),
}

/// The bounds of one pump; `None` is no bound.
#[derive(Debug, Clone, Copy)]
pub(super) struct PumpLimits {
    /// The longest the client's body may make no progress.
    pub client_body: Option<Duration>,
    /// The longest the backend's flow-control window may stay shut.
    pub write_stall: Option<Duration>,
}

/// What waiting for the next piece of the body gave.
enum Next {
    Piece(Piece),
    Failed(hyper::Error),
    /// The backend reset the stream (or the connection failed) meanwhile.
    Reset,
}

/// Why sending stopped.
enum Stop {
    /// The stream is gone (reset, closed).
    Reset,
    /// The backend's window stayed shut too long.
    Stalled,
}

/// Pumps `body` into `send` until it ends or fails.
pub(super) async fn run(
    mut body: ReplayBody,
    mut send: SendStream<Bytes>,
    limits: PumpLimits,
) -> PumpEnd {
    // One turn per piece of the body; it ends with the body.
    loop {
        let next = next_piece(&mut body, &mut send);
        let next = match limits.client_body {
            None => next.await,
            Some(limit) => match tokio::time::timeout(limit, next).await {
                Ok(next) => next,
                Err(_) => {
                    send.send_reset(Reason::CANCEL);
                    return PumpEnd::Failed(UpstreamError::ClientBodyTimeout);
                }
            },
        };
        let piece = match next {
            Next::Piece(piece) => piece,
            Next::Failed(e) => {
                send.send_reset(Reason::CANCEL);
                return PumpEnd::Failed(UpstreamError::ClientBody(e));
            }
            Next::Reset => return ended(body),
        };
        match piece {
            Piece::End => {
                let _ = send.send_data(Bytes::new(), true);
                return ended(body);
            }
            Piece::Trailers(trailers) => {
                let _ = send.send_trailers(trailers);
                return ended(body);
            }
            Piece::Data(data) => {
                let end = body.is_end();
                match send_data(&mut send, data, end, limits.write_stall).await {
                    Ok(()) if end => return ended(body),
                    Ok(()) => {}
                    Err(Stop::Reset) => return ended(body),
                    Err(Stop::Stalled) => {
                        send.send_reset(Reason::CANCEL);
                        return PumpEnd::Failed(UpstreamError::ResponseTimeout);
                    }
                }
            }
        }
    }
}

fn ended(body: ReplayBody) -> PumpEnd {
    PumpEnd::Ended(body.replayable().then(|| Box::new(body)))
}

/// The next piece of the body, unless the backend resets the stream first.
async fn next_piece(body: &mut ReplayBody, send: &mut SendStream<Bytes>) -> Next {
    poll_fn(|cx| {
        if send.poll_reset(cx).is_ready() {
            return Poll::Ready(Next::Reset);
        }
        body.poll_piece(cx).map(|r| match r {
            Ok(piece) => Next::Piece(piece),
            Err(e) => Next::Failed(e),
        })
    })
    .await
}

/// Sends `data` as the backend's window allows; `end` closes the stream with its last
/// piece.
async fn send_data(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
    stall: Option<Duration>,
) -> Result<(), Stop> {
    // Each turn sends what the window allows; the window opens or the stream ends.
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let capacity = poll_fn(|cx| send.poll_capacity(cx));
        let capacity = match stall {
            None => capacity.await,
            Some(limit) => tokio::time::timeout(limit, capacity)
                .await
                .map_err(|_| Stop::Stalled)?,
        };
        let n = match capacity {
            Some(Ok(n)) => n,
            Some(Err(_)) | None => return Err(Stop::Reset),
        };
        if n == 0 {
            continue;
        }
        let piece = data.split_to(n.min(data.len()));
        send.send_data(piece, end && data.is_empty())
            .map_err(|_| Stop::Reset)?;
    }
    Ok(())
}
