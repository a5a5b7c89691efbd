//! DNS discovery (DESIGN §10): pools that take backends from A/AAAA or SRV records, and
//! follow them without a reload.
//!
//! Which backends exist is this module's job alone: it never touches the request path.
//! A task per pool with a `[pool.NAME.discovery]` section (`task.rs`) asks DNS
//! (`resolve.rs`), keeps the pool's discovered set by the rules of `members.rs`, and
//! when the set changes tells the daemon, which builds a new snapshot from the file's
//! config plus the discovered backends ([`Registry::compose`]) through the same code as
//! a reload and swaps it in. The [`Registry`] (in [`crate::shared::Shared`]) holds
//! every pool's set and status for `/status`, `/metrics` and the reload that must keep
//! them. The daemon's side (`app.rs`) is reached only through what it hands in: a
//! [`TaskContext`] and the snapshots.

mod members;
mod registry;
mod resolve;
mod task;

use crate::backend::BackendLive;
use crate::snapshot::Snapshot;
pub use members::{Change, Member, Members, Outcome};
pub use registry::{AppliedChange, PoolView, Registry, Status};
pub use resolve::{Answer, Found, Resolver, ResolverSetupError};
pub use task::{TaskContext, first_answers, spawn, wait_after};

/// Whether nothing is bound to a backend any more, so a draining one may go: no
/// request in flight, no open tunnel and, in a sticky pool, no client seen within
/// `pinned_window` (DESIGN §10, §11).
pub fn nothing_bound(live: &BackendLive) -> bool {
    live.nothing_bound()
}

/// A backend discovery just added to a pool joins here. Its slow-start ramp (DESIGN
/// §11) has already begun: the rebuilt pool starts one for every backend new to it
/// (`Pool::build`).
fn joined(pool: &str, live: &BackendLive, addr: &str) {
    tracing::debug!(
        pool,
        backend = addr,
        health = live.health().name(),
        "discovered backend joined"
    );
}

/// One answer in one line, for `maitred check --resolve`: `3 backends (ttl 30s):
/// 10.0.0.1:8080 weight 1, ...`, `empty: ...` or `failed: ...`.
pub fn describe(answer: &Answer) -> String {
    match answer {
        Answer::Records { found, ttl } => {
            let list: Vec<String> = found
                .iter()
                .map(|f| {
                    let mut s = format!("{} weight {}", f.addr, f.weight);
                    if f.priority != 0 {
                        s.push_str(&format!(" priority {}", f.priority));
                    }
                    s
                })
                .collect();
            format!(
                "{} backend{} (ttl {}): {}",
                found.len(),
                if found.len() == 1 { "" } else { "s" },
                humantime::format_duration(*ttl),
                list.join(", ")
            )
        }
        Answer::Empty(why) => format!("empty: {why}"),
        Answer::Failed(why) => format!("failed: {why}"),
    }
}

/// Called after the swap of a snapshot built for discovery: closes the tunnels of
/// backends removed while still bound, and starts the ramp of the ones that joined.
pub fn after_swap(registry: &Registry, old: &Snapshot, new: &Snapshot) {
    for (pool, addr) in registry.take_cut() {
        if let Some(live) = registry::live_of(old, &pool, addr) {
            live.close_tunnels();
        }
    }
    for p in &new.pools {
        for b in &p.backends {
            let existed = old
                .pool(&p.name)
                .is_some_and(|op| op.backends.iter().any(|o| o.name == b.name));
            if !existed {
                joined(&p.name, &b.live, &b.name);
            }
        }
    }
}
