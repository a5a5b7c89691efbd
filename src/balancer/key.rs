//! Sticky keys: what a `hash` pool hashes (the config's [`HashKey`]), read from the
//! request in place.
//!
//! `client-ip`, `header:NAME`, `cookie:NAME`, `query:NAME` or `path`. Nothing is copied
//! or decoded: cookies and query parameters are found by scanning the raw header value
//! and query string, and the raw bytes are hashed (xxh3). A query value is hashed as
//! sent, without percent-decoding, so `a%20b` and `a+b` are different keys. An empty
//! value counts as no key.

use std::net::IpAddr;

use http::{HeaderMap, header};
use xxhash_rust::xxh3::xxh3_64;

use super::PickContext;
use crate::config::HashKey;

/// The hash of `key` as `ctx`'s request carries it, or `None` when the request has no
/// such key.
#[inline]
pub(crate) fn hash_of(key: &HashKey, ctx: &PickContext<'_>) -> Option<u64> {
    let bytes: &[u8] = match key {
        HashKey::ClientIp => return Some(hash_ip(ctx.client_ip)),
        HashKey::Header(n) => ctx.headers.get(n)?.as_bytes(),
        HashKey::Cookie(n) => find_cookie(ctx.headers, n)?,
        HashKey::Query(n) => find_query(ctx.uri.query()?, n)?,
        HashKey::Path => ctx.uri.path().as_bytes(),
    };
    (!bytes.is_empty()).then(|| xxh3_64(bytes))
}

/// The hash of an IP address (IPv4-mapped IPv6 hashes as the IPv4 address).
#[inline]
pub fn hash_ip(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => xxh3_64(&v4.octets()),
        IpAddr::V6(v6) => xxh3_64(&v6.octets()),
    }
}

/// The value of cookie `name` across all Cookie headers, without allocating.
pub(crate) fn find_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .find_map(|v| cookie_in(v.as_bytes(), name.as_bytes()))
}

/// Finds `name=value` in one `a=1; b=2` list: jumps from `;` to `;`.
fn cookie_in<'a>(mut list: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    loop {
        let end = memchr::memchr(b';', list).unwrap_or(list.len());
        let pair = trim(&list[..end]);
        if pair.len() > name.len() && pair.starts_with(name) {
            let rest = trim(&pair[name.len()..]);
            if let Some(value) = rest.strip_prefix(b"=") {
                return Some(unquote(trim(value)));
            }
        }
        if end >= list.len() {
            return None;
        }
        list = &list[end + 1..];
    }
}

/// The raw value of query parameter `name`.
fn find_query<'a>(query: &'a str, name: &str) -> Option<&'a [u8]> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v.as_bytes())
    })
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

fn unquote(b: &[u8]) -> &[u8] {
    match b {
        [b'"', inner @ .., b'"'] => inner,
        _ => b,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ctx<'a>(h: &'a HeaderMap, uri: &'a http::Uri) -> PickContext<'a> {
        crate::balancer::testing::ctx(h, uri, 0, 0)
    }

    #[test]
    fn cookie_found_across_headers_and_not_by_prefix() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "XJSESSIONID=nope; a=1".parse().unwrap());
        h.append(
            header::COOKIE,
            "b=2;  JSESSIONID=\"abc\" ; c=".parse().unwrap(),
        );
        assert_eq!(find_cookie(&h, "JSESSIONID"), Some(&b"abc"[..]));
        assert_eq!(find_cookie(&h, "a"), Some(&b"1"[..]));
        assert_eq!(find_cookie(&h, "missing"), None);
        let uri: http::Uri = "/".parse().unwrap();
        let c = ctx(&h, &uri);
        assert_eq!(
            hash_of(&HashKey::Cookie("c".into()), &c),
            None,
            "empty value is no key"
        );
        assert!(hash_of(&HashKey::Cookie("JSESSIONID".into()), &c).is_some());
    }

    #[test]
    fn query_header_path_and_ip_keys() {
        let mut h = HeaderMap::new();
        h.insert("x-user", "42".parse().unwrap());
        let uri: http::Uri = "/a/b?x=1&user=7&flag".parse().unwrap();
        let c = ctx(&h, &uri);
        assert_eq!(find_query("x=1&user=7&flag", "user"), Some(&b"7"[..]));
        assert_eq!(find_query("x=1&user=7&flag", "flag"), Some(&b""[..]));
        assert_eq!(hash_of(&HashKey::Query("flag".into()), &c), None);
        assert_eq!(hash_of(&HashKey::Query("nope".into()), &c), None);
        let u = hash_of(&HashKey::Query("user".into()), &c);
        assert_eq!(u, Some(xxh3_64(b"7")));
        let hk = HashKey::Header(http::HeaderName::from_static("x-user"));
        assert_eq!(hash_of(&hk, &c), Some(xxh3_64(b"42")));
        assert_eq!(hash_of(&HashKey::Path, &c), Some(xxh3_64(b"/a/b")));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(hash_ip(mapped), hash_of(&HashKey::ClientIp, &c).unwrap());
    }
}
