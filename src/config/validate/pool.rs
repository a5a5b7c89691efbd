//! `[pool.NAME]` checks: balancer and its key, backends, timeouts and limits, and the
//! `health`, `ejection` and `affinity` sections with their defaults (DESIGN §3); the
//! `discovery` section has its own file.
//!
//! Balancer-specific rules live here: `key` only for `hash` (and implied for
//! `ip-hash`), `affinity` only for `cookie-affinity`, `balance_factor` only for sticky
//! balancers, `latency` only for `peak-ewma`.

use std::collections::HashMap;
use std::time::Duration;

use toml::Spanned;

use super::{Ctx, values};
use crate::config::raw::{
    RawAffinity, RawBackend, RawEjection, RawHealth, RawLatency, RawPool, RawUpstreamTls,
};
use crate::config::types::{
    AdminState, AffinityConfig, BackendConfig, BackendSource, BalancerKind, ClientAuthConfig,
    EjectionConfig, HashKey, HealthConfig, LatencyConfig, MAX_RETRIES, MAX_WEIGHT, PoolConfig,
    UpstreamProtocol, UpstreamTlsConfig,
};

/// Validates one pool. `used` says whether a listener or route sends traffic to it,
/// which is when it must have backends.
pub(super) fn pool(
    ctx: &mut Ctx<'_>,
    name: &Spanned<String>,
    raw: &RawPool,
    used: bool,
) -> Option<PoolConfig> {
    let name_ok = ctx.parse(name, values::pool_name);
    let balancer = ctx.parse(&raw.balancer, values::balancer);
    let key = balancer.and_then(|b| key(ctx, b, raw));
    let backends = backends(ctx, name, raw, used);
    let connect_timeout = ctx.duration(
        "connect_timeout",
        raw.connect_timeout.as_ref(),
        Duration::from_secs(3),
    );
    let response_timeout = ctx.duration(
        "response_timeout",
        raw.response_timeout.as_ref(),
        Duration::from_secs(60),
    );
    let read_timeout = ctx.duration(
        "read_timeout",
        raw.read_timeout.as_ref(),
        Duration::from_secs(60),
    );
    let keepalive_timeout = ctx.duration(
        "keepalive_timeout",
        raw.keepalive_timeout.as_ref(),
        Duration::from_secs(4),
    );
    let retries = ctx.int("retries", raw.retries.as_ref(), 2, 0, MAX_RETRIES);
    let max_connections = ctx.int(
        "max_connections",
        raw.max_connections.as_ref(),
        0,
        0,
        u32::MAX,
    );
    let queue_timeout = queue_timeout(ctx, max_connections, raw);
    let balance_factor = balancer.and_then(|b| balance_factor(ctx, b, raw.balance_factor.as_ref()));
    let slow_start = ctx.parse_or(raw.slow_start.as_ref(), Duration::ZERO, |s| {
        values::duration("slow_start", s)
    });
    let pinned_window = ctx.duration(
        "pinned_window",
        raw.pinned_window.as_ref(),
        Duration::from_secs(300),
    );
    let protocol = ctx.parse_or(
        raw.protocol.as_ref(),
        UpstreamProtocol::Http1,
        values::upstream_protocol,
    );
    let tls = protocol.and_then(|p| upstream_tls(ctx, p, raw));
    let health = match &raw.health {
        None => Some(None),
        Some(h) => protocol.and_then(|p| health(ctx, h, p)).map(Some),
    };
    let ejection = match &raw.ejection {
        None => Some(None),
        Some(e) => ejection(ctx, e).map(Some),
    };
    let affinity = balancer.and_then(|b| affinity(ctx, name.get_ref(), b, raw));
    let latency = balancer.and_then(|b| latency(ctx, name.get_ref(), b, raw));
    let discovery = match &raw.discovery {
        None => Some(None),
        Some(d) => super::discovery::discovery(ctx, name.get_ref(), d).map(Some),
    };

    name_ok?;
    Some(PoolConfig {
        name: name.get_ref().clone(),
        balancer: balancer?,
        key: key?,
        backends: backends?,
        connect_timeout: connect_timeout?,
        response_timeout: response_timeout?,
        read_timeout: read_timeout?,
        keepalive_timeout: keepalive_timeout?,
        retries: retries?,
        max_connections: max_connections?,
        queue_timeout: queue_timeout?,
        balance_factor: balance_factor?,
        slow_start: slow_start?,
        pinned_window: pinned_window?,
        health: health?,
        ejection: ejection?,
        affinity: affinity?,
        latency: latency?,
        discovery: discovery?,
        protocol: protocol?,
        tls: tls?,
    })
}

