//! `GET /metrics`: the OpenMetrics text exposition (DESIGN §7), rendered through
//! prometheus-client.
//!
//! The request path only bumps plain relaxed atomics (`backend.rs`, `stats.rs`); nothing
//! here is on it. Each scrape builds a fresh `Registry` holding one [`Collector`] that
//! reads the current snapshot and those atomics while it encodes, so a reload that adds
//! or removes a backend shows at the next scrape and label cardinality is bounded by the
//! config (pools × backends × 5 status classes).
//!
//! prometheus-client adds the `_total` suffix to counters in the OpenMetrics format, so
//! counters are declared without it (`maitred_requests` → `maitred_requests_total`), and
//! the latency histogram is declared with the unit `seconds`
//! (`maitred_request_duration` → `maitred_request_duration_seconds`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

use crate::config::BalancerKind;
use crate::discovery::PoolView;
use crate::latency::clock_ns;
use crate::pool::Pool;
use crate::shared::Shared;
use crate::snapshot::Snapshot;
use crate::stats::LATENCY_BUCKETS;

/// The `Content-Type` of what [`render`] returns (OpenMetrics text 1.0.0, as
/// prometheus-client's own server examples send it).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The label set of a daemon-wide sample.
const NO_LABELS: [(&str, &str); 0] = [];

