//! A pool: its backends, its balancer and its policy (limits, timeouts, retries,
//! ejection). `pick` is the one place a request gets a backend: balancer choice, the
//! `max_connections` limit, and the in-flight guard, together; [`Pool::wait_for_slot`]
//! is the same pick made from the pool's wait queue (`queue_timeout`).
//! [`build_balancer`] is the one place a balancer's parameters are read from the pool's
//! config.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::HeaderValue;

use crate::backend::{Backend, BackendLive, InFlight};
use crate::backend_tls::BackendTls;
use crate::balancer::{
    AffinityKey, Balancer, ConsistentHash, CookieAffinity, CookieParams, Latency, LeastConnections,
    Limits, PeakEwma, PickContext, Placement, SmoothRoundRobin, Tried,
};
use crate::config::{BalancerKind, HashKey, PoolConfig, UpstreamProtocol};
use crate::queue::WaitQueue;
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
    /// Where requests wait for a slot when every backend is at `max_connections`;
    /// `None` without `queue_timeout` (or without `max_connections`).
    queue: Option<Arc<WaitQueue>>,
    /// How long a request waits in `queue` at most.
    pub queue_timeout: Duration,
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
    /// How long a joining backend ramps up (DESIGN §11); zero = no slow start.
    pub slow_start: Duration,
    /// How far back a sticky pool's backends count distinct clients.
    pub pinned_window: Duration,
    /// Counters, carried over reloads by pool name.
    pub stats: Arc<PoolStats>,
    /// What the pool speaks to its backends, and how (DESIGN §12).
    pub transport: Transport,
}

/// How a pool reaches its backends: the protocol, and for `h2` and `https` the TLS
/// client config loaded with the snapshot.
#[derive(Debug, Clone)]
pub struct Transport {
    /// `http1`, `h2c`, `h2` or `https`.
    pub protocol: UpstreamProtocol,
    /// For `h2` and `https`.
    pub tls: Option<Arc<BackendTls>>,
    /// Differs between any two transports loaded separately: a connection opened under
    /// one is never reused under another (a reload that changes a pool's protocol or
    /// certificates starts its connections afresh).
    pub id: u64,
}

