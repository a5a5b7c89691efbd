//! Parsers for single config values: durations, addresses, hash keys, host patterns,
//! status ranges, cookie names.
//!
//! Each takes the text as written and returns the typed value or a message that says
//! what was expected. They know nothing of spans or of where the value sits in the
//! file; the callers in `validate` attach the position. Pure functions, so the rules are
//! tested here in isolation.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;

use crate::config::types::{
    AdminState, BalancerKind, HashKey, HostMatch, SameSite, UpstreamProtocol,
};

/// A humantime duration ("250ms", "2s", "1m").
pub fn duration(key: &str, text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| {
        format!("invalid duration {text:?} for {key} ({e}); expected a duration like \"250ms\", \"2s\" or \"1m\"")
    })
}

/// A duration that must not be zero.
pub fn positive_duration(key: &str, text: &str) -> Result<Duration, String> {
    let d = duration(key, text)?;
    if d.is_zero() {
        return Err(format!("{key} must be greater than 0, got {text:?}"));
    }
    Ok(d)
}

/// A listener `upgrades` entry: an Upgrade protocol name to tunnel. `h2c` is refused:
/// an h2c upgrade through a proxy is how request smuggling past its routing works.
pub fn upgrade_protocol(text: &str) -> Result<String, String> {
    let lower = text.to_ascii_lowercase();
    if lower == "h2c" {
        return Err("\"h2c\" may not be listed in upgrades: an h2c upgrade through a proxy bypasses its routing (request smuggling); serve h2c with prior knowledge instead".to_string());
    }
    let token = !lower.is_empty()
        && lower
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b));
    if !token {
        return Err(format!(
            "invalid upgrade protocol {text:?}; expected a protocol name like \"websocket\""
        ));
    }
    Ok(lower)
}

/// An `[admin] allowed_hosts` entry: a host name or IP address without port, kept in
/// lower case.
pub fn allowed_host(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b));
    if !ok {
        return Err(format!(
            "invalid allowed host {text:?}; expected a host name like \"lb.internal\" or an IP address"
        ));
    }
    Ok(text.to_ascii_lowercase())
}

/// A health check's `host`: sent as the probe's Host header, so no control characters
/// or spaces.
pub fn health_host(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("empty health host; remove the key to use the backend's address".to_string());
    }
    if let Some(c) = text.chars().find(|c| c.is_ascii_control() || *c == ' ') {
        return Err(format!(
            "invalid health host {text:?}: it contains {c:?}, which cannot be sent in a header"
        ));
    }
    Ok(text.to_string())
}

/// A balancer name.
pub fn balancer(text: &str) -> Result<BalancerKind, String> {
    BalancerKind::from_name(text).ok_or_else(|| {
        format!(
            "unknown balancer {text:?}; expected one of {}",
            BalancerKind::NAMES.join(", ")
        )
    })
}

/// A pool's `protocol` (DESIGN §12).
pub fn upstream_protocol(text: &str) -> Result<UpstreamProtocol, String> {
    let all = [
        UpstreamProtocol::Http1,
        UpstreamProtocol::H2c,
        UpstreamProtocol::H2,
        UpstreamProtocol::Https,
    ];
    all.into_iter().find(|p| p.name() == text).ok_or_else(|| {
        format!(
            "unknown protocol {text:?}; expected one of {}",
            UpstreamProtocol::NAMES.join(", ")
        )
    })
}

/// A `[pool.NAME.tls] server_name`: a DNS name or an IP address, as sent in SNI and
/// verified against the backend's certificate.
pub fn server_name(text: &str) -> Result<String, String> {
    rustls_pki_types::ServerName::try_from(text)
        .map(|_| text.to_string())
        .map_err(|_| format!("invalid server_name {text:?}; expected a DNS name or an IP address"))
}

/// A gRPC health check's service name (the `path` of a `grpc = true` check): a
/// fully-qualified service such as `shop.Cart`, or empty for the whole server.
pub fn grpc_service(text: &str) -> Result<String, String> {
    let ok = text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(text.to_string())
    } else {
        Err(format!(
            "invalid gRPC service name {text:?}; expected a name like \"shop.Cart\", or \"\" for the whole server"
        ))
    }
}

/// An affinity `fallback`: a balancer that needs no per-client state.
pub fn fallback(text: &str) -> Result<BalancerKind, String> {
    match BalancerKind::from_name(text) {
        Some(kind @ (BalancerKind::RoundRobin | BalancerKind::LeastConnections)) => Ok(kind),
        _ => Err(format!(
            "invalid fallback {text:?}; expected one of round-robin, least-connections"
        )),
    }
}

