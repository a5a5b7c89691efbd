//! A pool: its backends, its balancer and its policy (limits, timeouts, retries,
//! ejection). `pick` is the one place a request gets a backend: balancer choice, the
//! `max_connections` limit, and the in-flight guard, together. [`build_balancer`] is the
//! one place a balancer's parameters are read from the pool's config.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use crate::backend::{Backend, BackendLive, InFlight};
use crate::balancer::{
    AffinityKey, Balancer, ConsistentHash, CookieAffinity, CookieParams, Latency, LeastConnections,
    Limits, PeakEwma, PickContext, Placement, SmoothRoundRobin, Tried,
};
use crate::config::{BalancerKind, HashKey, PoolConfig};
use crate::stats::PoolStats;

/// One pool in the live snapshot.
#[derive(Debug)]
pub struct Pool {
    /// The pool's name.
    pub name: Arc<str>,
    /// Backends in config order.
    pub backends: Vec<Backend>,
    balancer: Arc<dyn Balancer>,
    /// Whether the balancer reads the wall clock, asked once at build.
    needs_clock: bool,
    /// The latency estimator the request path feeds (`peak-ewma` only), asked once at
    /// build.
    latency: Option<Arc<Latency>>,
    /// Limits every pick honours.
    pub limits: Limits,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// From the request fully sent until the response headers arrive.
    pub response_timeout: Duration,
    /// No progress reading a response body for this long cuts it.
    pub read_timeout: Duration,
    /// Idle backend connections are closed after this.
    pub keepalive_timeout: Duration,
    /// Extra backends tried after a retryable failure.
    pub retries: u32,
    /// Passive ejection: failures in a row and how long, or `None`.
    pub ejection: Option<(u32, Duration)>,
    /// Whether active health checks run for this pool.
    pub checked: bool,
    /// Counters, carried over reloads by pool name.
    pub stats: Arc<PoolStats>,
}

/// A backend chosen for one attempt, holding its in-flight slot.
#[derive(Debug)]
pub struct Chosen<'a> {
    /// Index into [`Pool::backends`].
    pub index: usize,
    /// The backend.
    pub backend: &'a Backend,
    /// The in-flight slot, released when the response body ends.
    pub guard: InFlight,
    /// Set-Cookie the response must carry.
    pub set_cookie: Option<HeaderValue>,
    /// How the choice was made.
    pub placement: Placement,
}

impl Pool {
    /// Builds a pool from its config, reusing live state where `live_for` has it.
    /// `unchanged` is the previous snapshot's pool when its config is identical: its
    /// balancer (hash table, round-robin cycle) is kept instead of rebuilt.
    pub fn build(
        cfg: &PoolConfig,
        stats: Arc<PoolStats>,
        unchanged: Option<&Pool>,
        mut live_for: impl FnMut(&str) -> Option<Arc<BackendLive>>,
    ) -> Pool {
        let checked = cfg.health.is_some();
        let backends: Vec<Backend> = cfg
            .backends
            .iter()
            .map(|b| Backend {
                name: Arc::from(b.addr.as_str()),
                addr: b.socket,
                weight: b.weight,
                live: live_for(&b.addr)
                    .unwrap_or_else(|| Arc::new(BackendLive::new(checked, b.state))),
            })
            .collect();
        let balancer = match unchanged {
            Some(old) => Arc::clone(&old.balancer),
            None => Arc::from(build_balancer(cfg, &backends)),
        };
        Pool {
            name: Arc::from(cfg.name.as_str()),
            backends,
            needs_clock: balancer.needs_clock(),
            latency: balancer.latency(),
            balancer,
            limits: Limits {
                max_connections: cfg.max_connections,
                balance_factor: cfg.balance_factor,
            },
            connect_timeout: cfg.connect_timeout,
            response_timeout: cfg.response_timeout,
            read_timeout: cfg.read_timeout,
            keepalive_timeout: cfg.keepalive_timeout,
            retries: cfg.retries,
            ejection: cfg
                .ejection
                .as_ref()
                .map(|e| (e.consecutive_failures, e.duration)),
            checked,
            stats,
        }
    }

