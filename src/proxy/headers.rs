//! Header rewriting between client and backend (DESIGN §6): hop-by-hop headers are
//! dropped in both directions, X-Forwarded-For is appended, X-Forwarded-Proto and
//! X-Forwarded-Host are set (written with the request head, see [`Forwarded`]), Host
//! is kept.
//!
//! One pass over the header names finds which hop-by-hop headers are present at all, so
//! the common request (none) pays for a scan, not for a dozen failed removals.

use std::io::Write as _;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::upstream::hop::{Hop, hop_kind};
use crate::upstream::request::AddedHeaders;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// The hop-by-hop headers (and X-Forwarded-For) a request carries, found in one pass
/// over its names: a header that is absent is then never looked up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Present(u8);

impl Present {
    /// One pass over the names in `headers`.
    pub fn scan(headers: &HeaderMap) -> Present {
        let mut bits = 0;
        for name in headers.keys() {
            bits |= name_bit(name);
        }
        Present(bits)
    }

    /// Whether there is a Transfer-Encoding header.
    pub fn transfer_encoding(self) -> bool {
        self.0 & bit::TRANSFER_ENCODING != 0
    }

    /// Whether there is a TE header.
    pub fn te(self) -> bool {
        self.0 & bit::TE != 0
    }

    /// Whether there is an Upgrade header.
    pub fn upgrade(self) -> bool {
        self.0 & bit::UPGRADE != 0
    }

    /// Whether there is an X-Forwarded-For header.
    pub fn forwarded_for(self) -> bool {
        self.0 & bit::X_FORWARDED_FOR != 0
    }
}

