//! Peak-EWMA (DESIGN §13): compare `choices` backends drawn at random in proportion to
//! their weight, and take the one with the lowest cost = latency estimate × (requests
//! in flight + 1). A backend that turns slow or fails fast is avoided from its next
//! answer on; as its estimate decays it is tried again.
//!
//! [`Latency`] is the pool's side of the estimator: its `decay` and `penalty`, and the
//! median estimate a never-measured backend counts as. The request path feeds it (an
//! answer's latency, a failure's penalty, a 429's Retry-After) only for pools that run
//! this balancer; the per-backend estimate lives in the backend's live state
//! ([`crate::latency::Estimate`]). A pick reads the thread's recent clock reading
//! ([`recent_ns`]), draws from a per-thread xorshift generator, and reads atomics: no
//! clock read, allocation or lock of its own.
//!
//! Slow start: a drawn backend that is ramping is compared only for its ramp's share of
//! draws, which scales its weight by its ramp; when nothing else can take the request,
//! a last look ignores ramps.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Balancer, Eligible, Limits, Pick, PickContext, Tried};
use crate::backend::Backend;
use crate::config::{BalancerKind, LatencyConfig};
use crate::latency::{UNMEASURED, clock_ns, recent_ns};

/// How often, at most, the pool's median estimate is recomputed (nanoseconds): often
/// enough that a backend joining the pool starts near its peers, rare enough that its
/// selection over every backend stays off the request path in practice.
pub const MEDIAN_REFRESH_NS: u64 = 100_000_000;

/// The longest a 429's `Retry-After` keeps a backend out of picks: a backend asking for
/// an hour must not be lost to the pool for an hour.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Most backends drawn per pick; a pool asking for more (or for as many as it has)
/// compares every backend.
const MAX_SAMPLED: usize = 16;

/// Draws again, at most this often, when a draw repeats a backend already drawn; then
/// the next backend not drawn is taken.
const REDRAWS: usize = 4;

/// A `peak-ewma` pool's estimator settings and its median estimate.
#[derive(Debug)]
pub struct Latency {
    /// Time constant of the decay, in nanoseconds.
    decay_ns: f64,
    /// What a failed attempt is charged, in nanoseconds.
    penalty_ns: f64,
    /// The median of the measured backends' estimates at `median_at`, in nanoseconds as
    /// `f64` bits: what a never-measured backend counts as (decaying like the others
    /// from then); [`UNMEASURED`] while none is measured.
    /// Written by the observer that refreshes it, read by picks; `Relaxed`.
    median_bits: AtomicU64,
    /// [`clock_ns`] of the last median refresh; 0 = never. Observers race for it with a
    /// compare-exchange, so one of them refreshes.
    median_at: AtomicU64,
    /// The refresher's scratch buffer, grown once to the pool's size; only tried.
    scratch: Mutex<Vec<f64>>,
}

impl Latency {
    /// Settings with this decay time constant and failure penalty.
    pub fn new(decay: Duration, penalty: Duration) -> Latency {
        Latency {
            decay_ns: (decay.as_nanos() as f64).max(1.0),
            penalty_ns: penalty.as_nanos() as f64,
            median_bits: AtomicU64::new(UNMEASURED),
            median_at: AtomicU64::new(0),
            scratch: Mutex::new(Vec::new()),
        }
    }

    /// Backend `b`'s estimate at `now` in nanoseconds: its own, or the pool's median
    /// when it was never measured, or `None` while no backend of the pool was.
    #[inline]
    pub fn estimate(&self, b: &Backend, now: u64) -> Option<f64> {
        b.live.latency.value(now, self.decay_ns).or_else(|| {
            let m = self.median_bits.load(Ordering::Relaxed);
            let age = now.saturating_sub(self.median_at.load(Ordering::Relaxed)) as f64;
            (m != UNMEASURED).then(|| f64::from_bits(m) * (-age / self.decay_ns).exp())
        })
    }

    /// What picking `b` at `now` costs: its estimate × (requests in flight + 1). While
    /// nothing of the pool is measured everyone's estimate counts as 1 ns, so the cost
    /// is the load.
    #[inline]
    pub fn cost(&self, b: &Backend, now: u64) -> f64 {
        let estimate = self.estimate(b, now).unwrap_or(1.0).max(1.0);
        estimate * f64::from(b.live.in_flight() + 1)
    }

    /// An answer from `backends[i]` whose head came `rtt` after the attempt began.
    pub fn observe(&self, backends: &[Backend], i: usize, rtt: Duration, now: u64) {
        self.sample(backends, i, rtt.as_nanos() as f64, now);
    }

