//! The PROXY protocol, versions 1 (text) and 2 (binary), as sent by L4 balancers
//! (HAProxy, AWS NLB, …) ahead of the client's bytes, so that the original client
//! address survives the hop.
//!
//! The header is parsed from peeked bytes and then consumed exactly, so not one byte of
//! the client's request is lost or misread. A connection without a valid header is
//! refused: on a listener that expects PROXY, anything else may be an attempt to spoof
//! the source.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, CRLF included (spec §2.1).
const V1_MAX: usize = 107;
/// Largest v2 header we accept (16-byte fixed part + addresses + TLVs).
const V2_MAX: usize = 16 + 536;

/// Why a PROXY header was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProxyHeaderError {
    /// Not a PROXY header at all.
    #[error("connection did not start with a PROXY protocol header")]
    Missing,
    /// A PROXY header that does not parse.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    /// The client closed or stalled before the header was complete.
    #[error("incomplete PROXY protocol header")]
    Incomplete,
}

/// The outcome of parsing a buffer prefix.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Partial,
    /// A complete header of this many bytes; the source address, if it names one
    /// (`UNKNOWN` and `LOCAL` do not).
    Done(usize, Option<SocketAddr>),
}

/// Parses a PROXY header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    if buf.len() < 12 {
        let v1 = b"PROXY ";
        let n = buf.len().min(v1.len());
        if buf[..n] == v1[..n] || buf[..] == V2_SIGNATURE[..buf.len()] {
            return Ok(Parsed::Partial);
        }
        return Err(ProxyHeaderError::Missing);
    }
    if buf[..12] == V2_SIGNATURE {
        return parse_v2(buf);
    }
    if buf.starts_with(b"PROXY ") {
        return parse_v1(buf);
    }
    Err(ProxyHeaderError::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(ProxyHeaderError::Malformed(
                "v1 header longer than 107 bytes",
            ))
        } else {
            Ok(Parsed::Partial)
        };
    };
    if end + 2 > V1_MAX {
        return Err(ProxyHeaderError::Malformed(
            "v1 header longer than 107 bytes",
        ));
    }
    let line = std::str::from_utf8(&buf[6..end])
        .map_err(|_| ProxyHeaderError::Malformed("v1 header is not text"))?;
    let parts: Vec<&str> = line.split(' ').collect();
    let bad = ProxyHeaderError::Malformed("v1 header fields");
    match parts.first() {
        Some(&"UNKNOWN") => Ok(Parsed::Done(end + 2, None)),
        Some(&proto @ ("TCP4" | "TCP6")) if parts.len() == 5 => {
            let ip: IpAddr = parts[1].parse().map_err(|_| bad.clone())?;
            let _dst: IpAddr = parts[2].parse().map_err(|_| bad.clone())?;
            let port: u16 = parts[3].parse().map_err(|_| bad.clone())?;
            let _dport: u16 = parts[4].parse().map_err(|_| bad.clone())?;
            if (proto == "TCP4") != ip.is_ipv4() {
                return Err(ProxyHeaderError::Malformed("v1 address family mismatch"));
            }
            Ok(Parsed::Done(end + 2, Some(SocketAddr::new(ip, port))))
        }
        _ => Err(bad),
    }
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    if buf.len() < 16 {
        return Ok(Parsed::Partial);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(ProxyHeaderError::Malformed("v2 version"));
    }
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let total = 16 + len;
    if total > V2_MAX {
        return Err(ProxyHeaderError::Malformed("v2 header too long"));
    }
    if buf.len() < total {
        return Ok(Parsed::Partial);
    }
    let body = &buf[16..total];
    match ver_cmd & 0x0f {
        0 => return Ok(Parsed::Done(total, None)), // LOCAL: health check from the L4 balancer
        1 => {}
        _ => return Err(ProxyHeaderError::Malformed("v2 command")),
    }
    let src = match buf[13] >> 4 {
        1 if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([body[8], body[9]]),
            ))
        }
        2 if body.len() >= 36 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&body[..16]);
            let port = u16::from_be_bytes([body[32], body[33]]);
            Some(SocketAddr::new(Ipv6Addr::from(o).into(), port))
        }
        0 => None,
        1 | 2 => return Err(ProxyHeaderError::Malformed("v2 address block too short")),
        _ => None, // AF_UNIX: no IP to take
    };
    Ok(Parsed::Done(total, src))
}

/// Reads and consumes the PROXY header from a fresh connection within `timeout`;
/// returns the client's source address when the header carries one.
pub async fn read_header(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let work = async {
        let mut buf = [0u8; V2_MAX];
        let mut seen = 0;
        loop {
            let n = stream
                .peek(&mut buf)
                .await
                .map_err(|_| ProxyHeaderError::Incomplete)?;
            if n == 0 || (n == seen && n == buf.len()) {
                return Err(ProxyHeaderError::Incomplete);
            }
            if let Parsed::Done(len, src) = parse(&buf[..n])? {
                let mut sink = [0u8; V2_MAX];
                stream
                    .read_exact(&mut sink[..len])
                    .await
                    .map_err(|_| ProxyHeaderError::Incomplete)?;
                return Ok(src);
            }
            if n == seen {
                // peek returns at once while unread data waits, so a header that
                // arrives in pieces is polled gently until it completes or times out.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen = n;
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ProxyHeaderError::Incomplete)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_tcp4_and_unknown() {
        let h = b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\nGET /";
        assert_eq!(
            parse(h),
            Ok(Parsed::Done(
                45,
                Some("192.0.2.1:56324".parse().unwrap_or_else(|_| unreachable!()))
            ))
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(Parsed::Done(15, None)));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Ok(Parsed::Partial));
        assert!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 x 1\r\n").is_err());
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyHeaderError::Missing));
    }

    #[test]
    fn v2_tcp6_and_local() {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x21, 0, 36]);
        let src: Ipv6Addr = "2001:db8::7".parse().unwrap_or(Ipv6Addr::LOCALHOST);
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        h.extend_from_slice(&[0x1f, 0x90, 0, 80]);
        assert_eq!(
            parse(&h),
            Ok(Parsed::Done(52, Some(SocketAddr::new(src.into(), 8080))))
        );
        assert_eq!(parse(&h[..20]), Ok(Parsed::Partial));
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local), Ok(Parsed::Done(16, None)));
    }
}
