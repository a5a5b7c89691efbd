//! `cookie-affinity`: the balancer inserts a signed cookie naming the client's backend.
//!
//! A valid cookie sends the client back to its backend while that backend may serve
//! bound clients (up, and active or draining). A cookie whose backend is down, disabled
//! or gone is re-placed by the fallback balancer and rewritten; a client without a valid
//! cookie (none, forged, garbled, signed with another secret, expired) is placed and
//! given one. With `max_age`, a token past half its life is re-issued on the response
//! (sliding expiry). Bounded load and a backend at `max_connections` overflow the
//! request elsewhere without rewriting the cookie, so the client returns when the
//! pressure passes.

use std::cell::RefCell;
use std::time::Duration;

use bytes::BytesMut;
use http::HeaderValue;

use super::key::find_cookie;
use super::token::{AffinityKey, ENCODED_LEN, Token, new_client_id};
use super::{Balancer, Eligible, Limits, Pick, PickContext, Placement, Tried};
use crate::backend::Backend;
use crate::config::{BalancerKind, SameSite};

/// What a cookie-affinity balancer is built from: its cookie, the key its tokens are
/// signed with, and the balancer that places clients without a valid cookie.
#[derive(Debug)]
pub struct CookieParams {
    /// The cookie's name.
    pub cookie: String,
    /// Token lifetime and the cookie's `Max-Age`; a browser-session cookie when `None`.
    pub max_age: Option<Duration>,
    /// Whether the cookie carries `Secure`.
    pub secure: bool,
    /// Whether the cookie carries `HttpOnly`.
    pub http_only: bool,
    /// The cookie's `SameSite` attribute, if any.
    pub same_site: Option<SameSite>,
    /// Signs and verifies the tokens.
    pub key: AffinityKey,
    /// Places clients without a valid cookie (a stateless balancer).
    pub fallback: Box<dyn Balancer>,
}

/// Cookie affinity.
#[derive(Debug)]
pub struct CookieAffinity {
    key: AffinityKey,
    cookie: String,
    /// `; Path=/; Max-Age=…; Secure; HttpOnly; SameSite=…`, built once.
    attributes: String,
    max_age: Option<u64>,
    /// Backend tag → index, sorted by tag.
    by_tag: Box<[(u64, u32)]>,
    /// Index → tag.
    tags: Box<[u64]>,
    fallback: Box<dyn Balancer>,
    total_weight: u32,
}

/// Set-Cookie values cut from one buffer before the next is allocated.
const SET_COOKIES_PER_BUFFER: usize = 64;

