//! A backend and its live state: the atomics that health checks, passive ejection, the
//! admin API and the request path share without a lock.
//!
//! A [`Backend`] is immutable and rebuilt on every reload; its [`BackendLive`] is carried
//! over to the new snapshot when the backend stays in the same pool with the same address,
//! so health, ejection, in-flight counts, counters, admin state and pooled upstream
//! connections survive a reload. Eligibility is defined here once ([`BackendLive::accepts_new`],
//! [`BackendLive::accepts_bound`]) and used by every balancer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use crate::config::AdminState;
use crate::latency::Estimate;
use crate::queue::WaitQueue;

/// One backend of one pool, as the current snapshot sees it.
#[derive(Debug)]
pub struct Backend {
    /// The address as configured: identity for reloads, cookies, metrics and the admin API.
    pub name: Arc<str>,
    /// Where connections go.
    pub addr: SocketAddr,
    /// Relative share of new work.
    pub weight: u32,
    /// State shared with health checks, the admin API and older snapshots.
    pub live: Arc<BackendLive>,
}

/// Health as published by the checker and passive ejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Not yet probed: takes no traffic until its first check passes.
    Unknown = 0,
    /// Passing.
    Up = 1,
    /// Failing.
    Down = 2,
}

impl Health {
    fn from_u8(v: u8) -> Health {
        match v {
            1 => Health::Up,
            2 => Health::Down,
            _ => Health::Unknown,
        }
    }

    /// The status-page name (`unknown` reads as down to an operator).
    pub fn name(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Down | Health::Unknown => "down",
        }
    }
}

/// The result of the most recent active check, for the status page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// Whether it passed.
    pub passed: bool,
    /// `"200"`, `"timeout"`, `"refused"`, ...
    pub detail: String,
}

/// Live, shared state of one backend.
///
/// Writers and readers, for every atomic: `health` is written by the pool's health
/// checker and by passive ejection, read by balancers; `admin` by the admin API and
/// reload, read by balancers; `in_flight` only through [`InFlight`]; counters by the
/// request path, read by the admin listener. All use `Relaxed`: each is an independent
/// value, and nothing orders other memory through them.
#[derive(Debug)]
pub struct BackendLive {
    health: AtomicU8,
    admin: AtomicU8,
    /// Milliseconds on [`clock_ms`] until which the backend is ejected; 0 = not ejected.
    ejected_until: AtomicU64,
    consecutive_failures: AtomicU32,
    in_flight: AtomicU32,
    requests: AtomicU64,
    errors: AtomicU64,
    health_transitions: AtomicU64,
    ejections: AtomicU64,
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx (maitred's own 502/504 count
    /// as 5xx of the backend that caused them).
    classes: [AtomicU64; 5],
    last_check: Mutex<Option<CheckResult>>,
    /// The peak-EWMA latency estimate, fed and read only in `peak-ewma` pools.
    pub latency: Estimate,
    /// Idle keep-alive connections to this backend, kept by the layer that speaks to
    /// backends.
    pub conns: IdleHandle,
}

/// A backend's idle keep-alive connections as the backend state sees them: owned and
/// typed by the layer that speaks to backends (`upstream::pool`), opaque here so that
/// the state imports nothing above it.
pub trait IdleConns: std::fmt::Debug + Send + Sync + 'static {
    /// Idle connections held.
    fn idle(&self) -> usize;
    /// Closes them all (backend removed, process stopping).
    fn clear(&self);
    /// The owning layer's own type.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// Where a backend's [`IdleConns`] live: made by their owner on first use.
#[derive(Debug, Default)]
pub struct IdleHandle(OnceLock<Box<dyn IdleConns>>);

impl IdleHandle {
    /// The idle connections, made by `make` the first time.
    #[inline]
    pub fn get_or_init(&self, make: impl FnOnce() -> Box<dyn IdleConns>) -> &dyn IdleConns {
        self.0.get_or_init(make).as_ref()
    }

    /// Idle connections held.
    pub fn idle(&self) -> usize {
        self.0.get().map_or(0, |c| c.idle())
    }

