//! Cookie affinity (placeholder).
use super::{Balancer, Limits, Pick, PickContext, Tried};
use crate::backend::Backend;
use crate::config::{BalancerKind, PoolConfig};
/// Cookie affinity.
#[derive(Debug)]
pub struct CookieAffinity {
    fallback: Box<dyn Balancer>,
}
impl CookieAffinity {
    /// Builds it.
    pub fn new(
        _pool: &PoolConfig,
        _backends: &[Backend],
        fallback: Box<dyn Balancer>,
    ) -> CookieAffinity {
        CookieAffinity { fallback }
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
        self.fallback.pick(backends, ctx, limits, tried)
    }
    fn kind(&self) -> BalancerKind {
        BalancerKind::CookieAffinity
    }
}
