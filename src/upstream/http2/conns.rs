//! Each worker's HTTP/2 connections to each backend, and the choice of one per request.
//!
//! A worker keeps, per backend, a short list of connections in a thread-local (a task
//! never leaves its worker, so no lock is taken and no connection is shared between
//! threads). A request takes the first open connection with a free stream: fewer
//! streams active on it than the backend's current SETTINGS_MAX_CONCURRENT_STREAMS,
//! counted here by [`StreamSlot`]s, which live until the response body ends or is
//! dropped. Only when every connection is full is another opened.
//!
//! A connection being opened is shared: requests that arrive meanwhile wait for it
//! (up to [`ASSUMED_STREAMS`] of them) instead of each opening their own, then choose
//! again once the backend's limit is known. Each list is tagged with the pool's
//! [`Transport::id`], so a reload that changes the protocol or the TLS settings never
//! reuses a connection opened under the old ones.
//!
//! A connection leaves the list when its driver ends it (idle, dead, drained after
//! GOAWAY) or when h2 reports it can take no new stream (GOAWAY received, I/O failure);
//! its streams in flight go on, since they hold the connection themselves. While its
//! driver runs, a connection counts in the backend's `http2_connections` (`/status`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::ConnectFailure;
use super::driver::{self, ConnState, Spec};
use crate::backend::{Backend, BackendLive};
use crate::pool::Transport;

/// How many requests wait for a connection being opened before another is opened: the
/// streams it is assumed to take until its backend's SETTINGS say (RFC 9113 §6.5.2
/// recommends a limit of no fewer than 100).
const ASSUMED_STREAMS: usize = 100;

thread_local! {
    /// The worker's connections, by backend (the address of its live state).
    static CONNS: RefCell<HashMap<usize, BackendConns>> = RefCell::new(HashMap::new());
}

/// What a request needs to reach one backend over HTTP/2.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The backend.
    pub backend: &'a Backend,
    /// Its pool's transport (h2c or h2, with the TLS settings for h2).
    pub transport: &'a Transport,
    /// The pool's `connect_timeout`: the longest a request waits for a connection.
    pub connect_timeout: Duration,
    /// The pool's `keepalive_timeout`: a connection with no stream for this long closes.
    pub keepalive_timeout: Duration,
}

/// One worker's connections to one backend.
struct BackendConns {
    /// Whose: an entry whose backend state is gone (or was replaced) is stale.
    live: Weak<BackendLive>,
    /// The transport the connections were opened under.
    transport: u64,
    conns: Vec<Slot>,
}

/// One connection in a worker's list.
enum Slot {
    /// Being opened; `joined` requests are waiting for it.
    Connecting {
        attempt: Arc<Attempt>,
        joined: usize,
    },
    /// Open.
    Open {
        send: SendRequest<Bytes>,
        state: Arc<ConnState>,
    },
}

/// A connection being opened, which the requests waiting for it watch.
#[derive(Debug, Default)]
struct Attempt {
    /// Notified once when the connection is open or has failed.
    done: Notify,
    /// Set when it failed.
    failed: OnceLock<ConnectFailure>,
}

/// A stream's place on its connection, from checkout until the response body ends or
/// is dropped.
#[derive(Debug)]
pub struct StreamSlot {
    state: Arc<ConnState>,
}

impl StreamSlot {
    /// The connection can take no new stream (it received GOAWAY or failed).
    pub(super) fn close_conn(&self) {
        self.state.close();
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.state.stream_done();
    }
}

/// A connection chosen for one request, its stream already counted.
#[derive(Debug)]
pub struct Lease {
    pub(super) send: SendRequest<Bytes>,
    pub(super) slot: StreamSlot,
}

/// What [`choose`] found.
enum Choice {
    /// A connection with a free stream.
    Lease(Lease),
    /// Wait for this connection being opened.
    Wait(Arc<Attempt>),
    /// Open a connection (this request started the attempt).
    Open(Arc<Attempt>),
}

/// A connection to `target`'s backend with a free stream: an open one, or one opened
/// for it (waiting at most `connect_timeout`, shared with the requests that arrive
/// meanwhile).
pub async fn checkout(target: Target<'_>) -> Result<Lease, ConnectFailure> {
    let deadline = Instant::now() + target.connect_timeout;
    let key = key_of(&target.backend.live);
    // Each turn returns or waits for a connection being opened; every wait ends by the
    // deadline.
    loop {
        let attempt = match choose(key, target) {
            Choice::Lease(lease) => return Ok(lease),
            Choice::Wait(attempt) => attempt,
            Choice::Open(attempt) => {
                let spec = Spec {
                    addr: target.backend.addr,
                    name: Arc::clone(&target.backend.name),
                    tls: target.transport.tls.clone(),
                    connect_timeout: target.connect_timeout,
                    keepalive: target.keepalive_timeout,
                };
                let live = Arc::clone(&target.backend.live);
                tokio::spawn(open(key, live, spec, Arc::clone(&attempt)));
                attempt
            }
        };
        // Made before any await: the attempt ends on this thread, after this point.
        let done = attempt.done.notified();
        if tokio::time::timeout_at(deadline, done).await.is_err() {
            return Err(ConnectFailure::Timeout);
        }
        if let Some(failure) = attempt.failed.get() {
            return Err(failure.clone());
        }
    }
}

