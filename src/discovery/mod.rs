//! DNS discovery (DESIGN §10): pools that take backends from A/AAAA or SRV records, and
//! follow them without a reload.
//!
//! Which backends exist is this module's job alone: it never touches the request path.
//! A task per pool with a `[pool.NAME.discovery]` section asks DNS (`resolve.rs`),
//! keeps the pool's discovered set by the rules of `members.rs`, and when the set
//! changes tells the daemon, which builds a new snapshot from the file's config plus
//! the discovered backends ([`Discovery::compose`]) through the same code as a reload
//! and swaps it in. The [`Registry`] (in [`crate::shared::Shared`]) holds every pool's
//! set and status for `/status`, `/metrics` and the reload that must keep them.

mod members;
mod resolve;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::backend::BackendLive;
use crate::config::{BackendSource, Config, DiscoveryConfig};
use crate::shared::Shared;
use crate::shutdown::Shutdown;
use crate::snapshot::Snapshot;
pub use members::{Change, Member, Members, Outcome};
pub use resolve::{Answer, Found, Resolver, ResolverSetupError};

/// How often a pool's task looks at its draining backends and, for SRV, at which
/// priority is in use, between two resolutions.
const TICK: Duration = Duration::from_millis(250);

/// Whether nothing is bound to a backend any more, so a draining one may go: no
/// request in flight and no open tunnel (a tunnel holds its in-flight slot, so the
/// in-flight count covers both today).
///
/// The one place discovery asks this: when pinned-client counting lands (DESIGN §11),
/// it becomes "in flight 0, tunnels 0, pinned 0".
pub fn nothing_bound(live: &BackendLive) -> bool {
    live.in_flight() == 0
}

/// A backend discovery just added to a pool joins here: the one place where a joining
/// backend's slow-start ramp (DESIGN §11) is to begin.
fn joined(pool: &str, live: &BackendLive, addr: &str) {
    tracing::debug!(
        pool,
        backend = addr,
        health = live.health().name(),
        "discovered backend joined"
    );
}

/// One pool's discovery: its section, its set, what the last rounds said.
#[derive(Debug)]
struct PoolDiscovery {
    config: DiscoveryConfig,
    members: Members,
    status: Status,
    /// Backends removed while still bound: their tunnels close once the snapshot
    /// without them is live.
    cut: Vec<SocketAddr>,
    task: Option<AbortHandle>,
}

/// What `/status` and `/metrics` show of one pool's discovery.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// When the last answer with records came.
    pub last_resolved: Option<SystemTime>,
    /// The last failure or empty answer, cleared by an answer with records.
    pub last_error: Option<String>,
    /// Resolutions by outcome: ok, failed, empty.
    pub resolutions: [u64; 3],
    /// The last change applied to the backend table.
    pub last_change: Option<AppliedChange>,
}

/// A change of the backend table, as logged.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedChange {
    /// When it was applied.
    pub at: SystemTime,
    /// Backends added (or back from draining).
    pub added: Vec<String>,
    /// Backends removed from the table.
    pub removed: Vec<String>,
    /// Backends that left DNS and drain.
    pub draining: Vec<String>,
    /// The share of sticky keys that moved (sticky pools only).
    pub sticky_moved: Option<f64>,
}

impl AppliedChange {
    /// The log line: `discovery: pool api backends +1 -0, sticky moved: api 9.1%`.
    pub fn line(&self, pool: &str) -> String {
        let moved = match self.sticky_moved {
            Some(m) => format!("{pool} {:.1}%", m * 100.0),
            None => "none".to_string(),
        };
        let mut line = format!(
            "discovery: pool {pool} backends +{} -{}, sticky moved: {moved}",
            self.added.len(),
            self.removed.len()
        );
        if !self.draining.is_empty() {
            line.push_str(&format!(", draining: {}", self.draining.join(" ")));
        }
        line
    }
}

/// One pool's discovery as `/status` and `/metrics` show it.
#[derive(Debug, Clone)]
pub struct PoolView {
    /// What is asked (`NAME:PORT` or `SRV NAME`).
    pub name: String,
    /// Status and counters.
    pub status: Status,
    /// How many backends the last good answer gave.
    pub backends: usize,
}

