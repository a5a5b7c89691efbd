//! Client-connection timeouts: `header_timeout` (from a request's first byte to the end
//! of its headers: the slowloris guard), `idle_timeout` (no request in progress) and
//! `send_timeout` (a write to the client that has made no progress for that long: a
//! client that stops reading must not hold its backend's slot). A connection carrying
//! a gRPC call is not closed by `send_timeout` (DESIGN §12: the body timeouts never cut
//! a gRPC stream); its other HTTP/2 streams still are, one by one
//! ([`super::stream_clock`]).
//!
//! hyper's own header timer starts while a keep-alive connection waits idle and
//! allocates a timer per request, so maitred keeps its own clock: the I/O wrapper
//! notes when the first byte of a new request arrives, the service notes when a request
//! starts and its response body ends, and one watchdog per connection sleeps until the
//! next deadline. A request costs two clock reads and a few relaxed stores.
//!
//! The same watchdog says when an idle HTTP/1 connection should be parked: after
//! [`PARK_AFTER`] without a request its hyper state (read and write buffers, about
//! 20 KiB) is dropped and only the socket is kept until the client speaks again.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::conn::Timeouts;
use super::head_scan::{HeadScan, Verdicts};
use crate::backend::clock_ms;
use crate::proxy::body::ResponseBody;
use crate::upstream::UpstreamError;

/// What the watchdog knows about one connection.
///
/// Written by the connection's I/O wrapper and service, read by its watchdog, all on
/// the connection's own task or worker; `Relaxed` suffices as each field is read alone.
#[derive(Debug)]
pub struct Activity {
    /// Requests in progress (HTTP/2: streams).
    active: AtomicU32,
    /// Of those, the gRPC calls, which `send_timeout` never cuts.
    untimed: AtomicU32,
    /// [`clock_ms`] when the last request ended, or the connection opened.
    last_end: AtomicU64,
    /// [`clock_ms`] of the first byte of a request whose head is incomplete; 0 = none.
    head_started: AtomicU64,
    /// The head scanner's verdicts, one per HTTP/1 request head, in order.
    heads: Verdicts,
    /// [`clock_ms`] when a write to the client last had to wait and has not completed
    /// since (hyper still holds bytes to send); 0 = none. The clock is read only when a
    /// write starts waiting.
    write_blocked_since: AtomicU64,
    /// The connection is being parked: shutting the I/O down must leave it open.
    parking: AtomicBool,
}

/// How long an HTTP/1 connection stays idle before it is parked.
///
/// Short enough that idle keep-alive connections hold almost nothing (nginx frees its
/// buffers at once); long enough that a busy connection, whose next request follows
/// within milliseconds, never pays for rebuilding its HTTP state.
pub const PARK_AFTER: Duration = Duration::from_millis(100);

/// What the watchdog should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Sleep until this [`clock_ms`] and look again.
    WaitUntil(u64),
    /// Idle too long: close gracefully.
    Idle,
    /// Idle long enough to give back the HTTP state; keep the socket.
    Park,
    /// A request head took too long: close at once.
    HeaderTimeout,
    /// A write to the client made no progress for `send_timeout`: close at once.
    SendTimeout,
}

