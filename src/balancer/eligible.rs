//! Which backends may take a request: the one eligibility rule every balancer applies,
//! so that a balancer's own file holds only its way of choosing.
//!
//! A backend may take a *new* client when this request has not tried it yet, it is up,
//! active and not ejected ([`BackendLive::accepts_new`]), and it is under the pool's
//! `max_connections`. It may serve a client *bound* to it (a cookie) when this request
//! has not tried it and it is up, and active or draining
//! ([`BackendLive::accepts_bound`]); whether it also has room is asked apart, because a
//! bound client that finds its backend full overflows elsewhere without being rebound.
//! Slow start (DESIGN §11) is asked apart too ([`Eligible::ramp_admits`]): a ramping
//! backend takes only its ramp's share of the new clients it would be given, and a
//! balancer that finds no other backend takes it anyway (a ramp never refuses a
//! request). Everything here reads atomics only and is inlined into the picks.
//!
//! [`BackendLive::accepts_new`]: crate::backend::BackendLive::accepts_new
//! [`BackendLive::accepts_bound`]: crate::backend::BackendLive::accepts_bound

use crate::backend::Backend;

/// Pool-wide limits every balancer honours.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Concurrent requests per backend; 0 = unlimited. A backend at the limit is skipped.
    pub max_connections: u32,
    /// Bounded load for sticky choices; 0 = off.
    pub balance_factor: f64,
}

impl Limits {
    /// Whether `b` is under `max_connections`.
    #[inline]
    fn has_room(&self, b: &Backend) -> bool {
        self.max_connections == 0 || b.live.in_flight() < self.max_connections
    }

    /// Bounded load: whether a sticky choice of `b` must overflow because its in-flight
    /// load would exceed `balance_factor` × its weighted share of the pool's load
    /// (counting the request being placed).
    #[inline]
    pub fn over_bound(&self, b: &Backend, pool_in_flight: u32, total_weight: u32) -> bool {
        if self.balance_factor <= 0.0 || total_weight == 0 {
            return false;
        }
        let share = f64::from(b.weight) / f64::from(total_weight);
        let bound = (self.balance_factor * f64::from(pool_in_flight + 1) * share).ceil();
        f64::from(b.live.in_flight() + 1) > bound
    }
}

/// The eligibility rule for one pick: the pool's backends, its limits, and the backends
/// this request has already tried. Built by each balancer at the top of its `pick`; it
/// only borrows, so it costs nothing once inlined.
#[derive(Debug, Clone, Copy)]
pub struct Eligible<'a> {
    backends: &'a [Backend],
    limits: &'a Limits,
    tried: &'a Tried,
}

impl<'a> Eligible<'a> {
    /// The rule over `backends` (indices below refer to this slice).
    #[inline]
    pub fn new(backends: &'a [Backend], limits: &'a Limits, tried: &'a Tried) -> Eligible<'a> {
        Eligible {
            backends,
            limits,
            tried,
        }
    }

    /// Whether backend `i` may take a new client now: not tried, up, active, not
    /// ejected, and under `max_connections`.
    #[inline]
    pub fn accepts_new(&self, i: usize) -> bool {
        !self.tried.contains(i) && {
            let b = &self.backends[i];
            b.live.accepts_new() && self.limits.has_room(b)
        }
    }

    /// Whether backend `i` may serve a client bound to it: not tried, up, and active or
    /// draining. Room is asked apart ([`Eligible::has_room`]): a bound client whose
    /// backend is full overflows without being rebound.
    #[inline]
    pub fn accepts_bound(&self, i: usize) -> bool {
        !self.tried.contains(i) && self.backends[i].live.accepts_bound()
    }

    /// Whether backend `i`'s slow-start ramp lets it take this new client
    /// ([`BackendLive::ramp_admits`](crate::backend::BackendLive::ramp_admits)): one
    /// atomic load when it is not ramping.
    #[inline]
    pub fn ramp_admits(&self, i: usize, draw: impl FnOnce() -> u64) -> bool {
        self.backends[i].live.ramp_admits(draw)
    }

    /// Whether backend `i` is under `max_connections`.
    #[inline]
    pub fn has_room(&self, i: usize) -> bool {
        self.limits.has_room(&self.backends[i])
    }

    /// Bounded load ([`Limits::over_bound`]) for backend `i`.
    #[inline]
    pub fn over_bound(&self, i: usize, pool_in_flight: u32, total_weight: u32) -> bool {
        self.limits
            .over_bound(&self.backends[i], pool_in_flight, total_weight)
    }
}

/// Backends a request has already tried, skipped by every balancer on a retry.
#[derive(Debug, Clone, Default)]
pub struct Tried {
    idx: [u32; crate::config::MAX_RETRIES as usize + 1],
    len: usize,
}

impl Tried {
    /// No backend tried yet.
    pub fn new() -> Tried {
        Tried::default()
    }

    /// Whether backend `i` was tried.
    #[inline]
    pub fn contains(&self, i: usize) -> bool {
        self.idx[..self.len].iter().any(|&t| t as usize == i)
    }

    /// Records backend `i`; beyond capacity the oldest entries are kept.
    pub fn insert(&mut self, i: usize) {
        if self.len < self.idx.len() {
            self.idx[self.len] = i as u32;
            self.len += 1;
        }
    }
}
