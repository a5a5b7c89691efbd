//! `GET /status`: the live state of every listener, route, pool and backend as JSON.

use serde::Serialize;
use serde_json::{Value, json};

use crate::app::Daemon;
use crate::config::HostMatch;

/// The status document.
pub fn status(daemon: &Daemon) -> Value {
    let snap = daemon.shared().live.load();
    let mut pools = serde_json::Map::new();
    for (cfg, pool) in snap
        .config
        .pools
        .iter()
        .filter_map(|c| Some((c, snap.pool(&c.name)?)))
    {
        let backends: Vec<Value> = pool
            .backends
            .iter()
            .map(|b| {
                let classes = b.live.status_classes();
                json!({
                    "addr": b.name.as_ref(),
                    "weight": b.weight,
                    "health": b.live.health().name(),
                    "state": b.live.admin().name(),
                    "ejected": b.live.is_ejected(),
                    "in_flight": b.live.in_flight(),
                    "requests": b.live.requests(),
                    "errors": b.live.errors(),
                    "responses": {"1xx": classes[0], "2xx": classes[1], "3xx": classes[2], "4xx": classes[3], "5xx": classes[4]},
                    "health_transitions": b.live.health_transitions(),
                    "ejections": b.live.ejections(),
                    "last_check": b.live.last_check().map(|c| json!({"passed": c.passed, "detail": c.detail})),
                })
            })
            .collect();
        pools.insert(
            pool.name.to_string(),
            json!({
                "balancer": cfg.balancer.name(),
                "backends_total": pool.backends.len(),
                "backends_up": pool.backends.iter().filter(|b| b.live.is_up()).count(),
                "in_flight": pool.in_flight(),
                "health_checks": cfg.health.is_some(),
                "backends": backends,
            }),
        );
    }
    let listeners: Vec<Value> = snap
        .config
        .listeners
        .iter()
        .map(|l| {
            json!({
                "name": l.name,
                "bind": l.bind.to_string(),
                "local_addr": daemon.listener_addr(&l.name).map(|a| a.to_string()),
                "pool": l.pool,
                "tls": l.tls.is_some(),
                "proxy_protocol": l.proxy_protocol,
                "routes": l.routes.iter().map(|r| RouteView {
                    host: r.host.as_ref().map(|h| match h {
                        HostMatch::Exact(e) => e.clone(),
                        HostMatch::Wildcard(s) => format!("*{s}"),
                    }),
                    path_prefix: r.path_prefix.clone(),
                    header: r.header.as_ref().map(|h| format!("{}: {}", h.name, h.value)),
                    pool: r.pool.clone(),
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    let shared = daemon.shared();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "listeners": listeners,
        "pools": pools,
        "reloads": {
            "ok": shared.reloads_ok.load(std::sync::atomic::Ordering::Relaxed),
            "failed": shared.reloads_failed.load(std::sync::atomic::Ordering::Relaxed),
        },
        "connections": shared.tracker.running(),
    })
}

#[derive(Serialize)]
struct RouteView {
    host: Option<String>,
    path_prefix: Option<String>,
    header: Option<String>,
    pool: String,
}
