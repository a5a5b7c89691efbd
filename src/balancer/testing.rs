//! Fixtures shared by the balancers' unit tests: backends with given weights and a
//! request context.

use std::sync::Arc;

use http::{HeaderMap, Uri};

use super::{Limits, PickContext};
use crate::backend::{Backend, BackendLive};
use crate::config::AdminState;

/// No `max_connections`, no bounded load.
pub const NO_LIMITS: Limits = Limits {
    max_connections: 0,
    balance_factor: 0.0,
};

/// Active, healthy backends `10.0.0.1:80`, `10.0.0.2:80`, … with these weights.
pub fn backends(weights: &[u32]) -> Vec<Backend> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| {
            let name = format!("10.0.0.{}:80", i + 1);
            Backend {
                addr: name.parse().unwrap_or_else(|_| unreachable!()),
                name: name.into(),
                weight,
                live: Arc::new(BackendLive::new(false, AdminState::Active)),
            }
        })
        .collect()
}

/// Puts `b` at ramp factor `ramp` (of [`crate::backend::RAMP_FULL`]): a ramp begun
/// and advanced part of the way.
pub fn set_ramp(b: &Backend, ramp: u32) {
    use crate::backend::{RAMP_FULL, RAMP_START};
    let period = std::time::Duration::from_millis(u64::from(RAMP_FULL - RAMP_START));
    b.live.start_ramp(period);
    b.live.advance_ramp(1, period);
    b.live
        .advance_ramp(1 + u64::from(ramp.saturating_sub(RAMP_START)), period);
}

/// A request context from 192.0.2.1.
pub fn ctx<'a>(
    headers: &'a HeaderMap,
    uri: &'a Uri,
    now_secs: u64,
    pool_in_flight: u32,
) -> PickContext<'a> {
    PickContext {
        client_ip: "192.0.2.1".parse().unwrap_or_else(|_| unreachable!()),
        headers,
        uri,
        now_secs,
        pool_in_flight,
    }
}
