//! Idle keep-alive connections to one backend.
//!
//! One stack of idle connections per worker slot: a worker takes and returns
//! connections in its own slot, so a connection and the requests on it stay on one
//! thread and the slot's mutex is never contended in practice. Last in, first out, so
//! the warmest connection is reused and surplus ones age out on the backend's own idle
//! timeout; each return also looks at the oldest one and drops it if the backend has
//! closed it, so closed connections do not linger (the look costs no system call).

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::Mutex;

use super::upstream::UpConn;

/// Idle connections kept per backend per worker slot; beyond this, a finished
/// connection is closed instead of pooled.
pub const MAX_IDLE_PER_SLOT: usize = 1024;

/// Idle connections per slot that keep their buffers for the next request: the most
/// recently returned, which are taken first; older ones (a burst's leftovers) keep
/// only their sockets.
const WARM_PER_SLOT: usize = 16;

/// Worker slots per backend. Workers beyond this share slots (still correct).
const SLOTS: usize = 16;

thread_local! {
    static WORKER_SLOT: Cell<usize> = const { Cell::new(0) };
}

/// Marks the current thread as worker `index`, so it uses its own slot in every pool.
pub fn set_worker_index(index: usize) {
    WORKER_SLOT.with(|s| s.set(index % SLOTS));
}

fn slot() -> usize {
    WORKER_SLOT.with(|s| s.get())
}

/// Idle connections to one backend.
#[derive(Debug)]
pub struct ConnPool {
    slots: Box<[Mutex<VecDeque<UpConn>>]>,
}

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

    /// Takes the most recently returned connection that is still usable; the backend
    /// may have closed the ones below it, which are dropped on the way.
    pub fn take(&self) -> Option<UpConn> {
        let mut idle = self.slots[slot()].lock().ok()?;
        while let Some(mut c) = idle.pop_back() {
            if c.is_usable() {
                return Some(c);
            }
        }
        None
    }

    /// Returns a connection whose response has completed.
    pub fn put(&self, s: UpConn) {
        if let Ok(mut idle) = self.slots[slot()].lock() {
            if idle.front_mut().is_some_and(|oldest| !oldest.is_usable()) {
                idle.pop_front();
            }
            if idle.len() < MAX_IDLE_PER_SLOT {
                idle.push_back(s);
            }
            // The connection that just left the warm top of the stack goes cold.
            if let Some(n) = idle.len().checked_sub(WARM_PER_SLOT + 1) {
                idle[n].release_buffers();
            }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};
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
            let c = pool.take().unwrap();
            pool.put(c);
        }
        assert_eq!(pool.idle(), 1);
        // The one left is the open one.
        assert!(pool.take().is_some());
        assert!(pool.take().is_none());
    }

    #[tokio::test]
    async fn only_the_newest_idle_connections_keep_their_buffers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = ConnPool::new();
        let mut peers = Vec::new();
        for _ in 0..WARM_PER_SLOT + 4 {
            let mut c = UpConn::connect(addr).await.unwrap();
            peers.push(listener.accept().await.unwrap().0);
            c.warm_for_test();
            assert!(c.buffer_capacity() > 0);
            pool.put(c);
        }
        let mut capacities = Vec::new();
        while let Some(c) = pool.take() {
            capacities.push(c.buffer_capacity());
        }
        // Taken newest first: the four returned first hold nothing.
        assert_eq!(capacities.len(), WARM_PER_SLOT + 4);
        assert!(
            capacities[..WARM_PER_SLOT].iter().all(|&c| c > 0),
            "{capacities:?}"
        );
        assert!(
            capacities[WARM_PER_SLOT..].iter().all(|&c| c == 0),
            "{capacities:?}"
        );
    }
}
