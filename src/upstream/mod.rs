//! The backend side of the proxy: HTTP/1.1 over a pooled keep-alive connection, plain
//! TCP or TLS ([`stream`]), spoken by maitred itself.
//!
//! Why not hyper's client: its connection runs in a task of its own, with a channel and
//! a dispatcher between the request and the socket; profiled (issue 8), that task cost
//! about 12,000 instructions per proxied request, a third of the whole. Here the
//! exchange runs inside the client connection's task: the request head is encoded
//! straight from the request's parts ([`request`]), the response head is parsed with
//! httparse into the response's header map, hop-by-hop headers left out as they are met
//! ([`response`]), and the body is read from the backend socket only when the client
//! side asks for more ([`body`]), which is back-pressure with no buffer in between.
//!
//! The request's parts are only borrowed, so a retry on another backend encodes them
//! again instead of keeping a copy; a failure says whether any of the request reached
//! the backend, which decides whether a retry is allowed (DESIGN §5, `retries`).
//!
//! Backends that speak HTTP/2 (`protocol = "h2c"` or `"h2"`) are [`http2`]'s.

pub mod body;
pub mod connect;
pub mod hop;
pub mod http2;
pub mod pool;
pub mod request;
pub mod response;
pub mod stream;

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub use body::BackendBody;
pub use request::{AddedHeaders, RequestBody};
pub use response::ResponseHead;
pub use stream::Stream;

/// The most a response head may take; a larger one is a bad gateway.
pub const MAX_HEAD: usize = 64 * 1024;

/// The largest first piece of a body sent in one write with the request head; a
/// larger one is written on its own rather than copied.
const COALESCE_MAX: usize = 16 * 1024;

/// What a read of the backend socket asks room for.
const READ_CHUNK: usize = 8 * 1024;