/// Removes hop-by-hop headers and the headers `Connection` names, given what
/// [`Present::scan`] found in `headers`. With `keep_upgrade` (a WebSocket or other
/// upgrade being tunnelled) `Upgrade` and `Connection: upgrade` stay, as the upgrade
/// must reach the other side.
///
/// Allocation-free unless `Connection` names a non-standard header.
#[inline]
pub fn strip_hop_by_hop(headers: &mut HeaderMap, present: Present, keep_upgrade: bool) {
    let present = present.0 & !bit::X_FORWARDED_FOR;
    if present == 0 {
        return;
    }
    if present & bit::CONNECTION != 0 && !connection_is_plain(headers) {
        remove_connection_named(headers);
    }
    let fixed: [(u8, &HeaderName); 6] = [
        (bit::CONNECTION, &header::CONNECTION),
        (bit::TE, &header::TE),
        (bit::TRAILER, &header::TRAILER),
        (bit::TRANSFER_ENCODING, &header::TRANSFER_ENCODING),
        (bit::UPGRADE, &header::UPGRADE),
        (bit::KEEP_ALIVE, &KEEP_ALIVE),
    ];
    for (b, name) in fixed {
        let kept = keep_upgrade && (b == bit::CONNECTION || b == bit::UPGRADE);
        if present & b != 0 && !kept {
            headers.remove(name);
        }
    }
    if present & bit::PROXY != 0 {
        let proxied: Vec<HeaderName> = headers
            .keys()
            .filter(|n| n.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for n in proxied {
            headers.remove(&n);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Bits for the hop-by-hop names found in one pass.
mod bit {
    pub const CONNECTION: u8 = 1;
    pub const TE: u8 = 2;
    pub const TRAILER: u8 = 4;
    pub const TRANSFER_ENCODING: u8 = 8;
    pub const UPGRADE: u8 = 16;
    pub const KEEP_ALIVE: u8 = 32;
    pub const PROXY: u8 = 64;
    pub const X_FORWARDED_FOR: u8 = 128;
}

fn name_bit(name: &HeaderName) -> u8 {
    if name.as_str().as_bytes().first() == Some(&b'x') {
        return if *name == X_FORWARDED_FOR {
            bit::X_FORWARDED_FOR
        } else {
            0
        };
    }
    hop_bit(name)
}

fn hop_bit(name: &HeaderName) -> u8 {
    match hop_kind(name.as_str().as_bytes()) {
        Hop::No => 0,
        Hop::Connection => bit::CONNECTION,
        Hop::Te => bit::TE,
        Hop::Trailer => bit::TRAILER,
        Hop::TransferEncoding => bit::TRANSFER_ENCODING,
        Hop::Upgrade => bit::UPGRADE,
        Hop::KeepAlive => bit::KEEP_ALIVE,
        Hop::Proxy => bit::PROXY,
    }
}

/// `Connection: keep-alive` or `close` alone (what most peers send) names no other
/// header, so there is nothing to look up.
fn connection_is_plain(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::CONNECTION).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => {
            let v = v.as_bytes();
            v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
        }
        _ => false,
    }
}

/// Removes the headers `Connection` lists (RFC 9110 §7.6.1). Tokens that are
/// themselves hop-by-hop names, or `close`, need no lookup; `Host` is never removed
/// (an HTTP/1.1 request must carry it, DESIGN §6).
fn remove_connection_named(headers: &mut HeaderMap) {
    const MAX_NAMED: usize = 8;
    let mut named: [Option<HeaderName>; MAX_NAMED] = Default::default();
    let mut n = 0;
    let tokens = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(str::trim);
    for t in tokens {
        // Hop-by-hop names go anyway; `upgrade` stays when tunnelling.
        let standard =
            t.is_empty() || t.eq_ignore_ascii_case("close") || hop_kind(t.as_bytes()) != Hop::No;
        if standard || t.eq_ignore_ascii_case("host") || n == MAX_NAMED {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(t.as_bytes()) {
            named[n] = Some(name);
            n += 1;
        }
    }
    for name in named.iter().flatten() {
        headers.remove(name);
    }
}

/// The forwarding headers of a request bound for a backend (DESIGN §6): written with
/// the request head in place of any the client sent, so they cost no header-map
/// insertions.
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// X-Forwarded-For: the client appended to the incoming list (several lines folded
    /// into one).
    pub for_: ForwardedFor,
    /// X-Forwarded-Proto.
    pub proto: &'static str,
    /// X-Forwarded-Host: the request's authority or Host, if any.
    pub host: Option<HeaderValue>,
}

impl Forwarded {
    /// The forwarding headers for a request with `headers` (holding what `present`
    /// says) from `client`.
    #[inline]
    pub fn new(
        headers: &HeaderMap,
        present: Present,
        client: IpAddr,
        tls: bool,
        host: Option<HeaderValue>,
    ) -> Forwarded {
        Forwarded {
            for_: ForwardedFor::new(headers, present, client),
            proto: if tls { "https" } else { "http" },
            host,
        }
    }
}

impl AddedHeaders for Forwarded {
    #[inline]
    fn replaces(name: &HeaderName) -> bool {
        *name == X_FORWARDED_FOR || *name == X_FORWARDED_PROTO || *name == X_FORWARDED_HOST
    }

    fn lines(&self) -> impl Iterator<Item = (&'static str, &[u8])> {
        [
            Some(("x-forwarded-for", self.for_.as_bytes())),
            Some(("x-forwarded-proto", self.proto.as_bytes())),
            self.host
                .as_ref()
                .map(|h| ("x-forwarded-host", h.as_bytes())),
        ]
        .into_iter()
        .flatten()
    }
}

/// An X-Forwarded-For value.
#[derive(Debug, Clone)]
pub enum ForwardedFor {
    /// The client alone (the request came without one): its address as text, inline.
    Client(IpText),
    /// `incoming, client`.
    Chain(Vec<u8>),
}

impl ForwardedFor {
    /// `incoming, client`, or the client alone; the headers are looked at only if
    /// `present` says the request has an X-Forwarded-For.
    fn new(headers: &HeaderMap, present: Present, client: IpAddr) -> ForwardedFor {
        let ip = IpText::new(client);
        if !present.forwarded_for() {
            return ForwardedFor::Client(ip);
        }
        let existing = headers.get_all(&X_FORWARDED_FOR);
        let total: usize = existing.iter().map(|v| v.len() + 2).sum();
        if total == 0 {
            return ForwardedFor::Client(ip);
        }
        let mut buf = Vec::with_capacity(total + ip.len);
        for v in existing.iter() {
            buf.extend_from_slice(v.as_bytes());
            buf.extend_from_slice(b", ");
        }
        buf.extend_from_slice(ip.as_ref());
        ForwardedFor::Chain(buf)
    }

    /// The value.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            ForwardedFor::Client(ip) => ip.as_ref(),
            ForwardedFor::Chain(chain) => chain,
        }
    }
}

