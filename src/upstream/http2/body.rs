//! An HTTP/2 backend's response body: its data as it arrives, then its trailers (gRPC's
//! `grpc-status` travels in them).
//!
//! Flow-control capacity is given back to the backend as each piece is handed on, and
//! the body is polled only while the client side asks for more, so a slow client slows
//! the backend's stream and nothing piles up in between. A body that makes no progress
//! for `read_timeout` (when it has one: gRPC streams have none) is cut. The body holds
//! the stream's place on its connection until it ends or is dropped; dropped early (the
//! client left), the stream is reset (CANCEL) and the request body's pump stopped.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
use http_body::{Body, Frame, SizeHint};
use tokio::task::AbortHandle;
use tokio::time::Sleep;

use super::conns::StreamSlot;
use crate::upstream::UpstreamError;

/// Where the body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Data,
    Trailers,
    Done,
}

/// A response body streaming from an HTTP/2 backend.
#[derive(Debug)]
pub struct H2Body {
    recv: RecvStream,
    state: State,
    /// The stream's place on the connection, given back when the body ends.
    slot: Option<StreamSlot>,
    /// The request body's pump, stopped when the response ends or is dropped.
    pump: Option<AbortHandle>,
    read_timeout: Option<Duration>,
    /// The read timer, made the first time a read waits.
    stall: Option<Pin<Box<Sleep>>>,
    /// Data arrived since the read timer was last set.
    progressed: bool,
}

impl H2Body {
    /// The body of a response on the stream counted by `slot`.
    pub(super) fn new(
        recv: RecvStream,
        slot: StreamSlot,
        pump: Option<AbortHandle>,
        read_timeout: Option<Duration>,
    ) -> H2Body {
        H2Body {
            recv,
            state: State::Data,
            slot: Some(slot),
            pump,
            read_timeout,
            stall: None,
            progressed: false,
        }
    }

    /// The body is over, one way or another: the stream's place is given back.
    fn finish(&mut self) {
        self.state = State::Done;
        self.slot.take();
        if let Some(p) = self.pump.take() {
            p.abort();
        }
    }

    /// A read had to wait: whether `read_timeout` has passed without progress.
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(limit) = self.read_timeout else {
            return false;
        };
        let deadline = tokio::time::Instant::now() + limit;
        match &mut self.stall {
            None => self.stall = Some(Box::pin(tokio::time::sleep_until(deadline))),
            Some(t) if std::mem::take(&mut self.progressed) => t.as_mut().reset(deadline),
            Some(_) => {}
        }
        self.stall
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }

    fn fail(&mut self, e: UpstreamError) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        self.finish();
        Poll::Ready(Some(Err(e)))
    }
}

impl Drop for H2Body {
    fn drop(&mut self) {
        // Dropping the stream's handles resets an unfinished stream (CANCEL).
        self.finish();
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        if this.state == State::Data {
            match this.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    // Handed on: the backend may send as much again.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.progressed = true;
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => return this.fail(UpstreamError::H2(Box::new(e))),
                Poll::Ready(None) => this.state = State::Trailers,
                Poll::Pending if this.stalled(cx) => return this.fail(UpstreamError::ReadTimeout),
                Poll::Pending => return Poll::Pending,
            }
        }
        if this.state == State::Trailers {
            return match this.recv.poll_trailers(cx) {
                Poll::Ready(Ok(trailers)) => {
                    this.finish();
                    Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
                }
                Poll::Ready(Err(e)) => this.fail(UpstreamError::H2(Box::new(e))),
                Poll::Pending if this.stalled(cx) => this.fail(UpstreamError::ReadTimeout),
                Poll::Pending => Poll::Pending,
            };
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done || (self.state == State::Data && self.recv.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
