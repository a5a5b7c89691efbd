//! Hot-path micro-benchmarks: a balancer pick per request for every balancer at 3, 30
//! and 300 backends, the affinity token codec, the pinned-client estimator, routing, building a Maglev table,
//! building a whole snapshot the way a reload does, and the backend-side HTTP/1 codec
//! (a request head encoded, a response head parsed).
//!
//! `cargo bench --bench hot_path` (add `-- --quick` for a short run). Inputs are prepared
//! outside the timed closures; names carry the size (`pick/least_connections/300`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Uri, header};
use maitred::backend::{Backend, BackendLive};
use maitred::balancer::{AffinityKey, Limits, PickContext, Ring, Token, Tried};
use maitred::config::{self, AdminState, BalancerKind, Config, PoolConfig};
use maitred::router::Router;
use maitred::snapshot::Snapshot;

const SIZES: [usize; 3] = [3, 30, 300];

fn backends(n: usize) -> Vec<Backend> {
    (0..n)
        .map(|i| {
            let name = format!("10.{}.{}.{}:8000", i / 65536, (i / 256) % 256, i % 256);
            Backend {
                addr: name.parse().unwrap(),
                name: name.into(),
                weight: 1 + (i % 3) as u32,
                live: Arc::new(BackendLive::new(false, AdminState::Active)),
            }
        })
        .collect()
}

fn pool_config(kind: BalancerKind, backends: &[Backend]) -> PoolConfig {
    let text = format!(
        "[pool.p]\nbalancer = \"{}\"\n{}backends = [{}]\n{}",
        kind.name(),
        if kind == BalancerKind::Hash {
            "key = \"header:x-user\"\n"
        } else {
            ""
        },
        backends
            .iter()
            .map(|b| format!("{{ addr = \"{}\", weight = {} }}", b.name, b.weight))
            .collect::<Vec<_>>()
            .join(", "),
        if kind == BalancerKind::CookieAffinity {
            "[pool.p.affinity]\ncookie = \"srv\"\nsecret = \"bench\"\nmax_age = \"1h\"\n"
        } else {
            ""
        }
    );
    let cfg = config::parse(&text, "bench.toml", std::path::Path::new(".")).unwrap();
    cfg.pools[0].clone()
}

fn picks(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    let limits = Limits {
        max_connections: 0,
        balance_factor: 0.0,
    };
    let uri: Uri = "/cart/items?user=42".parse().unwrap();
    for kind in [
        BalancerKind::RoundRobin,
        BalancerKind::LeastConnections,
        BalancerKind::IpHash,
        BalancerKind::Hash,
        BalancerKind::CookieAffinity,
        BalancerKind::PeakEwma,
    ] {
        for n in SIZES {
            let bs = backends(n);
            let cfg = pool_config(kind, &bs);
            let b = maitred::pool::build_balancer(&cfg, &bs, None);
            if let Some(latency) = b.latency() {
                // Every backend measured, at 1 to 20 ms: the steady state.
                let now = maitred::latency::clock_ns();
                for i in 0..n {
                    let rtt = Duration::from_millis(1 + (i % 20) as u64);
                    latency.observe(&bs, i, rtt, now);
                }
            }
            let mut headers = HeaderMap::new();
            headers.insert("x-user", "user-1234".parse().unwrap());
            if kind == BalancerKind::CookieAffinity {
                let key = AffinityKey::new(Some("bench"), "p");
                let token = key.encode(Token {
                    backend: key.backend_tag(&bs[n / 2].name),
                    issued: 1_900_000_000,
                    client: 0x1234_5678_9abc_def0,
                });
                headers.insert(
                    header::COOKIE,
                    format!("theme=dark; srv={token}").parse().unwrap(),
                );
            }
            let ctx = PickContext {
                client_ip: "198.51.100.23".parse().unwrap(),
                headers: &headers,
                uri: &uri,
                now_secs: 1_900_000_100,
                pool_in_flight: 0,
            };
            let tried = Tried::new();
            let name = kind.name().replace('-', "_");
            g.bench_with_input(BenchmarkId::new(name, n), &n, |bench, _| {
                bench.iter(|| black_box(b.pick(&bs, black_box(&ctx), &limits, &tried)))
            });
        }
    }
    g.finish();
}

