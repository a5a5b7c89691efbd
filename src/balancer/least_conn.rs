//! Least-connections: the backend with the fewest requests in flight relative to its
//! weight (`in_flight / weight`, compared by cross-multiplying, as nginx does).
//!
//! Ties rotate: the scan starts at a cursor that advances on every pick, so an idle pool
//! spreads evenly instead of piling onto the first backend. Up to [`EXACT_SCAN`]
//! backends every one is looked at; beyond that a pick compares [`SAMPLES`] backends
//! chosen pseudo-randomly (power of k choices, as Envoy and linkerd do for large pools),
//! which keeps a pick in constant time and, by the balls-into-bins result, keeps the
//! busiest backend within a small additive gap of the least busy.
//!
//! Slow start: a ramping backend counts with its weight × ramp, and is a candidate only
//! for the ramp's share of picks (so that an idle pool, where every load ties, ramps
//! it too); when no candidate is left, a second look ignores ramps.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Balancer, Eligible, Limits, Pick, PickContext, Tried};
use crate::backend::{Backend, ramp_admits};
use crate::config::BalancerKind;

/// Pools up to this size are scanned in full.
pub const EXACT_SCAN: usize = 16;
/// Candidates compared per pick in larger pools.
pub const SAMPLES: usize = 4;

/// Fewest in-flight requests relative to weight.
#[derive(Debug)]
pub struct LeastConnections {
    cursor: AtomicUsize,
}

impl LeastConnections {
    /// Builds it (it keeps no per-backend table).
    pub fn new(_backends: &[Backend]) -> LeastConnections {
        LeastConnections {
            cursor: AtomicUsize::new(0),
        }
    }
}

/// The best candidate so far: its index, requests in flight and weight × ramp.
type Candidate = (usize, u64, u64);

/// Compares backend `i` with the best candidate so far and keeps the lighter (fewest
/// in flight relative to weight × slow-start ramp; the earlier one on a tie). With
/// `ramped`, a ramping backend is a candidate for its ramp's share of picks only.
/// Each candidate's atomics are read once.
#[inline(always)]
fn consider(
    eligible: &Eligible<'_>,
    backends: &[Backend],
    i: usize,
    start: usize,
    ramped: bool,
    best: &mut Option<Candidate>,
) {
    if !eligible.accepts_new(i) {
        return;
    }
    let b = &backends[i];
    let ramp = b.live.ramp();
    if ramped && !ramp_admits(ramp, || (start as u64) ^ ((i as u64) << 40)) {
        return;
    }
    let load = u64::from(b.live.in_flight());
    let weight = u64::from(b.weight) * u64::from(ramp);
    if best.is_none_or(|(_, l, w)| load * w < l * weight) {
        *best = Some((i, load, weight));
    }
}

/// The lightest backend that may take a new client, the candidates sampled in large
/// pools ([`consider`] says how they compare).
#[inline(always)]
fn lightest(
    eligible: &Eligible<'_>,
    backends: &[Backend],
    start: usize,
    ramped: bool,
) -> Option<usize> {
    let n = backends.len();
    let mut best: Option<Candidate> = None;
    if n > EXACT_SCAN {
        let mut x = xxhash_rust::xxh3::xxh3_64(&start.to_le_bytes());
        for _ in 0..SAMPLES {
            consider(
                eligible,
                backends,
                (x % n as u64) as usize,
                start,
                ramped,
                &mut best,
            );
            x = x.rotate_left(17).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    if best.is_none() {
        let first = start % n;
        for i in (first..n).chain(0..first) {
            consider(eligible, backends, i, start, ramped, &mut best);
        }
    }
    best.map(|(i, _, _)| i)
}

impl Balancer for LeastConnections {
    #[inline]
    fn pick(
        &self,
        backends: &[Backend],
        _ctx: &PickContext<'_>,
        limits: &Limits,
        tried: &Tried,
    ) -> Option<Pick> {
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let eligible = Eligible::new(backends, limits, tried);
        lightest(&eligible, backends, start, true)
            .or_else(|| lightest(&eligible, backends, start, false))
            .map(Pick::plain)
    }

    fn kind(&self) -> BalancerKind {
        BalancerKind::LeastConnections
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use http::HeaderMap;

    use super::*;
    use crate::balancer::testing::{NO_LIMITS, backends, ctx};
    use crate::config::AdminState;

    fn pick(lc: &LeastConnections, bs: &[Backend], tried: &Tried) -> Option<usize> {
        let h = HeaderMap::new();
        let uri: http::Uri = "/".parse().unwrap();
        lc.pick(bs, &ctx(&h, &uri, 0, 0), &NO_LIMITS, tried)
            .map(|p| p.index)
    }

    #[test]
    fn idle_pool_spreads_evenly() {
        let bs = backends(&[1, 1, 1]);
        let lc = LeastConnections::new(&bs);
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[pick(&lc, &bs, &Tried::new()).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
    }

    #[test]
    fn busier_backend_and_weights() {
        let bs = backends(&[1, 1, 3]);
        let lc = LeastConnections::new(&bs);
        let mut held = Vec::new();
        for _ in 0..50 {
            let i = pick(&lc, &bs, &Tried::new()).unwrap();
            held.push(bs[i].live.enter(0, None).unwrap());
        }
        let loads: Vec<u32> = bs.iter().map(|b| b.live.in_flight()).collect();
        assert_eq!(loads, vec![10, 10, 30], "in flight follows weight 1:1:3");
    }

    #[test]
    fn skips_tried_and_ineligible() {
        let bs = backends(&[1, 1, 1]);
        let lc = LeastConnections::new(&bs);
        let mut tried = Tried::new();
        tried.insert(0);
        bs[1].live.set_admin(AdminState::Disabled);
        for _ in 0..5 {
            assert_eq!(pick(&lc, &bs, &tried), Some(2));
        }
        tried.insert(2);
        assert_eq!(pick(&lc, &bs, &tried), None);
    }

    #[test]
    fn ramping_backend_takes_its_ramps_share_idle_or_busy() {
        use crate::backend::RAMP_FULL;
        use crate::balancer::testing::set_ramp;
        let bs = backends(&[1, 1]);
        let lc = LeastConnections::new(&bs);
        set_ramp(&bs[1], RAMP_FULL / 4);
        // Idle, every load ties and the rotation decides: the newcomer's turns are
        // taken for the ramp's share, a quarter of its fair half.
        let idle = (0..10_000)
            .filter(|_| pick(&lc, &bs, &Tried::new()) == Some(1))
            .count();
        let share = idle as f64 / 10_000.0;
        assert!((share - 0.25 / 2.0).abs() < 0.02, "idle: {share}");
        let mut held = Vec::new();
        for _ in 0..100 {
            let i = pick(&lc, &bs, &Tried::new()).unwrap();
            held.push(bs[i].live.enter(0, None).unwrap());
        }
        let ratio = f64::from(bs[1].live.in_flight()) / f64::from(bs[0].live.in_flight());
        assert!(
            (ratio - 0.25).abs() < 0.06,
            "busy: in flight {ratio} of the other's"
        );
    }

    #[test]
    fn large_pools_sample_and_stay_close() {
        let bs = backends(&[1; 100]);
        let lc = LeastConnections::new(&bs);
        let mut held = Vec::new();
        for _ in 0..2000 {
            let i = pick(&lc, &bs, &Tried::new()).unwrap();
            held.push(bs[i].live.enter(0, None).unwrap());
        }
        let max = bs.iter().map(|b| b.live.in_flight()).max().unwrap();
        assert!(max <= 20 + 4, "busiest holds {max} with a mean of 20");
    }
}
