//! A request body that can go again when the backend refused its stream unprocessed.
//!
//! A refused stream (REFUSED_STREAM, or above a graceful GOAWAY's last stream id) may
//! already have carried some of the client's body, which cannot be read twice. So the
//! pieces sent are kept, up to [`REPLAY_LIMIT`] bytes in all: they are the client's own
//! buffers, shared by reference count, not copies. A body that fits (every unary gRPC
//! call, most uploads) can be sent again from its start on another stream; a larger
//! one stops keeping its pieces as soon as it passes the limit, and a refusal after
//! that fails the request as any other failure after delivery would.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::Body;

use crate::upstream::RequestBody;

/// The most of a request body kept for sending it again.
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// A client's request body on its way to an HTTP/2 backend, which can be sent again
/// from its start while all that was taken of it is kept.
#[derive(Debug)]
pub struct ReplayBody<B = RequestBody> {
    /// Pieces to send before the client's body goes on (after a rewind).
    replay: VecDeque<Bytes>,
    /// The client's trailers to send again after `replay` (after a rewind).
    replay_trailers: Option<HeaderMap>,
    /// Pieces taken since the last rewind, kept while `whole`.
    sent: Vec<Bytes>,
    sent_len: usize,
    /// The client's trailers, once taken, kept while `whole`.
    trailers: Option<HeaderMap>,
    /// The client's body.
    rest: B,
    /// The client's body has been taken to its end.
    rest_done: bool,
    /// Everything taken is kept: the body can be sent again whole.
    whole: bool,
}

/// The next piece of the body.
#[derive(Debug)]
pub enum Piece {
    /// Data.
    Data(Bytes),
    /// The trailers, which end the body.
    Trailers(HeaderMap),
    /// The end of the body.
    End,
}

impl<B: Body<Data = Bytes> + Unpin> ReplayBody<B> {
    /// The client's body, not yet touched.
    pub fn new(rest: B) -> ReplayBody<B> {
        ReplayBody {
            replay: VecDeque::new(),
            replay_trailers: None,
            sent: Vec::new(),
            sent_len: 0,
            trailers: None,
            rest,
            rest_done: false,
            whole: true,
        }
    }

    /// Whether the body can be sent again from its start.
    pub fn replayable(&self) -> bool {
        self.whole
    }

    /// Back to the start: what was taken goes first again, then the rest of the
    /// client's body. Only meaningful while [`ReplayBody::replayable`].
    pub fn rewind(&mut self) {
        for piece in self.sent.drain(..).rev() {
            self.replay.push_front(piece);
        }
        self.sent_len = 0;
        if self.replay_trailers.is_none() {
            self.replay_trailers = self.trailers.take();
        }
    }

    /// Whether nothing follows what has been taken.
    pub fn is_end(&self) -> bool {
        self.replay.is_empty()
            && self.replay_trailers.is_none()
            && (self.rest_done || self.rest.is_end_stream())
    }

    /// The next piece: from the replay first, then from the client.
    pub fn poll_piece(&mut self, cx: &mut Context<'_>) -> Poll<Result<Piece, B::Error>> {
        if let Some(piece) = self.replay.pop_front() {
            self.keep(&piece);
            return Poll::Ready(Ok(Piece::Data(piece)));
        }
        if let Some(t) = self.replay_trailers.take() {
            self.trailers = Some(t.clone());
            return Poll::Ready(Ok(Piece::Trailers(t)));
        }
        if self.rest_done {
            return Poll::Ready(Ok(Piece::End));
        }
        // Each turn takes one frame of the client's body; empty or unknown frames are
        // skipped.
        loop {
            let frame = match Pin::new(&mut self.rest).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.rest_done = true;
                    return Poll::Ready(Ok(Piece::End));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            match frame.into_data() {
                Ok(data) if data.is_empty() => continue,
                Ok(data) => {
                    self.keep(&data);
                    return Poll::Ready(Ok(Piece::Data(data)));
                }
                Err(frame) => {
                    let Ok(t) = frame.into_trailers() else {
                        continue;
                    };
                    self.rest_done = true;
                    if self.whole {
                        self.trailers = Some(t.clone());
                    }
                    return Poll::Ready(Ok(Piece::Trailers(t)));
                }
            }
        }
    }

    /// Keeps a piece taken, while the kept pieces fit the limit.
    fn keep(&mut self, piece: &Bytes) {
        if !self.whole {
            return;
        }
        if self.sent_len + piece.len() > REPLAY_LIMIT {
            self.whole = false;
            self.sent = Vec::new();
            self.sent_len = 0;
            self.trailers = None;
            return;
        }
        self.sent_len += piece.len();
        self.sent.push(piece.clone());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http_body::Frame;
    use http_body_util::StreamBody;
    use std::convert::Infallible;

    type TestBody = StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>,
    >;

    fn body(frames: Vec<Frame<Bytes>>) -> ReplayBody<TestBody> {
        ReplayBody::new(StreamBody::new(futures_util::stream::iter(
            frames.into_iter().map(Ok).collect::<Vec<_>>(),
        )))
    }

    /// Takes `n` pieces (all with `None`), as text.
    fn take(b: &mut ReplayBody<TestBody>, n: Option<usize>) -> Vec<String> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut out = Vec::new();
        while n.is_none_or(|n| out.len() < n) {
            match b.poll_piece(&mut cx) {
                Poll::Ready(Ok(Piece::Data(d))) => {
                    out.push(String::from_utf8_lossy(&d).into_owned())
                }
                Poll::Ready(Ok(Piece::Trailers(t))) => {
                    out.push(format!("trailers {}", t.len()));
                    break;
                }
                Poll::Ready(Ok(Piece::End)) => {
                    out.push("end".into());
                    break;
                }
                Poll::Ready(Err(never)) => match never {},
                Poll::Pending => panic!("a ready body is pending"),
            }
        }
        out
    }

    #[test]
    fn a_rewound_body_gives_what_was_taken_again_then_the_rest() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let mut b = body(vec![
            Frame::data(Bytes::from_static(b"a")),
            Frame::data(Bytes::new()),
            Frame::data(Bytes::from_static(b"b")),
            Frame::data(Bytes::from_static(b"c")),
            Frame::trailers(trailers),
        ]);
        assert_eq!(take(&mut b, Some(2)), ["a", "b"]);
        b.rewind();
        assert_eq!(take(&mut b, Some(1)), ["a"]);
        b.rewind();
        assert_eq!(take(&mut b, None), ["a", "b", "c", "trailers 1"]);
        assert!(b.replayable());
        b.rewind();
        assert!(!b.is_end());
        assert_eq!(take(&mut b, None), ["a", "b", "c", "trailers 1"]);
        assert!(b.is_end());
    }

    #[test]
    fn a_body_past_the_limit_is_no_longer_replayable() {
        let big = Bytes::from(vec![b'x'; REPLAY_LIMIT]);
        let mut b = body(vec![
            Frame::data(big.clone()),
            Frame::data(Bytes::from_static(b"y")),
        ]);
        assert_eq!(take(&mut b, Some(1)).len(), 1);
        assert!(b.replayable(), "exactly the limit is kept");
        assert_eq!(take(&mut b, None), ["y", "end"]);
        assert!(!b.replayable());
    }
}
