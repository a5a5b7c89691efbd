//! The admin listener's guard against web pages: DNS rebinding and cross-site requests.
//!
//! Without a token (allowed on loopback) nothing but this stops a page in the operator's
//! browser from reaching the admin listener. Two checks, before any endpoint runs:
//!
//! - **Host** (every request): a rebound name (`evil.example` resolving to 127.0.0.1)
//!   still carries that name in `Host`, so only the address the connection reached
//!   (with its port, or without one), `localhost` and `[admin] allowed_hosts` (any port)
//!   are answered. An HTTP/1.1 request without Host is malformed (RFC 9112 §3.2); an
//!   HTTP/1.0 one without it is accepted, since no browser sends such a request.
//! - **Origin** (mutating requests): a browser names the page that sent a request in
//!   `Origin`; a POST whose Origin is present must come from `http://` or `https://` +
//!   the request's Host, which is what the dashboard's own buttons send. A request
//!   without Origin does not come from a page's script (curl, scripts) and is let through.
//!
//! Pure functions of the request head and the connection's local address.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, Method, StatusCode, Version, header};

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// HTTP/1.1 or later without a Host, or with more than one.
    #[error("a single Host header is required")]
    BadHostHeader,
    /// A Host the admin listener does not answer for (DNS-rebinding guard).
    #[error("this admin listener does not answer for that host; add it to [admin] allowed_hosts")]
    UnknownHost,
    /// A mutating request sent by a page of another origin (CSRF guard).
    #[error("cross-origin request refused")]
    CrossOrigin,
}

impl Refusal {
    /// The status to answer with.
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::BadHostHeader => StatusCode::BAD_REQUEST,
            Refusal::UnknownHost => StatusCode::MISDIRECTED_REQUEST,
            Refusal::CrossOrigin => StatusCode::FORBIDDEN,
        }
    }
}

/// The parts of a request the guard looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// The method: only POSTs are checked for their Origin.
    pub method: &'a Method,
    /// The HTTP version: HTTP/1.0 may come without Host.
    pub version: Version,
    /// The authority of an absolute-form target, which overrides Host (RFC 9112 §3.2.2).
    pub authority: Option<&'a str>,
    /// The header fields.
    pub headers: &'a HeaderMap,
}

/// Checks one request that reached the admin listener at `local`. `allowed_hosts` are
/// lower case and without port.
pub fn check(
    head: RequestHead<'_>,
    local: SocketAddr,
    allowed_hosts: &[String],
) -> Result<(), Refusal> {
    let host = request_host(head)?;
    if let Some(h) = host {
        if !host_allowed(h, local, allowed_hosts) {
            return Err(Refusal::UnknownHost);
        }
    }
    if head.method == Method::POST {
        check_origin(head.headers, host)?;
    }
    Ok(())
}

/// The request's host: the absolute-form authority (which must then be allowed as well
/// as any Host sent beside it), else the one Host header; `None` only for HTTP/1.0
/// without either.
fn request_host<'a>(head: RequestHead<'a>) -> Result<Option<&'a str>, Refusal> {
    let mut hosts = head.headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(v), None) => Some(v.to_str().map_err(|_| Refusal::UnknownHost)?),
        (None, _) => None,
        (Some(_), Some(_)) => return Err(Refusal::BadHostHeader),
    };
    match (head.authority, host) {
        (Some(a), Some(h)) if !a.eq_ignore_ascii_case(h) => Err(Refusal::UnknownHost),
        (Some(a), _) => Ok(Some(a)),
        (None, Some(h)) => Ok(Some(h)),
        (None, None) if head.version == Version::HTTP_10 => Ok(None),
        (None, None) => Err(Refusal::BadHostHeader),
    }
}

/// Whether `host` (`name`, `name:port`, `ip`, `ip:port`, `[v6]`, `[v6]:port`) names
/// this listener: the connection's local address (port absent or equal), `localhost`
/// or an allowed name (any port).
fn host_allowed(host: &str, local: SocketAddr, allowed_hosts: &[String]) -> bool {
    let Some((name, port)) = split_host(host) else {
        return false;
    };
    if let Ok(ip) = name.parse::<IpAddr>() {
        if ip.to_canonical() == local.ip().to_canonical() && port.is_none_or(|p| p == local.port())
        {
            return true;
        }
    }
    name.eq_ignore_ascii_case("localhost")
        || allowed_hosts.iter().any(|a| {
            let a = a
                .strip_prefix('[')
                .and_then(|a| a.strip_suffix(']'))
                .unwrap_or(a);
            a.eq_ignore_ascii_case(name)
        })
}

/// Splits a Host value into its name (an IPv6 address without brackets) and its port;
/// `None` when it is malformed.
fn split_host(host: &str) -> Option<(&str, Option<u16>)> {
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => {
            let (v6, after) = rest.split_once(']')?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':')?),
            };
            (v6, port)
        }
        None => match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        },
    };
    if name.is_empty() || (name.contains(':') && !host.starts_with('[')) {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    Some((name, port))
}