impl Transport {
    /// A transport with a fresh id.
    pub fn new(protocol: UpstreamProtocol, tls: Option<Arc<BackendTls>>) -> Transport {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Transport {
            protocol,
            tls,
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Plain HTTP/1.1, the default (for pools built without a snapshot: tests, benches).
    pub fn http1() -> Transport {
        Transport::new(UpstreamProtocol::Http1, None)
    }
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
    /// `queue` is the previous snapshot's wait queue of this pool, kept when the pool
    /// still queues (its waiters and the guards of its requests stay connected).
    /// `previous` is the previous snapshot's pool of this name: a backend new to a pool
    /// that ran before joins it with a slow-start ramp, and a rebuilt hash ring
    /// remembers the previous one. With `unchanged` (its config is identical) its
    /// balancer (hash table, round-robin cycle) is kept instead of rebuilt.
    pub fn build(
        cfg: &PoolConfig,
        transport: Transport,
        stats: Arc<PoolStats>,
        queue: Option<Arc<WaitQueue>>,
        previous: Option<&Pool>,
        unchanged: bool,
        mut live_for: impl FnMut(&str) -> Option<Arc<BackendLive>>,
    ) -> Pool {
        let checked = cfg.health.is_some();
        let joining = |live: BackendLive| {
            if previous.is_some() {
                live.start_ramp(cfg.slow_start);
            }
            Arc::new(live)
        };
        let backends: Vec<Backend> = cfg
            .backends
            .iter()
            .map(|b| Backend {
                name: Arc::from(b.addr.as_str()),
                addr: b.socket,
                weight: b.weight,
                live: live_for(&b.addr)
                    .unwrap_or_else(|| joining(BackendLive::new(checked, b.state))),
            })
            .collect();
        let balancer = match previous.filter(|_| unchanged) {
            Some(old) => Arc::clone(&old.balancer),
            None => Arc::from(build_balancer(cfg, &backends, previous)),
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
            queue: (!cfg.queue_timeout.is_zero() && cfg.max_connections > 0)
                .then(|| queue.unwrap_or_default()),
            queue_timeout: cfg.queue_timeout,
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
            slow_start: cfg.slow_start,
            pinned_window: cfg.pinned_window,
            stats,
            transport,
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

    /// The pool's wait queue, when it has one.
    #[inline]
    pub fn queue(&self) -> Option<&Arc<WaitQueue>> {
        self.queue.as_ref()
    }

    /// Requests waiting in the queue now.
    pub fn queued(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.waiting())
    }

    /// Chooses a backend and takes its in-flight slot, or `None` when no backend can take
    /// the request (the caller answers 503, or waits in the queue when the pool has one).
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
            match backend
                .live
                .enter(self.limits.max_connections, self.queue.as_ref())
            {
                Some(guard) => {
                    if p.pin != 0 {
                        backend.live.pin(p.pin);
                    }
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

    /// The pick of a pool with a queue: `None` at once when others wait already (first
    /// come, first served: the request goes behind them) or no backend can take it, and
    /// `tried` is left as it was, so the queue sees which backends are only full.
    fn pick_unqueued(&self, ctx: &mut PickContext<'_>, tried: &Tried) -> Option<Chosen<'_>> {
        if self.queued() > 0 {
            return None;
        }
        self.pick(ctx, &mut tried.clone())
    }

    /// Chooses a backend for one attempt of a request without waiting: as
    /// [`Pool::pick`] in a pool without a queue; in a pool with one, a free slot when
    /// nobody waits before the request. `Err(queue)`: the request must wait its turn
    /// there ([`Pool::wait_for_slot`]). Not async, so that a request that never queues
    /// carries no wait's state.
    pub fn pick_now(
        &self,
        ctx: &mut PickContext<'_>,
        tried: &mut Tried,
    ) -> Result<Option<Chosen<'_>>, &WaitQueue> {
        match self.queue() {
            None => Ok(self.pick(ctx, tried)),
            Some(queue) => match self.pick_unqueued(ctx, tried) {
                Some(c) => Ok(Some(c)),
                None => Err(queue),
            },
        }
    }

    /// Waits in the queue, first come first served, for a slot on a backend not in
    /// `tried`, until `deadline` (set now to `queue_timeout` from now when it is `None`:
    /// one bound for every attempt of the request). `None`: the deadline passed (503),
    /// or no backend is merely full (down, disabled: waiting would not help).
    ///
    /// Only the head of the queue picks; an in-flight guard released, or the head
    /// leaving, wakes the next try. Dropping the future leaves the queue.
    pub async fn wait_for_slot(
        &self,
        queue: &WaitQueue,
        ctx: &mut PickContext<'_>,
        tried: &Tried,
        deadline: &mut Option<Instant>,
    ) -> Option<Chosen<'_>> {
        let place = queue.join();
        let joined = Instant::now();
        let deadline = *deadline.get_or_insert(joined + self.queue_timeout);
        let sleep = tokio::time::sleep_until(deadline.into());
        tokio::pin!(sleep);
        let mut waited = false;
        let chosen = loop {
            if place.is_head() {
                if let Some(c) = self.pick(ctx, &mut tried.clone()) {
                    break Some(c);
                }
                if !self.has_full_backend(tried) {
                    break None;
                }
            }
            waited = true;
            tokio::select! {
                () = place.woken() => {}
                () = &mut sleep => {
                    self.stats.queue_timeouts.fetch_add(1, Ordering::Relaxed);
                    break None;
                }
            }
        };
        if waited {
            self.stats.queue_wait.observe(joined.elapsed());
        }
        chosen
    }

    /// Whether some backend not in `tried` could take the request but for
    /// `max_connections`: what a slot coming back would help.
    fn has_full_backend(&self, tried: &Tried) -> bool {
        let max = self.limits.max_connections;
        self.backends.iter().enumerate().any(|(i, b)| {
            max != 0 && !tried.contains(i) && b.live.accepts_new() && b.live.in_flight() >= max
        })
    }
}

/// Builds the balancer a pool's config asks for, over `backends` (built from the same
/// config, in the same order). `previous` is the pool it replaces, if any (a hash ring
/// remembers where keys were).
pub fn build_balancer(
    cfg: &PoolConfig,
    backends: &[Backend],
    previous: Option<&Pool>,
) -> Box<dyn Balancer> {
    let earlier = previous.and_then(|p| Some((p.balancer.ring()?, p.backends.as_slice())));
    match cfg.balancer {
        BalancerKind::RoundRobin => Box::new(SmoothRoundRobin::new(backends)),
        BalancerKind::LeastConnections => Box::new(LeastConnections::new(backends)),
        BalancerKind::IpHash => Box::new(ConsistentHash::new(
            backends,
            HashKey::ClientIp,
            BalancerKind::IpHash,
            earlier,
        )),
        BalancerKind::Hash => {
            let key = cfg.key.clone().unwrap_or(HashKey::ClientIp);
            Box::new(ConsistentHash::new(
                backends,
                key,
                BalancerKind::Hash,
                earlier,
            ))
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