    /// Closes them all.
    pub fn clear(&self) {
        if let Some(c) = self.0.get() {
            c.clear();
        }
    }
}

impl BackendLive {
    /// New state: `Unknown` health when active checks will decide, `Up` otherwise.
    pub fn new(checked: bool, admin: AdminState) -> BackendLive {
        let health = if checked { Health::Unknown } else { Health::Up };
        BackendLive {
            health: AtomicU8::new(health as u8),
            admin: AtomicU8::new(admin_to_u8(admin)),
            ejected_until: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            health_transitions: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            classes: Default::default(),
            last_check: Mutex::new(None),
            latency: Estimate::default(),
            conns: IdleHandle::default(),
        }
    }

    /// Current health.
    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Relaxed))
    }

    /// Publishes a health state; returns the previous one. Counts real transitions.
    pub fn set_health(&self, h: Health) -> Health {
        let prev = Health::from_u8(self.health.swap(h as u8, Ordering::Relaxed));
        if prev != h && !(prev == Health::Unknown && h == Health::Up) {
            self.health_transitions.fetch_add(1, Ordering::Relaxed);
        }
        prev
    }

    /// Current admin state.
    pub fn admin(&self) -> AdminState {
        match self.admin.load(Ordering::Relaxed) {
            1 => AdminState::Drain,
            2 => AdminState::Disabled,
            _ => AdminState::Active,
        }
    }

    /// Sets the admin state.
    pub fn set_admin(&self, s: AdminState) {
        self.admin.store(admin_to_u8(s), Ordering::Relaxed);
    }

    /// Up, and not in an ejection period.
    #[inline]
    pub fn is_up(&self) -> bool {
        if self.health.load(Ordering::Relaxed) != Health::Up as u8 {
            return false;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        until == 0 || clock_ms() >= until
    }

    /// Whether the backend may take a new client: up, active, not ejected.
    #[inline]
    pub fn accepts_new(&self) -> bool {
        self.admin.load(Ordering::Relaxed) == 0 && self.is_up()
    }

    /// Whether the backend may serve a client already bound to it (cookie, tunnel):
    /// up, and active or draining.
    #[inline]
    pub fn accepts_bound(&self) -> bool {
        self.admin.load(Ordering::Relaxed) <= 1 && self.is_up()
    }

    /// Requests in flight now.
    #[inline]
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Total requests sent to this backend.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Total failed requests (connect errors, resets, timeouts, 5xx).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Counts a response status in its class.
    #[inline]
    pub fn record_status(&self, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.classes[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Responses per status class, 1xx to 5xx.
    pub fn status_classes(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.classes[i].load(Ordering::Relaxed))
    }

    /// Health transitions so far.
    pub fn health_transitions(&self) -> u64 {
        self.health_transitions.load(Ordering::Relaxed)
    }

    /// Passive ejections so far.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Whether the backend is inside an ejection period now.
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && clock_ms() < until
    }

    /// Records a success on live traffic: the failure streak ends.
    #[inline]
    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Records a failure on live traffic. Returns true when it completes a streak of
    /// `threshold` (then the caller ejects); `threshold == 0` never ejects.
    pub fn record_failure(&self, threshold: u32) -> bool {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if threshold == 0 {
            return false;
        }
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        n == threshold
    }

    /// Ejects the backend for `duration_ms` from now and restarts its failure streak.
    pub fn eject(&self, duration_ms: u64) {
        self.ejected_until.store(
            clock_ms().saturating_add(duration_ms).max(1),
            Ordering::Relaxed,
        );
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.ejections.fetch_add(1, Ordering::Relaxed);
    }

    /// Milliseconds left in the current ejection period; 0 when not ejected.
    pub fn ejection_left_ms(&self) -> u64 {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return 0;
        }
        until.saturating_sub(clock_ms())
    }

    /// Takes over health and ejection handed over by the process this one replaces
    /// (a binary upgrade): published as they were, not counted as transitions or new
    /// ejections.
    pub fn restore(&self, health: Health, ejection_left_ms: u64) {
        self.health.store(health as u8, Ordering::Relaxed);
        let until = match ejection_left_ms {
            0 => 0,
            left => clock_ms().saturating_add(left),
        };
        self.ejected_until.store(until, Ordering::Relaxed);
    }

    /// Stores the last active check result.
    pub fn set_last_check(&self, r: CheckResult) {
        if let Ok(mut g) = self.last_check.lock() {
            *g = Some(r);
        }
    }

    /// The last active check result, if any.
    pub fn last_check(&self) -> Option<CheckResult> {
        self.last_check.lock().ok().and_then(|g| g.clone())
    }

    /// Counts one request into the backend and returns the guard that holds its
    /// in-flight slot. With `limit > 0`, refuses (None) when the backend is at the limit.
    /// `queue` is the pool's wait queue, told when the slot comes back; `None` for a
    /// pool without one.
    #[inline]
    pub fn enter(self: &Arc<Self>, limit: u32, queue: Option<&Arc<WaitQueue>>) -> Option<InFlight> {
        let prev = self.in_flight.fetch_add(1, Ordering::Relaxed);
        if limit != 0 && prev >= limit {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        Some(InFlight {
            live: Arc::clone(self),
            queue: queue.cloned(),
        })
    }
}

