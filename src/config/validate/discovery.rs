//! `[pool.NAME.discovery]` checks (DESIGN §10): exactly one of `dns` and `srv`, a name
//! DNS can look up, resolvers as `IP:PORT`, `min_interval` no longer than
//! `max_interval`, and the defaults of the design's example.

use std::net::SocketAddr;
use std::time::Duration;

use toml::Spanned;

use super::Ctx;
use crate::config::raw::RawDiscovery;
use crate::config::types::{DiscoveryConfig, DiscoveryTarget, MAX_WEIGHT, Removal};

/// Validates one discovery section; `section` spans it for errors about the whole.
pub(super) fn discovery(
    ctx: &mut Ctx<'_>,
    pool: &str,
    section: &Spanned<RawDiscovery>,
) -> Option<DiscoveryConfig> {
    let raw = section.get_ref();
    let target = match (&raw.dns, &raw.srv) {
        (Some(d), None) => ctx.parse(d, dns_target),
        (None, Some(s)) => ctx.parse(s, |t| dns_name("srv", t).map(DiscoveryTarget::Srv)),
        (Some(_), Some(s)) => {
            ctx.error(
                s.span(),
                format!("[pool.{pool}.discovery] takes one of dns and srv, not both; remove one"),
            );
            None
        }
        (None, None) => {
            ctx.error(
                section.span(),
                format!("[pool.{pool}.discovery] needs dns = \"NAME:PORT\" (A and AAAA records) or srv = \"NAME\" (SRV records)"),
            );
            None
        }
    };
    let resolvers = super::every(
        raw.resolvers
            .iter()
            .flatten()
            .map(|r| ctx.parse(r, resolver_addr)),
    );
    let min_interval = ctx.duration(
        "min_interval",
        raw.min_interval.as_ref(),
        Duration::from_secs(1),
    );
    let max_interval = ctx.duration(
        "max_interval",
        raw.max_interval.as_ref(),
        Duration::from_secs(30),
    );
    let weight = ctx.int("weight", raw.weight.as_ref(), 1, 1, MAX_WEIGHT);
    let removal = ctx.parse_or(raw.removal.as_ref(), Removal::Drain, removal);
    let drain_timeout = ctx.duration(
        "drain_timeout",
        raw.drain_timeout.as_ref(),
        Duration::from_secs(300),
    );
    let (min_interval, max_interval) = (min_interval?, max_interval?);
    if min_interval > max_interval {
        let span = raw
            .max_interval
            .as_ref()
            .or(raw.min_interval.as_ref())
            .map_or(section.span(), Spanned::span);
        ctx.error(
            span,
            format!(
                "max_interval ({}) is shorter than min_interval ({}); re-resolution waits at least min_interval and at most max_interval",
                humantime::format_duration(max_interval),
                humantime::format_duration(min_interval)
            ),
        );
        return None;
    }
    Some(DiscoveryConfig {
        target: target?,
        resolvers: resolvers?,
        min_interval,
        max_interval,
        weight: weight?,
        removal: removal?,
        drain_timeout: drain_timeout?,
    })
}

/// `dns = "NAME:PORT"`.
fn dns_target(text: &str) -> Result<DiscoveryTarget, String> {
    let Some((name, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "invalid dns {text:?}: no port; expected NAME:PORT like \"api.default.svc.cluster.local:8080\""
        ));
    };
    let port = match port.parse::<u16>() {
        Ok(p) if p != 0 => p,
        _ => {
            return Err(format!(
                "invalid port {port:?} in dns {text:?}; expected a number from 1 to 65535"
            ));
        }
    };
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "dns {text:?} is an IP address, which DNS does not resolve; list it in backends instead"
        ));
    }
    let name = dns_name("dns", name)?;
    Ok(DiscoveryTarget::Dns { name, port })
}

/// A DNS name: labels of letters, digits, `-` and `_` (SRV names start with `_service`),
/// at most 63 bytes each and 253 in all, with an optional final dot.
fn dns_name(key: &str, text: &str) -> Result<String, String> {
    let bare = text.strip_suffix('.').unwrap_or(text);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if bare.is_empty() || bare.len() > 253 || !bare.split('.').all(label_ok) {
        return Err(format!(
            "invalid {key} name {text:?}; expected a DNS name like \"api.default.svc.cluster.local\" (labels of letters, digits, '-' and '_', separated by dots)"
        ));
    }
    Ok(text.to_ascii_lowercase())
}

/// A resolver, `IP:PORT`.
fn resolver_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("invalid resolver {text:?}; expected an IP address and port like \"10.96.0.10:53\" or \"[::1]:53\"")
    })
}

/// `removal`.
fn removal(text: &str) -> Result<Removal, String> {
    match text {
        "drain" => Ok(Removal::Drain),
        "remove" => Ok(Removal::Remove),
        _ => Err(format!(
            "invalid removal {text:?}; expected one of drain, remove"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_targets_need_a_name_and_a_port() {
        assert_eq!(
            dns_target("api.svc.cluster.local:8080"),
            Ok(DiscoveryTarget::Dns {
                name: "api.svc.cluster.local".into(),
                port: 8080
            })
        );
        assert!(dns_target("api.svc").unwrap_err().contains("no port"));
        assert!(
            dns_target("api.svc:0")
                .unwrap_err()
                .contains("invalid port")
        );
        assert!(dns_target("10.0.0.1:80").unwrap_err().contains("backends"));
        assert!(dns_target("bad name:80").is_err());
    }

    #[test]
    fn srv_names_may_start_with_underscores() {
        assert_eq!(
            dns_name("srv", "_http._tcp.API.service.consul."),
            Ok("_http._tcp.api.service.consul.".to_string())
        );
        assert!(dns_name("srv", "a..b").is_err());
    }
}
