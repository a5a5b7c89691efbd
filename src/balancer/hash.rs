//! Consistent hashing (placeholder).
use super::{Balancer, KeyExtractor, Limits, Pick, PickContext, Tried};
use crate::backend::Backend;
use crate::config::BalancerKind;
/// Consistent hashing.
#[derive(Debug)]
pub struct ConsistentHash {}
impl ConsistentHash {
    /// Builds it.
    pub fn new(_backends: &[Backend], _key: KeyExtractor) -> ConsistentHash {
        ConsistentHash {}
    }
}
impl Balancer for ConsistentHash {
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
        BalancerKind::Hash
    }
}
