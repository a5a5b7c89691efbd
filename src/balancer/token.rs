//! Cookie tokens (placeholder).
/// Key.
#[derive(Debug)]
pub struct AffinityKey {}
/// Token.
#[derive(Debug)]
pub struct Token {}
/// Error.
#[derive(Debug)]
pub struct TokenError {}
