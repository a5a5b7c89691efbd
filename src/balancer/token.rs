//! The affinity cookie's token: which backend, since when, for which client, signed.
//!
//! `base64url(version 2 ‖ backend tag ‖ issued ‖ client id ‖ HMAC-SHA-256 tag)`, 57
//! bytes before encoding (DESIGN §4). The client id is random, given when a client is
//! first placed and kept when its token is re-issued: it is what the pinned-client
//! count of a backend counts. Tokens of version 1 (no client id, 49 bytes) are still
//! read, with client id 0, until they expire. The backend tag is a keyed hash of the backend's address (its identity
//! across reorderings and reloads), so the cookie names no address, and without the key
//! one cannot tell which backend a cookie points at or forge one for another backend.
//! Instances configured with the same secret derive the same key and read each other's
//! cookies. The MAC is checked in constant time (`ring::hmac::verify`); any failure
//! (length, encoding, version, MAC) is just "no valid token".

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;

const VERSION: u8 = 2;
const SIGNED: usize = 1 + 8 + 8 + 8;
const RAW: usize = SIGNED + 32;
/// Length of an encoded token: 57 bytes in unpadded base64url.
pub const ENCODED_LEN: usize = 76;

/// The version 1 token, read until the last ones expire: no client id.
const V1: u8 = 1;
const V1_SIGNED: usize = 1 + 8 + 8;
const V1_RAW: usize = V1_SIGNED + 32;
const V1_ENCODED_LEN: usize = 66;

/// A verified token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    /// The backend's keyed tag ([`AffinityKey::backend_tag`]).
    pub backend: u64,
    /// Unix seconds when it was issued.
    pub issued: u64,
    /// The client's random id ([`new_client_id`]); 0 in a version 1 token.
    pub client: u64,
}

thread_local! {
    /// This thread's client-id generator: a splitmix64 counter seeded once from the
    /// system's random source.
    static CLIENT_IDS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A fresh random client id, never 0. Ids come from a per-thread splitmix64 sequence
/// seeded from the system's random source, so a placement costs no system call; they
/// are not secrets (the MAC protects the token), only distinct.
pub fn new_client_id() -> u64 {
    CLIENT_IDS.with(|state| {
        let mut s = state.get();
        if s == 0 {
            let mut seed = [0u8; 8];
            let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
            s = u64::from_le_bytes(seed) ^ crate::latency::clock_ns();
        }
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(s);
        crate::backend::mix64(s).max(1)
    })
}

/// Why a cookie value is not a valid token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Wrong length or not base64url.
    #[error("malformed token")]
    Malformed,
    /// A version this build does not know.
    #[error("unknown token version")]
    Version,
    /// The MAC does not verify: edited, forged, or signed with another secret.
    #[error("bad token signature")]
    BadSignature,
}

/// The key that signs a pool's tokens.
#[derive(Debug, Clone)]
pub struct AffinityKey {
    key: hmac::Key,
    /// Identifies the key in the verified-token cache (a hash of the key material).
    id: u64,
}

/// Slots in each thread's cache of recently verified tokens.
const CACHE_SLOTS: usize = 512;

/// One verified token, remembered byte for byte (a version 1 token fills the first
/// [`V1_ENCODED_LEN`] bytes).
#[derive(Clone, Copy)]
struct Verified {
    key: u64,
    len: u8,
    encoded: [u8; ENCODED_LEN],
    token: Token,
}

thread_local! {
    /// Tokens that passed the MAC check on this thread, by hash of their text.
    ///
    /// A returning client presents the same cookie on every request; remembering the
    /// exact bytes that verified (and under which key) skips the HMAC, which costs more
    /// than the whole rest of a pick. Only a byte-identical token can hit, so the cache
    /// accepts nothing the MAC would not.
    static VERIFIED: std::cell::RefCell<Vec<Option<Verified>>> =
        std::cell::RefCell::new(vec![None; CACHE_SLOTS]);
}

/// Forgets this worker's verified tokens (the worker is stopping).
pub(super) fn clear_worker_cache() {
    let _ = VERIFIED.try_with(|v| {
        if let Ok(mut v) = v.try_borrow_mut() {
            v.iter_mut().for_each(|slot| *slot = None);
        }
    });
}