/// A failure of the backend exchange.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The socket failed (reset, broken pipe).
    #[error("backend I/O: {0}")]
    Io(#[from] io::Error),
    /// The backend closed the connection before a complete response head.
    #[error("backend closed the connection before answering")]
    Closed,
    /// The backend closed the connection before the end of the response body.
    #[error("backend closed the connection before the end of the body")]
    Truncated,
    /// The response does not parse or frames itself ambiguously.
    #[error("malformed response from backend: {0}")]
    Malformed(&'static str),
    /// The response head exceeds [`MAX_HEAD`].
    #[error("response head from backend larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// The client's request body failed while it was being forwarded.
    #[error("client request body: {0}")]
    ClientBody(#[source] hyper::Error),
    /// The client's request body made no progress for `client_body_timeout`.
    #[error("client sent no request body data within client_body_timeout")]
    ClientBodyTimeout,
    /// The backend did not take the request or answer it within `response_timeout`.
    #[error("backend did not answer within response_timeout")]
    ResponseTimeout,
    /// The backend's response body made no progress for `read_timeout`.
    #[error("backend body made no progress within read_timeout")]
    ReadTimeout,
    /// An HTTP/2 stream or connection to the backend failed (reset, GOAWAY, protocol
    /// error, I/O).
    #[error("backend HTTP/2: {0}")]
    H2(#[source] Box<h2::Error>),
}

/// A failed exchange, and whether any of the request reached the backend.
#[derive(Debug)]
pub struct Failure {
    /// What went wrong.
    pub error: UpstreamError,
    /// Some of the request was written, or some of the client's body taken: it cannot
    /// be sent elsewhere unless it is idempotent and bodiless.
    pub delivered: bool,
    /// The whole request was written.
    pub written: bool,
    /// The backend had closed or reset the connection and no byte of an answer came:
    /// a reused idle connection that raced the backend's keep-alive timeout.
    pub stale: bool,
}

/// One HTTP/1.1 connection to a backend, plain or over TLS.
#[derive(Debug)]
pub struct UpConn {
    io: Stream,
    /// The id of the pool transport ([`crate::pool::Transport`]) it was opened under:
    /// an idle connection is reused only under the same one.
    transport: u64,
    /// Bytes read from the backend and not yet consumed.
    buf: BytesMut,
    /// The request head being written; its capacity is kept for the next request.
    head: Vec<u8>,
}

impl UpConn {
    /// A connection over plain TCP, opened under the transport with id `transport`.
    pub fn plain(io: TcpStream, transport: u64) -> UpConn {
        UpConn::new(Stream::Plain(io), transport)
    }

    /// A connection over TLS (handshake done), opened under the transport with id
    /// `transport`.
    pub fn tls(io: TlsStream<TcpStream>, transport: u64) -> UpConn {
        UpConn::new(Stream::Tls(Box::new(io)), transport)
    }

    fn new(io: Stream, transport: u64) -> UpConn {
        UpConn {
            io,
            transport,
            buf: BytesMut::new(),
            head: Vec::new(),
        }
    }

    /// Opens a plain connection (no timeout: the caller bounds it), for tests.
    #[cfg(test)]
    pub async fn connect(addr: std::net::SocketAddr) -> io::Result<UpConn> {
        Ok(UpConn::plain(connect::tcp(addr).await?, 0))
    }

    /// The id of the transport the connection was opened under.
    #[inline]
    pub fn transport(&self) -> u64 {
        self.transport
    }

    /// Whether a pooled connection can carry a request: the backend has neither closed
    /// it nor sent anything unasked. Costs no system call unless the socket was
    /// reported readable since its last read.
    pub fn is_usable(&mut self) -> bool {
        self.buf.is_empty() && self.io.is_idle_and_open()
    }

    /// Frees the read buffer and head buffer (an idle connection beyond the first few in
    /// the pool keeps only its socket).
    pub fn release_buffers(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        self.head = Vec::new();
    }

    /// Gives the connection buffers as a request would.
    #[cfg(test)]
    pub fn warm_for_test(&mut self) {
        self.buf.reserve(READ_CHUNK);
        self.head.reserve(256);
    }

    /// Bytes of buffer capacity the connection holds.
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity() + self.head.capacity()
    }

    /// The connection's stream and any bytes the backend sent after the response head,
    /// for a tunnel after `101 Switching Protocols`.
    pub fn into_tunnel(self) -> (Stream, BytesMut) {
        (self.io, self.buf)
    }

    /// Sends the request (head from `parts`, then `body`) and reads the response head.
    /// Interim responses (100, 103) are skipped. The head goes out with the first piece
    /// of the body, so a body that fails at once sends the backend nothing. If the
    /// backend answers before the body is fully sent, the rest is not sent and the
    /// connection is not reused.
    ///
    /// Every wait is bounded by `limits`: the client's body by `client_body` (no
    /// progress for that long is the client's fault), writes to the backend and the
    /// wait for its answer by `response`, whose timer for the answer starts once the
    /// request has been sent whole (a slow upload is never the backend's fault).
    pub async fn exchange(
        &mut self,
        parts: &Parts,
        forwarded: &impl AddedHeaders,
        body: &mut RequestBody,
        limits: Limits,
    ) -> Result<ResponseHead, Failure> {
        let framing = request::framing(parts, body);
        self.head.clear();
        request::encode_head(&mut self.head, parts, forwarded, framing);
        if framing == request::Framing::None {
            // The common case: the head in one write, then the answer, under one timer.
            let UpConn { io, buf, head, .. } = self;
            return match io {
                Stream::Plain(tcp) => {
                    let (rd, wr) = tcp.split();
                    send_bodiless(rd, wr, head, buf, parts, limits).await
                }
                // Polled out of line: inline, TLS's copy of the exchange would double
                // this function's code and keep it from being inlined into its caller.
                Stream::Tls(tls) => {
                    let shared = stream::Shared::new(&mut **tls);
                    let (rd, wr) = shared.split();
                    let mut sending = pin!(send_bodiless(rd, wr, head, buf, parts, limits));
                    std::future::poll_fn(|cx| poll_apart(sending.as_mut(), cx)).await
                }
            };
        }
        self.boxed_with_body(parts, body, framing, limits).await
    }

    /// [`UpConn::exchange_with_body`], boxed: its state (the body pump, the early-answer
    /// race and their timers) would otherwise size every request's future, and move
    /// with it, bodiless or not. Made out of line, so its making is not in the code of
    /// every exchange either.
    #[inline(never)]
    fn boxed_with_body<'a>(
        &'a mut self,
        parts: &'a Parts,
        body: &'a mut RequestBody,
        framing: request::Framing,
        limits: Limits,
    ) -> Pin<Box<impl Future<Output = Result<ResponseHead, Failure>> + 'a>> {
        Box::pin(self.exchange_with_body(parts, body, framing, limits))
    }

    /// [`UpConn::exchange`] for a request with a body: the head goes out with the
    /// body's first piece, the rest is pumped while the answer may already come.
    async fn exchange_with_body(
        &mut self,
        parts: &Parts,
        body: &mut RequestBody,
        framing: request::Framing,
        limits: Limits,
    ) -> Result<ResponseHead, Failure> {
        // `taken`: a piece of the client's body is on its way and cannot be sent again.
        let (mut more, mut taken) = (false, false);
        let mut large = None;
        match client_data(body, limits).await {
            Err(error) => return Err(Failure::before_write(error, true)),
            Ok(Some(data)) => {
                taken = true;
                more = !body.is_end_stream();
                if data.len() <= COALESCE_MAX {
                    request::append_piece(&mut self.head, &data, framing);
                    if !more {
                        request::append_end(&mut self.head, framing);
                    }
                } else {
                    large = Some(data);
                }
            }
            Ok(None) => request::append_end(&mut self.head, framing),
        }
        let UpConn { io, buf, head, .. } = self;
        let sending = Sending {
            head,
            taken,
            large,
            more,
            framing,
            limits,
        };
        match io {
            Stream::Plain(tcp) => {
                let (rd, wr) = tcp.split();
                send_with_body(rd, wr, sending, buf, parts, body).await
            }
            Stream::Tls(tls) => {
                let shared = stream::Shared::new(&mut **tls);
                let (rd, wr) = shared.split();
                send_with_body(rd, wr, sending, buf, parts, body).await
            }
        }
    }
}

