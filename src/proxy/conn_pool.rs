//! Idle keep-alive connections to one backend.
//!
//! One stack of idle senders per worker slot: a worker takes and returns connections in
//! its own slot, so a connection and the requests on it stay on one thread and the
//! slot's mutex is never contended in practice. Last in, first out, so the warmest
//! connection is reused and surplus ones age out on the backend's own idle timeout.

use std::cell::Cell;
use std::sync::Mutex;

use super::upstream::UpConn;

/// Idle connections kept per backend per worker slot; beyond this, a finished
/// connection is closed instead of pooled.
pub const MAX_IDLE_PER_SLOT: usize = 1024;

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
    slots: Box<[Mutex<Vec<UpConn>>]>,
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
            slots: (0..SLOTS).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    /// Takes the most recently returned connection that is still usable; the backend
    /// may have closed the ones below it, which are dropped on the way.
    pub fn take(&self) -> Option<UpConn> {
        let mut idle = self.slots[slot()].lock().ok()?;
        while let Some(mut c) = idle.pop() {
            if c.is_usable() {
                return Some(c);
            }
        }
        None
    }

    /// Returns a connection whose response has completed.
    pub fn put(&self, s: UpConn) {
        if let Ok(mut idle) = self.slots[slot()].lock() {
            if idle.len() < MAX_IDLE_PER_SLOT {
                idle.push(s);
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
