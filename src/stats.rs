//! Counters the request path bumps and the admin listener reads: a pool's latency
//! histogram, its affinity placements, retries, refusals and queue waits. Plain relaxed atomics,
//! carried over reloads with the pool's name like a backend's live state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::balancer::Placement;

/// Upper bounds of the latency histogram's buckets, in seconds (Prometheus defaults).
pub const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A fixed-bucket histogram of durations.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative counts per bucket; the last slot is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    #[inline]
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket (the last is +Inf), sum in seconds, and count.
    pub fn read(&self) -> (Vec<u64>, f64, u64) {
        let mut acc = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                acc += b.load(Ordering::Relaxed);
                acc
            })
            .collect();
        (
            cumulative,
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            self.count.load(Ordering::Relaxed),
        )
    }
}

/// One pool's counters.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Time from request to response head, per request.
    pub latency: Histogram,
    /// Cookie placements of clients without a valid cookie.
    pub placements_new: AtomicU64,
    /// Cookie re-placements (backend down, disabled, gone).
    pub placements_replaced: AtomicU64,
    /// Attempts beyond the first.
    pub retries: AtomicU64,
    /// Requests answered 503 because no backend could take them.
    pub unavailable: AtomicU64,
    /// Requests sent again on a fresh connection because the reused one had been
    /// closed by the backend before any answer, or (HTTP/2) because the backend
    /// refused the stream unprocessed.
    pub stale_retries: AtomicU64,
    /// Time requests waited in the pool's queue for a slot, per request that waited
    /// (served or not).
    pub queue_wait: Histogram,
    /// Requests answered 503 because `queue_timeout` passed before a slot came free.
    pub queue_timeouts: AtomicU64,
    /// The last five minutes, one sample a second (the dashboard's charts); written by
    /// the history sampler only.
    pub history: std::sync::Mutex<crate::history::History>,
}

/// What clients did to their own requests, across every listener: never counted
/// against a backend.
#[derive(Debug)]
pub struct ClientEvents {
    /// Responses cut because the client made no progress reading them
    /// (`send_timeout`).
    pub send_timeouts: AtomicU64,
    /// Requests answered 408 because the body made no progress
    /// (`client_body_timeout`).
    pub body_timeouts: AtomicU64,
    /// Requests cancelled because their client closed the connection while the
    /// request was at the backend.
    pub aborted: AtomicU64,
}

/// The daemon's client event counters (process-wide: they describe clients, not the
/// config, so reloads do not touch them).
pub static CLIENT_EVENTS: ClientEvents = ClientEvents {
    send_timeouts: AtomicU64::new(0),
    body_timeouts: AtomicU64::new(0),
    aborted: AtomicU64::new(0),
};

impl PoolStats {
    /// Counts a placement kind that metrics report.
    #[inline]
    pub fn count_placement(&self, p: Placement) {
        match p {
            Placement::New => self.placements_new.fetch_add(1, Ordering::Relaxed),
            Placement::Replaced => self.placements_replaced.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
    }
}
