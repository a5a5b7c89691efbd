//! Idle keep-alive connections to one backend.
//!
//! One stack of idle senders per worker slot: a worker takes and returns connections in
//! its own slot, so the connection's task and the requests on it stay on one thread and
//! the slot's mutex is never contended in practice. Last in, first out, so the warmest
//! connection is reused and surplus ones age out on the backend's own idle timeout.

use std::cell::Cell;
use std::sync::Mutex;

use hyper::client::conn::http1::SendRequest;

use super::body::UpBody;

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
    slots: Box<[Mutex<Vec<SendRequest<UpBody>>>]>,
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

    /// Takes the most recently returned connection that is still open.
    pub fn take(&self) -> Option<SendRequest<UpBody>> {
        let mut idle = self.slots[slot()].lock().ok()?;
        while let Some(s) = idle.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    /// Returns a connection whose response has completed.
    pub fn put(&self, s: SendRequest<UpBody>) {
        if s.is_closed() {
            return;
        }
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
