//! Least-connections (placeholder until the balancers land).
use super::{Balancer, Limits, Pick, PickContext, Tried};
use crate::backend::Backend;
use crate::config::BalancerKind;

/// Fewest in-flight requests relative to weight.
#[derive(Debug)]
pub struct LeastConnections {}

impl LeastConnections {
    /// Builds it.
    pub fn new(_backends: &[Backend]) -> LeastConnections {
        LeastConnections {}
    }
}

impl Balancer for LeastConnections {
    fn pick(
        &self,
        backends: &[Backend],
        _ctx: &PickContext<'_>,
        limits: &Limits,
        tried: &Tried,
    ) -> Option<Pick> {
        (0..backends.len())
            .find(|&i| !tried.contains(i) && limits.can_take_new(&backends[i]))
            .map(Pick::plain)
    }
    fn kind(&self) -> BalancerKind {
        BalancerKind::LeastConnections
    }
}
