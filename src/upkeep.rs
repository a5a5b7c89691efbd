//! The backend upkeep ticker: the one task that moves every backend's slow-start ramp
//! (DESIGN §11) and slides its pinned-client window, so that the request path only
//! reads an atomic for the one and reads no clock for either.
//!
//! Every [`TICK`] it walks the current snapshot's pools. Ramps: in a pool with
//! `slow_start`, a backend that cannot serve (down, ejected, unchecked, disabled) waits
//! at the start of a ramp, and one that can climbs linearly from 10 % to 100 % of its
//! share over the period ([`BackendLive::advance_ramp`]); in a pool without, any ramp
//! left ends. Backends present at start-up begin at full share; a backend that joins
//! later is set at the start of a ramp by whoever adds it ([`BackendLive::start_ramp`]:
//! the reload's snapshot build, discovery). Pinned clients: each backend's window
//! moves on to now ([`BackendLive::rotate_pinned`]).
//!
//! [`BackendLive::advance_ramp`]: crate::backend::BackendLive::advance_ramp
//! [`BackendLive::start_ramp`]: crate::backend::BackendLive::start_ramp
//! [`BackendLive::rotate_pinned`]: crate::backend::BackendLive::rotate_pinned

use std::sync::Arc;
use std::time::Duration;

use crate::backend::clock_ms;
use crate::shared::Shared;
use crate::shutdown::Shutdown;
use crate::snapshot::Snapshot;

/// How often the ticker runs: a 10 s ramp climbs in 100 steps, and a backend that
/// comes back up begins its ramp within this.
pub const TICK: Duration = Duration::from_millis(100);

/// Starts the ticker on the current runtime; it ends with the daemon.
pub fn spawn(shared: &Arc<Shared>, mut shutdown: Shutdown) {
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait() => return,
            }
            advance(&shared.live.load(), clock_ms());
        }
    });
}

/// One tick over every backend of `snapshot` at `now_ms` ([`clock_ms`]).
pub fn advance(snapshot: &Snapshot, now_ms: u64) {
    for pool in &snapshot.pools {
        for b in &pool.backends {
            b.live.advance_ramp(now_ms, pool.slow_start);
            b.live.rotate_pinned(now_ms, pool.pinned_window);
        }
    }
}