/// Every pool's discovery.
#[derive(Debug, Default)]
pub struct Registry {
    pools: Mutex<BTreeMap<String, PoolDiscovery>>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, PoolDiscovery>> {
        self.pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The file's config plus the discovered backends: each pool with discovery gets its
    /// members after its static backends (a member at the address of a static backend
    /// is left out: the file's entry stands). This is what snapshots are built from.
    pub fn compose(&self, file: &Config) -> Config {
        let pools = self.lock();
        let mut config = file.clone();
        for pc in &mut config.pools {
            pc.backends.retain(|b| b.source == BackendSource::Static);
            let Some(d) = pools.get(&pc.name).filter(|_| pc.discovery.is_some()) else {
                continue;
            };
            let extra: Vec<_> = d
                .members
                .backends()
                .filter(|m| !pc.backends.iter().any(|b| b.socket == m.socket))
                .collect();
            pc.backends.extend(extra);
        }
        config
    }

    /// Brings the registry in line with a config about to be applied (start or
    /// reload): pools without discovery are dropped (their tasks stopped), pools whose
    /// section is new or changed are returned, to be (re)started once the config is
    /// live. A pool whose section is unchanged keeps its set, status and task.
    pub fn sync(&self, config: &Config) -> Vec<(String, DiscoveryConfig)> {
        let mut pools = self.lock();
        pools.retain(|name, d| {
            let keep = config.pool(name).is_some_and(|p| p.discovery.is_some());
            if !keep {
                if let Some(t) = d.task.take() {
                    t.abort();
                }
            }
            keep
        });
        let mut restart = Vec::new();
        for pc in &config.pools {
            let Some(dc) = &pc.discovery else { continue };
            match pools.get_mut(&pc.name) {
                Some(d) if d.config == *dc && d.task.is_some() => {}
                Some(d) => {
                    d.config = dc.clone();
                    restart.push((pc.name.clone(), dc.clone()));
                }
                None => {
                    pools.insert(
                        pc.name.clone(),
                        PoolDiscovery {
                            config: dc.clone(),
                            members: Members::default(),
                            status: Status::default(),
                            cut: Vec::new(),
                            task: None,
                        },
                    );
                    restart.push((pc.name.clone(), dc.clone()));
                }
            }
        }
        restart
    }

    /// Records a task's handle, stopping the one it replaces.
    fn set_task(&self, pool: &str, task: AbortHandle) {
        let mut pools = self.lock();
        match pools.get_mut(pool) {
            Some(d) => {
                if let Some(old) = d.task.replace(task) {
                    old.abort();
                }
            }
            None => task.abort(),
        }
    }

    /// Stops every task (shutdown).
    pub fn stop(&self) {
        for d in self.lock().values_mut() {
            if let Some(t) = d.task.take() {
                t.abort();
            }
        }
    }

    /// Takes one answer for `pool`; true when the backend table must be rebuilt.
    pub fn answer(&self, pool: &str, answer: &Answer, snapshot: &Snapshot) -> bool {
        let mut pools = self.lock();
        let Some(d) = pools.get_mut(pool) else {
            return false;
        };
        let removal = d.config.removal;
        let (outcome, change) = d
            .members
            .answer(answer, removal, Instant::now(), |a| up(snapshot, pool, a));
        let slot = match outcome {
            Outcome::Ok => 0,
            Outcome::Failed => 1,
            Outcome::Empty => 2,
        };
        d.status.resolutions[slot] += 1;
        match answer {
            Answer::Records { .. } => {
                d.status.last_resolved = Some(SystemTime::now());
                d.status.last_error = None;
            }
            Answer::Failed(why) => {
                tracing::warn!(pool, error = %why, "discovery: resolution failed, backends kept");
                d.status.last_error = Some(why.clone());
            }
            Answer::Empty(why) => {
                tracing::warn!(pool, answer = %why, "discovery: empty answer");
                d.status.last_error = Some(why.clone());
            }
        }
        d.cut.extend(change.cut.iter().copied());
        !change.is_empty()
    }

    /// Between answers: ends drains that are over and re-reads SRV priorities against
    /// health; true when the backend table must be rebuilt.
    pub fn tick(&self, pool: &str, snapshot: &Snapshot) -> bool {
        let mut pools = self.lock();
        let Some(d) = pools.get_mut(pool) else {
            return false;
        };
        let now = Instant::now();
        let followed = d
            .members
            .follow(d.config.removal, now, |a| up(snapshot, pool, a));
        let drained = d.members.finish_drains(now, d.config.drain_timeout, |a| {
            live_of(snapshot, pool, a).is_some_and(|l| !nothing_bound(&l))
        });
        d.cut
            .extend(followed.cut.iter().chain(&drained.cut).copied());
        !followed.is_empty() || !drained.is_empty()
    }

    /// Backends removed while bound since the last call, by pool.
    pub fn take_cut(&self) -> Vec<(String, SocketAddr)> {
        let mut pools = self.lock();
        pools
            .iter_mut()
            .flat_map(|(name, d)| d.cut.drain(..).map(move |a| (name.clone(), a)))
            .collect()
    }

    /// Records a change applied to `pool`'s table.
    pub fn applied(&self, pool: &str, change: AppliedChange) {
        if let Some(d) = self.lock().get_mut(pool) {
            d.status.last_change = Some(change);
        }
    }

    /// Every pool's discovery, for `/status` and `/metrics`.
    pub fn views(&self) -> BTreeMap<String, PoolView> {
        self.lock()
            .iter()
            .map(|(name, d)| {
                let view = PoolView {
                    name: d.config.target.to_string(),
                    status: d.status.clone(),
                    backends: d.members.answered(),
                };
                (name.clone(), view)
            })
            .collect()
    }
}

fn live_of(snapshot: &Snapshot, pool: &str, addr: SocketAddr) -> Option<Arc<BackendLive>> {
    let name = addr.to_string();
    let b = snapshot
        .pool(pool)?
        .backends
        .iter()
        .find(|b| *b.name == *name)?;
    Some(Arc::clone(&b.live))
}

fn up(snapshot: &Snapshot, pool: &str, addr: SocketAddr) -> bool {
    live_of(snapshot, pool, addr).is_some_and(|l| l.is_up())
}

/// Resolves every discovery section of `config` once, concurrently, before the daemon
/// builds its first snapshot, so that a pool starts with its backends. Returns, per
/// pool, how long its task waits before asking again.
pub async fn first_answers(
    shared: &Shared,
    config: &Config,
    snapshot: &Snapshot,
) -> BTreeMap<String, Duration> {
    let mut set = tokio::task::JoinSet::new();
    for pc in &config.pools {
        let Some(dc) = pc.discovery.clone() else {
            continue;
        };
        let pool = pc.name.clone();
        set.spawn(async move {
            let answer = match Resolver::new(&dc) {
                Ok(r) => r.resolve().await,
                Err(e) => Answer::Failed(e.to_string()),
            };
            let wait = wait_after(&answer, &dc);
            (pool, answer, wait)
        });
    }
    let mut waits = BTreeMap::new();
    while let Some(Ok((pool, answer, wait))) = set.join_next().await {
        shared.discovery.answer(&pool, &answer, snapshot);
        waits.insert(pool, wait);
    }
    waits
}

/// Starts (or restarts) `pool`'s task. `first_wait` is how long it waits before its
/// first question (zero after a changed section; the first interval at start-up,
/// which [`first_answers`] has already asked). Pool names whose table must be
/// rebuilt go to `changed`.
pub fn spawn(
    shared: &Arc<Shared>,
    pool: String,
    config: DiscoveryConfig,
    first_wait: Duration,
    changed: mpsc::UnboundedSender<String>,
    shutdown: Shutdown,
) {
    let task = tokio::spawn(run(
        Arc::clone(shared),
        pool.clone(),
        config,
        first_wait,
        changed,
        shutdown,
    ));
    shared.discovery.set_task(&pool, task.abort_handle());
}

async fn run(
    shared: Arc<Shared>,
    pool: String,
    config: DiscoveryConfig,
    first_wait: Duration,
    changed: mpsc::UnboundedSender<String>,
    mut shutdown: Shutdown,
) {
    let mut next = Instant::now() + first_wait;
    let mut resolver = None;
    loop {
        // Between questions: end drains and follow health, every tick.
        while Instant::now() < next {
            let wake = next.min(Instant::now() + TICK);
            tokio::select! {
                () = tokio::time::sleep_until(wake.into()) => {}
                () = shutdown.wait() => return,
            }
            if shared.discovery.tick(&pool, &shared.live.load())
                && changed.send(pool.clone()).is_err()
            {
                return;
            }
        }
        let answer = match &resolver {
            Some(r) => Resolver::resolve(r).await,
            None => match Resolver::new(&config) {
                Ok(r) => {
                    let a = r.resolve().await;
                    resolver = Some(r);
                    a
                }
                Err(e) => Answer::Failed(e.to_string()),
            },
        };
        next = Instant::now() + wait_after(&answer, &config);
        if shared.discovery.answer(&pool, &answer, &shared.live.load())
            && changed.send(pool.clone()).is_err()
        {
            return;
        }
    }
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

/// When to ask again: when the answer's TTL runs out, clamped to the section's
/// intervals; after a failure or an empty answer, `min_interval` (an empty answer needs
/// a second one to count).
pub fn wait_after(answer: &Answer, config: &DiscoveryConfig) -> Duration {
    match answer {
        Answer::Records { ttl, .. } => (*ttl).clamp(config.min_interval, config.max_interval),
        Answer::Failed(_) | Answer::Empty(_) => config.min_interval,
    }
}

/// Called after the swap of a snapshot built for discovery: closes the tunnels of
/// backends removed while still bound, and starts the ramp of the ones that joined.
pub fn after_swap(shared: &Shared, old: &Snapshot, new: &Snapshot) {
    for (pool, addr) in shared.discovery.take_cut() {
        if let Some(live) = live_of(old, &pool, addr) {
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
