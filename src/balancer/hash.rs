//! `ip-hash` and `hash`: consistent hashing of a sticky key over a Maglev [`Ring`], with
//! failover along the ring and bounded load.
//!
//! A key goes to its home backend when that backend can take a new client, was not
//! already tried by this request, and is not over the bounded-load limit; otherwise the
//! ring walk finds the next one that is. When every backend is over the bound (a burst
//! on a tiny pool), the bound is ignored rather than refusing the request. A request
//! without the key is spread round-robin.
//!
//! Slow start: a key whose home is ramping goes there only when the ramp admits the key
//! (decided by the key's hash, so the admitted keys only grow as the ramp rises: a key
//! that has moved stays moved); until then it stays where it was, at its home in the
//! ring this one replaced ([`Ring::prior`]), or on the backend the ring's walk gives
//! (where it went while its home was down or disabled).

use super::key::hash_of;
use super::{
    Balancer, Eligible, Limits, Pick, PickContext, Placement, Ring, SmoothRoundRobin, Tried,
};
use crate::backend::Backend;
use crate::config::{BalancerKind, HashKey};

/// Consistent hashing of a request key.
#[derive(Debug)]
pub struct ConsistentHash {
    ring: Ring,
    key: HashKey,
    keyless: SmoothRoundRobin,
    kind: BalancerKind,
    total_weight: u32,
}

impl ConsistentHash {
    /// Builds the ring for `backends`; `kind` is `IpHash` or `Hash` (as configured).
    /// `earlier` is the ring this one replaces and its backends, when the pool ran
    /// before, so that keys bound for a ramping backend can wait where they were.
    pub fn new(
        backends: &[Backend],
        key: HashKey,
        kind: BalancerKind,
        earlier: Option<(&Ring, &[Backend])>,
    ) -> ConsistentHash {
        let named: Vec<(&str, u32)> = backends.iter().map(|b| (&*b.name, b.weight)).collect();
        let mut ring = Ring::new(&named);
        if let Some((old, old_backends)) = earlier {
            let names: Vec<&str> = backends.iter().map(|b| &*b.name).collect();
            let old_names: Vec<&str> = old_backends.iter().map(|b| &*b.name).collect();
            ring.remember(&names, old, &old_names);
        }
        ConsistentHash {
            ring,
            key,
            keyless: SmoothRoundRobin::new(backends),
            kind,
            total_weight: backends.iter().map(|b| b.weight).sum(),
        }
    }
}

impl Balancer for ConsistentHash {
    #[inline]
    fn pick(
        &self,
        backends: &[Backend],
        ctx: &PickContext<'_>,
        limits: &Limits,
        tried: &Tried,
    ) -> Option<Pick> {
        let Some(key) = hash_of(&self.key, ctx) else {
            return self.keyless.pick(backends, ctx, limits, tried);
        };
        let home = self.ring.home(key)?;
        let eligible = Eligible::new(backends, limits, tried);
        let bounded = |i: usize| {
            eligible.accepts_new(i)
                && !eligible.over_bound(i, ctx.pool_in_flight, self.total_weight)
        };
        let waits = !eligible.ramp_admits(home, || key);
        let index = waits
            .then(|| self.ring.prior(key).filter(|&p| bounded(p)))
            .flatten()
            .or_else(|| {
                self.ring
                    .lookup(key, |i| bounded(i) && eligible.ramp_admits(i, || key))
            })
            .or_else(|| self.ring.lookup(key, |i| eligible.accepts_new(i)))?;
        Some(Pick {
            index,
            set_cookie: None,
            placement: if index == home {
                Placement::Sticky
            } else {
                Placement::Overflow
            },
            pin: key,
        })
    }

    fn kind(&self) -> BalancerKind {
        self.kind
    }

    fn home_of(&self, key: u64) -> Option<usize> {
        self.ring.home(key)
    }

