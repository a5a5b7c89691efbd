//! A backend's response body, read from the backend socket as the client side polls it.
//!
//! Length-framed bodies are passed on as the bytes arrive; chunked bodies are decoded
//! (chunk extensions and trailers are dropped: the client's side frames the body
//! anew); close-delimited bodies run until the backend closes. When a body ends exactly
//! where its framing says, the connection is handed back for reuse.
//!
//! A backend that stops sending mid-body is cut after the pool's `read_timeout` without
//! progress. The timer exists only once a read has had to wait, so a body that arrives
//! with its head costs nothing; it is polled only while the client side is asking for
//! more, so a client that stops reading is never mistaken for a stalled backend.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use super::response::BodyFraming;
use super::{UpConn, UpstreamError};

/// The longest chunk-size line (with extensions) and the most trailer bytes accepted,
/// both counted up to the LF that ends the line (a CR before it included), whether the
/// line is complete in the buffer or still arriving.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

/// The smallest and largest read of a body.
const MIN_READ: usize = 8 * 1024;
const MAX_READ: usize = 64 * 1024;

/// Where the decoding of a body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// This many bytes left.
    Length(u64),
    /// Before a chunk-size line.
    ChunkSize,
    /// Inside a chunk: this many data bytes left, then CRLF.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// Trailer lines after the last chunk; this many bytes seen.
    Trailers(usize),
    /// Until the backend closes.
    Close,
    /// Complete.
    Done,
}

impl State {
    /// The state before the first byte of a body framed by `framing`.
    pub fn new(framing: BodyFraming) -> State {
        match framing {
            BodyFraming::Length(0) => State::Done,
            BodyFraming::Length(n) => State::Length(n),
            BodyFraming::Chunked => State::ChunkSize,
            BodyFraming::Close => State::Close,
        }
    }
}

/// A backend's response body, streaming from its connection (the inner part of the
/// response body the client receives).
#[derive(Debug)]
pub struct BackendBody {
    conn: Option<UpConn>,
    state: State,
    keep_alive: bool,
    /// An error held back for one poll, so what was already passed on reaches the
    /// client before the connection is cut.
    failed: Option<UpstreamError>,
    /// No progress reading for this long cuts the body.
    read_timeout: Duration,
    /// The read timer, made the first time a read waits.
    stall: Option<Pin<Box<Sleep>>>,
    /// Bytes arrived since the read timer was last set.
    progressed: bool,
}

impl BackendBody {
    /// The body of a response just read on `conn`.
    pub fn new(
        conn: UpConn,
        framing: BodyFraming,
        keep_alive: bool,
        read_timeout: Duration,
    ) -> BackendBody {
        BackendBody {
            conn: Some(conn),
            state: State::new(framing),
            keep_alive,
            failed: None,
            read_timeout,
            stall: None,
            progressed: false,
        }
    }

    /// A read had to wait: whether `read_timeout` has passed without progress. Sets
    /// the timer on the first wait and after progress; otherwise polls it.
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = tokio::time::Instant::now() + self.read_timeout;
        match &mut self.stall {
            None => self.stall = Some(Box::pin(tokio::time::sleep_until(deadline))),
            Some(t) if std::mem::take(&mut self.progressed) => t.as_mut().reset(deadline),
            Some(_) => {}
        }
        self.stall
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }

    /// The connection, if the body is complete and the connection can carry another
    /// request (nothing unread, keep-alive on both sides).
    pub fn take_reusable(&mut self) -> Option<UpConn> {
        if self.state != State::Done || !self.keep_alive {
            return None;
        }
        self.conn.take().filter(|c| c.buf.is_empty())
    }

    /// Ends the body with `e`, after one more turn of the caller (hyper flushes what it
    /// holds when a body is pending, and drops it when the body fails).
    fn fail(
        &mut self,
        e: UpstreamError,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        self.conn = None;
        self.state = State::Done;
        self.keep_alive = false;
        self.failed = Some(e);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Reads more from the backend into the connection's buffer; `Ok(0)` is end of stream.
fn fill(conn: &mut UpConn, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
    if conn.buf.capacity() - conn.buf.len() < MIN_READ / 2 {
        conn.buf.reserve(want.clamp(MIN_READ, MAX_READ));
    }
    tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf)
}

