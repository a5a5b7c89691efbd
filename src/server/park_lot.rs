//! The parking lot: where a worker keeps its idle HTTP/1 client connections.
//!
//! Ten thousand idle keep-alive clients should cost what their sockets cost, as they
//! do in nginx, not ten thousand tasks. A parked connection is an entry in its worker's
//! lot: the socket, what serving it again needs ([`Conn`]), and a slot in one timer
//! queue; a single task per worker waits for all of them. It wakes when a parked
//! socket turns readable (each slot registers its own waker with the socket, so only
//! that slot is looked at), when the earliest idle deadline passes, or when a
//! listener's close signal fires, and then hands the connection to a new connection
//! task (through the [`Resume`] function the lot was created with), or closes it.
//!
//! The lot is thread-local, created by its worker: workers run single-threaded
//! runtimes ([`super::workers`]), so a connection, the lot it parks in and the lot's
//! task stay on one thread.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::LocalKey;
use std::time::Duration;

use atomic_waker::AtomicWaker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Sleep;

use super::conn::{ClientStream, CloseSignals, Conn, Timeouts};
use super::heap_trim;
use crate::backend::clock_ms;
use crate::conn_limit::ConnPermit;
use crate::proxy::ConnInfo;
use crate::shared::Shared;
use crate::shutdown::Tracked;

/// How long closing a parked connection may take (a TLS close_notify, a FIN).
const CLOSE_LIMIT: Duration = Duration::from_secs(1);

/// Connections parked (each freeing its HTTP buffers) before the lot returns freed
/// memory to the system, and the least time between two returns.
const TRIM_AFTER_PARKS: u32 = 64;
const TRIM_GAP_MS: u64 = 250;

/// What became of a connection offered to the lot.
#[derive(Debug)]
pub(super) enum Parking<IO> {
    /// It waits in the lot.
    Parked,
    /// The client already sent more: serve it now.
    Readable(IO, Conn),
    /// It should close: idle too long, or its listener is closing. The tracker keeps
    /// a graceful shutdown waiting until the close is done.
    Close(IO, Tracked),
}

/// A stream type with a lot of its own on each worker thread.
pub(super) trait Parkable: ClientStream + Sized {
    /// This thread's lot for this stream type.
    fn lot() -> &'static LocalKey<RefCell<Lot<Self>>>;
}

/// Serves a connection the lot gives back (its client sent again): the future of the
/// new connection task that takes over the socket. Given to a lot once, when its worker
/// creates it; boxed, because that task may park the connection in the lot again.
pub(super) type Resume<IO> = fn(Conn, IO) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// Parks `io` until the client sends again (a new connection task then serves it),
/// the idle `deadline` (a [`clock_ms`]) passes, or its listener closes.
pub(super) fn park<IO: Parkable>(io: IO, conn: Conn, deadline: u64) -> Parking<IO> {
    IO::lot().with(|lot| lot.borrow_mut().park(io, conn, deadline))
}

