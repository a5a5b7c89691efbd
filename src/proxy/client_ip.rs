//! The client IP of DESIGN §4: the socket peer (or the PROXY-protocol source), unless
//! that peer is a trusted proxy, in which case the right-most address of
//! X-Forwarded-For that is not itself trusted.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

use crate::proxy::headers::x_forwarded_for;

/// Resolves the client IP for one request.
pub fn resolve(peer: IpAddr, trusted: &[IpNet], headers: &HeaderMap) -> IpAddr {
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return peer;
    }
    // Walk the list right to left: each hop was appended by the one after it.
    let mut client = peer;
    let values: Vec<&str> = headers
        .get_all(x_forwarded_for())
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for hop in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        let Some(ip) = parse_hop(hop.trim()) else {
            return client;
        };
        client = ip;
        if !is_trusted(ip, trusted) {
            return ip;
        }
    }
    client
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = ip.to_canonical();
    trusted.iter().any(|n| n.contains(&ip))
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:5678`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')?.split(']').next()?.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let peer = "203.0.113.9".parse().unwrap();
        assert_eq!(resolve(peer, &[], &headers("1.1.1.1")), peer);
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(resolve(peer, &trusted, &headers("1.1.1.1")), peer);
    }

    #[test]
    fn trusted_peer_yields_rightmost_untrusted() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer = "10.0.0.2".parse().unwrap();
        let got = resolve(peer, &trusted, &headers("6.6.6.6, 1.2.3.4, 10.0.0.7"));
        assert_eq!(got, "1.2.3.4".parse::<IpAddr>().unwrap());
        assert_eq!(resolve(peer, &trusted, &HeaderMap::new()), peer);
        let got = resolve(peer, &trusted, &headers("garbage, 10.0.0.9"));
        assert_eq!(got, "10.0.0.9".parse::<IpAddr>().unwrap());
    }
}
