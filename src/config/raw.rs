//! Serde mirror of the file (placeholder).
use super::ConfigErrors;
/// The parsed file.
#[derive(Debug)]
pub struct RawConfig {}
/// Parses TOML.
pub fn parse(_source: &str, _file: &str) -> Result<RawConfig, ConfigErrors> {
    Ok(RawConfig {})
}