/// Closes a connection that will not be served again, in a task of its own: the write
/// side is shut (FIN, or TLS close_notify first), then what the client still sends is
/// read and dropped until it closes too, within [`CLOSE_LIMIT`]. Closing a socket with
/// unread bytes would reset it, and a client whose next request crossed the FIN would
/// see a reset instead of a clean end it can retry on (RFC 9112 §9.6).
pub(super) fn close<IO: ClientStream>(mut io: IO, tracked: Tracked) {
    tokio::spawn(async move {
        let _tracked = tracked;
        let _ = tokio::time::timeout(CLOSE_LIMIT, async {
            if io.shutdown().await.is_err() {
                return;
            }
            let mut sink = [0u8; 512];
            while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    });
}

/// One parked connection: its [`Conn`] but for the close signal, which its watcher
/// keeps, and with the connection info inline rather than shared.
struct Parked<IO> {
    io: IO,
    shared: Arc<Shared>,
    info: ConnInfo,
    /// The header, idle and send timeouts in milliseconds, kept small.
    timeouts_ms: [u32; 3],
    tracked: Tracked,
    /// Its place under the listener's `max_connections`: a parked connection counts.
    permit: ConnPermit,
    /// Which of the lot's close watchers covers its listener.
    watcher: u32,
}

/// A timeout in milliseconds (up to 49 days).
fn compact(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// A place in the lot. The generation tells a deadline queued for an earlier occupant
/// from one queued for this.
struct Slot<IO> {
    generation: u32,
    parked: Option<Parked<IO>>,
}

/// A listener's close signal, watched once for all of its parked connections.
struct Watcher {
    signal: CloseSignals,
    fired: Pin<Box<dyn Future<Output = ()> + Send>>,
    done: bool,
}

/// Slots whose sockets woke, and the lot's task to wake for them.
#[derive(Default)]
struct Ready {
    slots: Mutex<Vec<u32>>,
    task: AtomicWaker,
}

/// The waker one slot registers with its socket.
struct SlotWaker {
    ready: Arc<Ready>,
    slot: u32,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Ok(mut slots) = self.ready.slots.lock() {
            slots.push(self.slot);
        }
        self.ready.task.wake();
    }
}

/// One worker's parked connections of one stream type.
pub(super) struct Lot<IO> {
    slots: Vec<Slot<IO>>,
    /// A waker per slot, made once and kept for the slot's later occupants.
    wakers: Vec<Waker>,
    vacant: Vec<u32>,
    parked: usize,
    /// Idle deadlines, earliest first: (deadline, slot, generation).
    deadlines: BinaryHeap<Reverse<(u64, u32, u32)>>,
    watchers: Vec<Watcher>,
    ready: Arc<Ready>,
    /// Spare buffer swapped with the ready list, so neither is reallocated.
    spare: Vec<u32>,
    /// The lot's task is running on this thread.
    running: bool,
    timer: Option<Pin<Box<Sleep>>>,
    timer_at: u64,
    /// Connections parked since memory was last returned to the system, and when.
    parked_since_trim: u32,
    last_trim: u64,
    /// Serves a connection whose client sent again.
    serve_again: Resume<IO>,
}

impl<IO: Parkable> Lot<IO> {
    /// An empty lot that hands connections whose clients send again to `serve_again`.
    pub(super) fn new(serve_again: Resume<IO>) -> Lot<IO> {
        Lot {
            slots: Vec::new(),
            wakers: Vec::new(),
            vacant: Vec::new(),
            parked: 0,
            deadlines: BinaryHeap::new(),
            watchers: Vec::new(),
            ready: Arc::new(Ready::default()),
            spare: Vec::new(),
            running: false,
            timer: None,
            timer_at: u64::MAX,
            parked_since_trim: 0,
            last_trim: 0,
            serve_again,
        }
    }

    fn park(&mut self, io: IO, conn: Conn, deadline: u64) -> Parking<IO> {
        if conn.close.is_set() || clock_ms() >= deadline {
            return Parking::Close(io, conn.tracked);
        }
        let slot = match self.vacant.pop() {
            Some(s) => s,
            None => {
                let s = self.slots.len() as u32;
                self.slots.push(Slot {
                    generation: 0,
                    parked: None,
                });
                self.wakers.push(Waker::from(Arc::new(SlotWaker {
                    ready: Arc::clone(&self.ready),
                    slot: s,
                })));
                s
            }
        };
        // Registers the slot's waker with the socket, unless it is readable already.
        let mut cx = Context::from_waker(&self.wakers[slot as usize]);
        match io.socket().poll_read_ready(&mut cx) {
            Poll::Pending => {}
            Poll::Ready(Ok(())) => {
                self.vacant.push(slot);
                return Parking::Readable(io, conn);
            }
            Poll::Ready(Err(_)) => {
                self.vacant.push(slot);
                return Parking::Close(io, conn.tracked);
            }
        }
        let watcher = self.watcher_for(&conn.close);
        conn.shared
            .parked
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let entry = &mut self.slots[slot as usize];
        entry.generation = entry.generation.wrapping_add(1);
        entry.parked = Some(Parked {
            io,
            shared: conn.shared,
            // The service's copy goes when the connection task ends.
            info: Arc::unwrap_or_clone(conn.info),
            timeouts_ms: [
                compact(conn.timeouts.header),
                compact(conn.timeouts.idle),
                compact(conn.timeouts.send),
            ],
            tracked: conn.tracked,
            permit: conn.permit,
            watcher,
        });
        self.parked += 1;
        self.parked_since_trim = self.parked_since_trim.saturating_add(1);
        self.deadlines
            .push(Reverse((deadline, slot, entry.generation)));
        if !self.running {
            self.running = true;
            tokio::spawn(LotTask::<IO>(PhantomData));
        }
        // The task arms its timer for the new deadline and polls a new watcher.
        self.ready.task.wake();
        Parking::Parked
    }

    /// The index of the watcher for `signal`'s listener, added if new.
    fn watcher_for(&mut self, signal: &CloseSignals) -> u32 {
        if let Some(i) = self
            .watchers
            .iter()
            .position(|w| !w.done && w.signal.same_as(signal))
        {
            return i as u32;
        }
        let mut waiting = signal.clone();
        let watcher = Watcher {
            signal: signal.clone(),
            fired: Box::pin(async move { waiting.wait().await }),
            done: false,
        };
        match self.watchers.iter().position(|w| w.done) {
            Some(i) => {
                self.watchers[i] = watcher;
                i as u32
            }
            None => {
                self.watchers.push(watcher);
                (self.watchers.len() - 1) as u32
            }
        }
    }

    /// Takes the connection out of `slot`.
    fn take(&mut self, slot: u32) -> Option<Parked<IO>> {
        let parked = self.slots.get_mut(slot as usize)?.parked.take()?;
        self.vacant.push(slot);
        self.parked -= 1;
        parked
            .shared
            .parked
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        Some(parked)
    }

    fn resume(&mut self, slot: u32) {
        if let Some(p) = self.take(slot) {
            let conn = Conn {
                shared: p.shared,
                info: Arc::new(p.info),
                timeouts: Timeouts {
                    header: Duration::from_millis(p.timeouts_ms[0].into()),
                    idle: Duration::from_millis(p.timeouts_ms[1].into()),
                    send: Duration::from_millis(p.timeouts_ms[2].into()),
                },
                close: self.watchers[p.watcher as usize].signal.clone(),
                tracked: p.tracked,
                permit: p.permit,
            };
            tokio::spawn((self.serve_again)(conn, p.io));
        }
    }

    fn close(&mut self, slot: u32) {
        if let Some(p) = self.take(slot) {
            close(p.io, p.tracked);
        }
    }

    /// The lot's task: serves what woke it.
    fn poll(&mut self, cx: &mut Context<'_>) {
        self.ready.task.register(cx.waker());
        // Sockets that turned readable (or closed).
        let mut woken = std::mem::take(&mut self.spare);
        if let Ok(mut slots) = self.ready.slots.lock() {
            std::mem::swap(&mut *slots, &mut woken);
        }
        for &slot in &woken {
            let Some(Slot {
                parked: Some(p), ..
            }) = self.slots.get(slot as usize)
            else {
                continue;
            };
            let mut slot_cx = Context::from_waker(&self.wakers[slot as usize]);
            match p.io.socket().poll_read_ready(&mut slot_cx) {
                Poll::Pending => {}
                Poll::Ready(Ok(())) => self.resume(slot),
                Poll::Ready(Err(_)) => self.close(slot),
            }
        }
        woken.clear();
        self.spare = woken;
        // Listeners closing: shutdown, or retired by a reload.
        for w in 0..self.watchers.len() {
            let watcher = &mut self.watchers[w];
            if watcher.done || watcher.fired.as_mut().poll(cx).is_pending() {
                continue;
            }
            watcher.done = true;
            for slot in 0..self.slots.len() as u32 {
                if matches!(&self.slots[slot as usize].parked, Some(p) if p.watcher == w as u32) {
                    self.close(slot);
                }
            }
        }
        self.on_time(cx);
    }

    /// Closes the connections whose idle deadline passed, gives memory back after a
    /// burst of parking ([`heap_trim`]), and arms the timer for what is next.
    fn on_time(&mut self, cx: &mut Context<'_>) {
        loop {
            let now = clock_ms();
            while let Some(&Reverse((deadline, slot, generation))) = self.deadlines.peek() {
                if deadline > now {
                    break;
                }
                self.deadlines.pop();
                if self.slots[slot as usize].generation == generation {
                    self.close(slot);
                }
            }
            let trim_due = (self.parked_since_trim >= TRIM_AFTER_PARKS)
                .then(|| self.last_trim.saturating_add(TRIM_GAP_MS));
            if trim_due.is_some_and(|due| due <= now) {
                heap_trim::release_free_memory();
                self.parked_since_trim = 0;
                self.last_trim = now;
            }
            // Deadlines of connections that resumed stay queued until due; rebuilt when
            // they outnumber the parked ones.
            if self.deadlines.len() > 2 * self.parked + 1024 {
                let slots = &self.slots;
                self.deadlines.retain(|Reverse((_, slot, generation))| {
                    let s = &slots[*slot as usize];
                    s.parked.is_some() && s.generation == *generation
                });
            }
            let deadline = self.deadlines.peek().map(|&Reverse((at, _, _))| at);
            let trim_due = (self.parked_since_trim >= TRIM_AFTER_PARKS)
                .then(|| self.last_trim.saturating_add(TRIM_GAP_MS));
            let Some(next) = deadline.into_iter().chain(trim_due).min() else {
                return;
            };
            let at = tokio::time::Instant::now() + Duration::from_millis(next - now);
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            if self.timer_at != next {
                timer.as_mut().reset(at);
                self.timer_at = next;
            }
            if timer.as_mut().poll(cx).is_pending() {
                return;
            }
            self.timer_at = u64::MAX;
        }
    }

    /// Closes everything: the worker is ending.
    pub(super) fn clear(&mut self) {
        for slot in 0..self.slots.len() as u32 {
            if let Some(p) = self.take(slot) {
                drop(p);
            }
        }
        self.deadlines.clear();
        self.watchers.clear();
        self.timer = None;
        self.timer_at = u64::MAX;
        self.running = false;
    }
}

/// The task that runs one lot on its worker. When the worker's runtime drops it, the
/// lot's connections are dropped with it.
struct LotTask<IO: Parkable>(PhantomData<fn() -> IO>);

impl<IO: Parkable> Future for LotTask<IO> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        IO::lot().with(|lot| lot.borrow_mut().poll(cx));
        Poll::Pending
    }
}

impl<IO: Parkable> Drop for LotTask<IO> {
    fn drop(&mut self) {
        let _ = IO::lot().try_with(|lot| {
            if let Ok(mut lot) = lot.try_borrow_mut() {
                lot.clear();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a parked connection costs the lot, beside its socket's registration and
    /// its shared connection info: one slot, one waker, one queued deadline.
    #[test]
    fn a_slot_stays_small() {
        let size = std::mem::size_of::<Slot<tokio::net::TcpStream>>();
        assert!(
            size <= 128,
            "a parked TCP connection's slot is {size} bytes"
        );
    }
}