impl Activity {
    /// A fresh connection.
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            active: AtomicU32::new(0),
            untimed: AtomicU32::new(0),
            last_end: AtomicU64::new(clock_ms()),
            head_started: AtomicU64::new(0),
            heads: Verdicts::default(),
            write_blocked_since: AtomicU64::new(0),
            parking: AtomicBool::new(false),
        })
    }

    /// The head scanner's verdicts, for the service to take one per HTTP/1 request.
    pub fn heads(&self) -> &Verdicts {
        &self.heads
    }

    /// Bytes arrived from the client; returns whether they begin a new request.
    #[inline]
    fn on_read(&self) -> bool {
        if self.active.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == 0
        {
            self.head_started.store(clock_ms(), Ordering::Relaxed);
            return true;
        }
        false
    }

    /// A write to the client completed (`false`) or must wait (`true`).
    #[inline]
    fn note_write(&self, blocked: bool) {
        let since = self.write_blocked_since.load(Ordering::Relaxed);
        if blocked && since == 0 {
            self.write_blocked_since
                .store(clock_ms(), Ordering::Relaxed);
        } else if !blocked && since != 0 {
            self.write_blocked_since.store(0, Ordering::Relaxed);
        }
    }

    /// A request's head is complete and the service runs.
    #[inline]
    pub fn begin(self: &Arc<Self>) -> RequestActive {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
        RequestActive {
            activity: Arc::clone(self),
            untimed: false,
        }
    }

    /// A gRPC call's request is complete and the service runs: while it does,
    /// `send_timeout` does not close the connection.
    /// Not inlined: it keeps the service's per-request code, HTTP/1's too, small.
    #[inline(never)]
    pub fn begin_untimed(self: &Arc<Self>) -> RequestActive {
        self.untimed.fetch_add(1, Ordering::Relaxed);
        let mut active = self.begin();
        active.untimed = true;
        active
    }

    /// Marks the connection as being parked (or no longer), which makes the I/O
    /// wrapper's shutdown a no-op so hyper can finish without closing the socket.
    pub fn set_parking(&self, parking: bool) {
        self.parking.store(parking, Ordering::Relaxed);
    }

    /// Whether a request is in progress.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed) > 0
    }

    /// Whether the connection is between requests: none in progress, and no byte of
    /// the next one seen.
    pub fn between_requests(&self) -> bool {
        self.active.load(Ordering::Relaxed) == 0 && self.head_started.load(Ordering::Relaxed) == 0
    }

    /// [`clock_ms`] when the last request ended (or the connection opened).
    pub fn last_end(&self) -> u64 {
        self.last_end.load(Ordering::Relaxed)
    }

    /// The watchdog's decision at `now` for these timeouts; `park` says whether this
    /// connection may be parked (HTTP/1).
    pub(super) fn verdict(&self, now: u64, timeouts: &Timeouts, park: bool) -> Verdict {
        let idle_ms = timeouts.idle.as_millis() as u64;
        let park_ms = PARK_AFTER.as_millis() as u64;
        let blocked = self.write_blocked_since.load(Ordering::Relaxed);
        if self.active.load(Ordering::Relaxed) > 0 {
            let send_ms = timeouts.send.as_millis() as u64;
            let untimed = self.untimed.load(Ordering::Relaxed) > 0;
            if blocked != 0 && now >= blocked.saturating_add(send_ms) && !untimed {
                return Verdict::SendTimeout;
            }
            let next = if park { park_ms.min(idle_ms) } else { idle_ms };
            let next = now + next.min(send_ms);
            if blocked != 0 {
                return Verdict::WaitUntil(next.min(blocked.saturating_add(send_ms)));
            }
            return Verdict::WaitUntil(next);
        }
        let header_timeout = timeouts.header;
        let head = self.head_started.load(Ordering::Relaxed);
        if head != 0 {
            let deadline = head + header_timeout.as_millis() as u64;
            return if now >= deadline {
                Verdict::HeaderTimeout
            } else {
                Verdict::WaitUntil(deadline)
            };
        }
        let last_end = self.last_end.load(Ordering::Relaxed);
        let deadline = last_end + idle_ms;
        if now >= deadline {
            return Verdict::Idle;
        }
        if park {
            if blocked != 0 {
                return Verdict::WaitUntil(deadline.min(now + park_ms));
            }
            let park_at = last_end + park_ms;
            if now >= park_at {
                return Verdict::Park;
            }
            return Verdict::WaitUntil(park_at);
        }
        Verdict::WaitUntil(deadline)
    }
}

/// Held while a request is in progress; dropped with its response body.
#[derive(Debug)]
pub struct RequestActive {
    activity: Arc<Activity>,
    /// A gRPC call's ([`Activity::begin_untimed`]).
    untimed: bool,
}

