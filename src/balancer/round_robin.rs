//! Weighted smooth round-robin, as nginx does it, without a lock.
//!
//! nginx's smooth algorithm keeps a mutable "current weight" per backend and so needs a
//! lock across threads. Its output is periodic with period `sum(weights)`, so we run it
//! once at build time (weights reduced by their gcd) and store the cycle; a pick is one
//! atomic increment and one table read. With weights 1:1:3 the cycle is `c a c b c`:
//! the heavy backend gets 60 % and never three picks in a row.
//!
//! A backend that cannot take new work is skipped by walking the cycle forward; if a
//! short walk finds nothing (most of the pool is out), a scan over the backends from a
//! rotating start finds any that remains.
//!
//! Slow start: a ramping backend's turn in the cycle is taken for the ramp's share of
//! draws (from the cursor) and passed on otherwise, so its share follows its weight ×
//! ramp. The fallback scan ignores ramps.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Balancer, Eligible, Limits, Pick, PickContext, Tried};
use crate::backend::Backend;
use crate::config::BalancerKind;

/// How far the cycle is walked before falling back to a scan of the backends.
const MAX_CYCLE_WALK: usize = 64;

/// Weighted smooth round-robin over a precomputed cycle.
#[derive(Debug)]
pub struct SmoothRoundRobin {
    cycle: Box<[u32]>,
    cursor: AtomicUsize,
    len: usize,
}

impl SmoothRoundRobin {
    /// Builds the cycle for these backends' weights.
    pub fn new(backends: &[Backend]) -> SmoothRoundRobin {
        let weights: Vec<u32> = backends.iter().map(|b| b.weight.max(1)).collect();
        SmoothRoundRobin {
            cycle: smooth_cycle(&weights).into_boxed_slice(),
            cursor: AtomicUsize::new(0),
            len: backends.len(),
        }
    }
}

/// One period of nginx's smooth weighted round-robin for `weights` (gcd-reduced).
pub(crate) fn smooth_cycle(weights: &[u32]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let reduced: Vec<i64> = weights.iter().map(|&w| i64::from(w / g)).collect();
    let total: i64 = reduced.iter().sum();
    let mut current = vec![0i64; reduced.len()];
    let mut cycle = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..reduced.len() {
            current[i] += reduced[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        cycle.push(best as u32);
    }
    cycle
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl Balancer for SmoothRoundRobin {
    #[inline]
    fn pick(
        &self,
        backends: &[Backend],
        _ctx: &PickContext<'_>,
        limits: &Limits,
        tried: &Tried,
    ) -> Option<Pick> {
        if self.cycle.is_empty() || backends.len() != self.len {
            return None;
        }
        let eligible = Eligible::new(backends, limits, tried);
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let walk = self.cycle.len().min(MAX_CYCLE_WALK);
        for step in 0..walk {
            let i = self.cycle[(start + step) % self.cycle.len()] as usize;
            if eligible.accepts_new(i) && eligible.ramp_admits(i, || (start + step) as u64) {
                if step > 0 {
                    self.cursor.fetch_add(step, Ordering::Relaxed);
                }
                return Some(Pick::plain(i));
            }
        }
        (0..self.len)
            .map(|k| (start + k) % self.len)
            .find(|&i| eligible.accepts_new(i))
            .map(Pick::plain)
    }

    fn kind(&self) -> BalancerKind {
        BalancerKind::RoundRobin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycle_interleaves_weights() {
        assert_eq!(smooth_cycle(&[1, 1, 3]), vec![2, 0, 2, 1, 2]);
        assert_eq!(smooth_cycle(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn ramping_backend_gets_weight_times_ramp() {
        use crate::backend::RAMP_FULL;
        use crate::balancer::testing::{NO_LIMITS, backends, ctx, set_ramp};
        let bs = backends(&[1, 1, 1, 1]);
        let rr = SmoothRoundRobin::new(&bs);
        set_ramp(&bs[3], RAMP_FULL / 2);
        let h = http::HeaderMap::new();
        let uri: http::Uri = "/".parse().unwrap_or_else(|_| unreachable!());
        let mut counts = [0f64; 4];
        for _ in 0..35_000 {
            if let Some(p) = rr.pick(&bs, &ctx(&h, &uri, 0, 0), &NO_LIMITS, &Tried::new()) {
                counts[p.index] += 1.0;
            }
        }
        let share = counts[3] / 35_000.0;
        assert!((share - 0.5 / 3.5).abs() < 0.01, "{share}: {counts:?}");
    }

    #[test]
    fn cycle_reduces_by_gcd() {
        assert_eq!(smooth_cycle(&[100, 300]).len(), 4);
    }

    #[test]
    fn heavy_backend_never_three_in_a_row_when_avoidable() {
        let c = smooth_cycle(&[1, 1, 3]);
        let doubled: Vec<u32> = c.iter().chain(c.iter()).copied().collect();
        assert!(doubled.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])));
    }
}
