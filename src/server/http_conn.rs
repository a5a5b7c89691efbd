//! Serving HTTP on one established client connection.
//!
//! hyper drives the protocol; beside it a watchdog enforces the header and idle
//! timeouts and close signals (shutdown, listener retired) finish the connection
//! gracefully. Both are polled through a [`Gate`], only when they fire, not on each of
//! the several wake-ups a request causes.
//!
//! An HTTP/1 connection idle for [`PARK_AFTER`] is parked, as nginx frees an idle
//! keep-alive connection's buffers: hyper's state (its read and write buffers, about
//! 20 KiB) and the connection's task end, and only the socket is kept, in its worker's
//! [parking lot](park_lot), until the client's next bytes, the idle timeout or a close
//! signal. When the client speaks again a fresh connection task takes over the same
//! socket.

use std::future::Future;
use std::os::fd::{AsRawFd as _, RawFd};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{HttpService, service_fn};
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use tokio::time::Sleep;

use super::conn::{ClientStream, CloseSignals, Conn, Proto, Timeouts};
use super::conn_clock::{Activity, ConnBody, PARK_AFTER, TimedIo, Verdict};
use super::park_lot::{self, Parkable, Parking};
use super::peer_close;
use super::stream_clock::{self, StreamExec};
use super::wake_gate::Gate;
use crate::backend::clock_ms;
use crate::proxy;

/// Concurrent HTTP/2 streams per client connection.
const MAX_STREAMS: u32 = 256;

/// Serves HTTP/1.1 or HTTP/2 on an established (plain or TLS) stream until it ends or
/// (HTTP/1) is parked.
#[allow(clippy::manual_async_fn)] // on purpose: see the comment inside
pub(super) fn serve_http<IO: Parkable>(
    mut conn: Conn,
    io: IO,
    proto: Proto,
) -> impl Future<Output = ()> {
    // A plain fn around an async block: its arguments are stored once, not twice as an
    // async fn's are, which keeps every connection's task smaller.
    async move {
        let activity = Activity::new();
        let svc_activity = Arc::clone(&activity);
        let shared = Arc::clone(&conn.shared);
        let info = Arc::clone(&conn.info);
        let timeouts = conn.timeouts;
        let service = service_fn(move |req| {
            let head = match req.version() <= http::Version::HTTP_11 {
                true => svc_activity.heads().take(),
                false => Ok(()),
            };
            // A gRPC call is never cut by send_timeout (DESIGN §12).
            let untimed =
                req.version() == http::Version::HTTP_2 && proxy::grpc::is_grpc(req.headers());
            let active = match untimed {
                false => svc_activity.begin(),
                true => svc_activity.begin_untimed(),
            };
            let shared = Arc::clone(&shared);
            let info = Arc::clone(&info);
            async move {
                if untimed {
                    stream_clock::untimed();
                }
                let resp = match head {
                    Err(p) => proxy::refuse_head(p.reason()),
                    Ok(()) => {
                        let mut handling = pin!(proxy::handle(&shared, &info, req));
                        std::future::poll_fn(|cx| {
                            let r = handling.as_mut().poll(cx);
                            if r.is_pending() {
                                stream_clock::waiting_on_backend();
                            }
                            r
                        })
                        .await
                    }
                };
                Ok::<_, std::convert::Infallible>(resp.map(|b| ConnBody::new(b, active)))
            }
        });
        // Due at once: its first verdict sets the deadline that applies.
        let mut watchdog = Box::pin(tokio::time::sleep(Duration::ZERO));
        match proto {
            Proto::Http1 => {
                let on = Watch {
                    activity: &activity,
                    timeouts,
                    park: true,
                    socket: Some(io.socket().as_raw_fd()),
                };
                serve_http1(io, service, on, conn, watchdog).await
            }
            // Boxed whole: inline, HTTP/2's state would size the task of every HTTP/1
            // connection too.
            multiplexed => {
                Box::pin(async move {
                    let io = TokioIo::new(TimedIo::new(io, Arc::clone(&activity)));
                    let on = Watch {
                        activity: &activity,
                        timeouts,
                        park: false,
                        socket: None,
                    };
                    let (close, watchdog) = (&mut conn.close, &mut watchdog);
                    let exec = StreamExec {
                        send_timeout: timeouts.send,
                    };
                    if multiplexed == Proto::Http2 {
                        let conn = hyper::server::conn::http2::Builder::new(exec)
                            .max_concurrent_streams(MAX_STREAMS)
                            .serve_connection(io, service);
                        on.drive(pin!(conn), |c| c.graceful_shutdown(), close, watchdog)
                            .await;
                    } else {
                        let mut builder = auto::Builder::new(exec);
                        builder.http1().half_close(true).keep_alive(true);
                        builder.http2().max_concurrent_streams(MAX_STREAMS);
                        let conn = builder.serve_connection_with_upgrades(io, service);
                        on.drive(pin!(conn), |c| c.graceful_shutdown(), close, watchdog)
                            .await;
                    }
                })
                .await
            }
        }
    }
}

