//! `GET /status`: the live state of every listener, route, pool and backend as JSON, in
//! the shape of DESIGN §7 (`{"pools": {NAME: {"balancer", "backends": [{"addr",
//! "health", "state", "in_flight", "requests", "errors", ...}]}}}`) with more fields
//! beside the contract's (for `peak-ewma` pools, each backend's `latency_ewma_ms` and
//! `cost`; each backend's `source`, and a pool's `discovery` when it has one). The dashboard polls it; so can scripts.
//!
//! Read-only: one snapshot load, then relaxed loads of the backends' atomics.

use std::sync::atomic::Ordering::Relaxed;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::Control;

use crate::backend::{Backend, RAMP_FULL};
use crate::config::{AdminState, BackendSource, HostMatch, ListenerConfig, PoolConfig};
use crate::discovery::PoolView;
use crate::latency::clock_ns;
use crate::pool::Pool;
use crate::stats::PoolStats;

/// The status document.
pub fn status(daemon: &impl Control) -> Value {
    let snap = daemon.shared().live.load();
    let discovery = daemon.shared().discovery.views();
    let mut pools = Map::new();
    for cfg in &snap.config.pools {
        if let Some(pool) = snap.pool(&cfg.name) {
            let mut view = pool_view(pool, cfg);
            if let (Some(d), Some(fields)) = (discovery.get(&cfg.name), view.as_object_mut()) {
                fields.insert("discovery".to_string(), discovery_view(d));
            }
            pools.insert(pool.name.to_string(), view);
        }
    }
    let listeners: Vec<Value> = snap
        .config
        .listeners
        .iter()
        .map(|l| listener_view(daemon, l))
        .collect();
    let shared = daemon.shared();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "admin": {"token_required": snap.config.admin.as_ref().is_some_and(|a| a.token.is_some())},
        "listeners": listeners,
        "pools": pools,
        "reloads": {
            "ok": shared.reloads_ok.load(Relaxed),
            "failed": shared.reloads_failed.load(Relaxed),
        },
        "connections": shared.tracker.running(),
        "parked_connections": shared.parked.load(Relaxed),
    })
}

/// The answer to a drain / disable / enable call: the backend's new state.
pub fn backend_action(pool: &str, b: &Backend) -> Value {
    json!({
        "pool": pool,
        "backend": b.name.as_ref(),
        "state": b.live.admin().name(),
        "health": health(b),
        "in_flight": b.live.in_flight(),
        "idle_connections": b.live.conns.idle(),
    })
}

/// `"up"` when the backend passes its checks and is not ejected (DESIGN §5: up / down
/// come from health checks and ejection), else `"down"`.
fn health(b: &Backend) -> &'static str {
    if b.live.is_up() { "up" } else { "down" }
}

/// A pool's discovery (DESIGN §10): what it asks, when it last had an answer, the last
/// error, how many backends the last answer gave; beside them the resolution counts and
/// the last change applied, with its sticky share moved.
fn discovery_view(d: &PoolView) -> Value {
    let time = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let s = &d.status;
    json!({
        "name": d.name,
        "last_resolved": s.last_resolved.map(time),
        "last_error": s.last_error,
        "backends": d.backends,
        "resolutions": {"ok": s.resolutions[0], "failed": s.resolutions[1], "empty": s.resolutions[2]},
        "last_change": s.last_change.as_ref().map(|c| json!({
            "at": time(c.at),
            "added": c.added,
            "removed": c.removed,
            "draining": c.draining,
            "sticky_moved": c.sticky_moved,
        })),
    })
}

fn pool_view(pool: &Pool, cfg: &PoolConfig) -> Value {
    let health_checks = cfg.health.is_some();
    let count = |f: &dyn Fn(&Backend) -> bool| pool.backends.iter().filter(|b| f(b)).count();
    let stats = &pool.stats;
    json!({
        "balancer": pool.balancer_kind().name(),
        "protocol": pool.transport.protocol.name(),
        "backends_total": pool.backends.len(),
        "backends_up": count(&|b| b.live.is_up()),
        "backends_available": count(&|b| b.live.accepts_new()),
        "backends_active": count(&|b| b.live.admin() == AdminState::Active),
        "backends_drain": count(&|b| b.live.admin() == AdminState::Drain),
        "backends_disabled": count(&|b| b.live.admin() == AdminState::Disabled),
        "in_flight": pool.in_flight(),
        "requests": pool.backends.iter().map(|b| b.live.requests()).sum::<u64>(),
        "errors": pool.backends.iter().map(|b| b.live.errors()).sum::<u64>(),
        "retries": stats.retries.load(Relaxed),
        "unavailable": stats.unavailable.load(Relaxed),
        "queue": pool.queued(),
        "queue_timeout": humantime::format_duration(pool.queue_timeout).to_string(),
        "queue_timeouts": stats.queue_timeouts.load(Relaxed),
        "health_checks": health_checks,
        "slow_start": humantime::format_duration(pool.slow_start).to_string(),
        "pinned_window": humantime::format_duration(pool.pinned_window).to_string(),
        "backends": pool.backends.iter().map(|b| backend_view(pool, cfg, b)).collect::<Vec<_>>(),
        "history": history_view(stats),
    })
}

