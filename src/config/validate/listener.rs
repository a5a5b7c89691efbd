//! `[[listener]]` checks: bind address, timeouts, trusted proxies, TLS files, routes and
//! the pools they name, plus the checks across listeners (unique names, no two on one
//! address).
//!
//! TLS files are only checked to exist and be readable here; parsing the PEM is the TLS
//! module's job when listeners are built.

use std::fs::File;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::{Ctx, every, values};
use crate::config::raw::{RawAdmin, RawListener, RawRoute, RawTls};
use crate::config::types::{
    CertificateConfig, HeaderMatch, ListenerConfig, RouteConfig, TlsConfig,
};

/// ALPN protocols maitred can serve.
const ALPN_SUPPORTED: [&str; 2] = ["h2", "http/1.1"];

/// Validates one listener; `pools` are the names of every `[pool.NAME]`, sorted.
pub(super) fn listener(
    ctx: &mut Ctx<'_>,
    raw: &RawListener,
    pools: &[&str],
) -> Option<ListenerConfig> {
    let name = ctx.parse(&raw.name, |s| {
        if s.is_empty() {
            Err("empty listener name".to_string())
        } else {
            Ok(s.to_string())
        }
    });
    let bind = ctx.parse(&raw.bind, values::bind_addr);
    let pool = pool_ref(ctx, &raw.pool, pools);
    let header_timeout = ctx.duration(
        "header_timeout",
        raw.header_timeout.as_ref(),
        Duration::from_secs(10),
    );
    let idle_timeout = ctx.duration(
        "idle_timeout",
        raw.idle_timeout.as_ref(),
        Duration::from_secs(60),
    );
    let send_timeout = ctx.duration(
        "send_timeout",
        raw.send_timeout.as_ref(),
        Duration::from_secs(60),
    );
    let client_body_timeout = ctx.duration(
        "client_body_timeout",
        raw.client_body_timeout.as_ref(),
        Duration::from_secs(60),
    );
    let max_connections = ctx.int(
        "max_connections",
        raw.max_connections.as_ref(),
        0,
        0,
        u32::MAX,
    );
    let upgrades = match &raw.upgrades {
        None => Some(vec!["websocket".to_string()]),
        Some(list) => every(list.iter().map(|u| ctx.parse(u, values::upgrade_protocol))),
    };
    let trusted_proxies = every(
        raw.trusted_proxies
            .iter()
            .flatten()
            .map(|p| ctx.parse(p, values::ip_net)),
    );
    let tls = match &raw.tls {
        None => Some(None),
        Some(t) => tls(ctx, t).map(Some),
    };
    let routes = every(raw.route.iter().map(|r| route(ctx, r, pools)));
    Some(ListenerConfig {
        name: name?,
        bind: bind?,
        pool: pool?,
        header_timeout: header_timeout?,
        idle_timeout: idle_timeout?,
        send_timeout: send_timeout?,
        client_body_timeout: client_body_timeout?,
        max_connections: max_connections?,
        upgrades: upgrades?,
        proxy_protocol: raw.proxy_protocol.unwrap_or(false),
        trusted_proxies: trusted_proxies?,
        tls: tls?,
        routes: routes?,
    })
}

/// A reference to a pool, which must be defined.
fn pool_ref(ctx: &mut Ctx<'_>, v: &Spanned<String>, pools: &[&str]) -> Option<String> {
    ctx.parse(v, |s| {
        if pools.contains(&s) {
            Ok(s.to_string())
        } else if pools.is_empty() {
            Err(format!("unknown pool {s:?}; no [pool.NAME] is defined"))
        } else {
            Err(format!(
                "unknown pool {s:?}; expected one of {}",
                pools.join(", ")
            ))
        }
    })
}

/// One route: at least one condition, each well-formed, and an existing pool.
fn route(ctx: &mut Ctx<'_>, raw: &Spanned<RawRoute>, pools: &[&str]) -> Option<RouteConfig> {
    let r = raw.get_ref();
    let has_condition = r.host.is_some() || r.path_prefix.is_some() || r.header.is_some();
    if !has_condition {
        ctx.error(
            raw.span(),
            "route has no condition, so it would match every request; set host, path_prefix or header (or use the listener's pool)".to_string(),
        );
    }
    let host = match &r.host {
        None => Some(None),
        Some(h) => ctx.parse(h, values::host_match).map(Some),
    };
    let path_prefix = match &r.path_prefix {
        None => Some(None),
        Some(p) => ctx
            .parse(p, |s| {
                if s.starts_with('/') {
                    Ok(s.to_string())
                } else {
                    Err(format!(
                        "invalid path_prefix {s:?}; expected a path starting with '/'"
                    ))
                }
            })
            .map(Some),
    };
    let header = match &r.header {
        None => Some(None),
        Some(h) => ctx.parse(&h.name, values::header_name).map(|name| {
            Some(HeaderMatch {
                name,
                value: h.value.clone(),
            })
        }),
    };
    let pool = pool_ref(ctx, &r.pool, pools);
    if !has_condition {
        return None;
    }
    Some(RouteConfig {
        host: host?,
        path_prefix: path_prefix?,
        header: header?,
        pool: pool?,
    })
}