thread_local! {
    /// Where this worker writes Set-Cookie values: every new client gets a token of its
    /// own (its client id), and cutting the values from a shared buffer costs one
    /// allocation per [`SET_COOKIES_PER_BUFFER`] instead of one each. A buffer is freed
    /// when the last value cut from it has been sent.
    static SET_COOKIES: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Lets go of this worker's Set-Cookie buffer (the worker is stopping).
pub(super) fn clear_worker_buffer() {
    let _ = SET_COOKIES.try_with(|b| {
        if let Ok(mut b) = b.try_borrow_mut() {
            *b = BytesMut::new();
        }
    });
}

impl CookieAffinity {
    /// Builds it over `backends` from its parameters.
    pub fn new(params: CookieParams, backends: &[Backend]) -> CookieAffinity {
        let CookieParams {
            cookie,
            max_age,
            secure,
            http_only,
            same_site,
            key,
            fallback,
        } = params;
        let tags: Box<[u64]> = backends.iter().map(|b| key.backend_tag(&b.name)).collect();
        let mut by_tag: Vec<(u64, u32)> = tags
            .iter()
            .enumerate()
            .map(|(i, t)| (*t, i as u32))
            .collect();
        by_tag.sort_unstable();
        let mut attributes = String::from("; Path=/");
        let max_age = max_age.map(|d| d.as_secs().max(1));
        if let Some(m) = max_age {
            attributes.push_str(&format!("; Max-Age={m}"));
        }
        if secure {
            attributes.push_str("; Secure");
        }
        if http_only {
            attributes.push_str("; HttpOnly");
        }
        if let Some(s) = same_site {
            attributes.push_str(&format!("; SameSite={}", s.name()));
        }
        CookieAffinity {
            key,
            cookie,
            attributes,
            max_age,
            by_tag: by_tag.into_boxed_slice(),
            tags,
            fallback,
            total_weight: backends.iter().map(|b| b.weight).sum(),
        }
    }

    fn index_of(&self, tag: u64) -> Option<usize> {
        self.by_tag
            .binary_search_by_key(&tag, |e| e.0)
            .ok()
            .map(|i| self.by_tag[i].1 as usize)
    }

    /// The Set-Cookie value binding client `client` to backend `index` from `now`: a
    /// token signed and the value formatted around it, cut from the worker's
    /// [`SET_COOKIES`] buffer.
    fn set_cookie(&self, index: usize, now: u64, client: u64) -> Option<HeaderValue> {
        let token = Token {
            backend: *self.tags.get(index)?,
            issued: now,
            client,
        };
        let mut encoded = [0u8; ENCODED_LEN];
        self.key.encode_to(token, &mut encoded);
        let len = self.cookie.len() + 1 + ENCODED_LEN + self.attributes.len();
        let value = SET_COOKIES.with(|buf| {
            let mut buf = buf.borrow_mut();
            if buf.capacity() < len {
                buf.reserve(len * SET_COOKIES_PER_BUFFER);
            }
            buf.extend_from_slice(self.cookie.as_bytes());
            buf.extend_from_slice(b"=");
            buf.extend_from_slice(&encoded);
            buf.extend_from_slice(self.attributes.as_bytes());
            buf.split().freeze()
        });
        HeaderValue::from_maybe_shared(value).ok()
    }

    /// A valid, unexpired token from the request's cookie.
    fn token(&self, ctx: &PickContext<'_>) -> Option<Token> {
        let raw = find_cookie(ctx.headers, &self.cookie)?;
        let t = self.key.decode(raw).ok()?;
        let age = ctx.now_secs.saturating_sub(t.issued);
        match self.max_age {
            Some(m) if age > m => None,
            _ => Some(t),
        }
    }

    fn place(
        &self,
        backends: &[Backend],
        ctx: &PickContext<'_>,
        limits: &Limits,
        tried: &Tried,
        placement: Placement,
        bound: Option<Token>,
    ) -> Option<Pick> {
        let p = self.fallback.pick(backends, ctx, limits, tried)?;
        let (set_cookie, pin) = match (placement, bound) {
            (Placement::Overflow, Some(t)) => (None, client_of(t)),
            (_, t) => {
                // A client keeps its id when re-placed; a new one (or one of the
                // earlier token format) is given one.
                let client = t.map_or(0, |t| t.client);
                let client = if client == 0 { new_client_id() } else { client };
                (self.set_cookie(p.index, ctx.now_secs, client), client)
            }
        };
        Some(Pick {
            index: p.index,
            set_cookie,
            placement,
            pin,
        })
    }
}

/// Who a bound client is, for the pinned count: its id, or for a token of the earlier
/// format (no id) its backend and issue second (clients placed on one backend in the
/// same second then count once, until their tokens are re-issued with an id).
fn client_of(token: Token) -> u64 {
    if token.client != 0 {
        return token.client;
    }
    (token.issued ^ token.backend.rotate_left(32)).max(1)
}

impl Balancer for CookieAffinity {
    fn pick(
        &self,
        backends: &[Backend],
        ctx: &PickContext<'_>,
        limits: &Limits,
        tried: &Tried,
    ) -> Option<Pick> {
        let Some(token) = self.token(ctx) else {
            return self.place(backends, ctx, limits, tried, Placement::New, None);
        };
        let eligible = Eligible::new(backends, limits, tried);
        // A backend gone from the pool, or one that cannot take its bound clients.
        let bound = self
            .index_of(token.backend)
            .filter(|&i| i < backends.len() && eligible.accepts_bound(i));
        let Some(i) = bound else {
            return self.place(
                backends,
                ctx,
                limits,
                tried,
                Placement::Replaced,
                Some(token),
            );
        };
        if !eligible.has_room(i) || eligible.over_bound(i, ctx.pool_in_flight, self.total_weight) {
            return self.place(
                backends,
                ctx,
                limits,
                tried,
                Placement::Overflow,
                Some(token),
            );
        }
        let half_life_passed = self
            .max_age
            .is_some_and(|m| ctx.now_secs.saturating_sub(token.issued) > m / 2);
        // Re-issued at half life, the token keeps the client's id (a version 1 token
        // gets one).
        let client = if token.client == 0 && half_life_passed {
            new_client_id()
        } else {
            token.client
        };
        Some(Pick {
            index: i,
            set_cookie: if half_life_passed {
                self.set_cookie(i, ctx.now_secs, client)
            } else {
                None
            },
            placement: Placement::Sticky,
            pin: if client == 0 {
                client_of(token)
            } else {
                client
            },
        })
    }

    fn kind(&self) -> BalancerKind {
        BalancerKind::CookieAffinity
    }

    /// Token issue times and expiry are in wall-clock seconds.
    fn needs_clock(&self) -> bool {
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use http::{HeaderMap, header};

    use super::*;
    use crate::backend::Health;
    use crate::balancer::LeastConnections;
    use crate::balancer::testing::{NO_LIMITS, backends, ctx};
    use crate::config::AdminState;

    fn params(bs: &[Backend], max_age: Option<u64>) -> CookieParams {
        CookieParams {
            cookie: "sticky".into(),
            max_age: max_age.map(Duration::from_secs),
            secure: true,
            http_only: true,
            same_site: Some(SameSite::Lax),
            key: AffinityKey::new(Some("k"), "cart"),
            fallback: Box::new(LeastConnections::new(bs)),
        }
    }

    fn pick(c: &CookieAffinity, bs: &[Backend], cookie: Option<&str>, now: u64) -> Pick {
        let mut h = HeaderMap::new();
        if let Some(v) = cookie {
            h.insert(header::COOKIE, v.parse().unwrap());
        }
        let uri: http::Uri = "/".parse().unwrap();
        c.pick(bs, &ctx(&h, &uri, now, 0), &NO_LIMITS, &Tried::new())
            .unwrap()
    }

    fn cookie_of(p: &Pick) -> String {
        let v = p.set_cookie.as_ref().unwrap().to_str().unwrap();
        v.split(';').next().unwrap().to_string()
    }

    fn affinity(bs: &[Backend], max_age: Option<u64>) -> CookieAffinity {
        CookieAffinity::new(params(bs, max_age), bs)
    }

    #[test]
    fn new_client_gets_a_cookie_with_attributes_and_sticks() {
        let bs = backends(&[1; 3]);
        let c = affinity(&bs, Some(3600));
        let first = pick(&c, &bs, None, 1000);
        assert_eq!(first.placement, Placement::New);
        let full = first
            .set_cookie
            .as_ref()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            full.ends_with("; Path=/; Max-Age=3600; Secure; HttpOnly; SameSite=Lax"),
            "{full}"
        );
        let jar = cookie_of(&first);
        for _ in 0..5 {
            let p = pick(&c, &bs, Some(&jar), 1100);
            assert_eq!((p.index, p.placement), (first.index, Placement::Sticky));
            assert!(p.set_cookie.is_none(), "young token is not re-issued");
        }
    }

    #[test]
    fn each_client_gets_its_own_id_and_keeps_it_when_reissued_or_replaced() {
        let bs = backends(&[1; 3]);
        let c = affinity(&bs, Some(3600));
        let a = pick(&c, &bs, None, 5000);
        let b = pick(&c, &bs, None, 5000);
        assert_ne!(a.pin, 0);
        assert_ne!(a.pin, b.pin, "two clients, two ids, even in one second");
        let jar = cookie_of(&a);
        let sticky = pick(&c, &bs, Some(&jar), 5001);
        assert_eq!((sticky.pin, sticky.set_cookie), (a.pin, None));
        let reissued = pick(&c, &bs, Some(&jar), 5000 + 1801);
        assert_eq!(reissued.pin, a.pin, "re-issued at half life: same client");
        let jar2 = cookie_of(&reissued);
        assert_ne!(jar, jar2);
        assert_eq!(pick(&c, &bs, Some(&jar2), 7000).pin, a.pin);
        bs[a.index].live.set_admin(AdminState::Disabled);
        let moved = pick(&c, &bs, Some(&jar), 5002);
        assert_eq!(moved.placement, Placement::Replaced);
        assert_eq!(moved.pin, a.pin, "re-placed: same client");
    }

    #[test]
    fn half_life_reissues_and_expiry_replaces() {
        let bs = backends(&[1; 3]);
        let c = affinity(&bs, Some(3600));
        let first = pick(&c, &bs, None, 1000);
        let jar = cookie_of(&first);
        let p = pick(&c, &bs, Some(&jar), 1000 + 1801);
        assert_eq!(p.index, first.index);
        assert!(p.set_cookie.is_some(), "past half its life: re-issued");
        let p = pick(&c, &bs, Some(&jar), 1000 + 3601);
        assert_eq!(
            p.placement,
            Placement::New,
            "expired token counts as absent"
        );
    }

    #[test]
    fn down_or_disabled_backend_is_replaced_drain_keeps_holders() {
        let bs = backends(&[1; 3]);
        let c = affinity(&bs, None);
        let first = pick(&c, &bs, None, 0);
        let jar = cookie_of(&first);
        bs[first.index].live.set_admin(AdminState::Drain);
        let p = pick(&c, &bs, Some(&jar), 0);
        assert_eq!(
            (p.index, p.placement),
            (first.index, Placement::Sticky),
            "drain keeps holders"
        );
        let newcomer = pick(&c, &bs, None, 0);
        assert_ne!(newcomer.index, first.index, "drain takes no new clients");
        bs[first.index].live.set_admin(AdminState::Active);
        bs[first.index].live.set_health(Health::Down);
        let p = pick(&c, &bs, Some(&jar), 0);
        assert_ne!(p.index, first.index);
        assert_eq!(p.placement, Placement::Replaced);
        assert!(p.set_cookie.is_some());
    }

    #[test]
    fn forged_cookie_is_absent_and_gone_backend_replaced() {
        let bs = backends(&[1; 3]);
        let c = affinity(&bs, None);
        let p = pick(
            &c,
            &bs,
            Some("sticky=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            0,
        );
        assert_eq!(p.placement, Placement::New);
        let first = pick(&c, &bs, None, 0);
        let jar = cookie_of(&first);
        let fewer: Vec<Backend> = backends(&[1; 3])
            .into_iter()
            .filter(|b| *b.name != *bs[first.index].name)
            .collect();
        let c2 = affinity(&fewer, None);
        assert_eq!(
            pick(&c2, &fewer, Some(&jar), 0).placement,
            Placement::Replaced
        );
    }
}
