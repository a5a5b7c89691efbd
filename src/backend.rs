//! A backend and its live state: the atomics that health checks, passive ejection, the
//! admin API and the request path share without a lock.
//!
//! A [`Backend`] is immutable and rebuilt on every reload; its [`BackendLive`] is carried
//! over to the new snapshot when the backend stays in the same pool with the same address,
//! so health, ejection, in-flight counts, counters, admin state and pooled upstream
//! connections survive a reload. Eligibility is defined here once ([`BackendLive::accepts_new`],
//! [`BackendLive::accepts_bound`]) and used by every balancer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::config::AdminState;
use crate::latency::Estimate;
use crate::pinned::PinnedClients;
use crate::queue::WaitQueue;

/// The scale of a slow-start ramp factor: [`BackendLive::ramp`] is this at a full share.
pub const RAMP_FULL: u32 = 1024;

/// Where a slow-start ramp begins: 10 % of [`RAMP_FULL`] (DESIGN §11).
pub const RAMP_START: u32 = RAMP_FULL / 10;

/// [`BackendLive`]'s `ramp_since` while a ramp waits for its backend to take work.
const RAMP_PENDING: u64 = u64::MAX;

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
/// request path, read by the admin listener; `ramp` and `ramp_since` by the pool's
/// slow-start ramp (the ramp ticker, and [`BackendLive::start_ramp`] when a backend
/// joins), `ramp` read by balancers. All use `Relaxed`: each is an independent
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
    /// Slow-start ramp factor, [`RAMP_START`] to [`RAMP_FULL`]: the share of its fair
    /// share of new work the backend takes now.
    ramp: AtomicU32,
    /// [`clock_ms`] when the running ramp began; [`RAMP_PENDING`] while the ramp waits
    /// for the backend to be up and enabled; 0 = not ramping.
    ramp_since: AtomicU64,
    /// Distinct clients seen within the pool's `pinned_window` (sticky pools only:
    /// made at the first insert). Inserted into by the request path, rotated by the
    /// upkeep ticker.
    pinned: OnceLock<PinnedClients>,
    /// Open WebSocket / Upgrade tunnels, only through [`Tunnel`].
    tunnels: AtomicU32,
    /// Open HTTP/2 connections to the backend, all workers together, only through
    /// [`Http2Conn`].
    http2_conns: AtomicU32,
    /// Unix seconds when the backend last entered `drain`; 0 when it is not draining.
    /// Written with the admin state.
    drain_since: AtomicU64,
    /// The peak-EWMA latency estimate, fed and read only in `peak-ewma` pools.
    pub latency: Estimate,
    /// Idle keep-alive connections to this backend, kept by the layer that speaks to
    /// backends.
    pub conns: IdleHandle,
    /// Set once the backend is removed with tunnels still open (discovery's
    /// `drain_timeout`); tunnels wait on it beside their copy loop.
    tunnels_closed: TunnelsClosed,
}

