//! `GET /metrics` (placeholder until the metrics exposition lands).
use crate::app::Daemon;
/// Renders metrics.
pub fn render(_daemon: &Daemon) -> Result<String, std::fmt::Error> {
    Ok(String::new())
}
