//! A listener's `max_connections`: how many client connections it holds at once.
//!
//! Beyond the limit the accept loops stop accepting, so new connections wait in the
//! kernel's accept queue (as nginx's `worker_connections` and HAProxy's `maxconn` do)
//! rather than being refused. One limit per listener, shared by every worker's accept
//! loop and carried over reloads by listener name, so connections accepted before a
//! reload still count; a reload that changes the number applies it at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::Notify;

/// The open-connection count of one listener and its limit.
#[derive(Debug, Default)]
pub struct ConnLimit {
    /// The most connections at once; 0 = unlimited. Written by reloads.
    max: AtomicU32,
    /// Connections open (or being accepted) now.
    open: AtomicU32,
    /// Wakes accept loops waiting for a free place.
    freed: Notify,
}

/// One connection's place under its listener's limit; freed on drop.
#[derive(Debug)]
pub struct ConnPermit {
    limit: Arc<ConnLimit>,
}

impl ConnLimit {
    /// A limit of `max` connections (0 = unlimited).
    pub fn new(max: u32) -> Arc<ConnLimit> {
        let limit = ConnLimit::default();
        limit.max.store(max, Ordering::Relaxed);
        Arc::new(limit)
    }

    /// Applies a reloaded `max_connections`.
    pub fn set_max(&self, max: u32) {
        self.max.store(max, Ordering::Relaxed);
        self.freed.notify_waiters();
    }

    /// Connections counted now.
    pub fn open(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }

    /// Waits for a free place and takes it.
    pub async fn acquire(self: &Arc<Self>) -> ConnPermit {
        loop {
            let freed = self.freed.notified();
            if self.try_take() {
                return ConnPermit {
                    limit: Arc::clone(self),
                };
            }
            freed.await;
        }
    }

    fn try_take(&self) -> bool {
        let mut n = self.open.load(Ordering::Relaxed);
        loop {
            let max = self.max.load(Ordering::Relaxed);
            if max != 0 && n >= max {
                return false;
            }
            match self
                .open
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => n = now,
            }
        }
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.limit.open.fetch_sub(1, Ordering::AcqRel);
        self.limit.freed.notify_one();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_full_limit_waits_until_a_place_is_freed_or_the_limit_is_raised() {
        let limit = ConnLimit::new(2);
        let a = limit.acquire().await;
        let _b = limit.acquire().await;
        let third = tokio::time::timeout(Duration::from_millis(50), limit.acquire()).await;
        assert!(third.is_err(), "a third place waits");
        let waiting = tokio::spawn({
            let limit = Arc::clone(&limit);
            async move { limit.acquire().await }
        });
        drop(a);
        let c = tokio::time::timeout(Duration::from_secs(10), waiting).await;
        let _c = c.unwrap().unwrap();
        assert_eq!(limit.open(), 2);
        limit.set_max(0);
        let _unlimited = limit.acquire().await;
        assert_eq!(limit.open(), 3);
    }
}