/// A line ending at `buf`'s first LF (CR before it optional): its length without the
/// ending, and the length with it.
fn line(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = memchr::memchr(b'\n', buf)?;
    let end = if lf > 0 && buf[lf - 1] == b'\r' {
        lf - 1
    } else {
        lf
    };
    Some((end, lf + 1))
}

/// The size of a chunk from its size line (extensions ignored).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line
        .iter()
        .position(|&b| b == b';' || b == b' ' || b == b'\t')
        .map_or(line, |p| &line[..p]);
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        let v = (d as char).to_digit(16)?;
        Some(acc * 16 + u64::from(v))
    })
}

/// What one decoding step over the buffered bytes of a body gives.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The next piece of the body.
    Data(Bytes),
    /// The body is complete.
    End,
    /// More bytes must be read before the body can go on.
    More,
}

/// Decodes what `buf` holds of a body in `state`: takes the bytes it uses from `buf`
/// and gives the next piece, the end, or the need for more. Pure (no I/O), so the
/// framing rules can be tested and fuzzed apart from the socket; the end of a
/// close-delimited body, and a body cut short, are the reader's to see.
pub fn decode(state: &mut State, buf: &mut BytesMut) -> Result<Step, UpstreamError> {
    loop {
        match *state {
            State::Done => return Ok(Step::End),
            State::Length(left) | State::ChunkData(left) if !buf.is_empty() => {
                let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let data = buf.split_to(n).freeze();
                let left = left - n as u64;
                *state = match *state {
                    State::Length(_) if left == 0 => State::Done,
                    State::Length(_) => State::Length(left),
                    _ if left == 0 => State::ChunkEnd,
                    _ => State::ChunkData(left),
                };
                return Ok(Step::Data(data));
            }
            State::Close if !buf.is_empty() => return Ok(Step::Data(buf.split().freeze())),
            State::ChunkSize => {
                if let Some((end, next)) = line(buf) {
                    if next - 1 > MAX_CHUNK_LINE {
                        return Err(UpstreamError::Malformed("chunk size line too long"));
                    }
                    let size = chunk_size(&buf[..end])
                        .ok_or(UpstreamError::Malformed("bad chunk size"))?;
                    buf.advance(next);
                    *state = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::ChunkData(size)
                    };
                    continue;
                }
                if buf.len() > MAX_CHUNK_LINE {
                    return Err(UpstreamError::Malformed("chunk size line too long"));
                }
            }
            State::ChunkEnd => match line(buf) {
                Some((0, next)) => {
                    buf.advance(next);
                    *state = State::ChunkSize;
                    continue;
                }
                Some(_) => return Err(UpstreamError::Malformed("chunk without CRLF")),
                None if buf.len() >= 2 => {
                    return Err(UpstreamError::Malformed("chunk without CRLF"));
                }
                None => {}
            },
            State::Trailers(seen) => {
                if let Some((end, next)) = line(buf) {
                    if seen + next - 1 > MAX_TRAILERS {
                        return Err(UpstreamError::Malformed("trailers too long"));
                    }
                    buf.advance(next);
                    *state = if end == 0 {
                        State::Done
                    } else {
                        State::Trailers(seen + next)
                    };
                    continue;
                }
                if seen + buf.len() > MAX_TRAILERS {
                    return Err(UpstreamError::Malformed("trailers too long"));
                }
            }
            State::Length(_) | State::ChunkData(_) | State::Close => {}
        }
        return Ok(Step::More);
    }
}

