//! Graceful shutdown as an object: a signal every accept loop and connection watches,
//! and a tracker of the connections and tunnels still running, so the daemon can wait
//! for them up to the grace period.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

/// The stop signal. Cloned into every task that must react to shutdown.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The sending side, held by the daemon.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

/// A new signal pair.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

impl ShutdownTrigger {
    /// Tells every watcher to stop.
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }

    /// A new watcher.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}

impl Shutdown {
    /// Resolves when shutdown begins (at once if it already has).
    pub async fn wait(&mut self) {
        flag_set(&mut self.rx).await;
    }
}

/// Resolves once a boolean watch channel holds `true`; never, if its sender is gone
/// while it is still `false`.
pub async fn flag_set(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Counts running connections and tunnels.
#[derive(Debug, Default)]
pub struct Tracker {
    inner: Arc<Counted>,
}

/// The count, and who waits for it to reach zero.
#[derive(Debug, Default)]
struct Counted {
    count: AtomicUsize,
    idle: Notify,
}

/// Held by one connection or tunnel for its lifetime (one pointer: every parked
/// connection keeps one).
#[derive(Debug)]
pub struct Tracked {
    inner: Arc<Counted>,
}

impl Tracker {
    /// An empty tracker.
    pub fn new() -> Tracker {
        Tracker::default()
    }

    /// Registers one running connection or tunnel.
    pub fn track(&self) -> Tracked {
        self.inner.count.fetch_add(1, Ordering::AcqRel);
        Tracked {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Connections and tunnels running now.
    pub fn running(&self) -> usize {
        self.inner.count.load(Ordering::Acquire)
    }

    /// Waits until nothing runs, or `limit` passes; returns whether everything ended.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.inner.idle.notified();
            if self.running() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.running() == 0;
            }
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.inner.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}