/// Serves HTTP/1.1 until the connection ends or idles for [`PARK_AFTER`], when it is
/// handed to its worker's [parking lot](park_lot).
#[allow(clippy::manual_async_fn)] // on purpose: see the comment inside
fn serve_http1<IO, S>(
    mut io: IO,
    mut service: S,
    on: Watch<'_>,
    mut conn: Conn,
    mut watchdog: Pin<Box<Sleep>>,
) -> impl Future<Output = ()>
where
    IO: Parkable,
    S: HttpService<Incoming, ResBody = ConnBody> + Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // A plain fn around an async block: its arguments are stored once, not twice as an
    // async fn's are, which keeps every connection's task smaller.
    async move {
        let activity = on.activity;
        let mut replay = Bytes::new();
        loop {
            let timed = TimedIo::resume(io, Arc::clone(activity), replay);
            // Boxed: only one of hyper's connections lives at a time.
            //
            // Half-close allowed: a client that shuts down its sending side after its
            // request still gets the answer (RFC 9112 §9.6; HAProxy's default), and hyper
            // does not poll the socket for an early end while the request is at the
            // backend, which made it set aside a fresh 8 KiB read buffer (and allocate
            // twice) on every request. A client that leaves meanwhile is noticed when its
            // answer is written.
            let mut http = Box::new(
                http1::Builder::new()
                    .half_close(true)
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(timed), service)
                    .with_upgrades(),
            );
            // The driving future is boxed too: its state is needed only while driving.
            let ended = Box::pin(on.drive(
                Pin::new(&mut *http),
                |c| c.graceful_shutdown(),
                &mut conn.close,
                &mut watchdog,
            ))
            .await;
            if ended == Ended::Done {
                return;
            }
            activity.set_parking(false);
            // In a function, so that nothing of hyper's parts stays in this future's state.
            (io, service, replay) = match take_parts(*http) {
                Some(parts) => parts,
                None => return,
            };
            // With bytes hyper read but did not parse (a request is starting) the
            // connection is served on by this task; without, it is parked.
            if replay.is_empty() {
                let idle_ms = on.timeouts.idle.as_millis() as u64;
                let deadline = activity.last_end().saturating_add(idle_ms);
                match park_lot::park(io, conn, deadline) {
                    Parking::Parked => return,
                    Parking::Close(io, tracked) => return park_lot::close(io, tracked),
                    Parking::Readable(again, same) => (io, conn) = (again, same),
                }
            }
        }
    }
}

/// The task that serves a parked connection again. Boxed, because a future cannot
/// contain its own type.
pub(super) fn resume_conn<IO: Parkable>(
    conn: Conn,
    io: IO,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(serve_http(conn, io, Proto::Http1))
}

/// The socket, service and unparsed bytes of a finished hyper HTTP/1 connection;
/// `None` if it was upgraded.
fn take_parts<IO, S>(
    conn: hyper::server::conn::http1::UpgradeableConnection<TokioIo<TimedIo<IO>>, S>,
) -> Option<(IO, S, Bytes)>
where
    IO: ClientStream,
    S: HttpService<Incoming, ResBody = ConnBody>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let parts = conn.into_parts()?;
    // The unparsed bytes are a view of hyper's whole read buffer: copied (or dropped
    // when empty) so that the buffer itself is freed.
    let replay = match parts.read_buf.is_empty() {
        true => Bytes::new(),
        false => Bytes::copy_from_slice(&parts.read_buf),
    };
    Some((parts.io.into_inner().into_inner(), parts.service, replay))
}

/// What a side event asks of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// Finish gracefully: shutdown, listener retired, or idle too long.
    Finish,
    /// Close at once: a request head took too long, or the client stopped reading.
    Abort,
    /// Idle long enough to park.
    Park,
}

/// How driving a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The connection is over.
    Done,
    /// hyper finished without closing the socket: take its parts and park.
    Parked,
}

