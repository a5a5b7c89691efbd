//! Hot-path micro-benchmarks (placeholder).
fn main() {}
