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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;

use super::key::find_cookie;
use super::token::{AffinityKey, Token};
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
    /// Tells this balancer's entries in the per-thread [`ISSUED`] cache from those of
    /// other pools and of earlier configs.
    instance: u64,
}

/// Source of [`CookieAffinity::instance`].
static INSTANCES: AtomicU64 = AtomicU64::new(1);

/// Slots in each thread's cache of Set-Cookie values issued this second.
const ISSUED_SLOTS: usize = 64;

/// A Set-Cookie value issued in one second for one backend.
#[derive(Debug, Clone)]
struct Issued {
    instance: u64,
    index: usize,
    second: u64,
    value: HeaderValue,
}

thread_local! {
    /// A token holds only its backend and the second it was issued, so every client
    /// placed on the same backend within one second gets the same one: it is signed
    /// and formatted once per backend per second per thread, then shared.
    static ISSUED: RefCell<[Option<Issued>; ISSUED_SLOTS]> =
        const { RefCell::new([const { None }; ISSUED_SLOTS]) };
}

/// Forgets this worker's issued tokens (the worker is stopping).
pub(super) fn clear_worker_cache() {
    let _ = ISSUED.try_with(|i| {
        if let Ok(mut i) = i.try_borrow_mut() {
            i.iter_mut().for_each(|slot| *slot = None);
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
            instance: INSTANCES.fetch_add(1, Ordering::Relaxed),
        }
    }

    fn index_of(&self, tag: u64) -> Option<usize> {
        self.by_tag
            .binary_search_by_key(&tag, |e| e.0)
            .ok()
            .map(|i| self.by_tag[i].1 as usize)
    }

    /// The Set-Cookie value binding a client to backend `index`.
    fn set_cookie(&self, index: usize, now: u64) -> Option<HeaderValue> {
        let slot = (self.instance as usize)
            .wrapping_mul(31)
            .wrapping_add(index)
            % ISSUED_SLOTS;
        let cached = ISSUED.with(|c| {
            c.borrow()[slot]
                .as_ref()
                .filter(|e| e.instance == self.instance && e.index == index && e.second == now)
                .map(|e| e.value.clone())
        });
        if cached.is_some() {
            return cached;
        }
        let value = self.make_set_cookie(index, now)?;
        ISSUED.with(|c| {
            c.borrow_mut()[slot] = Some(Issued {
                instance: self.instance,
                index,
                second: now,
                value: value.clone(),
            });
        });
        Some(value)
    }

    /// Signs a token for backend `index` issued at `now` and formats the Set-Cookie
    /// value around it, in one allocation.
    fn make_set_cookie(&self, index: usize, now: u64) -> Option<HeaderValue> {
        let token = Token {
            backend: *self.tags.get(index)?,
            issued: now,
        };
        let len = self.cookie.len() + 1 + super::token::ENCODED_LEN + self.attributes.len();
        let mut s = String::with_capacity(len);
        s.push_str(&self.cookie);
        s.push('=');
        self.key.encode_into(token, &mut s);
        s.push_str(&self.attributes);
        HeaderValue::from_maybe_shared(Bytes::from(s)).ok()
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
    ) -> Option<Pick> {
        let p = self.fallback.pick(backends, ctx, limits, tried)?;
        let set_cookie = match placement {
            Placement::Overflow => None,
            _ => self.set_cookie(p.index, ctx.now_secs),
        };
        Some(Pick {
            index: p.index,
            set_cookie,
            placement,
        })
    }
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
            return self.place(backends, ctx, limits, tried, Placement::New);
        };
        let Some(i) = self.index_of(token.backend).filter(|&i| i < backends.len()) else {
            return self.place(backends, ctx, limits, tried, Placement::Replaced);
        };
        let eligible = Eligible::new(backends, limits, tried);
        if !eligible.accepts_bound(i) {
            return self.place(backends, ctx, limits, tried, Placement::Replaced);
        }
        if !eligible.has_room(i) || eligible.over_bound(i, ctx.pool_in_flight, self.total_weight) {
            return self.place(backends, ctx, limits, tried, Placement::Overflow);
        }
        let half_life_passed = self
            .max_age
            .is_some_and(|m| ctx.now_secs.saturating_sub(token.issued) > m / 2);
        Some(Pick {
            index: i,
            set_cookie: if half_life_passed {
                self.set_cookie(i, ctx.now_secs)
            } else {
                None
            },
            placement: Placement::Sticky,
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
    fn set_cookie_is_made_once_per_backend_per_second_and_per_pool() {
        let bs = backends(&[1; 3]);
        let c = affinity(&bs, Some(3600));
        let a = c.set_cookie(1, 5000).unwrap();
        let again = c.set_cookie(1, 5000).unwrap();
        assert_eq!(a, again, "same backend, same second: the same value");
        assert_eq!(
            a,
            c.make_set_cookie(1, 5000).unwrap(),
            "cached = freshly made"
        );
        let next = c.set_cookie(1, 5001).unwrap();
        assert_ne!(a, next, "a new second signs a new token");
        let other = c.set_cookie(2, 5000).unwrap();
        assert_ne!(a, other);
        // Another pool (another instance, same secret): never served from this one's cache.
        let mut p2 = params(&bs, Some(60));
        p2.cookie = "other".into();
        let c2 = CookieAffinity::new(p2, &bs);
        let v2 = c2.set_cookie(1, 5000).unwrap();
        assert!(v2.to_str().unwrap().starts_with("other="), "{v2:?}");
        // And the cached value still carries a valid token for its backend.
        let jar = a.to_str().unwrap().split(';').next().unwrap().to_string();
        let p = pick(&c, &bs, Some(&jar), 5001);
        assert_eq!((p.index, p.placement), (1, Placement::Sticky));
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