impl Drop for RequestActive {
    fn drop(&mut self) {
        if self.untimed {
            self.activity.untimed.fetch_sub(1, Ordering::Relaxed);
        }
        self.activity.last_end.store(clock_ms(), Ordering::Relaxed);
        self.activity.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The client's I/O, noting when a new request's first byte arrives.
#[derive(Debug)]
pub struct TimedIo<T> {
    io: T,
    activity: Arc<Activity>,
    scan: HeadScan,
    /// Bytes read from the client before a park, to be read again first.
    replay: Bytes,
}

impl<T> TimedIo<T> {
    /// Wraps a client stream.
    pub fn new(io: T, activity: Arc<Activity>) -> TimedIo<T> {
        TimedIo::resume(io, activity, Bytes::new())
    }

    /// Wraps a client stream again after a park; `replay` (bytes the previous HTTP
    /// state had read but not parsed) is read first.
    pub fn resume(io: T, activity: Arc<Activity>, replay: Bytes) -> TimedIo<T> {
        activity.heads.resync();
        TimedIo {
            io,
            activity,
            scan: HeadScan::default(),
            replay,
        }
    }

    /// The client stream.
    pub fn into_inner(self) -> T {
        self.io
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = if this.replay.is_empty() {
            Pin::new(&mut this.io).poll_read(cx, buf)
        } else {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay.split_to(n));
            Poll::Ready(Ok(()))
        };
        if buf.filled().len() > before {
            this.activity.on_read();
            let heads = &this.activity.heads;
            this.scan.feed(&buf.filled()[before..], |v| heads.note(v));
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.activity.note_write(r.is_pending());
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.activity.note_write(r.is_pending());
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.activity.note_write(r.is_pending());
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.activity.parking.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// The response body as the client connection sends it: the request logic's
/// [`ResponseBody`], keeping its request counted as active (for the watchdog) until it
/// ends. The one wrapper the server layer adds; the request body needs none.
#[derive(Debug)]
pub struct ConnBody {
    inner: ResponseBody,
    active: Option<RequestActive>,
}

impl ConnBody {
    /// Wraps a response body.
    pub fn new(inner: ResponseBody, active: RequestActive) -> ConnBody {
        ConnBody {
            inner,
            active: Some(active),
        }
    }
}

impl Body for ConnBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => {
                this.active.take();
            }
            Poll::Ready(Some(_)) => super::stream_clock::progressed(),
            Poll::Pending => super::stream_clock::waiting_on_backend(),
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeouts(header_ms: u64, idle_ms: u64) -> Timeouts {
        Timeouts {
            header: Duration::from_millis(header_ms),
            idle: Duration::from_millis(idle_ms),
            send: Duration::from_millis(500),
        }
    }

    #[test]
    fn a_write_blocked_longer_than_send_timeout_aborts_only_while_a_request_runs() {
        let a = Activity::new();
        let t = timeouts(100, 60_000);
        let g = a.begin();
        a.note_write(true);
        let since = a.write_blocked_since.load(Ordering::Relaxed);
        assert_eq!(
            a.verdict(since + 100, &t, true),
            Verdict::WaitUntil(since + 100 + PARK_AFTER.as_millis() as u64)
        );
        assert_eq!(
            a.verdict(since + 499, &t, false),
            Verdict::WaitUntil(since + 500)
        );
        assert_eq!(a.verdict(since + 500, &t, true), Verdict::SendTimeout);
        // Progress resets it.
        a.note_write(false);
        assert!(matches!(
            a.verdict(since + 500, &t, true),
            Verdict::WaitUntil(_)
        ));
        drop(g);
    }

    #[test]
    fn a_grpc_call_keeps_a_blocked_connection_open() {
        let a = Activity::new();
        let t = timeouts(100, 60_000);
        let call = a.begin_untimed();
        a.note_write(true);
        let since = a.write_blocked_since.load(Ordering::Relaxed);
        assert!(matches!(
            a.verdict(since + 5_000, &t, false),
            Verdict::WaitUntil(_)
        ));
        let plain = a.begin();
        assert!(matches!(
            a.verdict(since + 5_000, &t, false),
            Verdict::WaitUntil(_)
        ));
        drop(call);
        assert_eq!(a.verdict(since + 5_000, &t, false), Verdict::SendTimeout);
        drop(plain);
    }

    #[test]
    fn verdicts_follow_the_connection_phase() {
        let a = Activity::new();
        let t = timeouts(100, 1000);
        let now = clock_ms();
        assert!(matches!(a.verdict(now, &t, false), Verdict::WaitUntil(_)));
        assert_eq!(a.verdict(now + 2000, &t, false), Verdict::Idle);
        assert!(a.on_read());
        assert_eq!(
            a.verdict(clock_ms() + 200, &t, false),
            Verdict::HeaderTimeout
        );
        let g = a.begin();
        assert!(matches!(
            a.verdict(now + 5000, &t, false),
            Verdict::WaitUntil(_)
        ));
        drop(g);
        assert_eq!(a.verdict(clock_ms() + 2000, &t, false), Verdict::Idle);
    }

    #[test]
    fn idle_http1_connections_park_after_the_delay_unless_a_write_waits() {
        let a = Activity::new();
        let t = timeouts(100, 60_000);
        let end = a.last_end();
        let park_ms = PARK_AFTER.as_millis() as u64;
        assert_eq!(
            a.verdict(end + 1, &t, true),
            Verdict::WaitUntil(end + park_ms)
        );
        assert_eq!(a.verdict(end + park_ms, &t, true), Verdict::Park);
        assert!(matches!(
            a.verdict(end + park_ms, &t, false),
            Verdict::WaitUntil(_)
        ));
        a.note_write(true);
        assert!(matches!(
            a.verdict(end + park_ms, &t, true),
            Verdict::WaitUntil(_)
        ));
        a.note_write(false);
        let g = a.begin();
        assert!(matches!(
            a.verdict(end + 10 * park_ms, &t, true),
            Verdict::WaitUntil(_)
        ));
        drop(g);
        let end = a.last_end();
        assert_eq!(a.verdict(end + 60_000, &t, true), Verdict::Idle);
    }
}