impl AffinityKey {
    /// From the configured `secret`, or, without one, a key derived from the pool's name
    /// (stable across restarts and instances, but not secret).
    pub fn new(secret: Option<&str>, pool: &str) -> AffinityKey {
        let material = match secret {
            Some(s) => format!("maitred affinity v1 secret:{s}"),
            None => format!("maitred affinity v1 pool:{pool}"),
        };
        AffinityKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, material.as_bytes()),
            id: xxhash_rust::xxh3::xxh3_64(material.as_bytes()) | 1,
        }
    }

    /// The keyed tag that stands for a backend in tokens.
    pub fn backend_tag(&self, backend_name: &str) -> u64 {
        let tag = hmac::sign(&self.key, format!("backend:{backend_name}").as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&tag.as_ref()[..8]);
        u64::from_be_bytes(first)
    }

    /// Encodes and signs a token.
    pub fn encode(&self, t: Token) -> String {
        let mut out = String::with_capacity(ENCODED_LEN);
        self.encode_into(t, &mut out);
        out
    }

    /// Encodes and signs a token into `out`, [`ENCODED_LEN`] bytes of base64url.
    pub fn encode_to(&self, t: Token, out: &mut [u8; ENCODED_LEN]) {
        let raw = self.sign(t);
        // Always fits: RAW bytes encode to exactly ENCODED_LEN.
        let _ = URL_SAFE_NO_PAD.encode_slice(raw, out);
    }

    /// Encodes and signs a token, appending it to `out`.
    pub fn encode_into(&self, t: Token, out: &mut String) {
        URL_SAFE_NO_PAD.encode_string(self.sign(t), out);
    }

    /// The token's bytes with their MAC.
    fn sign(&self, t: Token) -> [u8; RAW] {
        let mut raw = [0u8; RAW];
        raw[0] = VERSION;
        raw[1..9].copy_from_slice(&t.backend.to_be_bytes());
        raw[9..17].copy_from_slice(&t.issued.to_be_bytes());
        raw[17..25].copy_from_slice(&t.client.to_be_bytes());
        let mac = hmac::sign(&self.key, &raw[..SIGNED]);
        raw[SIGNED..].copy_from_slice(mac.as_ref());
        raw
    }

    /// Decodes and verifies a cookie value, without allocating.
    pub fn decode(&self, value: &[u8]) -> Result<Token, TokenError> {
        if value.len() != ENCODED_LEN && value.len() != V1_ENCODED_LEN {
            return Err(TokenError::Malformed);
        }
        let slot = (xxhash_rust::xxh3::xxh3_64(value) as usize) % CACHE_SLOTS;
        let hit = VERIFIED.with(|c| {
            c.borrow()[slot]
                .filter(|v| v.key == self.id && v.encoded[..usize::from(v.len)] == *value)
                .map(|v| v.token)
        });
        if let Some(t) = hit {
            return Ok(t);
        }
        let token = self.verify(value)?;
        let mut encoded = [0u8; ENCODED_LEN];
        encoded[..value.len()].copy_from_slice(value);
        VERIFIED.with(|c| {
            c.borrow_mut()[slot] = Some(Verified {
                key: self.id,
                len: value.len() as u8,
                encoded,
                token,
            })
        });
        Ok(token)
    }

    fn verify(&self, value: &[u8]) -> Result<Token, TokenError> {
        let mut raw = [0u8; RAW + 3];
        let n = URL_SAFE_NO_PAD
            .decode_slice(value, &mut raw)
            .map_err(|_| TokenError::Malformed)?;
        let signed = match (raw[0], n) {
            (VERSION, RAW) => SIGNED,
            (V1, V1_RAW) => V1_SIGNED,
            (VERSION | V1, _) => return Err(TokenError::Malformed),
            _ => return Err(TokenError::Version),
        };
        hmac::verify(&self.key, &raw[..signed], &raw[signed..n])
            .map_err(|_| TokenError::BadSignature)?;
        let field = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[at..at + 8]);
            u64::from_be_bytes(b)
        };
        Ok(Token {
            backend: field(1),
            issued: field(9),
            client: if signed == SIGNED { field(17) } else { 0 },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xxhash_rust::xxh3::xxh3_64;

    fn key() -> AffinityKey {
        AffinityKey::new(Some("s3cret"), "cart")
    }

    #[test]
    fn round_trip_and_opaque() {
        let k = key();
        let t = Token {
            backend: k.backend_tag("10.0.0.1:8000"),
            issued: 1_800_000_000,
            client: new_client_id(),
        };
        let s = k.encode(t);
        assert_eq!(s.len(), ENCODED_LEN);
        let mut fixed = [0u8; ENCODED_LEN];
        k.encode_to(t, &mut fixed);
        assert_eq!(&fixed[..], s.as_bytes());
        assert!(!s.contains("10.0.0.1"));
        assert_eq!(k.decode(s.as_bytes()), Ok(t));
    }

    #[test]
    fn other_secret_or_pool_default_rejects() {
        let t = Token {
            backend: 7,
            issued: 9,
            client: 11,
        };
        let s = key().encode(t);
        assert_eq!(
            AffinityKey::new(Some("other"), "cart").decode(s.as_bytes()),
            Err(TokenError::BadSignature)
        );
        assert!(AffinityKey::new(None, "cart").decode(s.as_bytes()).is_err());
        let d = AffinityKey::new(None, "cart").encode(t);
        assert_eq!(
            AffinityKey::new(None, "cart").decode(d.as_bytes()),
            Ok(t),
            "derived key is stable"
        );
        assert_ne!(
            key().backend_tag("a:1"),
            AffinityKey::new(Some("other"), "cart").backend_tag("a:1")
        );
    }

    #[test]
    fn any_single_byte_edit_is_rejected() {
        let k = key();
        let s = k
            .encode(Token {
                backend: 42,
                issued: 1234,
                client: 5678,
            })
            .into_bytes();
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for i in 0..s.len() {
            for &c in alphabet.iter().step_by(7) {
                if c == s[i] {
                    continue;
                }
                let mut e = s.clone();
                e[i] = c;
                assert!(
                    k.decode(&e).is_err(),
                    "edit at {i} to {} accepted",
                    c as char
                );
            }
        }
    }

    #[test]
    fn version_1_tokens_still_verify_without_a_client_id() {
        let k = key();
        let mut raw = [0u8; V1_RAW];
        raw[0] = V1;
        raw[1..9].copy_from_slice(&42u64.to_be_bytes());
        raw[9..17].copy_from_slice(&1234u64.to_be_bytes());
        let mac = hmac::sign(&k.key, &raw[..V1_SIGNED]);
        raw[V1_SIGNED..].copy_from_slice(mac.as_ref());
        let v1 = URL_SAFE_NO_PAD.encode(raw);
        assert_eq!(v1.len(), V1_ENCODED_LEN);
        let t = Token {
            backend: 42,
            issued: 1234,
            client: 0,
        };
        assert_eq!(k.decode(v1.as_bytes()), Ok(t));
        assert_eq!(k.decode(v1.as_bytes()), Ok(t), "from the cache too");
    }

    #[test]
    fn client_ids_are_distinct_and_never_zero() {
        let ids: std::collections::HashSet<u64> = (0..10_000).map(|_| new_client_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(!ids.contains(&0));
    }

    #[test]
    fn random_strings_never_decode() {
        let k = key();
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for i in 0..100_000u64 {
            let h = xxh3_64(&i.to_le_bytes());
            let len = if i % 2 == 0 {
                ENCODED_LEN
            } else {
                (h % 100) as usize
            };
            let bytes: Vec<u8> = (0..len)
                .map(|j| {
                    let r = xxh3_64(&(h ^ j as u64).to_le_bytes());
                    if i % 4 == 0 {
                        (r & 0xff) as u8
                    } else {
                        alphabet[(r % 64) as usize]
                    }
                })
                .collect();
            assert!(k.decode(&bytes).is_err(), "random input {i} decoded");
        }
    }
}