/// An IP address as text, owning its bytes inline.
#[derive(Clone)]
pub struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl IpText {
    /// `ip` as text. IPv4 (the common case) is written digit by digit: `core::fmt`
    /// costs about a thousand instructions per address.
    pub fn new(ip: IpAddr) -> IpText {
        let mut buf = [0u8; 48];
        let len = match ip {
            IpAddr::V4(v4) => {
                let mut n = 0;
                for (k, octet) in v4.octets().into_iter().enumerate() {
                    if k > 0 {
                        buf[n] = b'.';
                        n += 1;
                    }
                    if octet >= 100 {
                        buf[n] = b'0' + octet / 100;
                        n += 1;
                    }
                    if octet >= 10 {
                        buf[n] = b'0' + (octet / 10) % 10;
                        n += 1;
                    }
                    buf[n] = b'0' + octet % 10;
                    n += 1;
                }
                n
            }
            IpAddr::V6(_) => {
                let mut cursor = std::io::Cursor::new(&mut buf[..]);
                let _ = write!(cursor, "{ip}");
                cursor.position() as usize
            }
        };
        IpText { buf, len }
    }
}

impl AsRef<[u8]> for IpText {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::fmt::Debug for IpText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_ref()))
    }
}

/// Whether `TE` lists `trailers` (RFC 9110 §10.1.4), which an HTTP/2 backend is told
/// (DESIGN §6: gRPC needs it).
pub fn te_has_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .any(|t| {
            let coding = t.split(';').next().unwrap_or(t).trim();
            coding.eq_ignore_ascii_case("trailers")
        })
}

/// The X-Forwarded-For header name.
pub fn x_forwarded_for() -> &'static HeaderName {
    &X_FORWARDED_FOR
}