/// `[pool.NAME.tls]`: for `h2` and `https` only (their defaults when absent); files
/// readable, a client certificate only with its key.
fn upstream_tls(
    ctx: &mut Ctx<'_>,
    protocol: UpstreamProtocol,
    raw: &RawPool,
) -> Option<Option<UpstreamTlsConfig>> {
    let section = match (&raw.tls, protocol.is_tls()) {
        (None, false) => return Some(None),
        (None, true) => {
            return Some(Some(UpstreamTlsConfig {
                verify: true,
                ..UpstreamTlsConfig::default()
            }));
        }
        (Some(t), false) => {
            ctx.error(
                t.span(),
                format!(
                    "[tls] is only for protocol \"h2\" or \"https\", and this pool's protocol is {:?}; set protocol or remove the section",
                    protocol.name()
                ),
            );
            return None;
        }
        (Some(t), true) => t,
    };
    let t: &RawUpstreamTls = section.get_ref();
    let ca = match &t.ca {
        None => Some(None),
        Some(p) => super::listener::readable_file(ctx, p, "CA").map(Some),
    };
    let server_name = match &t.server_name {
        None => Some(None),
        Some(n) => ctx.parse(n, values::server_name).map(Some),
    };
    let verify = t.verify.as_ref().is_none_or(|v| *v.get_ref());
    let client_auth = match (&t.client_cert, &t.client_key) {
        (None, None) => Some(None),
        (Some(c), Some(k)) => {
            let cert = super::listener::readable_file(ctx, c, "client certificate");
            let key = super::listener::readable_file(ctx, k, "client key");
            Some(Some(ClientAuthConfig {
                cert: cert?,
                key: key?,
            }))
        }
        (Some(c), None) => {
            ctx.error(
                c.span(),
                "client_cert needs client_key beside it".to_string(),
            );
            None
        }
        (None, Some(k)) => {
            ctx.error(
                k.span(),
                "client_key needs client_cert beside it".to_string(),
            );
            None
        }
    };
    Some(Some(UpstreamTlsConfig {
        ca: ca?,
        server_name: server_name?,
        verify,
        client_auth: client_auth?,
    }))
}

/// `key`: required for `hash`, implied `client-ip` for `ip-hash`, refused elsewhere.
fn key(ctx: &mut Ctx<'_>, balancer: BalancerKind, raw: &RawPool) -> Option<Option<HashKey>> {
    match (balancer, &raw.key) {
        (BalancerKind::Hash, Some(k)) => ctx.parse(k, values::hash_key).map(Some),
        (BalancerKind::Hash, None) => {
            ctx.error(
                raw.balancer.span(),
                "balancer \"hash\" needs a key; add key = \"client-ip\", \"header:NAME\", \"cookie:NAME\", \"query:NAME\" or \"path\"".to_string(),
            );
            None
        }
        (BalancerKind::IpHash, None) => Some(Some(HashKey::ClientIp)),
        (BalancerKind::IpHash, Some(k)) => {
            ctx.error(
                k.span(),
                "key is not allowed for balancer \"ip-hash\", which always hashes the client IP; remove it or use balancer = \"hash\"".to_string(),
            );
            None
        }
        (other, Some(k)) => {
            ctx.error(
                k.span(),
                format!(
                    "key is only allowed for balancer \"hash\", not {:?}; remove it",
                    other.name()
                ),
            );
            None
        }
        (_, None) => Some(None),
    }
}