/// A listener or admin bind address: an IP socket address, no host names.
pub fn bind_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("invalid bind address {text:?}; expected an IP address and port like \"0.0.0.0:8080\" or \"[::1]:8080\"")
    })
}

/// A backend address, `host:port`, resolved now. A literal IP never touches DNS; a host
/// name takes the first address the resolver returns.
pub fn backend_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let expected =
        "expected host:port like \"10.0.0.11:8000\", \"[::1]:8000\" or \"app.internal:8000\"";
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "invalid backend address {text:?}: no port; {expected}"
        ));
    };
    if host.is_empty() || host.contains(':') || host.contains('[') {
        return Err(format!("invalid backend address {text:?}; {expected}"));
    }
    if port.parse::<u16>().is_err() {
        return Err(format!(
            "invalid port {port:?} in backend address {text:?}; expected a number from 0 to 65535"
        ));
    }
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve backend address {text:?}: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("cannot resolve backend address {text:?}: no addresses"))
}

/// A hash key: `client-ip | header:NAME | cookie:NAME | query:NAME | path`.
pub fn hash_key(text: &str) -> Result<HashKey, String> {
    let expected = "expected client-ip, header:NAME, cookie:NAME, query:NAME or path";
    match text {
        "client-ip" => return Ok(HashKey::ClientIp),
        "path" => return Ok(HashKey::Path),
        _ => {}
    }
    let Some((kind, name)) = text.split_once(':') else {
        return Err(format!("invalid key {text:?}; {expected}"));
    };
    if name.is_empty() {
        return Err(format!(
            "invalid key {text:?}: the name after \"{kind}:\" is empty; {expected}"
        ));
    }
    match kind {
        "header" => HeaderName::from_bytes(name.as_bytes())
            .map(HashKey::Header)
            .map_err(|_| format!("invalid key {text:?}: {name:?} is not a valid header name")),
        "cookie" if is_token(name) => Ok(HashKey::Cookie(name.to_string())),
        "cookie" => Err(format!(
            "invalid key {text:?}: {name:?} is not a valid cookie name"
        )),
        "query" => Ok(HashKey::Query(name.to_string())),
        _ => Err(format!("invalid key {text:?}; {expected}")),
    }
}

/// A header name for a route.
pub fn header_name(text: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(text.as_bytes())
        .map_err(|_| format!("invalid header name {text:?}; expected a token like \"x-tenant\""))
}

/// A route host: `shop.example.com` or `*.example.com`, lower-cased.
pub fn host_match(text: &str) -> Result<HostMatch, String> {
    let expected = "expected a host name like \"shop.example.com\" or \"*.example.com\" (no port)";
    let lower = text.to_ascii_lowercase();
    let (wildcard, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let labels_ok = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !labels_ok {
        return Err(format!("invalid host {text:?}; {expected}"));
    }
    Ok(if wildcard {
        HostMatch::Wildcard(format!(".{name}"))
    } else {
        HostMatch::Exact(name.to_string())
    })
}

/// A health `expect`: `"200-399"` or `"200"`, statuses 100 to 599.
pub fn status_range(text: &str) -> Result<(u16, u16), String> {
    let invalid = || {
        format!(
            "invalid expect {text:?}; expected a status like \"200\" or a range like \"200-399\" within 100-599"
        )
    };
    let (lo, hi) = match text.split_once('-') {
        Some((lo, hi)) => (lo.trim(), hi.trim()),
        None => (text.trim(), text.trim()),
    };
    let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>()) else {
        return Err(invalid());
    };
    if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
        return Err(invalid());
    }
    Ok((lo, hi))
}

/// A trusted proxy: a CIDR, or a bare IP meaning just that address.
pub fn ip_net(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("invalid trusted proxy {text:?}; expected a CIDR like \"10.0.0.0/8\" or an IP address"))
}

/// A backend `state`.
pub fn admin_state(text: &str) -> Result<AdminState, String> {
    match text {
        "active" => Ok(AdminState::Active),
        "drain" => Ok(AdminState::Drain),
        "disabled" => Ok(AdminState::Disabled),
        _ => Err(format!(
            "invalid state {text:?}; expected one of active, drain, disabled"
        )),
    }
}

