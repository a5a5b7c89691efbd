//! Validation (placeholder).
use std::path::Path;
use super::raw::RawConfig;
use super::{Config, ConfigErrors, ServerConfig};
/// Validates.
pub fn validate(_raw: RawConfig, _source: &str, _file: &str, _base: &Path) -> Result<Config, ConfigErrors> {
    Ok(Config { server: ServerConfig::default(), admin: None, listeners: vec![], pools: vec![] })
}