/// Whether the request asks for a protocol upgrade that may be tunnelled: `Upgrade`
/// with `Connection: upgrade`, and every protocol `Upgrade` lists (its name, without a
/// `/version`) is one of `allowed` (lower case). Any other upgrade request goes on as
/// an ordinary request, its `Upgrade` removed (DESIGN §6).
pub fn wants_upgrade(headers: &HeaderMap, present: Present, allowed: &[String]) -> bool {
    if !present.upgrade() {
        return false;
    }
    let asked = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let mut protocols = headers
        .get_all(header::UPGRADE)
        .iter()
        .map(|v| v.to_str().ok())
        .flat_map(|s| s.unwrap_or("\0").split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .peekable();
    let listed = protocols.peek().is_some();
    asked
        && listed
        && protocols.all(|p| {
            let name = p.split('/').next().unwrap_or(p).trim();
            allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
        })
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
        let present = Present::scan(&h);
        strip_hop_by_hop(&mut h, present, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn classifies_hop_by_hop_names_in_any_case() {
        for (name, kind) in [
            (&b"Connection"[..], Hop::Connection),
            (b"TRANSFER-ENCODING", Hop::TransferEncoding),
            (b"te", Hop::Te),
            (b"Trailer", Hop::Trailer),
            (b"upgrade", Hop::Upgrade),
            (b"Keep-Alive", Hop::KeepAlive),
            (b"Proxy-Authorization", Hop::Proxy),
            (b"proxy-", Hop::No),
            (b"x-proxy-thing", Hop::No),
            (b"content-length", Hop::No),
            (b"tea", Hop::No),
        ] {
            assert_eq!(hop_kind(name), kind, "{}", String::from_utf8_lossy(name));
        }
    }

    #[test]
    fn finds_trailers_in_te() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::TE, HeaderValue::from_static(v));
            te_has_trailers(&h)
        };
        assert!(with("trailers"));
        assert!(with("gzip, Trailers"));
        assert!(!with("gzip"));
        assert!(!with("trailersx"));
        assert!(!te_has_trailers(&HeaderMap::new()));
    }

    #[test]
    fn keeps_upgrade_when_tunnelling() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "Upgrade".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        let present = Present::scan(&h);
        let websocket = ["websocket".to_string()];
        assert!(wants_upgrade(&h, present, &websocket));
        assert!(!wants_upgrade(&h, Present::default(), &websocket));
        assert!(!wants_upgrade(&h, present, &[]));
        strip_hop_by_hop(&mut h, present, true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }

    #[test]
    fn only_listed_upgrade_protocols_are_tunnelled() {
        let allowed = ["websocket".to_string(), "foo".to_string()];
        for (upgrade, connection, want) in [
            ("websocket", "Upgrade", true),
            ("WebSocket", "keep-alive, upgrade", true),
            ("foo/2, websocket", "upgrade", true),
            ("h2c", "Upgrade, HTTP2-Settings", false),
            ("websocket, h2c", "upgrade", false),
            ("bar", "upgrade", false),
            ("websocket", "keep-alive", false),
            ("", "upgrade", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::UPGRADE, upgrade.parse().unwrap());
            h.insert(header::CONNECTION, connection.parse().unwrap());
            let present = Present::scan(&h);
            assert_eq!(
                wants_upgrade(&h, present, &allowed),
                want,
                "{upgrade} / {connection}"
            );
        }
    }

    #[test]
    fn writes_ip_addresses() {
        for text in [
            "0.0.0.0",
            "1.2.3.4",
            "10.20.30.40",
            "192.168.100.255",
            "::1",
            "2001:db8::7",
            "::ffff:1.2.3.4",
        ] {
            assert_eq!(IpText::new(text.parse().unwrap()).as_ref(), text.as_bytes());
        }
    }

    #[test]
    fn appends_forwarded_for() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "1.1.1.1".parse().unwrap());
        h.append("x-forwarded-for", "2.2.2.2".parse().unwrap());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let present = Present::scan(&h);
        assert!(present.forwarded_for());
        let host = Some(HeaderValue::from_static("a.test"));
        let f = Forwarded::new(&h, present, ip, false, host);
        let lines: Vec<(&str, &[u8])> = f.lines().collect();
        assert_eq!(
            lines,
            [
                ("x-forwarded-for", &b"1.1.1.1, 2.2.2.2, 10.0.0.1"[..]),
                ("x-forwarded-proto", b"http"),
                ("x-forwarded-host", b"a.test"),
            ]
        );
        // Without an incoming list: the client's address alone.
        let none = HeaderMap::new();
        assert!(!Present::scan(&none).forwarded_for());
        let f = Forwarded::new(&none, Present::default(), ip, true, None);
        assert_eq!(f.for_.as_bytes(), b"10.0.0.1");
        assert_eq!(f.proto, "https");
        assert_eq!(f.lines().count(), 2);
        let f = Forwarded::new(
            &none,
            Present::default(),
            "2001:db8::1".parse().unwrap(),
            false,
            None,
        );
        assert_eq!(f.for_.as_bytes(), b"2001:db8::1");
        assert!(Forwarded::replaces(&HeaderName::from_static(
            "x-forwarded-proto"
        )));
        assert!(!Forwarded::replaces(&header::HOST));
    }
}
