//! Sticky keys (placeholder).
use crate::config::HashKey;
/// Extracts a key.
#[derive(Debug, Clone)]
pub enum KeyExtractor {
    /// Client IP.
    ClientIp,
}
impl KeyExtractor {
    /// From config.
    pub fn from_config(_k: &HashKey) -> KeyExtractor {
        KeyExtractor::ClientIp
    }
}
