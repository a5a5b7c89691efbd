//! The byte stream under a backend connection: plain TCP (`http1`) or TLS over TCP
//! (`https`, DESIGN §12).
//!
//! The HTTP/1.1 codec is generic over a read half and a write half, so each transport
//! gets its own compiled copy: plain TCP keeps `TcpStream::split` (two borrows, no
//! lock, no allocation), which the measured hot path depends on. A TLS session cannot
//! be split by borrowing (reading may write and writing may read), so its halves share
//! it through a mutex held only within one poll ([`Shared`]); both halves are polled by
//! the one task that owns the exchange, so the lock is never contended.
//!
//! The TLS stream is boxed: a rustls session is large, and an enum sized for it would
//! make every pooled plain connection, and every move of one, as large.

use std::io;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A backend connection's stream.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP, handshake done.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// Whether an idle connection can carry a request: the backend has neither closed
    /// it nor sent anything unasked. Costs no system call unless the socket was
    /// reported readable since its last read.
    ///
    /// Over TLS, records that carry no application data (a TLS 1.3 NewSessionTicket
    /// sent after the handshake, a key update) are taken in by rustls and leave the
    /// connection usable; a close_notify, an end of stream or an error do not.
    pub fn is_idle_and_open(&mut self) -> bool {
        match self {
            Stream::Plain(tcp) => {
                let mut probe = [0u8; 1];
                matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            Stream::Tls(tls) => {
                let mut probe = [0u8; 1];
                let mut buf = ReadBuf::new(&mut probe);
                let mut cx = Context::from_waker(Waker::noop());
                // Pending: nothing but records rustls keeps to itself. Ready: data,
                // the end of the stream, or an error.
                Pin::new(&mut **tls)
                    .poll_read(&mut cx, &mut buf)
                    .is_pending()
            }
        }
    }
}

impl AsyncRead for Stream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// A stream borrowed by a read half and a write half polled from one task: each poll
/// takes the lock for its own duration only.
#[derive(Debug)]
pub struct Shared<'a, S>(Mutex<&'a mut S>);

/// The read half of a [`Shared`] stream.
#[derive(Debug)]
pub struct ReadHalf<'s, 'a, S>(&'s Shared<'a, S>);

/// The write half of a [`Shared`] stream.
#[derive(Debug)]
pub struct WriteHalf<'s, 'a, S>(&'s Shared<'a, S>);

impl<'a, S: AsyncRead + AsyncWrite + Unpin> Shared<'a, S> {
    /// Borrows `stream` for splitting.
    pub fn new(stream: &'a mut S) -> Shared<'a, S> {
        Shared(Mutex::new(stream))
    }

    /// Its two halves.
    pub fn split(&self) -> (ReadHalf<'_, 'a, S>, WriteHalf<'_, 'a, S>) {
        (ReadHalf(self), WriteHalf(self))
    }

    fn lock(&self) -> MutexGuard<'_, &'a mut S> {
        // A poll that panicked left the stream as any failed I/O would: the exchange
        // fails on it, and the connection is dropped.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ReadHalf<'_, '_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut **self.0.lock()).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WriteHalf<'_, '_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut **self.0.lock()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut **self.0.lock()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut **self.0.lock()).poll_shutdown(cx)
    }
}