    /// A failed attempt on `backends[i]` (connect error, reset, timeout, 5xx, 429):
    /// charged `penalty` at the pool's current load, so a backend that fails fast never
    /// looks fast.
    ///
    /// The charge is `penalty` × (the most requests in flight on any backend of the
    /// pool + 1). A healthy backend's cost is its estimate × its own load, so under load
    /// a plain `penalty` can cost less than a busy healthy backend (at 14 in flight, a
    /// 80 ms estimate already costs 1.1 s), and the failing backend, idle because it
    /// answers at once, would keep being picked. Scaled so, the failure outweighs every
    /// backend whose estimate is under `penalty`, whatever the load. The scan over the
    /// pool happens on failures only.
    pub fn penalize(&self, backends: &[Backend], i: usize, now: u64) {
        let busiest = backends
            .iter()
            .map(|b| b.live.in_flight())
            .max()
            .unwrap_or(0);
        self.sample(backends, i, self.penalty_ns * f64::from(busiest + 1), now);
    }

    /// Keeps `b` out of picks for `retry_after`, at most [`MAX_RETRY_AFTER`], from `now`.
    pub fn block(&self, b: &Backend, retry_after: Duration, now: u64) {
        let wait = retry_after.min(MAX_RETRY_AFTER).as_nanos() as u64;
        b.live.latency.block_until(now.saturating_add(wait));
    }

    fn sample(&self, backends: &[Backend], i: usize, rtt_ns: f64, now: u64) {
        let Some(b) = backends.get(i) else {
            return;
        };
        b.live.latency.sample(rtt_ns, now, self.decay_ns);
        self.refresh_median(backends, now);
    }

    /// Recomputes the median when it is older than [`MEDIAN_REFRESH_NS`].
    fn refresh_median(&self, backends: &[Backend], now: u64) {
        let at = self.median_at.load(Ordering::Relaxed);
        if at != 0 && now.saturating_sub(at) < MEDIAN_REFRESH_NS {
            return;
        }
        let won = self
            .median_at
            .compare_exchange(at, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        let Some(mut values) = won.then(|| self.scratch.try_lock().ok()).flatten() else {
            return;
        };
        values.clear();
        values.extend(
            backends
                .iter()
                .filter_map(|b| b.live.latency.value(now, self.decay_ns)),
        );
        if values.is_empty() {
            return;
        }
        let mid = values.len() / 2;
        let (_, median, _) = values.select_nth_unstable_by(mid, f64::total_cmp);
        self.median_bits
            .store(median.max(1.0).to_bits(), Ordering::Relaxed);
    }
}

/// Power of `choices` weighted random choices by latency × load.
#[derive(Debug)]
pub struct PeakEwma {
    latency: Arc<Latency>,
    choices: usize,
    /// Running sums of the weights (`cumulative[i]` = weights of backends `0..=i`);
    /// empty when every weight is the same and a draw is uniform.
    cumulative: Box<[u32]>,
}

impl PeakEwma {
    /// Builds it over `backends` with a pool's `[latency]` settings.
    pub fn new(backends: &[Backend], cfg: LatencyConfig) -> PeakEwma {
        let uniform = backends.windows(2).all(|w| w[0].weight == w[1].weight);
        let cumulative = if uniform {
            Box::default()
        } else {
            backends
                .iter()
                .scan(0u32, |sum, b| {
                    *sum = sum.saturating_add(b.weight);
                    Some(*sum)
                })
                .collect()
        };
        PeakEwma {
            latency: Arc::new(Latency::new(cfg.decay, cfg.penalty)),
            choices: cfg.choices as usize,
            cumulative,
        }
    }