fn admin_to_u8(s: AdminState) -> u8 {
    match s {
        AdminState::Active => 0,
        AdminState::Drain => 1,
        AdminState::Disabled => 2,
    }
}

/// An in-flight request on a backend. The only way the in-flight count changes: taken by
/// [`BackendLive::enter`], given back on drop, which happens when the response body ends
/// or the request is abandoned anywhere on the way. In a pool with a wait queue, giving
/// the slot back wakes the request at the head of the queue.
#[derive(Debug)]
pub struct InFlight {
    live: Arc<BackendLive>,
    queue: Option<Arc<WaitQueue>>,
}

impl InFlight {
    /// The backend this slot belongs to.
    pub fn live(&self) -> &Arc<BackendLive> {
        &self.live
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.live.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(q) = &self.queue {
            q.released();
        }
    }
}

/// Milliseconds since the process started, never 0: the clock for ejection deadlines.
pub fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(Instant::now);
    start.elapsed().as_millis() as u64 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_guard_counts_and_releases() {
        let live = Arc::new(BackendLive::new(false, AdminState::Active));
        let a = live.enter(2, None);
        let b = live.enter(2, None);
        assert!(a.is_some() && b.is_some());
        assert_eq!(live.in_flight(), 2);
        assert!(
            live.enter(2, None).is_none(),
            "third request is over the limit"
        );
        assert_eq!(live.in_flight(), 2);
        drop(a);
        drop(b);
        assert_eq!(live.in_flight(), 0);
        assert_eq!(live.requests(), 2);
    }

    #[test]
    fn giving_a_slot_back_wakes_the_pool_queue() {
        let queue = Arc::new(WaitQueue::default());
        let live = Arc::new(BackendLive::new(false, AdminState::Active));
        let held = live.enter(1, Some(&queue));
        let place = queue.join();
        let mut woken = std::pin::pin!(place.woken());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(woken.as_mut().poll(&mut cx).is_pending());
        drop(held);
        assert!(woken.as_mut().poll(&mut cx).is_ready());
        assert!(live.enter(1, Some(&queue)).is_some());
    }

    #[test]
    fn eligibility_follows_health_admin_and_ejection() {
        let live = Arc::new(BackendLive::new(true, AdminState::Active));
        assert!(!live.accepts_new(), "unknown health takes nothing");
        live.set_health(Health::Up);
        assert!(live.accepts_new() && live.accepts_bound());
        live.set_admin(AdminState::Drain);
        assert!(!live.accepts_new() && live.accepts_bound());
        live.set_admin(AdminState::Disabled);
        assert!(!live.accepts_new() && !live.accepts_bound());
        live.set_admin(AdminState::Active);
        live.eject(60_000);
        assert!(!live.accepts_new() && !live.accepts_bound());
    }

    #[test]
    fn failure_streak_reaches_threshold_once() {
        let live = BackendLive::new(false, AdminState::Active);
        assert!(!live.record_failure(3));
        assert!(!live.record_failure(3));
        live.record_success();
        assert!(!live.record_failure(3));
        assert!(!live.record_failure(3));
        assert!(live.record_failure(3));
        assert_eq!(live.errors(), 5);
    }
}
