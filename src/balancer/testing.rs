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
