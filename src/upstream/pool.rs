//! Idle keep-alive connections to one backend.
//!
//! One stack of idle connections per worker slot: a worker takes and returns
//! connections in its own slot, so a connection and the requests on it stay on one
//! thread and the slot's mutex is never contended in practice. Last in, first out, so
//! the warmest connection is reused and surplus ones age out on the backend's own idle
//! timeout; each return also looks at the oldest one and drops it if the backend has
//! closed it, so closed connections do not linger (the look costs no system call).
//!
//! Each heartbeat (twice a second) also closes the worker's idle connections that have
//! been idle for the pool's `keepalive_timeout` or that the backend has closed, so no
//! socket lingers in CLOSE_WAIT waiting for the next request to notice.
//!
//! An idle connection keeps its buffers while it is part of the working set: returned
//! within the last heartbeat or two (half a second to a second). At each
//! of its worker's heartbeats the older ones give theirs back ([`heartbeat`]). A
//! fixed number of warm connections instead made every request take a cold connection
//! (three allocations and fresh memory) whenever more requests were at a backend at
//! once than that number, while an age keeps exactly the connections traffic reuses.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use super::UpConn;
use crate::backend::{BackendLive, IdleConns};

/// Idle connections kept per backend per worker slot; beyond this, a finished
/// connection is closed instead of pooled.
pub const MAX_IDLE_PER_SLOT: usize = 1024;

/// Worker slots per backend. Workers beyond this share slots (still correct).
const SLOTS: usize = 16;

thread_local! {
    static WORKER_SLOT: Cell<usize> = const { Cell::new(0) };
    /// This worker's heartbeats so far: the age of an idle connection, coarsely.
    static BEAT: Cell<u32> = const { Cell::new(0) };
}

/// How often the worker's heartbeat runs, which is the resolution of the keep-alive
/// timeout.
pub const HEARTBEAT: Duration = Duration::from_millis(500);

/// One heartbeat of the current worker: counts it, then sweeps each of `pools` (the
/// worker's slot in every backend's pool) with that pool's `keepalive_timeout`.
pub fn heartbeat<'a>(pools: impl IntoIterator<Item = (&'a ConnPool, Duration)>) {
    BEAT.with(|b| b.set(b.get().wrapping_add(1)));
    for (pool, keepalive) in pools {
        pool.sweep(beats(keepalive));
    }
}

/// Heartbeats in `d`, at least one: a connection idle for that many is closed. Rounded
/// down, so a connection never stays idle longer than `d`.
fn beats(d: Duration) -> u32 {
    let n = d.as_millis() / HEARTBEAT.as_millis();
    u32::try_from(n).unwrap_or(u32::MAX).max(1)
}

fn beat() -> u32 {
    BEAT.with(|b| b.get())
}

/// Marks the current thread as worker `index`, so it uses its own slot in every pool.
pub fn set_worker_index(index: usize) {
    WORKER_SLOT.with(|s| s.set(index % SLOTS));
}

fn slot() -> usize {
    WORKER_SLOT.with(|s| s.get())
}

/// The idle connections of `live`'s backend (made on first use).
#[inline]
pub fn of(live: &BackendLive) -> Option<&ConnPool> {
    live.conns
        .get_or_init(|| Box::new(ConnPool::new()))
        .as_any()
        .downcast_ref()
}

/// Idle connections to one backend.
#[derive(Debug)]
pub struct ConnPool {
    /// Per worker slot.
    slots: Box<[Mutex<Idle>]>,
}

/// One slot's idle connections, oldest first, each with the [`heartbeat`] count when
/// it was returned.
type Idle = VecDeque<(u32, UpConn)>;

impl Default for ConnPool {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnPool {
    /// An empty pool.
    pub fn new() -> ConnPool {
        ConnPool {
            slots: (0..SLOTS).map(|_| Mutex::new(VecDeque::new())).collect(),
        }
    }

    /// Takes the most recently returned connection that is still usable and was opened
    /// under the transport with id `transport`; the backend may have closed the ones
    /// below it, and a reload may have changed the pool's transport (its protocol or
    /// its TLS files): those are dropped on the way.
    pub fn take(&self, transport: u64) -> Option<UpConn> {
        let mut idle = self.slots[slot()].lock().ok()?;
        while let Some((_, mut c)) = idle.pop_back() {
            if c.transport() == transport && c.is_usable() {
                return Some(c);
            }
        }
        None
    }

    /// Returns a connection whose response has completed.
    pub fn put(&self, s: UpConn) {
        if let Ok(mut idle) = self.slots[slot()].lock() {
            if idle
                .front_mut()
                .is_some_and(|(_, oldest)| !oldest.is_usable())
            {
                idle.pop_front();
            }
            if idle.len() < MAX_IDLE_PER_SLOT {
                idle.push_back((beat(), s));
            }
        }
    }

    /// Closes this worker's connections idle for `max_idle` heartbeats or closed by
    /// the backend, and frees the buffers of those idle since before the previous
    /// heartbeat (they keep their sockets). Called by [`heartbeat`].
    fn sweep(&self, max_idle: u32) {
        let now = beat();
        let Ok(mut idle) = self.slots[slot()].lock() else {
            return;
        };
        // Oldest first: the expired ones are at the front.
        while idle
            .front()
            .is_some_and(|(returned, _)| now.wrapping_sub(*returned) >= max_idle)
        {
            idle.pop_front();
        }
        idle.retain_mut(|(_, c)| c.is_usable());
        for (returned, c) in idle.iter_mut() {
            if now.wrapping_sub(*returned) < 2 {
                break;
            }
            c.release_buffers();
        }
    }

