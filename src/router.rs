//! Host / path / header routing: which pool serves a request.
//!
//! Built once per snapshot from a listener's routes; `route` reads the request head and
//! returns a pool index, first match wins, else the listener's default pool. It
//! allocates nothing: hosts were lower-cased at load time and are compared
//! case-insensitively against the request's Host.

use http::{HeaderMap, HeaderName, Uri, header};

use crate::config::{HostMatch, RouteConfig};

/// One compiled route.
#[derive(Debug, Clone)]
struct Route {
    host: Option<HostMatch>,
    path_prefix: Option<String>,
    header: Option<(HeaderName, String)>,
    pool: usize,
}

/// A listener's routing table.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Route>,
    default_pool: usize,
}

impl Router {
    /// Compiles routes; `pool_index` maps a pool name to its index in the snapshot
    /// (validation guarantees every name exists; an unknown one falls back to the
    /// default pool rather than panicking).
    pub fn new(
        routes: &[RouteConfig],
        default_pool: usize,
        pool_index: impl Fn(&str) -> Option<usize>,
    ) -> Router {
        let routes = routes
            .iter()
            .map(|r| Route {
                host: r.host.clone(),
                path_prefix: r.path_prefix.clone(),
                header: r.header.as_ref().map(|h| (h.name.clone(), h.value.clone())),
                pool: pool_index(&r.pool).unwrap_or(default_pool),
            })
            .collect();
        Router {
            routes,
            default_pool,
        }
    }

    /// The pool index for a request.
    #[inline]
    pub fn route(&self, uri: &Uri, headers: &HeaderMap) -> usize {
        if self.routes.is_empty() {
            return self.default_pool;
        }
        let host = request_host(uri, headers);
        self.routes
            .iter()
            .find(|r| route_matches(r, host, uri.path(), headers))
            .map_or(self.default_pool, |r| r.pool)
    }
}

fn route_matches(r: &Route, host: Option<&str>, path: &str, headers: &HeaderMap) -> bool {
    if let Some(m) = &r.host {
        match host {
            Some(h) if host_matches(m, h) => {}
            _ => return false,
        }
    }
    if let Some(prefix) = &r.path_prefix {
        if !path_matches(prefix, path) {
            return false;
        }
    }
    if let Some((name, value)) = &r.header {
        if !headers
            .get_all(name)
            .iter()
            .any(|v| v.as_bytes() == value.as_bytes())
        {
            return false;
        }
    }
    true
}

/// The request's host without port: the URI authority (HTTP/2, absolute-form) or Host.
pub fn request_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    let raw = match uri.authority() {
        Some(a) => a.as_str(),
        None => headers.get(header::HOST)?.to_str().ok()?,
    };
    Some(strip_port(raw))
}

fn strip_port(h: &str) -> &str {
    if let Some(rest) = h.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match h.rfind(':') {
        Some(i) if h[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &h[..i],
        _ => h,
    }
}

fn host_matches(m: &HostMatch, host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    match m {
        HostMatch::Exact(e) => host.eq_ignore_ascii_case(e),
        HostMatch::Wildcard(suffix) => {
            host.len() > suffix.len()
                && host.is_char_boundary(host.len() - suffix.len())
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
    }
}

/// `/cart` matches `/cart`, `/cart/…` (and the query is not part of the path), not
/// `/cartoon`. A prefix ending in `/` matches anything below it.
fn path_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::HeaderMatch;

    fn router() -> Router {
        let routes = vec![
            RouteConfig {
                host: Some(HostMatch::Exact("shop.example.com".into())),
                path_prefix: Some("/cart".into()),
                header: None,
                pool: "cart".into(),
            },
            RouteConfig {
                host: None,
                path_prefix: None,
                header: Some(HeaderMatch {
                    name: HeaderName::from_static("x-tenant"),
                    value: "beta".into(),
                }),
                pool: "beta".into(),
            },
            RouteConfig {
                host: Some(HostMatch::Wildcard(".example.com".into())),
                path_prefix: None,
                header: None,
                pool: "wild".into(),
            },
        ];
        let names = ["web", "cart", "beta", "wild"];
        Router::new(&routes, 0, |n| names.iter().position(|x| *x == n))
    }

    fn route(host: &str, path: &str, extra: Option<(&'static str, &'static str)>) -> usize {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some((k, v)) = extra {
            h.insert(k, v.parse().unwrap());
        }
        router().route(&path.parse().unwrap(), &h)
    }

    #[test]
    fn path_prefix_respects_segments() {
        assert_eq!(route("shop.example.com", "/cart", None), 1);
        assert_eq!(route("SHOP.example.com:8080", "/cart/items?x=1", None), 1);
        assert_eq!(route("shop.example.com", "/cart?x=1", None), 1);
        assert_eq!(route("shop.example.com", "/cartoon", None), 3);
    }

    #[test]
    fn header_and_wildcard_routes() {
        assert_eq!(route("other.org", "/", Some(("x-tenant", "beta"))), 2);
        assert_eq!(route("a.b.example.com", "/", None), 3);
        assert_eq!(route("example.com", "/", None), 0);
        assert_eq!(route("other.org", "/", Some(("x-tenant", "gamma"))), 0);
    }

    #[test]
    fn strips_ports_and_ipv6() {
        assert_eq!(strip_port("a.com:80"), "a.com");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("a.com"), "a.com");
    }
}