/// One connection's watchdog settings.
#[derive(Debug, Clone, Copy)]
struct Watch<'a> {
    activity: &'a Arc<Activity>,
    timeouts: Timeouts,
    /// Whether an idle connection may be parked (HTTP/1 only).
    park: bool,
    /// The socket, watched for the client leaving while a request is at the backend
    /// (HTTP/1 only: HTTP/2 reads all along and cancels streams itself).
    socket: Option<RawFd>,
}

impl Watch<'_> {
    /// Runs hyper's connection `conn` until it ends, or (HTTP/1) until it is idle long
    /// enough to park; `finish` starts hyper's graceful shutdown.
    async fn drive<C, E>(
        self,
        mut conn: Pin<&mut C>,
        finish: impl Fn(Pin<&mut C>),
        close: &mut CloseSignals,
        watchdog: &mut Pin<Box<Sleep>>,
    ) -> Ended
    where
        C: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let mut side = pin!(self.side_events(close, watchdog));
        let gate = Gate::new();
        let mut closing = false;
        std::future::poll_fn(|cx| {
            loop {
                if let Poll::Ready(res) = conn.as_mut().poll(cx) {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "client connection ended with an error");
                    }
                    return Poll::Ready(Ended::Done);
                }
                if closing {
                    return Poll::Pending;
                }
                match gate.poll(side.as_mut(), cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Event::Abort) => return Poll::Ready(Ended::Done),
                    // An HTTP/1 connection between requests that must finish (closing
                    // listener, shutdown, upgrade, idle timeout) leaves hyper as it would
                    // to park: the parking lot refuses it and closes it cleanly (write side
                    // first, then the client's late bytes read until it closes), where
                    // hyper would drop the socket and reset a request crossing the close.
                    Poll::Ready(Event::Finish)
                        if !(self.park && self.activity.between_requests()) =>
                    {
                        closing = true;
                        finish(conn.as_mut());
                    }
                    Poll::Ready(Event::Finish | Event::Park) => {
                        // hyper closes an idle connection at once on graceful shutdown;
                        // with `parking` set, the I/O's shutdown leaves the socket open.
                        // A connection that is not idle after all (a request body still
                        // arriving after its response) finishes its exchange and closes.
                        self.activity.set_parking(true);
                        finish(conn.as_mut());
                        match conn.as_mut().poll(cx) {
                            Poll::Ready(Ok(())) => return Poll::Ready(Ended::Parked),
                            Poll::Ready(Err(e)) => {
                                tracing::debug!(error = %e, "client connection ended with an error");
                                return Poll::Ready(Ended::Done);
                            }
                            Poll::Pending => {
                                self.activity.set_parking(false);
                                closing = true;
                                return Poll::Pending;
                            }
                        }
                    }
                }
            }
        })
        .await
    }

    /// Whether the client has closed its connection while a request has been in
    /// progress for at least a tick.
    fn client_left(&self, now: u64, active_since: &mut Option<u64>) -> bool {
        let Some(fd) = self.socket else {
            return false;
        };
        if !self.activity.is_active() {
            *active_since = None;
            return false;
        }
        let since = *active_since.get_or_insert(now);
        now.saturating_sub(since) >= PARK_AFTER.as_millis() as u64 && peer_close::closed(fd)
    }

    /// The connection's side events: close signals and the watchdog's verdicts.
    async fn side_events(self, close: &mut CloseSignals, watchdog: &mut Pin<Box<Sleep>>) -> Event {
        // When a request was first seen in progress at a tick, for the client-gone
        // check: a request younger than one tick is left alone, so a client that
        // half-closes after sending gets its quick answer.
        let mut active_since: Option<u64> = None;
        loop {
            tokio::select! {
                _ = close.wait() => return Event::Finish,
                _ = watchdog.as_mut() => {
                    let now = clock_ms();
                    if self.client_left(now, &mut active_since) {
                        crate::stats::CLIENT_EVENTS
                            .aborted
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::debug!("client closed its connection while its request was at the backend; cancelled");
                        return Event::Abort;
                    }
                    match self.activity.verdict(now, &self.timeouts, self.park) {
                        Verdict::WaitUntil(t) => {
                            let wait = Duration::from_millis(t.saturating_sub(now).max(1));
                            watchdog.as_mut().reset(tokio::time::Instant::now() + wait);
                        }
                        Verdict::Idle => return Event::Finish,
                        Verdict::HeaderTimeout => return Event::Abort,
                        Verdict::SendTimeout => {
                            crate::stats::CLIENT_EVENTS
                                .send_timeouts
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::debug!("client made no progress reading its response within send_timeout");
                            return Event::Abort;
                        }
                        Verdict::Park => return Event::Park,
                    }
                }
            }
        }
    }
}