    /// Idle connections across all slots.
    pub fn idle(&self) -> usize {
        self.slots
            .iter()
            .map(|s| s.lock().map(|v| v.len()).unwrap_or(0))
            .sum()
    }

    /// Drops every idle connection (backend removed or process stopping).
    pub fn clear(&self) {
        for s in self.slots.iter() {
            if let Ok(mut v) = s.lock() {
                v.clear();
            }
        }
    }
}

impl IdleConns for ConnPool {
    fn idle(&self) -> usize {
        ConnPool::idle(self)
    }

    fn clear(&self) {
        ConnPool::clear(self);
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn closed_connections_are_skipped_and_swept() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let old = UpConn::connect(addr).await.unwrap();
        let (old_peer, _) = listener.accept().await.unwrap();
        let warm = UpConn::connect(addr).await.unwrap();
        let (_warm_peer, _) = listener.accept().await.unwrap();
        let pool = ConnPool::new();
        pool.put(old);
        pool.put(warm);
        assert_eq!(pool.idle(), 2);
        drop(old_peer);
        // Each return of the warm connection looks at the oldest one; once the close
        // has been seen, the closed one is gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.idle() > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let c = pool.take(0).unwrap();
            pool.put(c);
        }
        assert_eq!(pool.idle(), 1);
        // The one left is the open one.
        assert!(pool.take(0).is_some());
        assert!(pool.take(0).is_none());
    }

    #[tokio::test]
    async fn a_connection_opened_under_another_transport_is_dropped_not_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = ConnPool::new();
        let mut peers = Vec::new();
        for transport in [7, 8] {
            let tcp = super::super::connect::tcp(addr).await.unwrap();
            peers.push(listener.accept().await.unwrap().0);
            pool.put(UpConn::plain(tcp, transport));
        }
        // Under transport 7, the newer connection (8's) is dropped on the way to 7's.
        assert_eq!(pool.take(7).map(|c| c.transport()), Some(7));
        assert_eq!(pool.idle(), 0);
        let tcp = super::super::connect::tcp(addr).await.unwrap();
        peers.push(listener.accept().await.unwrap().0);
        pool.put(UpConn::plain(tcp, 7));
        assert!(pool.take(9).is_none());
        assert_eq!(pool.idle(), 0, "a reload's new transport starts afresh");
    }

    #[tokio::test]
    async fn connections_idle_since_before_the_last_heartbeat_give_back_their_buffers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = ConnPool::new();
        let mut peers = Vec::new();
        let put_warm = |pool: &ConnPool, c: Option<UpConn>| {
            let mut c = c.unwrap();
            c.warm_for_test();
            assert!(c.buffer_capacity() > 0);
            pool.put(c);
        };
        // Many more than a handful at once: all of them stay warm while recent.
        for _ in 0..40 {
            let c = UpConn::connect(addr).await.ok();
            peers.push(listener.accept().await.unwrap().0);
            put_warm(&pool, c);
        }
        let long = Duration::from_secs(3600);
        heartbeat([(&pool, long)]);
        let warm = |pool: &ConnPool| {
            let idle = pool.slots[slot()].lock().unwrap();
            idle.iter().filter(|(_, c)| c.buffer_capacity() > 0).count()
        };
        assert_eq!(warm(&pool), 40, "returned within the last heartbeat");
        // Ten of them serve again after that heartbeat; the other thirty do not.
        let reused: Vec<_> = (0..10).map(|_| pool.take(0)).collect();
        for c in reused {
            put_warm(&pool, c);
        }
        heartbeat([(&pool, long)]);
        let mut capacities = Vec::new();
        while let Some(c) = pool.take(0) {
            capacities.push(c.buffer_capacity());
        }
        // Taken newest first: the ten reused ones are warm, the thirty idle for two
        // heartbeats hold nothing.
        assert_eq!(capacities.len(), 40);
        assert!(capacities[..10].iter().all(|&c| c > 0), "{capacities:?}");
        assert!(capacities[10..].iter().all(|&c| c == 0), "{capacities:?}");
    }

    #[tokio::test]
    async fn heartbeats_close_connections_past_keepalive_and_those_the_backend_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = ConnPool::new();
        let mut peers = Vec::new();
        for _ in 0..3 {
            let c = UpConn::connect(addr).await.unwrap();
            peers.push(listener.accept().await.unwrap().0);
            pool.put(c);
        }
        // The backend closes one while it is idle: the next beat reaps it, with no
        // request needed to notice.
        drop(peers.pop());
        let keepalive = Duration::from_secs(2);
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.idle() > 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
            heartbeat([(&pool, keepalive)]);
        }
        assert_eq!(pool.idle(), 2, "the closed connection is reaped");
        // Idle for the keep-alive timeout (4 beats of 500 ms): closed.
        for _ in 0..beats(keepalive) {
            heartbeat([(&pool, keepalive)]);
        }
        assert_eq!(pool.idle(), 0);
        assert_eq!(beats(Duration::from_millis(100)), 1);
        assert_eq!(beats(Duration::from_millis(4200)), 8);
    }
}
