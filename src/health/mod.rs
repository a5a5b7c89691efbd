//! Active health checks: one task per checked backend, probing every `interval` (with
//! jitter) and publishing only transitions to the backend's health atomic, which the
//! balancers read on the hot path.
//!
//! Checkers are restarted from the current snapshot at start-up and after each reload;
//! the rise/fall machine of a backend restarts from its published state, so a backend
//! that is down stays down across a reload. Passive ejection lives on the request path
//! (`proxy`), which marks a checked backend down so that it must pass `rise` checks
//! before it takes traffic again.

mod grpc;
mod probe;
mod threshold;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::backend::{Backend, BackendLive, Health};
use crate::config::HealthConfig;
use crate::pool::Pool;
use crate::shutdown::Shutdown;
use crate::snapshot::Snapshot;
pub use probe::{ProbeSpec, probe};
pub use threshold::Threshold;

/// The running checker tasks.
#[derive(Debug, Default)]
pub struct HealthCheckers {
    tasks: Vec<AbortHandle>,
}

/// A future that resolves when every checker has finished its first round.
pub type FirstRound = Pin<Box<dyn Future<Output = ()> + Send>>;

impl HealthCheckers {
    /// Stops the running checkers and starts one per backend of every checked pool of
    /// `snapshot`. The returned future resolves after each has probed once (bounded by
    /// the probe timeouts).
    pub fn restart(&mut self, snapshot: &Snapshot, shutdown: Shutdown) -> FirstRound {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
        let mut expected = 0usize;
        let mut longest = Duration::ZERO;
        for (pool_cfg, pool) in snapshot
            .config
            .pools
            .iter()
            .filter_map(|c| Some((c, snapshot.pool(&c.name)?)))
        {
            let Some(hc) = &pool_cfg.health else { continue };
            longest = longest.max(hc.timeout);
            for b in &pool.backends {
                let checker = Checker::new(pool, b, hc);
                let task = tokio::spawn(checker.run(done_tx.clone(), shutdown.clone()));
                self.tasks.push(task.abort_handle());
                expected += 1;
            }
        }
        Box::pin(async move {
            let all = async {
                for _ in 0..expected {
                    if done_rx.recv().await.is_none() {
                        return;
                    }
                }
            };
            let _ = tokio::time::timeout(longest + Duration::from_millis(500), all).await;
        })
    }

    /// A first round with nothing in it.
    pub fn nothing_to_wait_for() -> FirstRound {
        Box::pin(async {})
    }
}

impl Drop for HealthCheckers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One backend's checker.
struct Checker {
    pool: Arc<str>,
    name: Arc<str>,
    addr: std::net::SocketAddr,
    live: Arc<BackendLive>,
    spec: ProbeSpec,
    interval: Duration,
    machine: Threshold,
}

impl Checker {
    fn new(pool: &Pool, b: &Backend, hc: &HealthConfig) -> Checker {
        Checker {
            pool: Arc::clone(&pool.name),
            name: Arc::clone(&b.name),
            addr: b.addr,
            live: Arc::clone(&b.live),
            spec: ProbeSpec {
                path: hc.path.clone(),
                host: hc.host.clone().unwrap_or_else(|| b.name.to_string()),
                timeout: hc.timeout,
                expect: hc.expect,
                grpc: hc.grpc,
                transport: pool.transport.clone(),
                backend: Arc::clone(&b.name),
            },
            interval: hc.interval,
            machine: Threshold::new(hc.rise, hc.fall, b.live.health()),
        }
    }

    async fn run(mut self, first_round: mpsc::UnboundedSender<()>, mut shutdown: Shutdown) {
        let mut first = Some(first_round);
        loop {
            let result = probe(self.addr, &self.spec).await;
            self.publish(result);
            if let Some(tx) = first.take() {
                let _ = tx.send(());
            }
            let pause = jittered(self.interval, &self.name);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.wait() => return,
            }
        }
    }

    fn publish(&mut self, result: crate::backend::CheckResult) {
        // Passive ejection may have marked the backend down meanwhile.
        let published = self.live.health();
        if published == Health::Down && self.machine.state() != Health::Down {
            self.machine.force(Health::Down);
        }
        let passed = result.passed;
        let detail = result.detail.clone();
        self.live.set_last_check(result);
        if let Some(state) = self.machine.observe(passed) {
            let prev = self.live.set_health(state);
            if prev == Health::Unknown && state == Health::Up {
                tracing::info!(pool = %self.pool, backend = %self.name, "backend up (first check passed)");
            } else if prev != state {
                tracing::warn!(
                    pool = %self.pool,
                    backend = %self.name,
                    state = state.name(),
                    reason = %detail,
                    "backend health changed"
                );
            }
        }
    }
}

/// `interval` ± 10 %, different per backend and per round, so hundreds of backends are
/// not probed in one burst.
fn jittered(interval: Duration, name: &str) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(name.as_bytes(), u64::from(nanos));
    let spread = interval.as_micros() as u64 / 5; // 20 % wide window
    if spread == 0 {
        return interval;
    }
    let offset = h % spread;
    (interval + Duration::from_micros(offset)).saturating_sub(Duration::from_micros(spread / 2))
}
