//! Every pool's discovered set and status, shared by the discovery tasks (which write
//! answers into it), the daemon (which builds snapshots from it, [`Registry::compose`])
//! and the admin listener (`/status`, `/metrics`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use tokio::task::AbortHandle;

use super::members::{Members, Outcome};
use super::nothing_bound;
use super::resolve::Answer;
use crate::backend::BackendLive;
use crate::config::{BackendSource, Config, DiscoveryConfig};
use crate::snapshot::Snapshot;

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
    pub(super) fn set_task(&self, pool: &str, task: AbortHandle) {
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
        // An outage is logged when it starts (or its reason changes) and when it ends,
        // not on every round: a resolver down for an hour is asked thousands of times.
        match answer {
            Answer::Records { .. } => {
                if let Some(was) = d.status.last_error.take() {
                    tracing::info!(pool, was = %was, "discovery: resolving again");
                }
                d.status.last_resolved = Some(SystemTime::now());
            }
            Answer::Failed(why) => {
                if d.status.last_error.as_ref() != Some(why) {
                    tracing::warn!(pool, error = %why, "discovery: resolution failed, backends kept");
                }
                d.status.last_error = Some(why.clone());
            }
            Answer::Empty(why) => {
                if d.status.last_error.as_ref() != Some(why) {
                    tracing::warn!(pool, answer = %why, "discovery: empty answer (the pool empties when the next answer agrees)");
                }
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

pub(super) fn live_of(
    snapshot: &Snapshot,
    pool: &str,
    addr: SocketAddr,
) -> Option<Arc<BackendLive>> {
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
