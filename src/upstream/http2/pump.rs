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
//! the stream. If the backend resets the stream before the pump took anything from the
//! client's body, the body is handed back untouched, so a refused request can go again.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use h2::{Reason, SendStream};
use http_body::{Body as _, Frame};

use crate::upstream::{RequestBody, UpstreamError};

/// How the pump ended.
#[derive(Debug)]
pub(super) enum PumpEnd {
    /// The whole body (and any trailers) was sent.
    Done,
    /// The backend reset or closed the stream after some of the body had gone.
    Stopped,
    /// The backend reset the stream before the pump took anything: the body, untouched.
    Untouched(RequestBody),
    /// The client's body failed or stalled, or the backend's window stayed shut: the
    /// stream was reset.
    Failed(UpstreamError),
}

/// What waiting for the next piece of the client's body gave.
enum Next {
    Frame(Frame<Bytes>),
    End,
    Failed(hyper::Error),
    /// The backend reset the stream (or the connection failed) meanwhile.
    Reset,
}

/// The bounds of one pump; `None` is no bound.
#[derive(Debug, Clone, Copy)]
pub(super) struct PumpLimits {
    /// The longest the client's body may make no progress.
    pub client_body: Option<Duration>,
    /// The longest the backend's flow-control window may stay shut.
    pub write_stall: Option<Duration>,
}

/// Pumps `body` into `send` until it ends or fails.
pub(super) async fn run(
    mut body: RequestBody,
    mut send: SendStream<Bytes>,
    limits: PumpLimits,
) -> PumpEnd {
    let mut touched = false;
    // One turn per piece of the client's body; it ends with the body.
    loop {
        let next = next_frame(&mut body, &mut send);
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
        let frame = match next {
            Next::Frame(frame) => frame,
            Next::End => {
                return match send.send_data(Bytes::new(), true) {
                    Ok(()) => PumpEnd::Done,
                    Err(_) => PumpEnd::Stopped,
                };
            }
            Next::Failed(e) => {
                send.send_reset(Reason::CANCEL);
                return PumpEnd::Failed(UpstreamError::ClientBody(e));
            }
            Next::Reset if touched => return PumpEnd::Stopped,
            Next::Reset => return PumpEnd::Untouched(body),
        };
        touched = true;
        let end = body.is_end_stream();
        match frame.into_data() {
            Ok(data) => {
                if let Err(stop) = send_data(&mut send, data, end, limits).await {
                    return stop;
                }
                if end {
                    return PumpEnd::Done;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    return match send.send_trailers(trailers) {
                        Ok(()) => PumpEnd::Done,
                        Err(_) => PumpEnd::Stopped,
                    };
                }
            }
        }
    }
}

/// The next frame of the client's body, unless the backend resets the stream first.
async fn next_frame(body: &mut RequestBody, send: &mut SendStream<Bytes>) -> Next {
    poll_fn(|cx| {
        if send.poll_reset(cx).is_ready() {
            return Poll::Ready(Next::Reset);
        }
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(Next::End),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Next::Failed(e)),
            Poll::Ready(Some(Ok(f))) => Poll::Ready(Next::Frame(f)),
        }
    })
    .await
}

/// Sends `data` as the backend's window allows; `end` closes the stream with its last
/// piece.
async fn send_data(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
    limits: PumpLimits,
) -> Result<(), PumpEnd> {
    if data.is_empty() {
        if end {
            send.send_data(data, true).map_err(|_| PumpEnd::Stopped)?;
        }
        return Ok(());
    }
    // Each turn sends what the window allows; the window opens or the stream ends.
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let capacity = poll_fn(|cx| send.poll_capacity(cx));
        let capacity = match limits.write_stall {
            None => capacity.await,
            Some(limit) => match tokio::time::timeout(limit, capacity).await {
                Ok(c) => c,
                Err(_) => {
                    send.send_reset(Reason::CANCEL);
                    return Err(PumpEnd::Failed(UpstreamError::ResponseTimeout));
                }
            },
        };
        let n = match capacity {
            Some(Ok(n)) => n,
            Some(Err(_)) | None => return Err(PumpEnd::Stopped),
        };
        if n == 0 {
            continue;
        }
        let piece = data.split_to(n.min(data.len()));
        send.send_data(piece, end && data.is_empty())
            .map_err(|_| PumpEnd::Stopped)?;
    }
    Ok(())
}