/// `[listener.tls]`: certificate files readable, ALPN from what maitred speaks.
fn tls(ctx: &mut Ctx<'_>, raw: &RawTls) -> Option<TlsConfig> {
    let mut ok = true;
    if raw.certificates.get_ref().is_empty() {
        ctx.error(
            raw.certificates.span(),
            "certificates is empty; expected at least one { cert = \"PATH\", key = \"PATH\" }"
                .to_string(),
        );
        ok = false;
    }
    let mut certificates = Vec::new();
    for c in raw.certificates.get_ref() {
        let cert = readable_file(ctx, &c.cert, "certificate");
        let key = readable_file(ctx, &c.key, "key");
        match (cert, key) {
            (Some(cert), Some(key)) => certificates.push(CertificateConfig { cert, key }),
            _ => ok = false,
        }
    }
    let alpn = match &raw.alpn {
        None => Some(ALPN_SUPPORTED.iter().map(|s| s.to_string()).collect()),
        Some(list) => alpn(ctx, list),
    };
    if !ok {
        return None;
    }
    Some(TlsConfig {
        certificates,
        alpn: alpn?,
    })
}

/// `alpn`: a non-empty list of `h2` and `http/1.1`, each at most once.
fn alpn(ctx: &mut Ctx<'_>, list: &[Spanned<String>]) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    let mut ok = true;
    for p in list {
        let name = p.get_ref();
        if !ALPN_SUPPORTED.contains(&name.as_str()) {
            ctx.error(
                p.span(),
                format!("unsupported ALPN protocol {name:?}; expected h2 or http/1.1"),
            );
            ok = false;
        } else if out.contains(name) {
            ctx.error(p.span(), format!("ALPN protocol {name:?} listed twice"));
            ok = false;
        } else {
            out.push(name.clone());
        }
    }
    ok.then_some(out)
}

/// A TLS file path, relative to the config's directory, that can be opened for reading.
pub(super) fn readable_file(ctx: &mut Ctx<'_>, v: &Spanned<String>, what: &str) -> Option<PathBuf> {
    let written = v.get_ref();
    let path = ctx.base_dir.join(written);
    let result = File::open(&path).and_then(|f| f.metadata());
    let problem = match result {
        Ok(meta) if meta.is_file() => return Some(path),
        Ok(_) => "not a regular file".to_string(),
        Err(e) => e.to_string(),
    };
    ctx.error(
        v.span(),
        format!(
            "cannot read {what} file {written:?} ({}): {problem}",
            path.display()
        ),
    );
    None
}

/// Checks across listeners: names are unique and no two sockets (the admin listener's
/// included) would bind the same address. Port 0 never conflicts: the OS picks a free
/// port each time.
pub(super) fn check_unique(ctx: &mut Ctx<'_>, listeners: &[RawListener], admin: Option<&RawAdmin>) {
    let mut names: Vec<(&str, Range<usize>)> = Vec::new();
    for l in listeners {
        let name = l.name.get_ref().as_str();
        match names.iter().find(|(n, _)| *n == name) {
            Some((_, first)) => {
                let line = ctx.line(first.clone());
                ctx.error(
                    l.name.span(),
                    format!("duplicate listener name {name:?}; first used on line {line}"),
                );
            }
            None => names.push((name, l.name.span())),
        }
    }

    let mut binds: Vec<(SocketAddr, String, Range<usize>)> = Vec::new();
    let sockets = listeners
        .iter()
        .map(|l| (&l.bind, format!("listener {:?}", l.name.get_ref())))
        .chain(admin.map(|a| (&a.bind, "the admin listener".to_string())));
    for (bind, owner) in sockets {
        let Ok(addr) = values::bind_addr(bind.get_ref()) else {
            continue;
        };
        if addr.port() == 0 {
            continue;
        }
        if let Some((other, other_owner, span)) = binds.iter().find(|(b, _, _)| overlaps(*b, addr))
        {
            let line = ctx.line(span.clone());
            let message = format!(
                "{owner} binds {addr}, which conflicts with {other} of {other_owner} on line {line}"
            );
            ctx.error(bind.span(), message);
            continue;
        }
        binds.push((addr, owner, bind.span()));
    }
}

/// Whether two binds on the same port would collide: the same IP, or either is the
/// wildcard address (which takes the port on every interface).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
