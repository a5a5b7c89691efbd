//! Choosing a backend: the [`Balancer`] trait and the built-in balancers of DESIGN §4.
//!
//! A balancer is built from a pool's backends when a snapshot is built (start-up and
//! every reload), off the hot path. After that `pick` only reads: the backends' atomics
//! (health, admin state, in-flight) and the balancer's own precomputed tables. It never
//! allocates on the common path, never blocks, never sees config types, and knows
//! nothing of retries: the caller passes the backends already tried, and the balancer
//! skips them.

mod cookie;
mod eligible;
mod hash;
mod key;
mod least_conn;
mod peak_ewma;
mod ring;
mod round_robin;
#[cfg(test)]
mod testing;
mod token;

use std::fmt::Debug;
use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Uri};

use crate::backend::Backend;
use crate::config::BalancerKind;

pub use cookie::{CookieAffinity, CookieParams};
pub use eligible::{Eligible, Limits, Tried};
pub use hash::ConsistentHash;
pub use least_conn::LeastConnections;
pub use peak_ewma::{Latency, MAX_RETRY_AFTER, PeakEwma};
pub use ring::Ring;
pub use round_robin::SmoothRoundRobin;
pub use token::{AffinityKey, ENCODED_LEN, Token, TokenError, new_client_id};

/// Forgets the current worker's affinity state (verified tokens, the Set-Cookie
/// buffer); called once when the worker stops.
pub fn clear_worker_caches() {
    token::clear_worker_cache();
    cookie::clear_worker_buffer();
}

/// What a balancer may read about a request.
#[derive(Debug, Clone, Copy)]
pub struct PickContext<'a> {
    /// The client IP per DESIGN §4 (peer, PROXY source or trusted X-Forwarded-For).
    pub client_ip: IpAddr,
    /// Request headers (cookies, hash keys).
    pub headers: &'a HeaderMap,
    /// Request target (path and query hash keys).
    pub uri: &'a Uri,
    /// Seconds since the Unix epoch (cookie issue times and expiry).
    pub now_secs: u64,
    /// Requests in flight on the whole pool now (bounded load).
    pub pool_in_flight: u32,
}

/// A balancer's choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    /// Index into the pool's backends.
    pub index: usize,
    /// A `Set-Cookie` value the response must carry (cookie-affinity placements and
    /// re-issues).
    pub set_cookie: Option<HeaderValue>,
    /// How the choice was made, for metrics.
    pub placement: Placement,
    /// The client to count among the chosen backend's pinned clients (DESIGN §11): the
    /// hash of a sticky key, or a cookie's client id; 0 = none (stateless choices).
    pub pin: u64,
}

impl Pick {
    /// A plain choice with nothing to add to the response.
    #[inline]
    pub fn plain(index: usize) -> Pick {
        Pick {
            index,
            set_cookie: None,
            placement: Placement::Stateless,
            pin: 0,
        }
    }
}

/// How a backend was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A stateless choice, or a request without a sticky key.
    Stateless,
    /// A sticky key or valid cookie went to its own backend.
    Sticky,
    /// A sticky key or cookie went elsewhere (bounded load, or its backend cannot take it)
    /// without changing the client's binding.
    Overflow,
    /// A client without a valid cookie was placed and given one.
    New,
    /// A cookie whose backend is down, disabled or gone was re-placed and rewritten.
    Replaced,
}

/// Chooses a backend for a request.
///
/// # Contract
///
/// - `pick` returns an index into `backends` (the slice the balancer was built from)
///   that [`Eligible`] accepts under `limits` and `tried` (a new client, or a bound one
///   for cookie affinity), or `None` when none can take the request. Eligibility is
///   that one rule's business; a balancer only chooses among what it accepts.
/// - It reads only atomics and its own tables: no allocation (except to build a cookie
///   for a response that needs one), no lock, no blocking, no I/O.
///
/// # How each balancer fits
///
/// - **round-robin** ([`SmoothRoundRobin`]): ignores the request; an atomic cursor walks a
///   precomputed smooth weighted cycle.
/// - **least-connections** ([`LeastConnections`]): ignores the request; reads every
///   backend's in-flight atomic and its weight.
/// - **ip-hash** and **hash** ([`ConsistentHash`]): read the client IP from
///   [`PickContext::client_ip`], or the header, cookie, query parameter or path its
///   [`HashKey`](crate::config::HashKey) names, then look the key up on a [`Ring`]; without a key they delegate
///   to round-robin.
/// - **cookie-affinity** ([`CookieAffinity`]): reads its cookie from
///   [`PickContext::headers`], decodes and verifies the [`Token`], and returns the bound
///   backend; a client without a valid cookie is placed by the fallback balancer and the
///   returned [`Pick::set_cookie`] carries the new cookie for the response.
/// - **peak-ewma** ([`PeakEwma`]): ignores the request; reads a monotonic clock, each
///   drawn backend's latency estimate and in-flight atomic.
pub trait Balancer: Send + Sync + Debug {
    /// Chooses a backend, or `None` when no backend can take the request.
    fn pick(
        &self,
        backends: &[Backend],
        ctx: &PickContext<'_>,
        limits: &Limits,
        tried: &Tried,
    ) -> Option<Pick>;

    /// Which balancer this is.
    fn kind(&self) -> BalancerKind;

    /// Whether `pick` reads [`PickContext::now_secs`]; for the others the caller leaves
    /// it 0 and reads no clock.
    fn needs_clock(&self) -> bool {
        false
    }

    /// For sticky balancers, the backend index a sticky key hashing to `key` maps to with
    /// every backend healthy (the reload report's moved-keys estimate). `None` for
    /// stateless balancers.
    fn home_of(&self, _key: u64) -> Option<usize> {
        None
    }

    /// For `ip-hash` and `hash`, the consistent-hash ring (a rebuilt ring remembers
    /// where keys were, for slow start); `None` for the others.
    fn ring(&self) -> Option<&Ring> {
        None
    }

    /// For `peak-ewma`, the pool's latency estimator, which the request path feeds;
    /// `None` for the others, whose requests then pay nothing for it.
    fn latency(&self) -> Option<Arc<Latency>> {
        None
    }
}