impl Body for BackendBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match decode(&mut this.state, &mut conn.buf) {
                Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Step::End) => return Poll::Ready(None),
                Ok(Step::More) => {}
                Err(e) => return this.fail(e, cx),
            }
            let want = match this.state {
                State::Length(left) | State::ChunkData(left) => {
                    usize::try_from(left).unwrap_or(usize::MAX)
                }
                _ => MIN_READ,
            };
            let filled = match fill(conn, cx, want) {
                Poll::Ready(r) => r,
                Poll::Pending if this.stalled(cx) => {
                    return this.fail(UpstreamError::ReadTimeout, cx);
                }
                Poll::Pending => return Poll::Pending,
            };
            match filled {
                Ok(0) if this.state == State::Close => {
                    this.state = State::Done;
                    this.keep_alive = false;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(UpstreamError::Truncated, cx),
                Ok(_) => this.progressed = true,
                Err(e) => return this.fail(UpstreamError::Io(e), cx),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed.is_none() && (self.state == State::Done || self.conn.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use tokio::io::AsyncWriteExt as _;
    use tokio::net::TcpListener;

    const LONG: Duration = Duration::from_secs(60);

    /// A connection whose backend sends `bytes` (in pieces of `piece` bytes) and then
    /// keeps the socket open (or closes it with `close`).
    async fn conn_sending(bytes: &'static [u8], piece: usize, close: bool) -> UpConn {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            for p in bytes.chunks(piece) {
                s.write_all(p).await.unwrap();
                s.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            if !close {
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            }
        });
        UpConn::connect(addr).await.unwrap()
    }

    async fn read_all(body: &mut BackendBody) -> Result<Vec<u8>, UpstreamError> {
        let mut out = Vec::new();
        while let Some(f) = body.frame().await {
            if let Ok(d) = f?.into_data() {
                out.extend_from_slice(&d);
            }
        }
        Ok(out)
    }

    #[tokio::test]
    async fn length_body_ends_exactly_and_gives_the_connection_back() {
        for piece in [1, 3, 64] {
            let conn = conn_sending(b"hello world", piece, false).await;
            let mut body = BackendBody::new(conn, BodyFraming::Length(11), true, LONG);
            assert_eq!(body.size_hint().exact(), Some(11));
            assert_eq!(read_all(&mut body).await.unwrap(), b"hello world");
            assert!(body.is_end_stream());
            assert!(body.take_reusable().is_some());
        }
    }

    #[tokio::test]
    async fn chunked_body_is_decoded_in_any_split() {
        const WIRE: &[u8] =
            b"5;ext=1\r\nhello\r\n1\r\n \r\nA\nworld-0123\r\n0\r\nX-Trailer: 1\r\n\r\n";
        for piece in [1, 2, 7, 1024] {
            let conn = conn_sending(WIRE, piece, false).await;
            let mut body = BackendBody::new(conn, BodyFraming::Chunked, true, LONG);
            assert_eq!(read_all(&mut body).await.unwrap(), b"hello world-0123");
            assert!(body.take_reusable().is_some(), "piece {piece}");
        }
    }

    #[tokio::test]
    async fn close_delimited_body_runs_to_eof_and_is_not_reused() {
        let conn = conn_sending(b"all of it", 4, true).await;
        let mut body = BackendBody::new(conn, BodyFraming::Close, false, LONG);
        assert_eq!(read_all(&mut body).await.unwrap(), b"all of it");
        assert!(body.take_reusable().is_none());
    }

    #[tokio::test]
    async fn truncated_and_malformed_bodies_are_errors() {
        let conn = conn_sending(b"short", 5, true).await;
        let mut body = BackendBody::new(conn, BodyFraming::Length(10), true, LONG);
        assert!(matches!(
            read_all(&mut body).await,
            Err(UpstreamError::Truncated)
        ));
        assert!(body.take_reusable().is_none());
        for wire in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\r\nhel",
        ] {
            let conn = conn_sending(wire, 64, true).await;
            let mut body = BackendBody::new(conn, BodyFraming::Chunked, true, LONG);
            assert!(read_all(&mut body).await.is_err());
            assert!(body.take_reusable().is_none());
        }
    }

    #[tokio::test]
    async fn extra_bytes_after_the_body_make_the_connection_unusable() {
        let conn = conn_sending(b"abcEXTRA", 64, false).await;
        let mut body = BackendBody::new(conn, BodyFraming::Length(3), true, LONG);
        // One write on loopback arrives in one read: the body is its first 3 bytes.
        assert_eq!(read_all(&mut body).await.unwrap(), b"abc");
        assert!(body.take_reusable().is_none());
    }

    #[tokio::test]
    async fn a_backend_that_stalls_mid_body_is_cut_after_read_timeout() {
        // 5 of 10 bytes, then the backend keeps the socket open and sends nothing.
        let conn = conn_sending(b"hello", 5, false).await;
        let timeout = Duration::from_millis(200);
        let mut body = BackendBody::new(conn, BodyFraming::Length(10), true, timeout);
        let started = std::time::Instant::now();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), &b"hello"[..]);
        let end = tokio::time::timeout(Duration::from_secs(20), read_all(&mut body))
            .await
            .expect("the stalled body ends");
        assert!(matches!(end, Err(UpstreamError::ReadTimeout)), "{end:?}");
        assert!(started.elapsed() >= timeout);
        assert!(body.take_reusable().is_none());
    }

    /// Feeds `wire` to [`decode`] in pieces of `piece` bytes; the body and how it ended.
    fn decode_in_pieces(wire: &[u8], piece: usize, framing: BodyFraming) -> (Vec<u8>, Step) {
        let mut state = State::new(framing);
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut pieces = wire.chunks(piece);
        loop {
            match decode(&mut state, &mut buf).unwrap() {
                Step::Data(d) => body.extend_from_slice(&d),
                Step::More => match pieces.next() {
                    Some(p) => buf.extend_from_slice(p),
                    None => return (body, Step::More),
                },
                Step::End => return (body, Step::End),
            }
        }
    }

    #[test]
    fn decode_works_on_a_buffer_alone() {
        const WIRE: &[u8] = b"5;ext=1\r\nhello\r\n1\r\n \r\nA\nworld-0123\r\n0\r\nX-T: 1\r\n\r\n";
        for piece in [1, 2, 7, WIRE.len()] {
            let (body, end) = decode_in_pieces(WIRE, piece, BodyFraming::Chunked);
            assert_eq!((&body[..], end), (&b"hello world-0123"[..], Step::End));
        }
        let (body, end) = decode_in_pieces(b"abcdef", 4, BodyFraming::Length(5));
        assert_eq!((&body[..], end), (&b"abcde"[..], Step::End));
        let (body, end) = decode_in_pieces(b"abc", 2, BodyFraming::Close);
        assert_eq!((&body[..], end), (&b"abc"[..], Step::More));
    }

    /// Whether [`decode`] refuses `wire`, fed in pieces of `piece` bytes.
    fn refused_in_pieces(wire: &[u8], piece: usize) -> bool {
        let mut state = State::new(BodyFraming::Chunked);
        let mut buf = BytesMut::new();
        let mut pieces = wire.chunks(piece);
        loop {
            match decode(&mut state, &mut buf) {
                Err(_) => return true,
                Ok(Step::Data(_)) => {}
                Ok(Step::More) => match pieces.next() {
                    Some(p) => buf.extend_from_slice(p),
                    None => return false,
                },
                Ok(Step::End) => return false,
            }
        }
    }

    /// The limits on a chunk-size line and on trailers hold however the bytes arrive,
    /// not only when a line is still incomplete in the buffer.
    #[test]
    fn chunk_line_and_trailer_limits_hold_in_any_split() {
        let mut long_ext = b"5;x=".to_vec();
        long_ext.resize(MAX_CHUNK_LINE + 1, b'y');
        long_ext.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        let mut long_trailers = b"1\r\na\r\n0\r\n".to_vec();
        while long_trailers.len() < MAX_TRAILERS + 64 {
            long_trailers.extend_from_slice(b"X-T: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        long_trailers.extend_from_slice(b"\r\n");
        for wire in [long_ext, long_trailers] {
            for piece in [1, 100, wire.len()] {
                assert!(refused_in_pieces(&wire, piece), "piece {piece}");
            }
        }
        // At the limits exactly (counted up to each line's LF), accepted in any split.
        let mut ext = b"5;x=".to_vec();
        ext.resize(MAX_CHUNK_LINE - 1, b'y');
        ext.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        let mut trailers = b"0\r\nX:".to_vec();
        trailers.resize(3 + MAX_TRAILERS - 3, b'x');
        trailers.extend_from_slice(b"\r\n\r\n");
        for wire in [ext, trailers] {
            for piece in [1, 100, wire.len()] {
                assert!(!refused_in_pieces(&wire, piece), "piece {piece}");
            }
        }
    }

    #[test]
    fn chunk_sizes_parse_hex_with_extensions() {
        assert_eq!(chunk_size(b"1a"), Some(26));
        assert_eq!(chunk_size(b"FF;name=value"), Some(255));
        assert_eq!(chunk_size(b"0"), Some(0));
        assert_eq!(chunk_size(b""), None);
        assert_eq!(chunk_size(b"g"), None);
        assert_eq!(chunk_size(b"1000000000000000"), None);
    }
}
