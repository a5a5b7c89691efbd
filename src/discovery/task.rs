//! The task of one pool's discovery: ask, take the answer in, wait for the TTL (clamped),
//! and between answers look at draining backends and SRV priorities every tick. A
//! change sends the pool's name to the daemon, which rebuilds the backend table.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::registry::Registry;
use super::resolve::{Answer, Resolver};
use crate::config::{Config, DiscoveryConfig};
use crate::shutdown::Shutdown;
use crate::snapshot::Snapshot;

/// What a pool's task needs of the daemon (given by it, so that this module imports
/// nothing of the daemon's).
#[derive(Clone)]
pub struct TaskContext {
    /// Where answers go.
    pub registry: Arc<Registry>,
    /// The snapshot now (health and in-flight counts of the table's backends).
    pub current: Arc<dyn Fn() -> Arc<Snapshot> + Send + Sync>,
    /// Where the name of a pool whose table must be rebuilt goes.
    pub changed: mpsc::UnboundedSender<String>,
    /// The daemon's shutdown.
    pub shutdown: Shutdown,
}

impl std::fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskContext").finish_non_exhaustive()
    }
}

/// How often a pool's task looks at its draining backends and, for SRV, at which
/// priority is in use, between two resolutions.
const TICK: Duration = Duration::from_millis(250);

/// Resolves every discovery section of `config` once, concurrently, before the daemon
/// builds its first snapshot, so that a pool starts with its backends. Returns, per
/// pool, how long its task waits before asking again.
pub async fn first_answers(
    registry: &Registry,
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
        registry.answer(&pool, &answer, snapshot);
        waits.insert(pool, wait);
    }
    waits
}

/// Starts (or restarts) `pool`'s task. `first_wait` is how long it waits before its
/// first question (zero after a changed section; the first interval at start-up,
/// which [`first_answers`] has already asked).
pub fn spawn(ctx: TaskContext, pool: String, config: DiscoveryConfig, first_wait: Duration) {
    let registry = Arc::clone(&ctx.registry);
    let task = tokio::spawn(run(ctx, pool.clone(), config, first_wait));
    registry.set_task(&pool, task.abort_handle());
}

async fn run(ctx: TaskContext, pool: String, config: DiscoveryConfig, first_wait: Duration) {
    let TaskContext {
        registry,
        current,
        changed,
        mut shutdown,
    } = ctx;
    let mut next = Instant::now() + first_wait;
    let mut resolver: Option<Resolver> = None;
    loop {
        // Between questions: end drains and follow health, every tick.
        while Instant::now() < next {
            let wake = next.min(Instant::now() + TICK);
            tokio::select! {
                () = tokio::time::sleep_until(wake.into()) => {}
                () = shutdown.wait() => return,
            }
            if registry.tick(&pool, &current()) && changed.send(pool.clone()).is_err() {
                return;
            }
        }
        let answer = match &resolver {
            Some(r) => r.resolve().await,
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
        if registry.answer(&pool, &answer, &current()) && changed.send(pool.clone()).is_err() {
            return;
        }
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
