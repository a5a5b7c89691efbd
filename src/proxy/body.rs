//! The body types of the request path: what goes to a backend and what goes back to the
//! client, as enums rather than boxed trait objects so that a request allocates nothing
//! for its bodies.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::backend::InFlight;

/// A request body on its way to a backend.
#[derive(Debug)]
pub enum UpBody {
    /// No body (also used to replay a bodiless request on retry).
    Empty,
    /// The client's body, streamed.
    Client(Incoming),
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpBody::Empty => Poll::Ready(None),
            UpBody::Client(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Empty => true,
            UpBody::Client(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Empty => SizeHint::with_exact(0),
            UpBody::Client(b) => b.size_hint(),
        }
    }
}

/// A response body on its way to the client.
#[derive(Debug)]
pub enum DownBody {
    /// A backend's body, streamed; holds the backend's in-flight slot until it ends or
    /// is dropped (client gone).
    Backend {
        /// The backend's body.
        body: Incoming,
        /// Released when the body completes or is dropped.
        guard: Option<InFlight>,
    },
    /// A short body maitred wrote itself (errors, admin pages).
    Local(Option<Bytes>),
}

impl DownBody {
    /// A body of fixed bytes.
    pub fn local(b: impl Into<Bytes>) -> DownBody {
        DownBody::Local(Some(b.into()))
    }

    /// No body.
    pub fn empty() -> DownBody {
        DownBody::Local(None)
    }
}

impl Body for DownBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            DownBody::Backend { body, guard } => {
                let polled = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(None) | Poll::Ready(Some(Err(_))) = &polled {
                    guard.take();
                }
                polled
            }
            DownBody::Local(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            DownBody::Backend { body, .. } => body.is_end_stream(),
            DownBody::Local(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            DownBody::Backend { body, .. } => body.size_hint(),
            DownBody::Local(Some(b)) => SizeHint::with_exact(b.len() as u64),
            DownBody::Local(None) => SizeHint::with_exact(0),
        }
    }
}
