//! The peak-EWMA latency estimate of DESIGN §13: one [`Estimate`] per backend, kept in
//! its live state so that it survives reloads like the other counters.
//!
//! Only `peak-ewma` pools feed it (`balancer/peak_ewma.rs` holds the pool's settings
//! and its median): an answer's head is sampled at its latency, a failed attempt at the
//! pool's `penalty`. Everything is atomics and a caller's clock reading in nanoseconds
//! ([`clock_ns`]), so tests drive it with a clock of their own; nothing here allocates,
//! locks or blocks.
//!
//! The estimate at time `t` is the value stored at `t0` decayed towards 0:
//! `v · exp(−(t − t0) / decay)`. An answer slower than that replaces it at once (the
//! peak); a faster one pulls it down by the EWMA weight of the time since the last
//! update. So a backend that turns slow is avoided from its next answer on, and one that
//! was slow is tried again as its estimate decays.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Stored estimate bits meaning "never measured" (the bits of 0.0, which is never
/// stored: a stored estimate is at least one nanosecond).
pub const UNMEASURED: u64 = 0;

/// Nanoseconds since the process's first call, never 0: the clock of every estimate.
/// The reading is also kept as this thread's [`recent_ns`].
#[inline]
pub fn clock_ns() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(Instant::now);
    let now = start.elapsed().as_nanos() as u64 + 1;
    RECENT.with(|r| r.set(now));
    now
}

thread_local! {
    /// This thread's latest [`clock_ns`] reading; 0 before the first.
    static RECENT: Cell<u64> = const { Cell::new(0) };
}

/// This thread's latest [`clock_ns`] reading (taking one if it has none): what a pick
/// uses instead of reading the clock, which costs more than the rest of the pick. On a
/// worker it is at most a heartbeat old (the heartbeat reads the clock) and fresher
/// under load (every peak-ewma attempt reads it). A pick compares estimates that all
/// decay by the same factor from the same `now`, so a late `now` changes no choice;
/// it only lets a Retry-After hold a little longer.
#[inline]
pub fn recent_ns() -> u64 {
    match RECENT.with(Cell::get) {
        0 => clock_ns(),
        now => now,
    }
}

/// One backend's latency estimate.
///
/// Writers: the request path of its pool's `peak-ewma` balancer, on every answer or
/// failed attempt. Readers: picks, `/status`, `/metrics`. All `Relaxed`: the value and
/// its time stamp are read and written apart, so two answers of one backend racing may
/// lose one sample or pair a value with the other's time stamp; either only nudges an
/// estimate that the next answer corrects.
#[derive(Debug, Default)]
pub struct Estimate {
    /// The estimate in nanoseconds as `f64` bits at `at_ns`; [`UNMEASURED`] before the
    /// first sample.
    bits: AtomicU64,
    /// [`clock_ns`] of the last update.
    at_ns: AtomicU64,
    /// [`clock_ns`] before which picks skip the backend (a 429's Retry-After); 0 = none.
    blocked_until_ns: AtomicU64,
}

impl Estimate {
    /// The estimate in nanoseconds at `now`, or `None` if never measured.
    #[inline]
    pub fn value(&self, now: u64, decay_ns: f64) -> Option<f64> {
        let bits = self.bits.load(Ordering::Relaxed);
        if bits == UNMEASURED {
            return None;
        }
        let age = now.saturating_sub(self.at_ns.load(Ordering::Relaxed)) as f64;
        Some(f64::from_bits(bits) * (-age / decay_ns).exp())
    }

    /// Whether a 429's Retry-After still keeps the backend out at `now`.
    #[inline]
    pub fn blocked(&self, now: u64) -> bool {
        now < self.blocked_until_ns.load(Ordering::Relaxed)
    }

    /// Keeps the backend out of picks until [`clock_ns`] reaches `until`.
    #[inline]
    pub fn block_until(&self, until: u64) {
        self.blocked_until_ns.store(until, Ordering::Relaxed);
    }

    /// Takes one sample of `rtt_ns` (an answer's latency, or a failure's penalty) at
    /// `now`, with the decay time constant `decay_ns`.
    pub fn sample(&self, rtt_ns: f64, now: u64, decay_ns: f64) {
        let rtt = rtt_ns.max(1.0);
        let next = match self.value(now, decay_ns) {
            None => rtt,
            Some(current) if rtt >= current => rtt,
            Some(current) => {
                let age = now.saturating_sub(self.at_ns.load(Ordering::Relaxed)) as f64;
                let w = (-age / decay_ns).exp();
                (current * w + rtt * (1.0 - w)).max(1.0)
            }
        };
        self.bits.store(next.to_bits(), Ordering::Relaxed);
        self.at_ns.store(now, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 1e6;
    const SEC: u64 = 1_000_000_000;
    const DECAY: f64 = 10.0 * SEC as f64;

    fn ms(e: &Estimate, now: u64) -> f64 {
        e.value(now, DECAY).map_or(f64::NAN, |ns| ns / MS)
    }

    #[test]
    fn never_measured_has_no_value() {
        assert_eq!(Estimate::default().value(SEC, DECAY), None);
    }

    #[test]
    fn slower_answer_raises_the_estimate_at_once() {
        let e = Estimate::default();
        e.sample(5.0 * MS, SEC, DECAY);
        assert_eq!(ms(&e, SEC), 5.0);
        e.sample(200.0 * MS, SEC + 1_000_000, DECAY);
        assert_eq!(ms(&e, SEC + 1_000_000), 200.0);
    }

    #[test]
    fn faster_answers_pull_it_down_slowly_and_time_decays_it() {
        let e = Estimate::default();
        e.sample(100.0 * MS, SEC, DECAY);
        e.sample(10.0 * MS, SEC + 1_000_000, DECAY);
        let after_fast = ms(&e, SEC + 1_000_000);
        assert!(
            (99.0..100.0).contains(&after_fast),
            "one fast answer 1 ms later barely moves a peak: {after_fast}"
        );
        let later = ms(&e, 11 * SEC + 1_000_000);
        assert!(
            (after_fast / std::f64::consts::E - later).abs() < 0.01,
            "one time constant decays it to 1/e: {later}"
        );
        e.sample(1.0 * MS, 100 * SEC, DECAY);
        assert!(ms(&e, 100 * SEC) < 1.01, "long idle: the new answer rules");
    }

    #[test]
    fn a_penalty_sample_outweighs_fast_answers() {
        let e = Estimate::default();
        e.sample(0.1 * MS, SEC, DECAY);
        e.sample(1000.0 * MS, SEC + 1, DECAY);
        e.sample(0.1 * MS, SEC + 2, DECAY);
        assert!(ms(&e, SEC + 2) > 999.0, "a fast failure is charged 1 s");
    }

    #[test]
    fn recent_time_is_the_threads_last_reading() {
        let now = clock_ns();
        assert_eq!(recent_ns(), now);
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert_eq!(recent_ns(), now, "no new reading");
        assert!(clock_ns() > now && recent_ns() > now);
    }

    #[test]
    fn block_lasts_until_its_deadline() {
        let e = Estimate::default();
        assert!(!e.blocked(SEC));
        e.block_until(2 * SEC);
        assert!(e.blocked(2 * SEC - 1));
        assert!(!e.blocked(2 * SEC));
    }
}