/// A request with a body, its head (and perhaps the body's first piece) encoded and
/// ready to go.
struct Sending<'a> {
    /// The head, with the body's first piece when it was small enough to coalesce.
    head: &'a [u8],
    /// Some of the client's body was consumed.
    taken: bool,
    /// The body's first piece, when too large to coalesce into the head.
    large: Option<Bytes>,
    /// The client's body goes on after what was taken.
    more: bool,
    framing: request::Framing,
    limits: Limits,
}

/// Polls `fut` in a function never inlined into the caller's.
#[inline(never)]
fn poll_apart<F: Future>(fut: Pin<&mut F>, cx: &mut Context<'_>) -> Poll<F::Output> {
    fut.poll(cx)
}

/// Writes a bodiless request's head and reads the answer's, both under one
/// `response` timer.
async fn send_bodiless<R, W>(
    mut rd: R,
    mut wr: W,
    head: &[u8],
    buf: &mut BytesMut,
    parts: &Parts,
    limits: Limits,
) -> Result<ResponseHead, Failure>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let exchange = async {
        write_head(&mut wr, head, false).await?;
        read_head(&mut rd, buf, parts)
            .await
            .map_err(|e| Failure::after_write(e, buf))
    };
    match tokio::time::timeout(limits.response, exchange).await {
        Err(_) => Err(Failure::after_write(UpstreamError::ResponseTimeout, &[])),
        Ok(r) => r,
    }
}

