//! The configuration file: TOML in, validated [`Config`] out, or every error found with
//! its file, line and column.
//!
//! `raw.rs` mirrors the file with serde (unknown keys rejected, spans kept),
//! `validate.rs` checks meaning and collects every problem, `types.rs` holds the result,
//! `diagnostics.rs` turns byte spans into `file:line:col` messages.

mod diagnostics;
mod raw;
mod types;
mod validate;

use std::path::Path;

pub use diagnostics::{ConfigError, ConfigErrors};
pub use types::*;

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let source = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::single(ConfigError::without_position(
            &file,
            format!("cannot read: {e}"),
        ))
    })?;
    parse(&source, &file, path.parent().unwrap_or(Path::new(".")))
}

/// Validates config text. `file` names it in errors; relative paths in it (TLS files,
/// access log) are taken relative to `base_dir`.
pub fn parse(source: &str, file: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
    let raw = raw::parse(source, file)?;
    validate::validate(raw, source, file, base_dir)
}

#[cfg(test)]
mod tests;
