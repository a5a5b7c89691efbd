//! Which header names are hop-by-hop (RFC 9110 §7.6.1): `Connection`, `TE`,
//! `Trailer`, `Transfer-Encoding`, `Upgrade`, `Keep-Alive` and `Proxy-*`.
//!
//! Both directions need it: the backend response parser leaves these names out as it
//! meets them, and the request logic strips them from what a client sent. It lives
//! here, at the bottom of the stack, so the request logic imports it downward.

/// What a header name is to a proxy: end to end, or one of the hop-by-hop kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// End to end: forwarded.
    No,
    /// `Connection`.
    Connection,
    /// `TE`.
    Te,
    /// `Trailer`.
    Trailer,
    /// `Transfer-Encoding`.
    TransferEncoding,
    /// `Upgrade`.
    Upgrade,
    /// `Keep-Alive`.
    KeepAlive,
    /// `Proxy-*`.
    Proxy,
}

/// Classifies a header name, in any case (the request side sees hyper's lowercase
/// names, the response side the backend's bytes as sent).
pub fn hop_kind(name: &[u8]) -> Hop {
    match name.first() {
        Some(b'c' | b'C' | b't' | b'T' | b'u' | b'U' | b'k' | b'K' | b'p' | b'P') => {}
        _ => return Hop::No,
    }
    let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
    if is("connection") {
        Hop::Connection
    } else if is("transfer-encoding") {
        Hop::TransferEncoding
    } else if is("upgrade") {
        Hop::Upgrade
    } else if is("keep-alive") {
        Hop::KeepAlive
    } else if is("te") {
        Hop::Te
    } else if is("trailer") {
        Hop::Trailer
    } else if name.len() > 6 && name[..6].eq_ignore_ascii_case(b"proxy-") {
        Hop::Proxy
    } else {
        Hop::No
    }
}
