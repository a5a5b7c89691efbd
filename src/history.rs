//! The last five minutes of each pool, one sample a second, kept in the daemon so that
//! a dashboard opened now draws them at once (DESIGN §11, "look instead of read").
//!
//! A sampler task (`sampler.rs`) reads each pool's counters once a second: requests (the pool's
//! latency histogram counts every request it answered), errors (its backends' failed
//! requests plus the requests refused for want of a backend) and the latency
//! histogram's buckets; the difference from the second before gives requests per
//! second, the error rate, and the 99th percentile of that second's latencies
//! (interpolated within its histogram bucket). Samples live in a ring of
//! [`SAMPLES`] in the pool's `PoolStats`, which reloads carry over by pool name.
//! Nothing here is on the request path.

use std::collections::VecDeque;
use std::time::Duration;

/// Seconds of history kept: five minutes.
pub const SAMPLES: usize = 300;

/// How often a sample is taken.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// One second of one pool.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Unix seconds at the end of the second.
    pub at: u64,
    /// Requests answered per second.
    pub rps: f64,
    /// Failed requests per request answered, 0 to 1 (0 without requests).
    pub error_rate: f64,
    /// 99th percentile latency in milliseconds; `None` without requests.
    pub p99_ms: Option<f64>,
}

/// A pool's history and the counter readings the next sample is taken against.
#[derive(Debug, Default)]
pub struct History {
    samples: VecDeque<Sample>,
    last: Option<Reading>,
}

/// Cumulative counters at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Requests answered so far.
    pub requests: u64,
    /// Requests failed so far.
    pub errors: u64,
    /// Bucket counts of the latency histogram (the last is +Inf).
    pub buckets: Vec<u64>,
}

impl History {
    /// The samples, oldest first.
    pub fn samples(&self) -> impl ExactSizeIterator<Item = &Sample> {
        self.samples.iter()
    }

    /// Records the second that ends at `at` (unix seconds), `elapsed` after the last
    /// reading, from `now`'s counters, whose histogram has the upper `bounds` (seconds).
    /// The first reading only sets the baseline.
    pub fn record(&mut self, at: u64, elapsed: Duration, now: Reading, bounds: &[f64]) {
        let Some(last) = self.last.replace(now.clone()) else {
            return;
        };
        let secs = elapsed.as_secs_f64().max(1e-3);
        // Counters only grow; a backend leaving the pool takes its errors with it, so a
        // difference that would be negative counts as none.
        let requests = now.requests.saturating_sub(last.requests);
        let errors = now.errors.saturating_sub(last.errors);
        let deltas: Vec<u64> = now
            .buckets
            .iter()
            .zip(last.buckets.iter().chain(std::iter::repeat(&0u64)))
            .map(|(n, l)| n.saturating_sub(*l))
            .collect();
        if self.samples.len() == SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            at,
            rps: requests as f64 / secs,
            error_rate: if requests == 0 {
                0.0
            } else {
                (errors as f64 / requests as f64).min(1.0)
            },
            p99_ms: percentile(bounds, &deltas, 0.99).map(|s| s * 1e3),
        });
    }
}

/// The `q` quantile in seconds of a histogram given as cumulative counts per bucket
/// of upper `bounds` (seconds; one more count, +Inf, at the end), interpolated
/// linearly within the bucket it falls in; `None` for an empty histogram. Beyond the
/// last bound it is that bound.
pub fn percentile(bounds: &[f64], cumulative: &[u64], q: f64) -> Option<f64> {
    let total = *cumulative.last()?;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let i = cumulative.iter().position(|&c| c as f64 >= rank)?;
    let Some(&upper) = bounds.get(i) else {
        return bounds.last().copied();
    };
    let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
    let below = if i == 0 { 0 } else { cumulative[i - 1] };
    let in_bucket = (cumulative[i] - below) as f64;
    let frac = if in_bucket > 0.0 {
        (rank - below as f64) / in_bucket
    } else {
        1.0
    };
    Some(lower + (upper - lower) * frac.clamp(0.0, 1.0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The daemon's bounds (`stats::LATENCY_BUCKETS`).
    const LATENCY_BUCKETS: [f64; 11] = [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];

    fn reading(requests: u64, errors: u64, buckets: &[u64]) -> Reading {
        Reading {
            requests,
            errors,
            buckets: buckets.to_vec(),
        }
    }

    #[test]
    fn samples_are_per_second_differences_and_the_ring_keeps_five_minutes() {
        let mut h = History::default();
        let sec = Duration::from_secs(1);
        let zeros = vec![0u64; LATENCY_BUCKETS.len() + 1];
        h.record(100, sec, reading(0, 0, &zeros), &LATENCY_BUCKETS);
        assert_eq!(h.samples().len(), 0, "the first reading is the baseline");
        // 100 requests in the second, 10 failed, 99 within 5 ms and one at 20 ms.
        let mut b = vec![99u64; LATENCY_BUCKETS.len() + 1];
        b[0] = 99;
        for c in b.iter_mut().skip(2) {
            *c = 100;
        }
        h.record(101, sec, reading(100, 10, &b), &LATENCY_BUCKETS);
        let s = *h.samples().next().unwrap();
        assert_eq!((s.at, s.rps, s.error_rate), (101, 100.0, 0.1));
        assert!(s.p99_ms.is_some_and(|p| p <= 5.0), "{s:?}");
        for t in 0..400 {
            h.record(102 + t, sec, reading(100, 10, &b), &LATENCY_BUCKETS);
        }
        assert_eq!(h.samples().len(), SAMPLES);
        let last = h.samples().last().map(|s| (s.at, s.rps, s.p99_ms));
        assert_eq!(last, Some((501, 0.0, None)), "an idle second");
    }

    #[test]
    fn percentile_interpolates_within_its_bucket() {
        let mut c = vec![0u64; LATENCY_BUCKETS.len() + 1];
        for (i, v) in c.iter_mut().enumerate() {
            *v = if i >= 3 { 100 } else { 0 };
        }
        // All 100 in the (25 ms, 50 ms] bucket: the 99th is near its top.
        let p = percentile(&LATENCY_BUCKETS, &c, 0.99).unwrap();
        assert!((0.049..=0.05).contains(&p), "{p}");
        assert_eq!(percentile(&LATENCY_BUCKETS, &[0; 12], 0.99), None);
    }
}
