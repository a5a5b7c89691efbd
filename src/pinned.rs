//! Pinned clients (DESIGN §11): how many distinct clients — cookie client ids, or hash
//! keys — reached a backend of a sticky pool within the pool's `pinned_window`, in a
//! small fixed amount of memory, without a lock.
//!
//! A HyperLogLog (Flajolet et al., 2007) of 2^12 one-byte registers estimates a count
//! within about 1.6 % (one standard error), and within about 1 % below 10,000 clients,
//! where linear counting takes over. The window slides in steps: it is covered by
//! [`SLICES`] sketches of one slice each (`pinned_window / SLICES`) plus the one being
//! filled; the estimate is taken over their register-wise maximum, so a client seen
//! within the window is always counted and one seen up to a slice before it may be too.
//! The upkeep ticker rotates the slices ([`PinnedClients::rotate`]): the oldest sketch
//! is cleared and becomes the one being filled.
//!
//! An insert (the request path, once per request of a sticky pool) is a hash of the
//! 64-bit key, two relaxed loads and, when the register grows, one `fetch_max`: no
//! clock, no allocation after the first.

use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Index bits of a register: 2^12 registers per sketch.
const PRECISION: u32 = 12;
/// Registers per sketch.
const REGISTERS: usize = 1 << PRECISION;
/// Slices the window is cut into; one sketch more is kept for the slice being filled.
pub const SLICES: usize = 4;
/// Seeds the insert's hash, so that its bits owe nothing to the ring slot or the
/// slow-start draw the same key went through.
const SEED: u64 = 0x5049_4e4e_4544_0001;

/// The distinct-client estimator of one backend.
#[derive(Debug)]
pub struct PinnedClients {
    /// `SLICES + 1` sketches of [`REGISTERS`] registers each, one after the other.
    registers: Box<[AtomicU8]>,
    /// The sketch being filled. Written by the upkeep ticker, read by inserts.
    current: AtomicUsize,
    /// The slice number (`clock_ms / slice`) the current sketch belongs to; 0 = not
    /// yet rotated. Written by the upkeep ticker only.
    slice: AtomicU64,
}

impl Default for PinnedClients {
    fn default() -> PinnedClients {
        PinnedClients {
            registers: (0..REGISTERS * (SLICES + 1))
                .map(|_| AtomicU8::new(0))
                .collect(),
            current: AtomicUsize::new(0),
            slice: AtomicU64::new(0),
        }
    }
}

impl PinnedClients {
    /// Counts `key` (a sticky key's hash or a client id) as seen now.
    #[inline]
    pub fn insert(&self, key: u64) {
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(&key.to_le_bytes(), SEED);
        let index = (h >> (64 - PRECISION)) as usize;
        // Leading zeros of the remaining bits, plus one; a guard bit bounds it.
        let rank = ((h << PRECISION) | (1 << (PRECISION - 1))).leading_zeros() as u8 + 1;
        let sketch = self.current.load(Ordering::Relaxed) % (SLICES + 1);
        let r = &self.registers[sketch * REGISTERS + index];
        if r.load(Ordering::Relaxed) < rank {
            r.fetch_max(rank, Ordering::Relaxed);
        }
    }

    /// The estimated number of distinct keys seen within the window.
    pub fn estimate(&self) -> u64 {
        let m = REGISTERS as f64;
        let mut zeros = 0usize;
        let mut sum = 0f64;
        for i in 0..REGISTERS {
            let reg = (0..=SLICES)
                .map(|s| self.registers[s * REGISTERS + i].load(Ordering::Relaxed))
                .max()
                .unwrap_or(0);
            if reg == 0 {
                zeros += 1;
            }
            // 2^-reg, exactly: the exponent field of an f64 (reg is at most 53).
            sum += f64::from_bits((1023 - u64::from(reg)) << 52);
        }
        if zeros == REGISTERS {
            return 0;
        }
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let raw = alpha * m * m / sum;
        let estimate = if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        };
        estimate.round() as u64
    }

    /// Moves the window on to `now_ms` (a monotonic clock in milliseconds) for a window
    /// of `window`: for every slice that began since the last call, the oldest sketch
    /// is cleared and becomes the current one.
    pub fn rotate(&self, now_ms: u64, window: Duration) {
        let slice_ms = (window.as_millis() as u64 / SLICES as u64).max(1);
        let slice = now_ms / slice_ms;
        let last = self.slice.load(Ordering::Relaxed);
        if slice == last {
            return;
        }
        self.slice.store(slice, Ordering::Relaxed);
        if last == 0 {
            return;
        }
        let steps = slice.saturating_sub(last).min(SLICES as u64 + 1);
        for _ in 0..steps {
            let next = (self.current.load(Ordering::Relaxed) + 1) % (SLICES + 1);
            for r in &self.registers[next * REGISTERS..(next + 1) * REGISTERS] {
                r.store(0, Ordering::Relaxed);
            }
            self.current.store(next, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(got: u64, want: u64, tolerance: f64) -> bool {
        (got as f64 - want as f64).abs() <= tolerance * want as f64
    }

    #[test]
    fn estimates_within_five_percent() {
        for (n, seed) in [
            (10u64, 1u64),
            (1000, 2),
            (5_000, 3),
            (20_000, 4),
            (100_000, 5),
        ] {
            let p = PinnedClients::default();
            for i in 0..n {
                let key = xxhash_rust::xxh3::xxh3_64(&(seed << 40 | i).to_le_bytes());
                p.insert(key);
                p.insert(key);
            }
            let got = p.estimate();
            assert!(within(got, n, 0.05), "{n} distinct keys estimated as {got}");
        }
        assert_eq!(PinnedClients::default().estimate(), 0);
    }

    #[test]
    fn the_window_forgets_what_it_has_not_seen_for_a_whole_window() {
        let p = PinnedClients::default();
        let window = Duration::from_secs(4);
        p.rotate(10_000, window);
        for k in 0..1000u64 {
            p.insert(k);
        }
        for t in [11_000, 12_000, 13_000, 14_000] {
            p.rotate(t, window);
            assert!(
                within(p.estimate(), 1000, 0.05),
                "{t}: still within the window"
            );
            p.insert(1_000_000 + t);
        }
        p.rotate(15_000, window);
        assert!(
            within(p.estimate(), 4, 0.5),
            "first thousand forgotten: {}",
            p.estimate()
        );
        p.rotate(60_000, window);
        assert_eq!(p.estimate(), 0, "a long gap clears every slice");
    }
}
