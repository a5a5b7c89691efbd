//! Header rewriting between client and backend (DESIGN §6): hop-by-hop headers are
//! dropped in both directions, X-Forwarded-For is appended, X-Forwarded-Proto and
//! X-Forwarded-Host are set, Host is kept.
//!
//! One pass over the header names finds whether any hop-by-hop header is present at all,
//! so the common request (none) pays for a scan, not for a dozen failed removals.

use std::io::Write as _;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Whether this name is hop-by-hop by definition (RFC 9110 §7.6.1, plus the Proxy-*
/// family and Keep-Alive that HTTP/1.0-era software still sends).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == header::CONNECTION
        || *name == header::TE
        || *name == header::TRAILER
        || *name == header::TRANSFER_ENCODING
        || *name == header::UPGRADE
        || *name == KEEP_ALIVE
        || name.as_str().starts_with("proxy-")
}

/// Removes hop-by-hop headers and the headers `Connection` names. With `keep_upgrade`
/// (a WebSocket or other upgrade being tunnelled) `Upgrade` and `Connection: upgrade`
/// stay, as the upgrade must reach the other side.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .filter(|t| !keep_upgrade || !t.eq_ignore_ascii_case("upgrade"))
        .filter_map(|t| HeaderName::from_bytes(t.to_ascii_lowercase().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(&n);
    }
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .filter(|n| !(keep_upgrade && (**n == header::UPGRADE || **n == header::CONNECTION)))
        .cloned()
        .collect();
    for n in names {
        headers.remove(&n);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    headers.remove(&PROXY_CONNECTION);
}

/// Adds the forwarding headers to a request bound for a backend.
///
/// `host` is the request's authority (HTTP/2 has no Host header; it is written as Host
/// for the HTTP/1.1 backend).
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client_ip: IpAddr,
    tls: bool,
    host: Option<HeaderValue>,
) {
    let xff = forwarded_for(headers.get(&X_FORWARDED_FOR), client_ip);
    headers.insert(X_FORWARDED_FOR.clone(), xff);
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    if let Some(h) = host {
        if !headers.contains_key(header::HOST) {
            headers.insert(header::HOST, h.clone());
        }
        headers.insert(X_FORWARDED_HOST.clone(), h);
    }
}

/// `existing, client_ip`, or `client_ip` alone; several X-Forwarded-For lines are
/// folded into one list first.
fn forwarded_for(existing: Option<&HeaderValue>, ip: IpAddr) -> HeaderValue {
    let mut buf = Vec::with_capacity(existing.map_or(0, |v| v.len() + 2) + 40);
    if let Some(v) = existing {
        buf.extend_from_slice(v.as_bytes());
        buf.extend_from_slice(b", ");
    }
    let _ = write!(buf, "{ip}");
    HeaderValue::from_maybe_shared(bytes::Bytes::from(buf))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Folds every X-Forwarded-For line into one before appending, so the list order holds.
pub fn fold_forwarded_for(headers: &mut HeaderMap) {
    let mut all = headers.get_all(&X_FORWARDED_FOR).iter();
    let (Some(first), Some(_)) = (all.next(), all.next()) else {
        return;
    };
    let mut buf = first.as_bytes().to_vec();
    for v in headers.get_all(&X_FORWARDED_FOR).iter().skip(1) {
        buf.extend_from_slice(b", ");
        buf.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&buf) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

/// The X-Forwarded-For header name.
pub fn x_forwarded_for() -> &'static HeaderName {
    &X_FORWARDED_FOR
}

/// Whether the request asks for a protocol upgrade (WebSocket and others).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("proxy-authorization", "x".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn keeps_upgrade_when_tunnelling() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "Upgrade".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }

    #[test]
    fn appends_forwarded_for() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "1.1.1.1".parse().unwrap());
        h.append("x-forwarded-for", "2.2.2.2".parse().unwrap());
        fold_forwarded_for(&mut h);
        add_forwarded(&mut h, "10.0.0.1".parse().unwrap(), false, None);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
    }
}
