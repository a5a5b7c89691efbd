//! The request's host (DESIGN §6): whether a Host header or a request target's authority
//! is a well-formed `host[:port]`, and whether the two name the same origin.
//!
//! Called by the request check before anything is routed or forwarded, so routing,
//! X-Forwarded-Host and the Host the backend receives can never disagree. Pure byte
//! logic: it never allocates.

/// A well-formed authority split into its host and its port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPort<'a> {
    /// The host: a registered name, an IPv4 address or a bracketed IPv6 literal.
    pub host: &'a [u8],
    /// The port, when one is given.
    pub port: Option<u16>,
}

/// Splits `bytes` as `host[:port]` or `[v6]:port` (RFC 3986 §3.2.2 without userinfo),
/// or `None` when it is not one: empty, a userinfo (`a@b`), a path or query (`a/b?c`),
/// spaces, an empty host (`:80`) or a port that is empty or not a number up to 65535.
pub fn split(bytes: &[u8]) -> Option<HostPort<'_>> {
    let (host, rest) = if bytes.first() == Some(&b'[') {
        let close = memchr::memchr(b']', bytes)?;
        let inner = &bytes[1..close];
        let literal = !inner.is_empty()
            && inner
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !literal {
            return None;
        }
        (&bytes[..=close], &bytes[close + 1..])
    } else {
        let end = reg_name_len(bytes)?;
        (&bytes[..end], &bytes[end..])
    };
    if host.is_empty() {
        return None;
    }
    let port = match rest {
        [] => None,
        [b':', digits @ ..] => Some(parse_port(digits)?),
        _ => return None,
    };
    Some(HostPort { host, port })
}

/// The length of the `reg-name` (or IPv4 address, which it includes) at the start of
/// `bytes`, up to a `:` or the end: unreserved characters, percent-encoded octets and
/// sub-delimiters; `None` if another byte comes first. One pass, one table look-up a
/// byte: every request has a Host to check.
fn reg_name_len(bytes: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match REG_NAME[b as usize] {
            Class::Plain => i += 1,
            Class::Percent => {
                let hex = bytes.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                i += 3;
            }
            Class::Colon => return Some(i),
            Class::Invalid => return None,
        }
    }
    Some(i)
}

/// What a byte may be in a `reg-name`.
#[derive(Clone, Copy)]
enum Class {
    /// Unreserved or a sub-delimiter.
    Plain,
    /// Starts a percent-encoded octet.
    Percent,
    /// Ends the host: a port follows.
    Colon,
    /// Not allowed.
    Invalid,
}

/// [`Class`] of every byte.
static REG_NAME: [Class; 256] = {
    let mut t = [Class::Invalid; 256];
    let plain = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=";
    let mut i = 0;
    while i < plain.len() {
        t[plain[i] as usize] = Class::Plain;
        i += 1;
    }
    t[b'%' as usize] = Class::Percent;
    t[b':' as usize] = Class::Colon;
    t
};

fn parse_port(digits: &[u8]) -> Option<u16> {
    if digits.is_empty() || digits.len() > 5 {
        return None;
    }
    let mut n = 0u32;
    for &d in digits {
        let v = d.wrapping_sub(b'0');
        if v > 9 {
            return None;
        }
        n = n * 10 + u32::from(v);
    }
    u16::try_from(n).ok()
}

/// Whether a Host header and a request target's authority name the same origin: the
/// host names are equal in any case, and so are the ports, an absent port standing for
/// the scheme's default (`example.com` and `example.com:80` agree over http, not over
/// https).
pub fn agree(a: HostPort<'_>, b: HostPort<'_>, default_port: u16) -> bool {
    a.host.eq_ignore_ascii_case(b.host)
        && a.port.unwrap_or(default_port) == b.port.unwrap_or(default_port)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_authorities_split_into_host_and_port() {
        for (text, host, port) in [
            ("example.com", "example.com", None),
            ("Example.COM:8080", "Example.COM", Some(8080)),
            ("127.0.0.1:80", "127.0.0.1", Some(80)),
            ("[::1]", "[::1]", None),
            ("[2001:db8::7]:443", "[2001:db8::7]", Some(443)),
            ("a_b-c~d.%41", "a_b-c~d.%41", None),
            ("x:65535", "x", Some(65535)),
        ] {
            let hp = split(text.as_bytes()).unwrap();
            assert_eq!((hp.host, hp.port), (host.as_bytes(), port), "{text}");
        }
    }

    #[test]
    fn malformed_authorities_are_refused() {
        for text in [
            "",
            "a@b",
            "a/b?c",
            "a b",
            ":80",
            "a:",
            "a:80:80",
            "a:65536",
            "a:8x",
            "[::1",
            "[]",
            "[::1]x",
            "[zz::1]",
            "a%4",
            "a%zz",
            "a#b",
            "a\"b",
            "[::1]:",
            "user@[::1]",
        ] {
            assert_eq!(split(text.as_bytes()), None, "{text:?}");
        }
    }

    #[test]
    fn hosts_agree_in_any_case_with_the_default_port_implied() {
        fn hp(s: &str) -> HostPort<'_> {
            split(s.as_bytes()).unwrap()
        }
        assert!(agree(hp("Example.com"), hp("example.COM"), 80));
        assert!(agree(hp("example.com"), hp("example.com:80"), 80));
        assert!(!agree(hp("example.com"), hp("example.com:80"), 443));
        assert!(agree(hp("example.com:443"), hp("example.com"), 443));
        assert!(!agree(hp("example.com:8080"), hp("example.com"), 80));
        assert!(!agree(
            hp("public.example.com"),
            hp("admin.example.com"),
            80
        ));
    }
}