fn tokens(c: &mut Criterion) {
    let mut g = c.benchmark_group("token");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    let key = AffinityKey::new(Some("bench"), "p");
    let t = Token {
        backend: key.backend_tag("10.0.0.1:8000"),
        issued: 1_900_000_000,
        client: 0x1234_5678_9abc_def0,
    };
    let encoded = key.encode(t);
    g.bench_function("encode", |b| b.iter(|| black_box(key.encode(black_box(t)))));
    g.bench_function("decode", |b| {
        b.iter(|| black_box(key.decode(black_box(encoded.as_bytes()))))
    });
    g.finish();
}

/// What a sticky request adds for the pinned-client count (an insert into the
/// backend's estimator: a returning client, and a new one each time), and what a
/// `/status` read of one backend's estimate costs.
fn pinned(c: &mut Criterion) {
    let mut g = c.benchmark_group("pinned");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    let live = BackendLive::new(false, AdminState::Active);
    let returning = 0x1234_5678_9abc_def0_u64;
    live.pin(returning);
    g.bench_function("insert/returning", |b| {
        b.iter(|| live.pin(black_box(returning)))
    });
    let mut next = 0u64;
    g.bench_function("insert/new", |b| {
        b.iter(|| {
            next = next.wrapping_add(0x9e37_79b9_7f4a_7c15);
            live.pin(black_box(next))
        })
    });
    g.bench_function("estimate", |b| b.iter(|| black_box(live.pinned())));
    g.finish();
}

fn rings(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring_build");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    for n in [3usize, 1000] {
        let names: Vec<String> = (0..n)
            .map(|i| format!("10.0.{}.{}:80", i / 256, i % 256))
            .collect();
        let input: Vec<(&str, u32)> = names.iter().map(|s| (s.as_str(), 1)).collect();
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(Ring::new(black_box(&input))))
        });
    }
    g.finish();
}

fn routing(c: &mut Criterion) {
    let text = r#"
[[listener]]
name = "l"
bind = "127.0.0.1:0"
pool = "web"

[[listener.route]]
host = "api.example.com"
pool = "api"

[[listener.route]]
host = "*.shop.example.com"
path_prefix = "/cart"
pool = "cart"

[[listener.route]]
header = { name = "x-tenant", value = "beta" }
pool = "beta"

[pool.web]
balancer = "round-robin"
backends = ["127.0.0.1:1"]

[pool.api]
balancer = "round-robin"
backends = ["127.0.0.1:2"]

[pool.cart]
balancer = "round-robin"
backends = ["127.0.0.1:3"]

[pool.beta]
balancer = "round-robin"
backends = ["127.0.0.1:4"]
"#;
    let cfg = config::parse(text, "bench.toml", std::path::Path::new(".")).unwrap();
    let names: Vec<&str> = cfg.pools.iter().map(|p| p.name.as_str()).collect();
    let router = Router::new(&cfg.listeners[0].routes, 0, |n| {
        names.iter().position(|x| *x == n)
    });
    let uri: Uri = "/cart/items".parse().unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(header::HOST, "eu.shop.example.com".parse().unwrap());
    c.bench_function("route/3_routes", |b| {
        b.iter(|| black_box(router.route(black_box(&uri), black_box(&headers))))
    });
}

/// 1,000 backends in 50 pools: what a reload builds.
fn big_config() -> String {
    let mut s = String::from("[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\npool = \"p0\"\n");
    for p in 0..50 {
        let kind = [
            "round-robin",
            "least-connections",
            "hash",
            "cookie-affinity",
            "ip-hash",
        ][p % 5];
        s.push_str(&format!("\n[pool.p{p}]\nbalancer = \"{kind}\"\n"));
        if kind == "hash" {
            s.push_str("key = \"cookie:sid\"\n");
        }
        let list: Vec<String> = (0..20).map(|b| format!("\"127.{p}.{b}.1:8000\"")).collect();
        s.push_str(&format!("backends = [{}]\n", list.join(", ")));
        s.push_str(
            "[pool.p{p}.health]\npath = \"/healthz\"\n"
                .replace("{p}", &p.to_string())
                .as_str(),
        );
        if kind == "cookie-affinity" {
            s.push_str(&format!("[pool.p{p}.affinity]\ncookie = \"c{p}\"\n"));
        }
    }
    s
}