/// A present Origin must be `http://` or `https://` + the request's host.
fn check_origin(headers: &HeaderMap, host: Option<&str>) -> Result<(), Refusal> {
    let mut origins = headers.get_all(header::ORIGIN).iter();
    let origin = match (origins.next(), origins.next()) {
        (None, _) => return Ok(()),
        (Some(o), None) => o.to_str().map_err(|_| Refusal::CrossOrigin)?,
        (Some(_), Some(_)) => return Err(Refusal::CrossOrigin),
    };
    let Some(host) = host else {
        return Err(Refusal::CrossOrigin);
    };
    let same = ["http://", "https://"].iter().any(|scheme| {
        origin.len() == scheme.len() + host.len()
            && origin[..scheme.len()].eq_ignore_ascii_case(scheme)
            && origin[scheme.len()..].eq_ignore_ascii_case(host)
    });
    if same {
        Ok(())
    } else {
        Err(Refusal::CrossOrigin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head<'a>(method: &'a Method, version: Version, headers: &'a HeaderMap) -> RequestHead<'a> {
        RequestHead {
            method,
            version,
            authority: None,
            headers,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn run(method: Method, pairs: &[(&'static str, &str)], local: &str) -> Result<(), Refusal> {
        let h = headers(pairs);
        let allowed = ["lb1.internal".to_string(), "[fd00::1]".to_string()];
        check(
            head(&method, Version::HTTP_11, &h),
            local.parse().unwrap(),
            &allowed,
        )
    }

    #[test]
    fn host_must_name_the_listener() {
        let local = "127.0.0.1:9100";
        for ok in [
            "127.0.0.1:9100",
            "127.0.0.1",
            "localhost",
            "LocalHost:9100",
            "lb1.internal",
            "LB1.Internal:8443",
            "[fd00::1]:9100",
        ] {
            assert_eq!(run(Method::GET, &[("host", ok)], local), Ok(()), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9100",
            "127.0.0.1:9101",
            "127.0.0.2:9100",
            "localhost.evil.example",
            "127.0.0.1:9100:1",
            "127.0.0.1:x",
            "",
            "[::1",
        ] {
            assert_eq!(
                run(Method::GET, &[("host", bad)], local),
                Err(Refusal::UnknownHost),
                "{bad}"
            );
        }
    }

    #[test]
    fn wildcard_bind_answers_for_the_address_the_connection_reached() {
        assert_eq!(
            run(Method::GET, &[("host", "[::1]:9100")], "[::1]:9100"),
            Ok(())
        );
        let mapped = "[::ffff:192.0.2.7]:9100";
        assert_eq!(
            run(Method::GET, &[("host", "192.0.2.7:9100")], mapped),
            Ok(())
        );
        assert_eq!(
            run(Method::GET, &[("host", "192.0.2.8")], mapped),
            Err(Refusal::UnknownHost)
        );
    }

    #[test]
    fn missing_or_repeated_host() {
        let local = "127.0.0.1:9100".parse().unwrap();
        let none = HeaderMap::new();
        assert_eq!(
            check(head(&Method::GET, Version::HTTP_11, &none), local, &[]),
            Err(Refusal::BadHostHeader)
        );
        assert_eq!(
            check(head(&Method::GET, Version::HTTP_10, &none), local, &[]),
            Ok(())
        );
        let origin = headers(&[("origin", "http://127.0.0.1:9100")]);
        assert_eq!(
            check(head(&Method::POST, Version::HTTP_10, &origin), local, &[]),
            Err(Refusal::CrossOrigin)
        );
        assert_eq!(
            run(
                Method::GET,
                &[("host", "127.0.0.1"), ("host", "127.0.0.1")],
                "127.0.0.1:9100"
            ),
            Err(Refusal::BadHostHeader)
        );
    }

    #[test]
    fn absolute_form_authority_is_checked_too() {
        let h = headers(&[("host", "127.0.0.1:9100")]);
        let mut r = head(&Method::GET, Version::HTTP_11, &h);
        let local = "127.0.0.1:9100".parse().unwrap();
        r.authority = Some("evil.example");
        assert_eq!(check(r, local, &[]), Err(Refusal::UnknownHost));
        r.authority = Some("127.0.0.1:9100");
        assert_eq!(check(r, local, &[]), Ok(()));
    }

    #[test]
    fn post_origin_must_be_the_host() {
        let local = "127.0.0.1:9100";
        let host = ("host", "127.0.0.1:9100");
        assert_eq!(
            run(Method::POST, &[host], local),
            Ok(()),
            "no Origin: not a page"
        );
        for ok in [
            "http://127.0.0.1:9100",
            "https://127.0.0.1:9100",
            "HTTP://127.0.0.1:9100",
        ] {
            assert_eq!(
                run(Method::POST, &[host, ("origin", ok)], local),
                Ok(()),
                "{ok}"
            );
        }
        for bad in [
            "http://evil.example",
            "null",
            "http://127.0.0.1:9101",
            "http://127.0.0.1",
            "ftp://127.0.0.1:9100",
            "http://127.0.0.1:9100/",
        ] {
            assert_eq!(
                run(Method::POST, &[host, ("origin", bad)], local),
                Err(Refusal::CrossOrigin),
                "{bad}"
            );
        }
        assert_eq!(
            run(
                Method::GET,
                &[host, ("origin", "http://evil.example")],
                local
            ),
            Ok(()),
            "a GET changes nothing; its answer is not readable cross-origin"
        );
    }
}