/// `backends`: each entry valid, no address twice, and at least one when the pool is
/// used, unless a discovery section gives them (then `backends` may be left out).
fn backends(
    ctx: &mut Ctx<'_>,
    name: &Spanned<String>,
    raw: &RawPool,
    used: bool,
) -> Option<Vec<BackendConfig>> {
    let pool = name.get_ref();
    let Some(listed) = &raw.backends else {
        if raw.discovery.is_none() {
            ctx.error(
                name.span(),
                format!(
                    "pool {pool:?} needs backends = [...] or a [pool.{pool}.discovery] section"
                ),
            );
            return None;
        }
        return Some(Vec::new());
    };
    let entries = listed.get_ref();
    if entries.is_empty() && used && raw.discovery.is_none() {
        ctx.error(
            listed.span(),
            format!("pool {pool:?} has no backends but a listener or route sends traffic to it; add at least one backend or a [pool.{pool}.discovery] section"),
        );
        return None;
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(entries.len());
    let mut ok = true;
    for entry in entries {
        let Some(backend) = backend(ctx, entry) else {
            ok = false;
            continue;
        };
        if let Some(first_line) = seen.get(&backend.addr) {
            ctx.error(
                entry.span(),
                format!(
                    "duplicate backend {:?} in pool {pool:?}; first listed on line {first_line}",
                    backend.addr
                ),
            );
            ok = false;
            continue;
        }
        let line = ctx.line(entry.span());
        seen.insert(backend.addr.clone(), line);
        out.push(backend);
    }
    ok.then_some(out)
}

/// One backend entry, short or long form.
fn backend(ctx: &mut Ctx<'_>, entry: &Spanned<RawBackend>) -> Option<BackendConfig> {
    let table = match entry.get_ref() {
        RawBackend::Short(addr) => {
            let socket = ctx.parse(
                &Spanned::new(entry.span(), addr.clone()),
                values::backend_addr,
            )?;
            return Some(BackendConfig {
                addr: addr.clone(),
                socket,
                weight: 1,
                state: AdminState::Active,
                source: BackendSource::Static,
            });
        }
        RawBackend::Long(table) => table,
    };
    let socket = ctx.parse(&table.addr, values::backend_addr);
    let weight = ctx.int("weight", table.weight.as_ref(), 1, 1, MAX_WEIGHT);
    let state = ctx.parse_or(
        table.state.as_ref(),
        AdminState::Active,
        values::admin_state,
    );
    Some(BackendConfig {
        addr: table.addr.get_ref().clone(),
        socket: socket?,
        weight: weight?,
        state: state?,
        source: BackendSource::Static,
    })
}

/// `queue_timeout`: a duration, `"0s"` (no queue) by default; a queue needs a
/// `max_connections` to wait for.
fn queue_timeout(
    ctx: &mut Ctx<'_>,
    max_connections: Option<u32>,
    raw: &RawPool,
) -> Option<Duration> {
    let v = raw.queue_timeout.as_ref();
    let d = ctx.parse_or(v, Duration::ZERO, |s| values::duration("queue_timeout", s))?;
    if let Some(v) = v.filter(|_| !d.is_zero() && max_connections == Some(0)) {
        ctx.error(
            v.span(),
            "queue_timeout needs max_connections > 0: requests wait for a slot only when every backend is at that limit; set max_connections or remove queue_timeout".to_string(),
        );
        return None;
    }
    Some(d)
}

/// `balance_factor`: 0 (off) or at least 1.0, and only on sticky balancers.
fn balance_factor(
    ctx: &mut Ctx<'_>,
    balancer: BalancerKind,
    v: Option<&Spanned<f64>>,
) -> Option<f64> {
    let Some(v) = v else {
        return Some(0.0);
    };
    let f = *v.get_ref();
    if !(f == 0.0 || (f.is_finite() && f >= 1.0)) {
        ctx.error(
            v.span(),
            format!("balance_factor must be 0 (off) or at least 1.0, e.g. 1.25; got {f}"),
        );
        return None;
    }
    if f != 0.0 && !balancer.is_sticky() {
        ctx.error(
            v.span(),
            format!(
                "balance_factor applies only to balancers hash, ip-hash and cookie-affinity, not {:?}; remove it",
                balancer.name()
            ),
        );
        return None;
    }
    Some(f)
}

/// `[pool.NAME.health]` with DESIGN §3's defaults.
fn health(ctx: &mut Ctx<'_>, raw: &RawHealth, protocol: UpstreamProtocol) -> Option<HealthConfig> {
    let grpc = raw.grpc.as_ref().is_some_and(|g| *g.get_ref());
    if let (Some(g), true) = (&raw.grpc, grpc && !protocol.is_http2()) {
        ctx.error(
            g.span(),
            format!(
                "grpc health checks need protocol \"h2c\" or \"h2\", and this pool's protocol is {:?}",
                protocol.name()
            ),
        );
        return None;
    }
    let path = if grpc {
        ctx.parse_or(raw.path.as_ref(), String::new(), values::grpc_service)
    } else {
        ctx.parse_or(raw.path.as_ref(), "/healthz".to_string(), |s| {
        if let Some(c) = s.chars().find(|c| c.is_ascii_control() || *c == ' ') {
            Err(format!(
                "invalid health path {s:?}: it contains {c:?}, which cannot be sent in a request line"
            ))
        } else if s.starts_with('/') {
            Ok(s.to_string())
        } else {
            Err(format!(
                "invalid health path {s:?}; expected a path starting with '/'"
            ))
        }
        })
    };
    let interval = ctx.duration("interval", raw.interval.as_ref(), Duration::from_secs(2));
    let timeout = ctx.duration("timeout", raw.timeout.as_ref(), Duration::from_secs(1));
    let rise = ctx.int("rise", raw.rise.as_ref(), 2, 1, u32::MAX);
    let fall = ctx.int("fall", raw.fall.as_ref(), 3, 1, u32::MAX);
    let expect = ctx.parse_or(raw.expect.as_ref(), (200, 399), values::status_range);
    let host = match &raw.host {
        None => Some(None),
        Some(h) => ctx.parse(h, values::health_host).map(Some),
    };
    Some(HealthConfig {
        path: path?,
        interval: interval?,
        timeout: timeout?,
        rise: rise?,
        fall: fall?,
        expect: expect?,
        host: host?,
        grpc,
    })
}

/// `[pool.NAME.ejection]` with DESIGN §3's defaults.
fn ejection(ctx: &mut Ctx<'_>, raw: &RawEjection) -> Option<EjectionConfig> {
    let consecutive_failures = ctx.int(
        "consecutive_failures",
        raw.consecutive_failures.as_ref(),
        5,
        1,
        u32::MAX,
    );
    let duration = ctx.duration("duration", raw.duration.as_ref(), Duration::from_secs(30));
    Some(EjectionConfig {
        consecutive_failures: consecutive_failures?,
        duration: duration?,
    })
}

/// `[pool.NAME.affinity]`: required for `cookie-affinity`, refused elsewhere.
fn affinity(
    ctx: &mut Ctx<'_>,
    pool: &str,
    balancer: BalancerKind,
    raw: &RawPool,
) -> Option<Option<AffinityConfig>> {
    match (balancer, &raw.affinity) {
        (BalancerKind::CookieAffinity, Some(a)) => affinity_section(ctx, a.get_ref()).map(Some),
        (BalancerKind::CookieAffinity, None) => {
            ctx.error(
                raw.balancer.span(),
                format!("balancer \"cookie-affinity\" needs a [pool.{pool}.affinity] section with at least cookie = \"NAME\""),
            );
            None
        }
        (other, Some(a)) => {
            ctx.error(
                a.span(),
                format!(
                    "[pool.{pool}.affinity] applies only to balancer \"cookie-affinity\", not {:?}; remove it or change the balancer",
                    other.name()
                ),
            );
            None
        }
        (_, None) => Some(None),
    }
}

/// The contents of an affinity section.
fn affinity_section(ctx: &mut Ctx<'_>, raw: &RawAffinity) -> Option<AffinityConfig> {
    let cookie = ctx.parse(&raw.cookie, values::cookie_name);
    let max_age = match &raw.max_age {
        None => Some(None),
        Some(v) => ctx
            .parse(v, |s| values::positive_duration("max_age", s))
            .map(Some),
    };
    // DESIGN §3: an omitted key takes the value its example shows, `Lax` here.
    let same_site = match &raw.same_site {
        None => Some(Some(crate::config::SameSite::Lax)),
        Some(v) => ctx.parse(v, values::same_site).map(Some),
    };
    let fallback = ctx.parse_or(
        raw.fallback.as_ref(),
        BalancerKind::LeastConnections,
        values::fallback,
    );
    let secret = match &raw.secret {
        None => Some(None),
        Some(v) => ctx.parse(v, non_empty("secret")).map(Some),
    };
    Some(AffinityConfig {
        cookie: cookie?,
        max_age: max_age?,
        secure: raw.secure.unwrap_or(false),
        http_only: raw.http_only.unwrap_or(true),
        same_site: same_site?,
        fallback: fallback?,
        secret: secret?,
    })
}

/// `[pool.NAME.latency]`: optional for `peak-ewma` (its defaults when absent), refused
/// elsewhere.
fn latency(
    ctx: &mut Ctx<'_>,
    pool: &str,
    balancer: BalancerKind,
    raw: &RawPool,
) -> Option<Option<LatencyConfig>> {
    match (balancer, &raw.latency) {
        (BalancerKind::PeakEwma, Some(l)) => latency_section(ctx, l.get_ref()).map(Some),
        (BalancerKind::PeakEwma, None) => Some(Some(LatencyConfig::default())),
        (other, Some(l)) => {
            ctx.error(
                l.span(),
                format!(
                    "[pool.{pool}.latency] applies only to balancer \"peak-ewma\", not {:?}; remove it or change the balancer",
                    other.name()
                ),
            );
            None
        }
        (_, None) => Some(None),
    }
}

/// The contents of a latency section, with DESIGN §13's defaults.
fn latency_section(ctx: &mut Ctx<'_>, raw: &RawLatency) -> Option<LatencyConfig> {
    let defaults = LatencyConfig::default();
    let decay = ctx.duration("decay", raw.decay.as_ref(), defaults.decay);
    let penalty = ctx.duration("penalty", raw.penalty.as_ref(), defaults.penalty);
    let choices = ctx.int(
        "choices",
        raw.choices.as_ref(),
        defaults.choices,
        1,
        u32::MAX,
    );
    Some(LatencyConfig {
        decay: decay?,
        penalty: penalty?,
        choices: choices?,
    })
}

/// A parser for a string that must not be empty.
fn non_empty(key: &'static str) -> impl Fn(&str) -> Result<String, String> {
    move |s| {
        if s.is_empty() {
            Err(format!("empty {key}; remove the key or give a value"))
        } else {
            Ok(s.to_string())
        }
    }
}