fn reload(c: &mut Criterion) {
    let text = big_config();
    let mut g = c.benchmark_group("reload");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    let cfg: Config = config::parse(&text, "big.toml", std::path::Path::new(".")).unwrap();
    let previous = Snapshot::build(Arc::new(cfg.clone()), None).unwrap();
    // The usual reload: most pools unchanged, their balancers kept.
    g.bench_function(
        "parse_validate_build/1000_backends_50_pools/unchanged",
        |b| {
            b.iter(|| {
                let cfg =
                    config::parse(black_box(&text), "big.toml", std::path::Path::new(".")).unwrap();
                black_box(Snapshot::build(Arc::new(cfg), Some(&previous)).unwrap())
            })
        },
    );
    // The worst case: every pool's balancer rebuilt (20 Maglev tables among them).
    g.bench_function(
        "parse_validate_build/1000_backends_50_pools/all_rebuilt",
        |b| {
            b.iter(|| {
                let cfg =
                    config::parse(black_box(&text), "big.toml", std::path::Path::new(".")).unwrap();
                black_box(Snapshot::build(Arc::new(cfg), None).unwrap())
            })
        },
    );
    g.finish();
}

/// The backend side of a request: its head encoded, a typical response head (nginx's)
/// parsed into the client's header map.
fn upstream_codec(c: &mut Criterion) {
    use maitred::proxy::headers::Forwarded;
    use maitred::upstream::{request, response};
    let (parts, ()) = http::Request::get("/api/items?page=2")
        .header("host", "shop.example")
        .header("user-agent", "bench/1.0")
        .header("accept", "*/*")
        .body(())
        .unwrap()
        .into_parts();
    let ip = std::net::IpAddr::from([10, 1, 2, 3]);
    let present = maitred::proxy::headers::Present::scan(&parts.headers);
    let forwarded = Forwarded::new(&parts.headers, present, ip, false, None);
    let mut out = Vec::with_capacity(512);
    c.bench_function("upstream/encode_head", |b| {
        b.iter(|| {
            out.clear();
            request::encode_head(
                &mut out,
                black_box(&parts),
                &forwarded,
                request::Framing::None,
            );
            black_box(out.len())
        })
    });
    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n\
        Date: Fri, 27 Nov 2026 03:00:00 GMT\r\nContent-Type: text/plain\r\n\
        Content-Length: 14\r\nConnection: keep-alive\r\n\r\nbackend 19001\n";
    c.bench_function("upstream/parse_response_head", |b| {
        b.iter(|| {
            let mut buf = bytes::BytesMut::from(black_box(HEAD));
            match response::parse(&mut buf, &parts) {
                Ok(response::Parsed::Final(h)) => response::recycle(h.headers),
                _ => unreachable!("the head parses"),
            }
        })
    });
}

/// The head scanner on the common request: one GET head arriving whole.
fn head_scan(c: &mut Criterion) {
    const GET: &[u8] = b"GET /api/items?page=2 HTTP/1.1\r\nHost: shop.example.com\r\n\
        User-Agent: bench/1.0\r\nAccept: */*\r\nAccept-Encoding: gzip\r\n\r\n";
    let mut scan = maitred::server::head_scan::HeadScan::default();
    let verdicts = maitred::server::head_scan::Verdicts::default();
    c.bench_function("head_scan/whole_get", |b| {
        b.iter(|| {
            scan.feed(black_box(GET), |v| verdicts.note(v));
            black_box(verdicts.take())
        })
    });
}

criterion_group!(
    benches,
    head_scan,
    picks,
    tokens,
    pinned,
    rings,
    routing,
    reload,
    upstream_codec
);
criterion_main!(benches);