/// Status-class label values, in the order of `BackendLive::status_classes`.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Renders every metric of the running daemon (its shared state) as OpenMetrics text,
/// ending in `# EOF`.
pub fn render(shared: &Shared) -> Result<String, fmt::Error> {
    let scrape = Scrape {
        snapshot: shared.live.load_full(),
        discovery: shared.discovery.views(),
        reloads_ok: shared.reloads_ok.load(Ordering::Relaxed),
        reloads_failed: shared.reloads_failed.load(Ordering::Relaxed),
        connections: shared.tracker.running(),
        parked: shared.parked.load(Ordering::Relaxed),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// One scrape's view: the snapshot it reads backends and pools from, and the
/// daemon-wide counters read once.
#[derive(Debug)]
struct Scrape {
    snapshot: Arc<Snapshot>,
    /// Every pool's discovery, read once.
    discovery: BTreeMap<String, PoolView>,
    reloads_ok: u64,
    reloads_failed: u64,
    /// Client connections and tunnels open.
    connections: usize,
    /// Of those, idle connections parked.
    parked: usize,
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        let pools = &self.snapshot.pools;
        let backends = || {
            pools.iter().flat_map(|p| {
                p.backends
                    .iter()
                    .map(move |b| ([("pool", &*p.name), ("backend", &*b.name)], &b.live))
            })
        };
        let by_class = backends().flat_map(|([pool, backend], live)| {
            let counts = live.status_classes();
            CLASSES
                .iter()
                .zip(counts)
                .map(move |(class, n)| ([pool, backend, ("class", *class)], ConstCounter::new(n)))
        });
        family(
            &mut enc,
            "maitred_requests",
            "Responses from backends, by status class.",
            by_class,
        )?;
        latency(&mut enc, pools)?;
        queue_wait(&mut enc, pools)?;
        family(
            &mut enc,
            "maitred_queue_length",
            "Requests waiting now in the pool's queue for a slot (queue_timeout).",
            pools
                .iter()
                .map(|p| ([("pool", &*p.name)], ConstGauge::new(p.queued() as i64))),
        )?;
        let now = clock_ns();
        let ewma = pools.iter().flat_map(|p| {
            p.latency().into_iter().flat_map(move |l| {
                p.backends.iter().filter_map(move |b| {
                    let seconds = l.estimate(b, now)? / 1e9;
                    Some((
                        [("pool", &*p.name), ("backend", &*b.name)],
                        ConstGauge::new(seconds),
                    ))
                })
            })
        });
        family(
            &mut enc,
            "maitred_backend_latency_ewma_seconds",
            "peak-ewma pools: a backend's peak-EWMA latency estimate (the pool's median for one never measured).",
            ewma,
        )?;
        family(
            &mut enc,
            "maitred_backend_in_flight",
            "Requests in flight on a backend now.",
            backends().map(|(l, live)| (l, ConstGauge::new(live.in_flight()))),
        )?;
        family(
            &mut enc,
            "maitred_backend_tunnels",
            "WebSocket and Upgrade tunnels open to a backend now.",
            backends().map(|(l, live)| (l, ConstGauge::new(live.tunnels()))),
        )?;
        let http2 = pools
            .iter()
            .filter(|p| p.transport.protocol.is_http2())
            .flat_map(|p| {
                p.backends.iter().map(move |b| {
                    (
                        [("pool", &*p.name), ("backend", &*b.name)],
                        ConstGauge::new(b.live.http2_connections()),
                    )
                })
            });
        family(
            &mut enc,
            "maitred_backend_http2_connections",
            "h2c and h2 pools: HTTP/2 connections open to a backend now, all workers together.",
            http2,
        )?;
        let pinned = pools
            .iter()
            .filter(|p| p.balancer_kind().is_sticky())
            .flat_map(|p| {
                p.backends.iter().map(move |b| {
                    let n = i64::try_from(b.live.pinned()).unwrap_or(i64::MAX);
                    (
                        [("pool", &*p.name), ("backend", &*b.name)],
                        ConstGauge::new(n),
                    )
                })
            });
        family(
            &mut enc,
            "maitred_backend_pinned_clients",
            "Sticky pools: distinct clients (cookie client ids, hash keys) seen on a backend within pinned_window (estimate, ±5 %).",
            pinned,
        )?;
        family(
            &mut enc,
            "maitred_backend_up",
            "1 when the backend passes its health checks and is not ejected, else 0.",
            backends().map(|(l, live)| (l, ConstGauge::new(u32::from(live.is_up())))),
        )?;
        family(
            &mut enc,
            "maitred_health_transitions",
            "Health state changes of a backend (up to down or down to up).",
            backends().map(|(l, live)| (l, ConstCounter::new(live.health_transitions()))),
        )?;
        family(
            &mut enc,
            "maitred_ejections",
            "Passive ejections of a backend after consecutive failures.",
            backends().map(|(l, live)| (l, ConstCounter::new(live.ejections()))),
        )?;
        family(
            &mut enc,
            "maitred_backend_errors",
            "Failed requests on a backend (connect errors, resets, timeouts, 5xx).",
            backends().map(|(l, live)| (l, ConstCounter::new(live.errors()))),
        )?;
        let per_pool = |read: fn(&Pool) -> u64| {
            pools
                .iter()
                .map(move |p| ([("pool", &*p.name)], ConstCounter::new(read(p))))
        };
        family(
            &mut enc,
            "maitred_retries",
            "Attempts on another backend after a retryable failure.",
            per_pool(|p| p.stats.retries.load(Ordering::Relaxed)),
        )?;
        family(
            &mut enc,
            "maitred_unavailable",
            "Requests answered 503 because no backend of the pool could take them.",
            per_pool(|p| p.stats.unavailable.load(Ordering::Relaxed)),
        )?;
        family(
            &mut enc,
            "maitred_queue_timeouts",
            "Requests answered 503 because queue_timeout passed before a slot came free.",
            per_pool(|p| p.stats.queue_timeouts.load(Ordering::Relaxed)),
        )?;
        family(
            &mut enc,
            "maitred_stale_connection_retries",
            "Requests sent again on a fresh connection because the backend had closed the reused idle one before answering (not a failure, not a retry).",
            per_pool(|p| p.stats.stale_retries.load(Ordering::Relaxed)),
        )?;
        let events = &crate::stats::CLIENT_EVENTS;
        let client = [
            ("send_timeout", &events.send_timeouts),
            ("client_body_timeout", &events.body_timeouts),
            ("aborted", &events.aborted),
        ];
        family(
            &mut enc,
            "maitred_client_events",
            "What clients did to their own requests, never counted against a backend: responses cut by send_timeout, request bodies cut by client_body_timeout (408), requests cancelled because the client left.",
            client.into_iter().map(|(kind, n)| {
                (
                    [("kind", kind)],
                    ConstCounter::new(n.load(Ordering::Relaxed)),
                )
            }),
        )?;
        family(
            &mut enc,
            "maitred_client_connections",
            "Client connections (and WebSocket tunnels) open.",
            std::iter::once((NO_LABELS, ConstGauge::new(self.connections as i64))),
        )?;
        family(
            &mut enc,
            "maitred_client_connections_parked",
            "Idle client connections parked, holding only their socket.",
            std::iter::once((NO_LABELS, ConstGauge::new(self.parked as i64))),
        )?;
        let reloads = [("ok", self.reloads_ok), ("failed", self.reloads_failed)];
        family(
            &mut enc,
            "maitred_reloads",
            "Configuration reloads, applied (ok) or refused (failed).",
            reloads
                .into_iter()
                .map(|(result, n)| ([("result", result)], ConstCounter::new(n))),
        )?;
        let placements = pools
            .iter()
            .filter(|p| p.balancer_kind() == BalancerKind::CookieAffinity)
            .flat_map(|p| {
                let s = &p.stats;
                [
                    ("new", &s.placements_new),
                    ("replaced", &s.placements_replaced),
                ]
                .map(|(kind, n)| {
                    (
                        [("pool", &*p.name), ("kind", kind)],
                        ConstCounter::new(n.load(Ordering::Relaxed)),
                    )
                })
            });
        let resolutions = self.discovery.iter().flat_map(|(pool, d)| {
            ["ok", "failed", "empty"]
                .into_iter()
                .zip(d.status.resolutions)
                .map(move |(result, n)| {
                    (
                        [("pool", pool.as_str()), ("result", result)],
                        ConstCounter::new(n),
                    )
                })
        });
        family(
            &mut enc,
            "maitred_discovery_resolutions",
            "DNS discovery resolutions by outcome: records (ok), failure kept the backends (failed), authoritative empty answer (empty).",
            resolutions,
        )?;
        family(
            &mut enc,
            "maitred_discovery_backends",
            "Backends the last DNS discovery answer gave.",
            self.discovery.iter().map(|(pool, d)| {
                (
                    [("pool", pool.as_str())],
                    ConstGauge::new(d.backends as i64),
                )
            }),
        )?;
        family(
            &mut enc,
            "maitred_affinity_placements",
            "Cookie-affinity placements: clients without a valid cookie (new), cookies re-placed (replaced).",
            placements,
        )
    }
}

/// One metric family: its descriptor (`# HELP`, `# TYPE`), then one sample per label set.
/// A family without samples (no cookie-affinity pool) is still declared.
fn family<L: EncodeLabelSet, M: EncodeMetric + TypedMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl Iterator<Item = (L, M)>,
) -> Result<(), fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, M::TYPE)?;
    for (labels, metric) in samples {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// `maitred_request_duration_seconds{pool}`: time from a request's arrival to its
/// response head, per pool.
fn latency(enc: &mut DescriptorEncoder, pools: &[Arc<Pool>]) -> Result<(), fmt::Error> {
    let mut m = enc.encode_descriptor(
        "maitred_request_duration",
        "Time from a request's arrival to its response head.",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    for p in pools {
        let (cumulative, sum, count) = p.stats.latency.read();
        let buckets = per_bucket(&cumulative);
        let labels = [("pool", &*p.name)];
        m.encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
    }
    Ok(())
}

/// `maitred_queue_wait_seconds{pool}`: how long requests waited in the pool's queue,
/// per request that waited (served, or answered 503 at `queue_timeout`).
fn queue_wait(enc: &mut DescriptorEncoder, pools: &[Arc<Pool>]) -> Result<(), fmt::Error> {
    let mut m = enc.encode_descriptor(
        "maitred_queue_wait",
        "Time a request waited in its pool's queue for a slot, per request that waited.",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    for p in pools.iter().filter(|p| p.queue().is_some()) {
        let (cumulative, sum, count) = p.stats.queue_wait.read();
        let buckets = per_bucket(&cumulative);
        let labels = [("pool", &*p.name)];
        m.encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
    }
    Ok(())
}

/// `(upper bound, count in this bucket alone)` pairs, the last bound `+Inf`: the shape
/// prometheus-client's encoder takes (it accumulates them itself), from the cumulative
/// counts `Histogram::read` gives.
fn per_bucket(cumulative: &[u64]) -> Vec<(f64, u64)> {
    let bounds = LATENCY_BUCKETS
        .iter()
        .copied()
        .chain(std::iter::once(f64::INFINITY));
    let mut previous = 0;
    bounds
        .zip(cumulative)
        .map(|(bound, &c)| {
            let own = c.saturating_sub(previous);
            previous = c;
            (bound, own)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_bucket_undoes_accumulation_and_ends_at_infinity() {
        let mut cumulative = vec![1, 1, 3];
        cumulative.resize(LATENCY_BUCKETS.len() + 1, 4);
        let b = per_bucket(&cumulative);
        assert_eq!(b.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(&b[..4], &[(0.005, 1), (0.01, 0), (0.025, 2), (0.05, 1)]);
        assert!(b[4..].iter().all(|&(_, n)| n == 0));
        assert_eq!(b.last().map(|&(bound, _)| bound), Some(f64::INFINITY));
    }
}