    fn ring(&self) -> Option<&Ring> {
        Some(&self.ring)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use http::HeaderMap;

    use super::*;
    use crate::balancer::testing::{NO_LIMITS, backends, ctx};

    fn pick_for(
        b: &ConsistentHash,
        bs: &[Backend],
        user: &str,
        limits: &Limits,
        load: u32,
    ) -> Pick {
        let mut h = HeaderMap::new();
        h.insert("x-user", user.parse().unwrap());
        let uri: http::Uri = "/".parse().unwrap();
        b.pick(bs, &ctx(&h, &uri, 0, load), limits, &Tried::new())
            .unwrap()
    }

    fn header_hash(bs: &[Backend]) -> ConsistentHash {
        let key = HashKey::Header(http::HeaderName::from_static("x-user"));
        ConsistentHash::new(bs, key, BalancerKind::Hash, None)
    }

    #[test]
    fn same_key_same_backend_and_failover_returns() {
        let bs = backends(&[1; 4]);
        let h = header_hash(&bs);
        let home = pick_for(&h, &bs, "alice", &NO_LIMITS, 0).index;
        for _ in 0..5 {
            assert_eq!(pick_for(&h, &bs, "alice", &NO_LIMITS, 0).index, home);
        }
        bs[home].live.eject(60_000);
        let away = pick_for(&h, &bs, "alice", &NO_LIMITS, 0);
        assert_ne!(away.index, home);
        assert_eq!(away.placement, Placement::Overflow);
        bs[home].live.set_health(crate::backend::Health::Up);
        let bs2: Vec<Backend> = backends(&[1; 4]);
        let h2 = header_hash(&bs2);
        assert_eq!(
            pick_for(&h2, &bs2, "alice", &NO_LIMITS, 0).index,
            home,
            "stable across rebuilds"
        );
    }

    #[test]
    fn hot_key_spills_over_the_bound_others_stay() {
        let bs = backends(&[1; 4]);
        let h = header_hash(&bs);
        let limits = Limits {
            max_connections: 0,
            balance_factor: 1.25,
        };
        let hot_home = pick_for(&h, &bs, "hot", &limits, 0).index;
        // The hot key's backend holds 8 requests; the pool holds 8 in all.
        let _held: Vec<_> = (0..8)
            .map(|_| bs[hot_home].live.enter(0, None).unwrap())
            .collect();
        let p = pick_for(&h, &bs, "hot", &limits, 8);
        assert_ne!(
            p.index, hot_home,
            "over 1.25 × the mean, the hot key spills"
        );
        assert_eq!(p.placement, Placement::Overflow);
        let mut kept = 0;
        for u in 0..200 {
            let user = format!("user{u}");
            let home = pick_for(&h, &bs, &user, &NO_LIMITS, 0).index;
            if home != hot_home {
                kept += 1;
                assert_eq!(pick_for(&h, &bs, &user, &limits, 8).index, home);
            }
        }
        assert!(kept > 100);
    }

    #[test]
    fn keys_of_a_ramping_newcomer_wait_at_their_earlier_home_and_moved_keys_stay() {
        use crate::backend::RAMP_FULL;
        use crate::balancer::testing::set_ramp;
        let four = backends(&[1; 4]);
        let before = header_hash(&four);
        // A fifth backend joins: the same four (same live state) and a newcomer.
        let mut five = backends(&[1; 5]);
        for (new, old) in five.iter_mut().zip(&four) {
            new.live = std::sync::Arc::clone(&old.live);
        }
        let key = HashKey::Header(http::HeaderName::from_static("x-user"));
        let after =
            ConsistentHash::new(&five, key, BalancerKind::Hash, Some((&before.ring, &four)));
        let users: Vec<String> = (0..4000).map(|u| format!("user{u}")).collect();
        let old_home: Vec<usize> = users
            .iter()
            .map(|u| pick_for(&before, &four, u, &NO_LIMITS, 0).index)
            .collect();
        let on_new = |ramp: u32| -> Vec<bool> {
            set_ramp(&five[4], ramp);
            users
                .iter()
                .zip(&old_home)
                .map(|(u, &old)| {
                    let got = pick_for(&after, &five, u, &NO_LIMITS, 0).index;
                    let home = after.home_of(xxhash_rust::xxh3::xxh3_64(u.as_bytes()));
                    if home == Some(4) {
                        assert!(got == 4 || got == old, "{u} went to a third backend");
                    }
                    got == 4
                })
                .collect()
        };
        let share = |v: &[bool]| v.iter().filter(|x| **x).count() as f64 / v.len() as f64;
        let early = on_new(RAMP_FULL / 10);
        let half = on_new(RAMP_FULL / 2);
        let full = on_new(RAMP_FULL);
        assert!(share(&early) < 0.04, "{}", share(&early));
        assert!((0.07..0.13).contains(&share(&half)), "{}", share(&half));
        assert!((0.17..0.23).contains(&share(&full)), "{}", share(&full));
        for (e, h) in early.iter().zip(&half) {
            assert!(!e || *h, "a key that moved stays moved");
        }
    }

    #[test]
    fn missing_key_goes_round_robin() {
        let bs = backends(&[1; 3]);
        let h = header_hash(&bs);
        let headers = HeaderMap::new();
        let uri: http::Uri = "/".parse().unwrap();
        let ctx = ctx(&headers, &uri, 0, 0);
        let picks: Vec<usize> = (0..6)
            .map(|_| h.pick(&bs, &ctx, &NO_LIMITS, &Tried::new()).unwrap().index)
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }
}