/// Opens the connection `attempt` stands for, offers it to requests, and drives it
/// until it ends, counted in the backend's HTTP/2 connections meanwhile.
async fn open(key: usize, live: Arc<BackendLive>, spec: Spec, attempt: Arc<Attempt>) {
    match driver::open(spec).await {
        Err(failure) => failed(key, &attempt, failure),
        Ok(opened) => {
            let _counted = live.open_http2_conn();
            opened_conn(key, &attempt, opened.send, opened.state);
            opened.drive.await;
        }
    }
}

fn key_of(live: &Arc<BackendLive>) -> usize {
    Arc::as_ptr(live) as usize
}

/// Picks a connection for one request: the first open one with a free stream, else
/// one being opened with room among its waiters, else a new one.
fn choose(key: usize, target: Target<'_>) -> Choice {
    CONNS.with(|conns| {
        let mut conns = conns.borrow_mut();
        let live = &target.backend.live;
        let entry = conns.entry(key).or_insert_with(|| BackendConns {
            live: Arc::downgrade(live),
            transport: target.transport.id,
            conns: Vec::new(),
        });
        // The key is the state's address: a state freed and another made at the same
        // address leaves a dead weak reference behind.
        if entry.transport != target.transport.id || entry.live.strong_count() == 0 {
            // Connections of another transport, or of a backend state now gone: left
            // to finish their streams and close.
            *entry = BackendConns {
                live: Arc::downgrade(live),
                transport: target.transport.id,
                conns: Vec::new(),
            };
        }
        // Closed connections are dropped from the list; h2 is asked (a lock) only
        // about the one about to be chosen.
        entry.conns.retain(|s| !s.is_closed());
        for slot in entry.conns.iter_mut() {
            match slot {
                Slot::Open { send, state } => {
                    let active = state.active.load(Ordering::Relaxed);
                    // A backend that allows no stream at all still gets one at a time
                    // (h2 holds it until the backend allows it) rather than a new
                    // connection per request.
                    let free = active < send.current_max_send_streams().max(1);
                    if free && takes_streams(send, state) {
                        state.active.store(active + 1, Ordering::Relaxed);
                        return Choice::Lease(Lease {
                            send: send.clone(),
                            slot: StreamSlot {
                                state: Arc::clone(state),
                            },
                        });
                    }
                }
                Slot::Connecting { attempt, joined } if *joined < ASSUMED_STREAMS => {
                    *joined += 1;
                    return Choice::Wait(Arc::clone(attempt));
                }
                Slot::Connecting { .. } => {}
            }
        }
        let attempt = Arc::new(Attempt::default());
        entry.conns.push(Slot::Connecting {
            attempt: Arc::clone(&attempt),
            joined: 1,
        });
        Choice::Open(attempt)
    })
}

impl Slot {
    /// An open connection that takes no new stream.
    fn is_closed(&self) -> bool {
        matches!(self, Slot::Open { state, .. } if state.is_closed())
    }
}

/// Whether an open connection may still take new streams: h2 does not report a GOAWAY
/// or a failure (asked without waiting). One that may not is closed for good.
fn takes_streams(send: &mut SendRequest<Bytes>, state: &ConnState) -> bool {
    if state.is_closed() {
        return false;
    }
    let mut cx = Context::from_waker(Waker::noop());
    if let Poll::Ready(Err(e)) = send.poll_ready(&mut cx) {
        tracing::debug!(error = %e, "HTTP/2 connection to backend takes no new streams");
        state.close();
        return false;
    }
    true
}

/// The driver opened the connection `attempt` stood for: it takes streams from now on.
/// If the list was replaced meanwhile (a reload changed the transport), nobody wants
/// it: `send` is dropped, and with no handle and no stream h2 ends the connection.
fn opened_conn(
    key: usize,
    attempt: &Arc<Attempt>,
    send: SendRequest<Bytes>,
    state: Arc<ConnState>,
) {
    CONNS.with(|conns| {
        let mut conns = conns.borrow_mut();
        if let Some(slot) = conns.get_mut(&key).and_then(|e| find(e, attempt)) {
            *slot = Slot::Open { send, state };
        }
    });
    attempt.done.notify_waiters();
}

/// The connection `attempt` stood for could not be opened: its waiters get `failure`.
fn failed(key: usize, attempt: &Arc<Attempt>, failure: ConnectFailure) {
    let _ = attempt.failed.set(failure);
    CONNS.with(|conns| {
        if let Some(entry) = conns.borrow_mut().get_mut(&key) {
            entry.conns.retain(
                |s| !matches!(s, Slot::Connecting { attempt: a, .. } if Arc::ptr_eq(a, attempt)),
            );
        }
    });
    attempt.done.notify_waiters();
}

fn find<'a>(entry: &'a mut BackendConns, attempt: &Arc<Attempt>) -> Option<&'a mut Slot> {
    entry
        .conns
        .iter_mut()
        .find(|s| matches!(s, Slot::Connecting { attempt: a, .. } if Arc::ptr_eq(a, attempt)))
}

/// The worker's heartbeat: forgets the connections that take no new streams and the
/// backends that are gone.
pub fn heartbeat() {
    let _ = CONNS.try_with(|conns| {
        if let Ok(mut conns) = conns.try_borrow_mut() {
            conns.retain(|_, entry| {
                entry.conns.retain_mut(|s| match s {
                    Slot::Open { send, state } => takes_streams(send, state),
                    Slot::Connecting { .. } => true,
                });
                entry.live.strong_count() > 0 && !entry.conns.is_empty()
            });
        }
    });
}

/// The worker has stopped: drops its connections.
pub fn clear_worker_state() {
    let _ = CONNS.try_with(|conns| {
        if let Ok(mut conns) = conns.try_borrow_mut() {
            conns.clear();
        }
    });
}
