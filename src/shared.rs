//! What every task of one running daemon shares: the live snapshot, the access log,
//! daemon-wide counters, the tracker that graceful shutdown waits on, and DNS discovery's
//! registry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};

use arc_swap::ArcSwapOption;

use crate::access_log::AccessLog;
use crate::discovery;
use crate::shutdown::Tracker;
use crate::snapshot::Live;

/// Daemon-wide shared state.
#[derive(Debug)]
pub struct Shared {
    /// The current snapshot.
    pub live: Live,
    /// The access log, when enabled (reopened on reload when its target changes).
    pub access_log: ArcSwapOption<AccessLog>,
    /// Reloads applied.
    pub reloads_ok: AtomicU64,
    /// Reloads refused (bad file, failed build).
    pub reloads_failed: AtomicU64,
    /// Client connections and tunnels still running; shutdown waits for them.
    pub tracker: Tracker,
    /// Idle HTTP/1 client connections parked (holding only their socket).
    pub parked: AtomicUsize,
    /// Every pool's DNS discovery: discovered backends and resolution status.
    pub discovery: Arc<discovery::Registry>,
}

impl Shared {
    /// Shared state around a first snapshot.
    pub fn new(live: Live, access_log: Option<Arc<AccessLog>>) -> Shared {
        Shared {
            live,
            access_log: ArcSwapOption::new(access_log),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            tracker: Tracker::new(),
            parked: AtomicUsize::new(0),
            discovery: Arc::default(),
        }
    }
}