/// The signal that ends every tunnel to a backend: a flag, so a tunnel that starts
/// waiting after it was raised ends too, and a notifier for those already waiting.
#[derive(Debug, Default)]
struct TunnelsClosed {
    raised: AtomicBool,
    notify: tokio::sync::Notify,
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
            ramp: AtomicU32::new(RAMP_FULL),
            ramp_since: AtomicU64::new(0),
            pinned: OnceLock::new(),
            tunnels: AtomicU32::new(0),
            http2_conns: AtomicU32::new(0),
            drain_since: AtomicU64::new(if admin == AdminState::Drain {
                unix_secs()
            } else {
                0
            }),
            latency: Estimate::default(),
            conns: IdleHandle::default(),
            tunnels_closed: TunnelsClosed::default(),
        }
    }

    /// Ends every open tunnel to this backend (it was removed while still bound).
    pub fn close_tunnels(&self) {
        self.tunnels_closed.raised.store(true, Ordering::Release);
        self.tunnels_closed.notify.notify_waiters();
    }

    /// Resolves when [`BackendLive::close_tunnels`] is called, or at once if it was.
    pub async fn tunnels_closed(&self) {
        let notified = self.tunnels_closed.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.tunnels_closed.raised.load(Ordering::Acquire) {
            return;
        }
        notified.await;
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

    /// Sets the admin state (and when a drain began).
    pub fn set_admin(&self, s: AdminState) {
        let prev = self.admin.swap(admin_to_u8(s), Ordering::Relaxed);
        if s != AdminState::Drain {
            self.drain_since.store(0, Ordering::Relaxed);
        } else if prev != admin_to_u8(AdminState::Drain) {
            self.drain_since.store(unix_secs(), Ordering::Relaxed);
        }
    }

    /// Unix seconds when the current drain began; `None` when not draining.
    pub fn drain_since(&self) -> Option<u64> {
        match self.drain_since.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    /// Counts a sticky client (a hash key, a cookie's client id) as seen on this
    /// backend now.
    #[inline]
    pub fn pin(&self, client: u64) {
        self.pinned
            .get_or_init(PinnedClients::default)
            .insert(client);
    }

    /// Estimated distinct sticky clients seen within the pool's `pinned_window`
    /// (±5 %); 0 for a backend that never had one.
    pub fn pinned(&self) -> u64 {
        self.pinned.get().map_or(0, PinnedClients::estimate)
    }

    /// Moves the pinned-client window on to `now_ms` ([`clock_ms`]); the upkeep
    /// ticker's call.
    pub fn rotate_pinned(&self, now_ms: u64, window: Duration) {
        if let Some(p) = self.pinned.get() {
            p.rotate(now_ms, window);
        }
    }

    /// Open WebSocket and Upgrade tunnels now.
    pub fn tunnels(&self) -> u32 {
        self.tunnels.load(Ordering::Relaxed)
    }

    /// Counts an open tunnel until the returned guard drops.
    pub fn open_tunnel(self: &Arc<Self>) -> Tunnel {
        self.tunnels.fetch_add(1, Ordering::Relaxed);
        Tunnel(Arc::clone(self))
    }

    /// Open HTTP/2 connections to the backend now, all workers together.
    pub fn http2_connections(&self) -> u32 {
        self.http2_conns.load(Ordering::Relaxed)
    }

    /// Counts an open HTTP/2 connection until the returned guard drops.
    pub fn open_http2_conn(self: &Arc<Self>) -> Http2Conn {
        self.http2_conns.fetch_add(1, Ordering::Relaxed);
        Http2Conn(Arc::clone(self))
    }

    /// Whether nothing is bound to the backend any more: no request in flight, no open
    /// tunnel, and no sticky client seen within the pool's `pinned_window`. The moment
    /// a draining backend may be taken away (DESIGN §10, §11).
    pub fn nothing_bound(&self) -> bool {
        self.in_flight() == 0 && self.tunnels() == 0 && self.pinned() == 0
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

    /// The slow-start ramp factor now, [`RAMP_START`] to [`RAMP_FULL`] (full: not
    /// ramping).
    #[inline]
    pub fn ramp(&self) -> u32 {
        self.ramp.load(Ordering::Relaxed)
    }

    /// Whether the slow-start ramp lets the backend take this new client: always at a
    /// full ramp (one atomic load, and `draw` is not called); otherwise for the share
    /// `ramp / RAMP_FULL` of draws. `draw` gives the bits the choice is made from: a
    /// per-pick counter or random number spreads new work, a sticky key's hash makes
    /// the choice per key, so a key once admitted stays admitted as the ramp grows.
    #[inline]
    pub fn ramp_admits(&self, draw: impl FnOnce() -> u64) -> bool {
        ramp_admits(self.ramp.load(Ordering::Relaxed), draw)
    }

    /// Starts a slow-start ramp for a backend that joins its pool (added by a reload or
    /// by discovery): it takes 10 % of its share of new work until it is up and
    /// enabled, then ramps to 100 % over `slow_start` (the pool's), driven by the ramp
    /// ticker. A zero `slow_start` (the pool has none) does nothing.
    pub fn start_ramp(&self, slow_start: Duration) {
        if slow_start.is_zero() {
            return;
        }
        self.ramp.store(RAMP_START, Ordering::Relaxed);
        self.ramp_since.store(RAMP_PENDING, Ordering::Relaxed);
    }

    /// One step of the slow-start ramp at `now_ms` ([`clock_ms`]) for a pool whose
    /// `slow_start` is `period` (the ramp ticker's call). A backend that cannot serve
    /// (down, ejected, unchecked, disabled) waits at the start of a ramp, which begins
    /// when it can; a ramp rises linearly to full over `period`; with no `period`
    /// every ramp ends.
    pub fn advance_ramp(&self, now_ms: u64, period: Duration) {
        let since = self.ramp_since.load(Ordering::Relaxed);
        if period.is_zero() {
            if since != 0 || self.ramp() != RAMP_FULL {
                self.ramp_since.store(0, Ordering::Relaxed);
                self.ramp.store(RAMP_FULL, Ordering::Relaxed);
            }
            return;
        }
        if !self.accepts_bound() {
            if since != RAMP_PENDING {
                self.ramp.store(RAMP_START, Ordering::Relaxed);
                self.ramp_since.store(RAMP_PENDING, Ordering::Relaxed);
            }
            return;
        }
        let began = match since {
            0 => return,
            RAMP_PENDING => {
                self.ramp_since.store(now_ms, Ordering::Relaxed);
                now_ms
            }
            t => t,
        };
        let factor = ramp_factor(now_ms.saturating_sub(began), period.as_millis() as u64);
        if factor >= RAMP_FULL {
            self.ramp_since.store(0, Ordering::Relaxed);
        }
        self.ramp.store(factor, Ordering::Relaxed);
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

/// The ramp factor `elapsed_ms` into a ramp of `period_ms`: [`RAMP_START`] rising
/// linearly to [`RAMP_FULL`].
pub fn ramp_factor(elapsed_ms: u64, period_ms: u64) -> u32 {
    if elapsed_ms >= period_ms {
        return RAMP_FULL;
    }
    let rise = u64::from(RAMP_FULL - RAMP_START) * elapsed_ms / period_ms.max(1);
    RAMP_START + rise as u32
}

/// Whether a ramp factor `ramp` already read admits this draw
/// ([`BackendLive::ramp_admits`]).
#[inline]
pub fn ramp_admits(ramp: u32, draw: impl FnOnce() -> u64) -> bool {
    ramp >= RAMP_FULL || ramp_point(draw()) < ramp
}

/// A draw's point in `0..RAMP_FULL`: the top bits of [`mix64`], so counters and hashes
/// alike spread evenly.
#[inline]
fn ramp_point(x: u64) -> u32 {
    (mix64(x) >> 54) as u32
}

/// splitmix64's finalizer: every input bit moves about half the output bits, so
/// counters and sequences come out evenly spread.
#[inline]
pub fn mix64(x: u64) -> u64 {
    let x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
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

/// An open tunnel on a backend, counted in [`BackendLive::tunnels`] until dropped.
#[derive(Debug)]
pub struct Tunnel(Arc<BackendLive>);

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.0.tunnels.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An open HTTP/2 connection to a backend, counted in
/// [`BackendLive::http2_connections`] until dropped.
#[derive(Debug)]
pub struct Http2Conn(Arc<BackendLive>);

impl Drop for Http2Conn {
    fn drop(&mut self) {
        self.0.http2_conns.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
    fn ramp_waits_while_cold_then_rises_linearly_to_full() {
        let live = BackendLive::new(true, AdminState::Active);
        let period = Duration::from_secs(10);
        live.start_ramp(period);
        assert_eq!(live.ramp(), RAMP_START);
        live.advance_ramp(1_000, period);
        assert_eq!(live.ramp(), RAMP_START, "unchecked: the ramp waits");
        live.set_health(Health::Up);
        live.advance_ramp(2_000, period);
        assert_eq!(live.ramp(), RAMP_START, "up: the ramp begins now");
        live.advance_ramp(7_000, period);
        assert_eq!(live.ramp(), RAMP_START + (RAMP_FULL - RAMP_START) / 2);
        live.advance_ramp(12_000, period);
        assert_eq!(live.ramp(), RAMP_FULL);
        live.set_admin(AdminState::Disabled);
        live.advance_ramp(13_000, period);
        assert_eq!(live.ramp(), RAMP_START, "disabled: a ramp waits for enable");
        live.set_admin(AdminState::Active);
        live.advance_ramp(14_000, Duration::ZERO);
        assert_eq!(live.ramp(), RAMP_FULL, "no slow start: no ramp");
    }

    #[test]
    fn ramp_admits_its_share_of_draws_and_keeps_admitted_keys() {
        let live = BackendLive::new(false, AdminState::Active);
        assert!(live.ramp_admits(|| unreachable!("a full ramp draws nothing")));
        live.ramp.store(RAMP_FULL / 4, Ordering::Relaxed);
        let admitted: Vec<u64> = (0..100_000u64)
            .filter(|&k| live.ramp_admits(|| k))
            .collect();
        let share = admitted.len() as f64 / 100_000.0;
        assert!((share - 0.25).abs() < 0.01, "{share}");
        live.ramp.store(RAMP_FULL / 2, Ordering::Relaxed);
        assert!(
            admitted.iter().all(|&k| live.ramp_admits(|| k)),
            "moved keys stay"
        );
    }

    #[test]
    fn nothing_bound_waits_for_requests_tunnels_and_pinned_clients() {
        let live = Arc::new(BackendLive::new(false, AdminState::Active));
        assert!(live.nothing_bound());
        live.set_admin(AdminState::Drain);
        assert!(live.drain_since().is_some());
        let req = live.enter(0, None);
        assert!(!live.nothing_bound(), "a request in flight");
        let tunnel = live.open_tunnel();
        drop(req);
        assert_eq!(live.tunnels(), 1);
        assert!(!live.nothing_bound(), "an open tunnel");
        drop(tunnel);
        assert!(live.nothing_bound());
        live.rotate_pinned(1_000, Duration::from_secs(4));
        live.pin(42);
        live.rotate_pinned(1_000, Duration::from_secs(4));
        assert_eq!(live.pinned(), 1);
        assert!(!live.nothing_bound(), "a client seen within the window");
        live.rotate_pinned(7_000, Duration::from_secs(4));
        assert!(live.nothing_bound(), "the window has passed");
        live.set_admin(AdminState::Active);
        assert_eq!(live.drain_since(), None);
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