/// Writes a request with a body and reads the answer's head, which may come before
/// the body has all been sent.
async fn send_with_body<R, W>(
    mut rd: R,
    mut wr: W,
    sending: Sending<'_>,
    buf: &mut BytesMut,
    parts: &Parts,
    body: &mut RequestBody,
) -> Result<ResponseHead, Failure>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Sending {
        head,
        taken,
        large,
        more,
        framing,
        limits,
    } = sending;
    let sent = async {
        write_head(&mut wr, head, taken).await?;
        if let Some(data) = large {
            let written = async {
                write_piece(&mut wr, &data, framing).await?;
                if !more && framing == request::Framing::Chunked {
                    wr.write_all(b"0\r\n\r\n").await?;
                    wr.flush().await?;
                }
                Ok::<_, io::Error>(())
            };
            if let Err(e) = written.await {
                return Err(Failure::written_part(e.into()));
            }
        }
        Ok(())
    };
    match tokio::time::timeout(limits.response, sent).await {
        Err(_) => return Err(Failure::written_part(UpstreamError::ResponseTimeout)),
        Ok(Err(f)) => return Err(f),
        Ok(Ok(())) => {}
    }
    if !more {
        let read = read_head(&mut rd, buf, parts);
        return match tokio::time::timeout(limits.response, read).await {
            Err(_) => Err(Failure::written_part(UpstreamError::ResponseTimeout)),
            Ok(r) => r.map_err(|e| Failure::after_write(e, buf)),
        };
    }
    let pump = pump_body(&mut wr, body, framing, limits);
    let read = read_head(&mut rd, buf, parts);
    tokio::pin!(pump, read);
    // While the body is on its way the backend may answer early; once it has all
    // been sent, the response timer starts.
    let early = tokio::select! {
        biased;
        r = &mut read => Some(r),
        w = &mut pump => match w {
            Ok(()) => None,
            // The backend stopped reading; it may still have answered.
            Err(UpstreamError::Io(_)) => Some(
                match tokio::time::timeout(limits.response, &mut read).await {
                    Err(_) => Err(UpstreamError::ResponseTimeout),
                    Ok(r) => r,
                },
            ),
            Err(error) => return Err(Failure::written_part(error)),
        },
    };
    let answer = match early {
        Some(r) => r.map(|mut h| {
            // The backend answered before taking the whole body: the connection is
            // out of step and is not reused.
            h.keep_alive = false;
            h
        }),
        None => match tokio::time::timeout(limits.response, &mut read).await {
            Err(_) => Err(UpstreamError::ResponseTimeout),
            Ok(r) => r,
        },
    };
    answer.map_err(Failure::written_part)
}

/// The waits of one exchange.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From the request sent whole until the response head; also the longest a write
    /// to the backend may stall.
    pub response: std::time::Duration,
    /// The longest the client's request body may make no progress.
    pub client_body: std::time::Duration,
}

impl Failure {
    /// Nothing was written to the backend; `taken` says whether some of the client's
    /// body was consumed.
    fn before_write(error: UpstreamError, taken: bool) -> Failure {
        Failure {
            error,
            delivered: taken,
            written: false,
            stale: false,
        }
    }

    /// Some of the request was written and it failed on the way, or it failed after.
    fn written_part(error: UpstreamError) -> Failure {
        Failure {
            error,
            delivered: true,
            written: false,
            stale: false,
        }
    }

    /// The request was written whole and the answer failed; `received` is what had
    /// arrived of it (nothing at all, on a closed or reset connection, is stale).
    fn after_write(error: UpstreamError, received: &[u8]) -> Failure {
        let stale = received.is_empty() && error.is_connection_gone();
        Failure {
            error,
            delivered: true,
            written: true,
            stale,
        }
    }
}