    /// Which balancer the pool runs.
    pub fn balancer_kind(&self) -> BalancerKind {
        self.balancer.kind()
    }

    /// Whether a pick needs [`PickContext::now_secs`] (the wall clock); when not, the
    /// caller reads no clock.
    #[inline]
    pub fn needs_clock(&self) -> bool {
        self.needs_clock
    }

    /// The latency estimator to feed with this pool's answers and failures, for a
    /// `peak-ewma` pool; `None` for the others, which then read no clock for it.
    #[inline]
    pub fn latency(&self) -> Option<&Latency> {
        self.latency.as_deref()
    }

    /// The balancer itself (reload report, benchmarks).
    pub fn balancer(&self) -> &dyn Balancer {
        self.balancer.as_ref()
    }

    /// Requests in flight on the whole pool.
    pub fn in_flight(&self) -> u32 {
        self.backends.iter().map(|b| b.live.in_flight()).sum()
    }

    /// Chooses a backend and takes its in-flight slot, or `None` when no backend can take
    /// the request (the caller answers 503).
    pub fn pick(&self, ctx: &mut PickContext<'_>, tried: &mut Tried) -> Option<Chosen<'_>> {
        if self.limits.balance_factor > 0.0 {
            ctx.pool_in_flight = self.in_flight();
        }
        // A backend can fill up between the balancer's look and our increment; each
        // such loss excludes it, so this ends within `backends.len()` rounds.
        for _ in 0..=self.backends.len() {
            let p = self
                .balancer
                .pick(&self.backends, ctx, &self.limits, tried)?;
            let backend = self.backends.get(p.index)?;
            match backend.live.enter(self.limits.max_connections) {
                Some(guard) => {
                    return Some(Chosen {
                        index: p.index,
                        backend,
                        guard,
                        set_cookie: p.set_cookie,
                        placement: p.placement,
                    });
                }
                None => tried.insert(p.index),
            }
        }
        None
    }
}

/// Builds the balancer a pool's config asks for, over `backends` (built from the same
/// config, in the same order).
pub fn build_balancer(cfg: &PoolConfig, backends: &[Backend]) -> Box<dyn Balancer> {
    match cfg.balancer {
        BalancerKind::RoundRobin => Box::new(SmoothRoundRobin::new(backends)),
        BalancerKind::LeastConnections => Box::new(LeastConnections::new(backends)),
        BalancerKind::IpHash => Box::new(ConsistentHash::new(
            backends,
            HashKey::ClientIp,
            BalancerKind::IpHash,
        )),
        BalancerKind::Hash => {
            let key = cfg.key.clone().unwrap_or(HashKey::ClientIp);
            Box::new(ConsistentHash::new(backends, key, BalancerKind::Hash))
        }
        BalancerKind::CookieAffinity => {
            Box::new(CookieAffinity::new(cookie_params(cfg, backends), backends))
        }
        BalancerKind::PeakEwma => {
            Box::new(PeakEwma::new(backends, cfg.latency.unwrap_or_default()))
        }
    }
}

/// A cookie-affinity pool's `[affinity]` settings, with their defaults when absent.
fn cookie_params(cfg: &PoolConfig, backends: &[Backend]) -> CookieParams {
    let aff = cfg.affinity.as_ref();
    let fallback: Box<dyn Balancer> =
        match aff.map_or(BalancerKind::LeastConnections, |a| a.fallback) {
            BalancerKind::RoundRobin => Box::new(SmoothRoundRobin::new(backends)),
            _ => Box::new(LeastConnections::new(backends)),
        };
    CookieParams {
        cookie: aff.map_or_else(|| format!("maitred_{}", cfg.name), |a| a.cookie.clone()),
        max_age: aff.and_then(|a| a.max_age),
        secure: aff.is_some_and(|a| a.secure),
        http_only: aff.is_some_and(|a| a.http_only),
        same_site: aff.and_then(|a| a.same_site),
        key: AffinityKey::new(aff.and_then(|a| a.secret.as_deref()), &cfg.name),
        fallback,
    }
}