    /// One backend index drawn in proportion to weight from random bits `x`.
    #[inline]
    fn draw(&self, x: u64, n: usize) -> usize {
        match self.cumulative.last() {
            None => below(x, n as u64) as usize,
            Some(&total) => {
                let r = below(x, u64::from(total)) as u32;
                self.cumulative.partition_point(|&c| c <= r).min(n - 1)
            }
        }
    }
}

/// `x` mapped onto `0..n` (multiply-shift: no division).
#[inline]
fn below(x: u64, n: u64) -> u64 {
    ((u128::from(x) * u128::from(n)) >> 64) as u64
}

thread_local! {
    /// This thread's xorshift state; 0 until first seeded.
    static RNG: Cell<u64> = const { Cell::new(0) };
}

/// The next 64 random bits of this thread's xorshift64* generator (not cryptographic:
/// it only spreads picks).
#[inline]
fn random() -> u64 {
    RNG.with(|s| {
        let mut x = s.get();
        if x == 0 {
            x = (clock_ns() ^ (s as *const Cell<u64> as u64)) | 1;
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

impl Balancer for PeakEwma {
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
        let now = recent_ns();
        let eligible = Eligible::new(backends, limits, tried);
        let mut best: Option<(usize, f64)> = None;
        let mut ramped = true;
        let consider = |best: &mut Option<(usize, f64)>, i: usize, ramped: bool| {
            if eligible.accepts_new(i)
                && !backends[i].live.latency.blocked(now)
                && (!ramped || eligible.ramp_admits(i, random))
            {
                let cost = self.latency.cost(&backends[i], now);
                if best.is_none_or(|(_, c)| cost < c) {
                    *best = Some((i, cost));
                }
            }
        };
        if self.choices < n && self.choices <= MAX_SAMPLED {
            let mut drawn = [usize::MAX; MAX_SAMPLED];
            for k in 0..self.choices {
                // Distinct draws: redraw a repeat a few times, then (a heavy weight
                // keeps coming back) step to the next backend not drawn yet, which
                // exists because fewer than `n` are drawn.
                let mut i = self.draw(random(), n);
                let mut redraws = 0;
                while drawn[..k].contains(&i) {
                    i = if redraws < REDRAWS {
                        self.draw(random(), n)
                    } else {
                        (i + 1) % n
                    };
                    redraws += 1;
                }
                drawn[k] = i;
                consider(&mut best, i, ramped);
            }
        }
        if best.is_none() {
            // Every backend compared: the pool asks for it, or no draw could take the
            // request. The scan starts anywhere so that ties spread.
            let first = below(random(), n as u64) as usize;
            for _ in 0..2 {
                for i in (first..n).chain(0..first) {
                    consider(&mut best, i, ramped);
                }
                if best.is_some() {
                    break;
                }
                ramped = false;
            }
        }
        best.map(|(i, _)| Pick::plain(i))
    }

    fn kind(&self) -> BalancerKind {
        BalancerKind::PeakEwma
    }

    fn latency(&self) -> Option<Arc<Latency>> {
        Some(Arc::clone(&self.latency))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use http::HeaderMap;

    use super::*;
    use crate::balancer::testing::{NO_LIMITS, backends, ctx};
    use crate::config::AdminState;

    const MS: u64 = 1_000_000;

    fn balancer(bs: &[Backend], choices: u32) -> PeakEwma {
        let cfg = LatencyConfig {
            choices,
            ..LatencyConfig::default()
        };
        PeakEwma::new(bs, cfg)
    }

    fn pick(p: &PeakEwma, bs: &[Backend], tried: &Tried) -> Option<usize> {
        let h = HeaderMap::new();
        let uri: http::Uri = "/".parse().unwrap();
        p.pick(bs, &ctx(&h, &uri, 0, 0), &NO_LIMITS, tried)
            .map(|p| p.index)
    }

    fn counts(p: &PeakEwma, bs: &[Backend], picks: usize) -> Vec<usize> {
        let mut c = vec![0; bs.len()];
        for _ in 0..picks {
            c[pick(p, bs, &Tried::new()).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn a_ramping_backend_is_drawn_for_its_ramps_share() {
        use crate::backend::RAMP_FULL;
        use crate::balancer::testing::set_ramp;
        let bs = backends(&[1; 4]);
        let p = balancer(&bs, 2);
        let even = counts(&p, &bs, 8000);
        set_ramp(&bs[3], RAMP_FULL / 4);
        let ramping = counts(&p, &bs, 8000);
        let share = |c: &[usize]| c[3] as f64 / 8000.0;
        assert!((0.2..0.3).contains(&share(&even)), "{even:?}");
        assert!(share(&ramping) < 0.12, "{ramping:?}");
        assert!(share(&ramping) > 0.02, "still drawn: {ramping:?}");
    }

    #[test]
    fn slow_backend_is_avoided() {
        let bs = backends(&[1, 1, 1]);
        let p = balancer(&bs, 2);
        let now = clock_ns();
        p.latency.observe(&bs, 0, Duration::from_millis(5), now);
        p.latency.observe(&bs, 1, Duration::from_millis(5), now);
        p.latency.observe(&bs, 2, Duration::from_millis(100), now);
        let c = counts(&p, &bs, 3000);
        assert_eq!(
            c[2], 0,
            "two distinct draws always include a faster one: {c:?}"
        );
        assert!(c[0] > 1000 && c[1] > 1000, "{c:?}");
    }

    #[test]
    fn fast_failure_is_charged_the_penalty() {
        let bs = backends(&[1, 1, 1]);
        let p = balancer(&bs, 2);
        let now = clock_ns();
        p.latency.observe(&bs, 0, Duration::from_millis(20), now);
        p.latency.observe(&bs, 1, Duration::from_millis(20), now);
        p.latency.observe(&bs, 2, Duration::from_micros(100), now);
        p.latency.penalize(&bs, 2, now + 1);
        let est = p.latency.estimate(&bs[2], now + 1).unwrap();
        assert_eq!(est, 1e9, "charged 1 s");
        assert_eq!(counts(&p, &bs, 1000)[2], 0);
    }

    #[test]
    fn the_penalty_scales_with_the_pools_load_so_a_fast_failure_never_wins() {
        let bs = backends(&[1, 1, 1]);
        let p = balancer(&bs, 2);
        let now = clock_ns();
        for i in 0..2 {
            p.latency.observe(&bs, i, Duration::from_millis(100), now);
        }
        let _busy: Vec<_> = (0..2)
            .flat_map(|i| (0..14).map(move |_| i))
            .map(|i| bs[i].live.enter(0, None).unwrap())
            .collect();
        p.latency.penalize(&bs, 2, now + 1);
        let est = p.latency.estimate(&bs[2], now + 1).unwrap();
        assert_eq!(est, 15e9, "1 s at the busiest backend's 14 in flight + 1");
        assert!(
            p.latency.cost(&bs[0], now + 1) > 1e9,
            "busy healthy costs 1.5 s"
        );
        assert_eq!(counts(&p, &bs, 1000)[2], 0, "and still the failure loses");
    }

    #[test]
    fn never_measured_backend_counts_as_the_pool_median() {
        let bs = backends(&[1, 1, 1, 1]);
        let p = balancer(&bs, 2);
        let l = &p.latency;
        let mut t = clock_ns();
        assert_eq!(l.estimate(&bs[3], t), None, "nothing measured yet");
        assert_eq!(l.cost(&bs[3], t), 1.0, "then the cost is the load");
        for (i, rtt) in [(0, 10), (1, 30), (2, 500)] {
            t += MEDIAN_REFRESH_NS;
            l.observe(&bs, i, Duration::from_millis(rtt), t);
        }
        let cold = l.estimate(&bs[3], t).unwrap() / MS as f64;
        assert!(
            (29.0..=30.0).contains(&cold),
            "median of 10, 30, 500: {cold}"
        );
    }

    #[test]
    fn in_flight_load_multiplies_the_cost() {
        let bs = backends(&[1, 1]);
        let p = balancer(&bs, 2);
        let now = clock_ns();
        p.latency.observe(&bs, 0, Duration::from_millis(10), now);
        p.latency.observe(&bs, 1, Duration::from_millis(25), now);
        let _held: Vec<_> = (0..3).map(|_| bs[0].live.enter(0, None).unwrap()).collect();
        assert_eq!(
            pick(&p, &bs, &Tried::new()),
            Some(1),
            "10 ms × 4 > 25 ms × 1"
        );
    }

    #[test]
    fn retry_after_keeps_a_backend_out_until_it_passes() {
        let bs = backends(&[1, 1]);
        let p = balancer(&bs, 2);
        let now = clock_ns();
        p.latency.block(&bs[0], Duration::from_secs(3600), now);
        assert!(
            bs[0].live.latency.blocked(now + 29_000 * MS),
            "capped at 30 s"
        );
        assert!(!bs[0].live.latency.blocked(now + 30_000 * MS));
        assert_eq!(counts(&p, &bs, 100), vec![0, 100]);
        p.latency.block(&bs[1], Duration::from_secs(5), now);
        assert_eq!(
            pick(&p, &bs, &Tried::new()),
            None,
            "every backend asked to wait"
        );
    }

    #[test]
    fn draws_follow_weights_while_costs_are_equal() {
        let bs = backends(&[1, 3]);
        let p = balancer(&bs, 1);
        let c = counts(&p, &bs, 8000);
        assert!((1700..2300).contains(&c[0]), "weight 1 of 4: {c:?}");
    }

    #[test]
    fn skips_tried_and_ineligible() {
        let bs = backends(&[1, 1, 1]);
        let p = balancer(&bs, 2);
        let mut tried = Tried::new();
        tried.insert(0);
        bs[1].live.set_admin(AdminState::Drain);
        for _ in 0..20 {
            assert_eq!(pick(&p, &bs, &tried), Some(2));
        }
        tried.insert(2);
        assert_eq!(pick(&p, &bs, &tried), None);
    }
}
