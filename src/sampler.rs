//! The task that samples each pool's counters once a second into its [`History`]
//! (`history.rs`), for the dashboard's five-minute charts (DESIGN §11). Off the request
//! path: it reads the counters the request path keeps anyway.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::history::{INTERVAL, Reading};
use crate::pool::Pool;
use crate::shared::Shared;
use crate::shutdown::Shutdown;
use crate::stats::{LATENCY_BUCKETS, PoolStats};

fn reading(pool: &Pool, stats: &PoolStats) -> Reading {
    let (buckets, _, count) = stats.latency.read();
    let failed: u64 = pool.backends.iter().map(|b| b.live.errors()).sum();
    Reading {
        requests: count,
        errors: failed + stats.unavailable.load(Ordering::Relaxed),
        buckets,
    }
}

/// Takes one sample of every pool of the current snapshot.
pub fn sample(shared: &Shared, at: u64, elapsed: Duration) {
    let snapshot = shared.live.load();
    for pool in &snapshot.pools {
        let now = reading(pool, &pool.stats);
        if let Ok(mut h) = pool.stats.history.lock() {
            h.record(at, elapsed, now, &LATENCY_BUCKETS);
        }
    }
}

/// Starts the sampler on the current runtime; it ends with the daemon.
pub fn spawn(shared: &Arc<Shared>, mut shutdown: Shutdown) {
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait() => return,
            }
            let now = tokio::time::Instant::now();
            let at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            sample(&shared, at, now - last);
            last = now;
        }
    });
}