impl UpstreamError {
    /// The backend closed or reset the connection (as when its keep-alive timeout
    /// raced the reuse of an idle connection).
    fn is_connection_gone(&self) -> bool {
        match self {
            UpstreamError::Closed => true,
            UpstreamError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }
}

/// Writes the request head (with any body bytes coalesced into it). A failure before
/// the whole head is written leaves the request unsent, so a connection the backend
/// had closed is stale: the request can go again on a fresh one.
async fn write_head(
    wr: &mut (impl AsyncWrite + Unpin),
    head: &[u8],
    taken: bool,
) -> Result<(), Failure> {
    let mut written = 0;
    loop {
        let e = if written < head.len() {
            match wr.write(&head[written..]).await {
                Ok(0) => io::Error::from(io::ErrorKind::WriteZero),
                Ok(n) => {
                    written += n;
                    continue;
                }
                Err(e) => e,
            }
        } else {
            // A no-op on TCP; TLS may hold the last record until flushed.
            match wr.flush().await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            }
        };
        let error = UpstreamError::Io(e);
        let stale = written == 0 && error.is_connection_gone();
        return Err(Failure {
            error,
            delivered: written > 0 || taken,
            written: false,
            stale,
        });
    }
}

/// The next piece of the client's body, waiting at most `limits.client_body` for it.
async fn client_data(
    body: &mut RequestBody,
    limits: Limits,
) -> Result<Option<Bytes>, UpstreamError> {
    match tokio::time::timeout(limits.client_body, next_data(body)).await {
        Err(_) => Err(UpstreamError::ClientBodyTimeout),
        Ok(r) => r,
    }
}

/// The next piece of the client's body with data in it; trailers are not forwarded.
async fn next_data(body: &mut RequestBody) -> Result<Option<Bytes>, UpstreamError> {
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
        let frame = frame.map_err(UpstreamError::ClientBody)?;
        if let Ok(data) = frame.into_data() {
            if !data.is_empty() {
                return Ok(Some(data));
            }
        }
        if body.is_end_stream() {
            break;
        }
    }
    Ok(None)
}

/// Writes the rest of the client's body to the backend as it arrives, raw or chunked.
async fn pump_body(
    wr: &mut (impl AsyncWrite + Unpin),
    body: &mut RequestBody,
    framing: request::Framing,
    limits: Limits,
) -> Result<(), UpstreamError> {
    while let Some(data) = client_data(body, limits).await? {
        match tokio::time::timeout(limits.response, write_piece(wr, &data, framing)).await {
            Err(_) => return Err(UpstreamError::ResponseTimeout),
            Ok(r) => r?,
        }
    }
    if framing == request::Framing::Chunked {
        wr.write_all(b"0\r\n\r\n").await?;
        wr.flush().await?;
    }
    Ok(())
}

/// Writes one piece of the body, framed, and flushes it (a no-op on TCP; TLS may hold
/// the last record until flushed, and the next piece may be long in coming).
async fn write_piece(
    wr: &mut (impl AsyncWrite + Unpin),
    data: &[u8],
    framing: request::Framing,
) -> io::Result<()> {
    if framing == request::Framing::Chunked {
        let mut line = [0u8; 20];
        let n = request::chunk_size_line(&mut line, data.len());
        wr.write_all(&line[..n]).await?;
        wr.write_all(data).await?;
        wr.write_all(b"\r\n").await?;
    } else {
        wr.write_all(data).await?;
    }
    wr.flush().await
}

/// Reads until a final response head is complete and parses it.
async fn read_head(
    rd: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    req: &Parts,
) -> Result<ResponseHead, UpstreamError> {
    loop {
        if !buf.is_empty() {
            match response::parse(buf, req)? {
                response::Parsed::Final(h) => return Ok(h),
                response::Parsed::Interim => continue,
                response::Parsed::Partial if buf.len() >= MAX_HEAD => {
                    return Err(UpstreamError::HeadTooLarge);
                }
                response::Parsed::Partial => {}
            }
        }
        buf.reserve(READ_CHUNK);
        if rd.read_buf(buf).await? == 0 {
            return Err(UpstreamError::Closed);
        }
    }
}