/// The pool's last five minutes, oldest sample first, as parallel arrays (what the
/// dashboard's charts draw): `at` is the unix second each sample ends at.
fn history_view(stats: &PoolStats) -> Value {
    let Ok(h) = stats.history.lock() else {
        return Value::Null;
    };
    let round = |x: f64, places: i32| {
        let f = 10f64.powi(places);
        (x * f).round() / f
    };
    let samples: Vec<_> = h.samples().copied().collect();
    json!({
        "interval_s": crate::history::INTERVAL.as_secs(),
        "at": samples.iter().map(|s| s.at).collect::<Vec<_>>(),
        "rps": samples.iter().map(|s| round(s.rps, 1)).collect::<Vec<_>>(),
        "error_rate": samples.iter().map(|s| round(s.error_rate, 4)).collect::<Vec<_>>(),
        "p99_ms": samples.iter().map(|s| s.p99_ms.map(|p| round(p, 2))).collect::<Vec<_>>(),
    })
}

fn backend_view(pool: &Pool, cfg: &PoolConfig, b: &Backend) -> Value {
    let live = &b.live;
    let classes = live.status_classes();
    let source = cfg
        .backends
        .iter()
        .find(|c| c.addr == *b.name)
        .map_or(BackendSource::Static, |c| c.source);
    let mut view = json!({
        "addr": b.name.as_ref(),
        "source": source.name(),
        "weight": b.weight,
        "health": health(b),
        "state": live.admin().name(),
        "ejected": live.is_ejected(),
        "ramp": (f64::from(live.ramp()) * 1000.0 / f64::from(RAMP_FULL)).round() / 1000.0,
        "in_flight": live.in_flight(),
        "requests": live.requests(),
        "errors": live.errors(),
        "responses": {
            "1xx": classes[0], "2xx": classes[1], "3xx": classes[2], "4xx": classes[3], "5xx": classes[4],
        },
        "health_transitions": live.health_transitions(),
        "ejections": live.ejections(),
        "last_check": live.last_check().map(|c| json!({"passed": c.passed, "detail": c.detail})),
        "tunnels": live.tunnels(),
    });
    let http2 = pool.transport.protocol.is_http2();
    let sticky = pool.balancer_kind().is_sticky();
    let pinned = live.pinned();
    if let Some(fields) = view.as_object_mut() {
        if sticky {
            fields.insert("pinned".to_string(), json!(pinned));
        }
        if http2 {
            fields.insert(
                "http2_connections".to_string(),
                json!(live.http2_connections()),
            );
        }
        // DESIGN §11: a draining backend's progress; nothing bound = safe to remove.
        if let Some(since) = live.drain_since() {
            let since = std::time::UNIX_EPOCH + std::time::Duration::from_secs(since);
            fields.insert(
                "drain".to_string(),
                json!({
                    "since": humantime::format_rfc3339_seconds(since).to_string(),
                    "in_flight": live.in_flight(),
                    "tunnels": live.tunnels(),
                    "pinned": pinned,
                    "nothing_bound": live.nothing_bound(),
                }),
            );
        }
    }
    if let (Some(latency), Some(fields)) = (pool.latency(), view.as_object_mut()) {
        // peak-ewma (DESIGN §13): the estimate now (the pool's median for a backend never
        // measured, null while none is) and the cost a pick compares, both in ms.
        let now = clock_ns();
        let ms = |ns: f64| (ns / 1e3).round() / 1e3;
        fields.insert(
            "latency_ewma_ms".to_string(),
            json!(latency.estimate(b, now).map(ms)),
        );
        fields.insert("cost".to_string(), json!(ms(latency.cost(b, now))));
    }
    view
}

fn listener_view(daemon: &impl Control, l: &ListenerConfig) -> Value {
    let routes: Vec<RouteView> = l
        .routes
        .iter()
        .map(|r| RouteView {
            host: r.host.as_ref().map(|h| match h {
                HostMatch::Exact(e) => e.clone(),
                HostMatch::Wildcard(s) => format!("*{s}"),
            }),
            path_prefix: r.path_prefix.clone(),
            header: r
                .header
                .as_ref()
                .map(|h| format!("{}: {}", h.name, h.value)),
            pool: r.pool.clone(),
        })
        .collect();
    json!({
        "name": l.name,
        "bind": l.bind.to_string(),
        "local_addr": daemon.listener_addr(&l.name).map(|a| a.to_string()),
        "pool": l.pool,
        "tls": l.tls.is_some(),
        "proxy_protocol": l.proxy_protocol,
        "routes": routes,
    })
}

#[derive(Serialize)]
struct RouteView {
    host: Option<String>,
    path_prefix: Option<String>,
    header: Option<String>,
    pool: String,
}
