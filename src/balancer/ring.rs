//! Consistent-hash ring (placeholder).
/// A ring.
#[derive(Debug)]
pub struct Ring {}
