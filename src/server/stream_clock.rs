//! `send_timeout` for HTTP/2 streams.
//!
//! An HTTP/1 client that stops reading blocks the connection's socket writes, which
//! the connection's watchdog sees ([`super::conn_clock`]). An HTTP/2 client can stall
//! one stream without blocking the socket: it simply never opens that stream's
//! flow-control window (or the connection's). hyper then never polls the response
//! body, so nothing on the stream runs at all, and its backend slot would be held
//! forever. hyper runs each stream as a task through the executor it is given; this
//! executor wraps every stream's task in [`SendTimed`], which closes the stream (a
//! reset, and the backend connection with it) when it has made no progress towards the
//! client for `send_timeout` while nothing on maitred's side was being waited for.
//!
//! What the stream waits for is learned from marks set while its task is polled: the
//! service future and the response body say "waiting on the backend" when they return
//! pending, and the body says "progress" when it yields data. Each worker runs one
//! single-threaded runtime, and a task's poll runs to its end on that thread, so a
//! thread-local mark read right after the poll belongs to that poll.
//!
//! A gRPC stream is never cut this way (DESIGN §12): a client may leave a long-lived
//! stream unread for as long as it likes, its call's deadline being its own business.
//! The service marks such a stream [`untimed`] on its first poll.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// What a stream's last poll did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// Neither the service nor the body was polled to pending or data: the stream was
    /// waiting on the client (flow control), or woken by its timer.
    Untouched,
    /// The service or the body is waiting for the backend: backend timeouts apply.
    Backend,
    /// The body yielded data: progress.
    Progress,
}

thread_local! {
    static MARK: Cell<Mark> = const { Cell::new(Mark::Untouched) };
    /// Set by a poll of a stream that `send_timeout` must never cut.
    static UNTIMED: Cell<bool> = const { Cell::new(false) };
}

/// Notes that the stream being polled is exempt from `send_timeout` (a gRPC call).
#[inline]
pub fn untimed() {
    UNTIMED.with(|u| u.set(true));
}

/// Notes that the response (its head or its body) is waiting for the backend.
#[inline]
pub fn waiting_on_backend() {
    MARK.with(|m| m.set(Mark::Backend));
}

/// Notes that the response body yielded a frame.
#[inline]
pub fn progressed() {
    MARK.with(|m| m.set(Mark::Progress));
}

/// hyper's HTTP/2 executor for one connection: spawns each stream's task wrapped in
/// [`SendTimed`].
#[derive(Debug, Clone, Copy)]
pub struct StreamExec {
    /// The listener's `send_timeout`.
    pub send_timeout: Duration,
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(SendTimed {
            inner: Box::pin(fut),
            send_timeout: self.send_timeout,
            timer: None,
            armed: false,
            untimed: false,
        });
    }
}

/// A stream's task, closed when it makes no progress towards the client for
/// `send_timeout`.
pub struct SendTimed<F> {
    /// Boxed, so the wrapper is `Unpin` (a stream's state is allocated anyway).
    inner: Pin<Box<F>>,
    send_timeout: Duration,
    /// Made the first time the stream waits on the client.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether the timer runs (the stream waits on the client).
    armed: bool,
    /// The stream is exempt from `send_timeout`.
    untimed: bool,
}

impl<F: Future<Output = ()>> Future for SendTimed<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        MARK.with(|m| m.set(Mark::Untouched));
        UNTIMED.with(|u| u.set(false));
        if this.inner.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if UNTIMED.with(|u| u.replace(false)) {
            this.untimed = true;
            this.timer = None;
        }
        if this.untimed {
            return Poll::Pending;
        }
        let mark = MARK.with(|m| m.get());
        match mark {
            Mark::Backend => {
                this.armed = false;
                return Poll::Pending;
            }
            Mark::Progress => this.armed = false,
            Mark::Untouched => {}
        }
        if !this.armed {
            let deadline = Instant::now() + this.send_timeout;
            match &mut this.timer {
                Some(t) => t.as_mut().reset(deadline),
                None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            this.armed = true;
        }
        let fired = this
            .timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready());
        if fired {
            crate::stats::CLIENT_EVENTS
                .send_timeouts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!("HTTP/2 stream made no progress within send_timeout; reset");
            // Returning drops the stream's state: hyper resets the stream, and the
            // response body (with its backend connection and slot) goes with it.
            return Poll::Ready(());
        }
        Poll::Pending
    }
}