/// A cookie `same_site`, any case.
pub fn same_site(text: &str) -> Result<SameSite, String> {
    match text.to_ascii_lowercase().as_str() {
        "strict" => Ok(SameSite::Strict),
        "lax" => Ok(SameSite::Lax),
        "none" => Ok(SameSite::None),
        _ => Err(format!(
            "invalid same_site {text:?}; expected one of Strict, Lax, None"
        )),
    }
}

/// A cookie name: an RFC 9110 token (RFC 6265 §4.1.1 `cookie-name`).
pub fn cookie_name(text: &str) -> Result<String, String> {
    if is_token(text) {
        Ok(text.to_string())
    } else {
        Err(format!(
            "invalid cookie name {text:?}; expected letters, digits and !#$%&'*+-.^_`|~ only"
        ))
    }
}

/// A pool name: it appears in URLs of the admin API and in `POOL/ADDR` backend names.
pub fn pool_name(text: &str) -> Result<(), String> {
    let ok = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid pool name {text:?}; expected letters, digits, '-', '_' and '.' only"
        ))
    }
}

/// An RFC 9110 §5.6.2 token: one or more `tchar`.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on a wrong assumption"
)]
mod tests {
    use super::*;

    #[test]
    fn literal_ip_backend_needs_no_resolver() {
        assert_eq!(
            backend_addr("10.0.0.1:80"),
            Ok("10.0.0.1:80".parse().unwrap())
        );
        assert_eq!(backend_addr("[::1]:80"), Ok("[::1]:80".parse().unwrap()));
    }

    #[test]
    fn backend_without_port_is_rejected() {
        assert!(backend_addr("10.0.0.1").unwrap_err().contains("no port"));
        assert!(
            backend_addr("app:http")
                .unwrap_err()
                .contains("invalid port")
        );
    }

    #[test]
    fn hash_keys_parse_every_form() {
        assert_eq!(hash_key("client-ip"), Ok(HashKey::ClientIp));
        assert_eq!(hash_key("path"), Ok(HashKey::Path));
        assert_eq!(hash_key("cookie:SID"), Ok(HashKey::Cookie("SID".into())));
        assert_eq!(hash_key("query:u"), Ok(HashKey::Query("u".into())));
        assert_eq!(
            hash_key("header:X-User"),
            Ok(HashKey::Header(HeaderName::from_static("x-user")))
        );
        assert!(hash_key("header:").is_err());
        assert!(hash_key("header:bad name").is_err());
        assert!(hash_key("body").is_err());
    }

    #[test]
    fn host_patterns_are_lower_cased_and_wildcards_keep_the_suffix() {
        assert_eq!(
            host_match("Shop.Example.com"),
            Ok(HostMatch::Exact("shop.example.com".into()))
        );
        assert_eq!(
            host_match("*.Example.com"),
            Ok(HostMatch::Wildcard(".example.com".into()))
        );
        assert!(host_match("shop.example.com:8080").is_err());
        assert!(host_match("*").is_err());
        assert!(host_match("a.*.com").is_err());
    }

    #[test]
    fn status_ranges_accept_one_status_or_an_ordered_range() {
        assert_eq!(status_range("200"), Ok((200, 200)));
        assert_eq!(status_range("200-399"), Ok((200, 399)));
        assert!(status_range("399-200").is_err());
        assert!(status_range("99").is_err());
        assert!(status_range("200-600").is_err());
    }

    #[test]
    fn trusted_proxies_accept_bare_ips_as_single_hosts() {
        assert_eq!(ip_net("10.0.0.1"), Ok("10.0.0.1/32".parse().unwrap()));
        assert_eq!(ip_net("::1"), Ok("::1/128".parse().unwrap()));
        assert_eq!(ip_net("10.0.0.0/8"), Ok("10.0.0.0/8".parse().unwrap()));
        assert!(ip_net("10.0.0.0/33").is_err());
    }

    #[test]
    fn same_site_accepts_any_case() {
        assert_eq!(same_site("lax"), Ok(SameSite::Lax));
        assert_eq!(same_site("STRICT"), Ok(SameSite::Strict));
        assert!(same_site("sometimes").is_err());
    }

    #[test]
    fn fallback_must_be_stateless() {
        assert_eq!(fallback("round-robin"), Ok(BalancerKind::RoundRobin));
        assert!(
            fallback("ip-hash")
                .unwrap_err()
                .contains("round-robin, least-connections")
        );
    }

    #[test]
    fn cookie_names_are_tokens() {
        assert!(cookie_name("maitred_cart").is_ok());
        assert!(cookie_name("a b").is_err());
        assert!(cookie_name("a=b").is_err());
        assert!(cookie_name("").is_err());
    }
}
