//! The body of a response on its way to the client: a backend's (HTTP/1.1 or an HTTP/2
//! stream), carrying the backend's in-flight slot and the access-log line until it
//! ends, or a short one maitred wrote.
//! An enum rather than a boxed trait object, so a response allocates nothing for its
//! body. (The request body on its way to a backend is [`crate::upstream::RequestBody`].)

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::grpc::{Call, GrpcBody};
use crate::access_log::Pending;
use crate::backend::InFlight;
use crate::upstream::http2::H2Body;
use crate::upstream::{BackendBody, UpstreamError};

/// A response body on its way to the client.
#[derive(Debug)]
pub enum ResponseBody {
    /// A backend's body, streamed; holds the backend's in-flight slot until it ends or
    /// is dropped (client gone).
    Backend {
        /// The backend's body, with its connection, which goes back to the backend's
        /// idle pool when the body completes.
        body: BackendBody,
        /// Released when the body completes or is dropped.
        guard: Option<InFlight>,
        /// The access-log line, written when the body completes or is dropped.
        log: Option<Box<Pending>>,
    },
    /// An HTTP/2 backend's body, data then trailers; holds the backend's in-flight slot
    /// (and the stream's place on its connection) until it ends or is dropped.
    H2 {
        /// The stream's body; dropped early, the stream is reset.
        body: H2Body,
        /// Released when the body completes or is dropped.
        guard: Option<InFlight>,
        /// The access-log line, written when the body completes or is dropped.
        log: Option<Box<Pending>>,
    },
    /// A short body maitred wrote itself (errors, admin pages).
    Local(Option<Bytes>, Option<Box<Pending>>),
    /// A gRPC call's body, ended with a gRPC status at its deadline or when its
    /// backend fails (boxed: only gRPC calls carry its state).
    Grpc(Box<GrpcBody<ResponseBody>>),
}

impl ResponseBody {
    /// A body of fixed bytes.
    pub fn local(b: impl Into<Bytes>) -> ResponseBody {
        ResponseBody::Local(Some(b.into()), None)
    }

    /// No body.
    pub fn empty() -> ResponseBody {
        ResponseBody::Local(None, None)
    }

    /// Makes this body the gRPC call `call`'s, in place: the response around it is
    /// not moved.
    #[inline(never)]
    pub fn make_grpc(&mut self, call: Call) {
        let inner = std::mem::replace(self, ResponseBody::empty());
        *self = ResponseBody::Grpc(Box::new(GrpcBody::new(inner, call)));
    }

    /// Attaches the access-log line to write when this body completes.
    pub fn set_log(&mut self, pending: Option<Box<Pending>>) {
        match self {
            ResponseBody::Backend { log, .. }
            | ResponseBody::H2 { log, .. }
            | ResponseBody::Local(_, log) => *log = pending,
            ResponseBody::Grpc(call) => {
                if let Some(inner) = call.inner_mut() {
                    inner.set_log(pending);
                }
            }
        }
    }
}

/// The response is over: a connection whose body completed goes back to the backend's
/// idle pool, then the in-flight slot is released.
fn release(body: &mut BackendBody, guard: &mut Option<InFlight>) {
    if let (Some(c), Some(g)) = (body.take_reusable(), guard.as_ref()) {
        if let Some(pool) = crate::upstream::pool::of(g.live()) {
            pool.put(c);
        }
    }
    guard.take();
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // A body hyper never polled (HEAD, 204, 304, or an empty one) may be complete.
        if let ResponseBody::Backend { body, guard, .. } = self {
            release(body, guard);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        match self.get_mut() {
            ResponseBody::Backend { body, guard, log } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let (Some(l), Some(d)) = (log.as_mut(), frame.data_ref()) {
                            l.bytes += d.len() as u64;
                        }
                        // hyper stops polling once the body says it has ended, so the
                        // connection goes back to the pool as soon as that is true.
                        if body.is_end_stream() {
                            release(body, guard);
                        }
                    }
                    Poll::Ready(Some(Err(UpstreamError::ReadTimeout))) => {
                        // The backend stalled mid-body: its fault, counted as its error.
                        if let Some(g) = guard.as_ref() {
                            g.live().record_failure(0);
                        }
                        tracing::debug!("backend body made no progress within read_timeout");
                        release(body, guard)
                    }
                    Poll::Ready(None) | Poll::Ready(Some(Err(_))) => release(body, guard),
                    Poll::Pending => {}
                }
                polled
            }
            ResponseBody::H2 { body, guard, log } => poll_h2(body, guard, log, cx),
            ResponseBody::Local(b, log) => {
                let frame = b.take();
                if let (Some(l), Some(d)) = (log.as_mut(), frame.as_ref()) {
                    l.bytes += d.len() as u64;
                }
                Poll::Ready(frame.map(|b| Ok(Frame::data(b))))
            }
            ResponseBody::Grpc(call) => poll_grpc(call, cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Backend { body, .. } => body.is_end_stream(),
            ResponseBody::H2 { body, .. } => body.is_end_stream(),
            ResponseBody::Local(b, _) => b.is_none(),
            ResponseBody::Grpc(call) => grpc_ended(call),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Backend { body, .. } => body.size_hint(),
            ResponseBody::H2 { body, .. } => body.size_hint(),
            ResponseBody::Local(Some(b), _) => SizeHint::with_exact(b.len() as u64),
            ResponseBody::Local(None, _) => SizeHint::with_exact(0),
            ResponseBody::Grpc(call) => grpc_size(call),
        }
    }
}

// A gRPC call's body, HTTP/2's and gRPC's are polled and asked through functions
// never inlined: the body of every HTTP/1.1 response (the hot path) keeps small code.

/// Polls a gRPC call's body.
#[inline(never)]
fn poll_grpc(
    call: &mut GrpcBody<ResponseBody>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
    Pin::new(call).poll_frame(cx)
}

/// Whether a gRPC call's body has ended.
#[inline(never)]
fn grpc_ended(call: &GrpcBody<ResponseBody>) -> bool {
    call.is_end_stream()
}

/// A gRPC call's body's size hint.
#[inline(never)]
fn grpc_size(call: &GrpcBody<ResponseBody>) -> SizeHint {
    call.size_hint()
}

/// Polls an HTTP/2 backend's body; its end, failure or stall releases the in-flight
/// slot (the stream's place on its connection goes with the body itself).
#[inline(never)]
fn poll_h2(
    body: &mut H2Body,
    guard: &mut Option<InFlight>,
    log: &mut Option<Box<Pending>>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
    let polled = Pin::new(&mut *body).poll_frame(cx);
    match &polled {
        Poll::Ready(Some(Ok(frame))) => {
            if let (Some(l), Some(d)) = (log.as_mut(), frame.data_ref()) {
                l.bytes += d.len() as u64;
            }
            if body.is_end_stream() {
                guard.take();
            }
        }
        Poll::Ready(Some(Err(UpstreamError::ReadTimeout))) => {
            // The backend stalled mid-body: its fault, counted as its error.
            if let Some(g) = guard.take() {
                g.live().record_failure(0);
            }
            tracing::debug!("HTTP/2 backend body made no progress within read_timeout");
        }
        Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
            guard.take();
        }
        Poll::Pending => {}
    }
    polled
}
