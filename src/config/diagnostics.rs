//! Config errors with positions: what `maitred check`, a failing start and a failed
//! reload show the user.
//!
//! Parsing and validation know byte spans; users want `file:line:col: message`. This
//! file owns that translation (1-based line and column, columns counted in characters)
//! and the error types every config stage returns.

use std::fmt;
use std::ops::Range;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// File name as given.
    pub file: String,
    /// 1-based line, 0 when the problem has no position.
    pub line: usize,
    /// 1-based column, 0 when the problem has no position.
    pub column: usize,
    /// What is wrong and what was expected.
    pub message: String,
}

impl ConfigError {
    /// An error about the file as a whole.
    pub fn without_position(file: &str, message: String) -> ConfigError {
        ConfigError {
            file: file.to_string(),
            line: 0,
            column: 0,
            message,
        }
    }

    /// An error at the start of `span`, a byte range into `source`.
    pub fn at(file: &str, source: &str, span: Range<usize>, message: String) -> ConfigError {
        let (line, column) = line_column(source, span.start);
        ConfigError {
            file: file.to_string(),
            line,
            column,
            message,
        }
    }
}

/// The 1-based line and column of byte `offset` in `source`. Columns count characters,
/// not bytes, so a position after non-ASCII text still lines up in an editor. An offset
/// past the end (toml reports end-of-file errors there) points just after the last
/// character; one inside a multi-byte character points at that character.
pub fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(source, offset.min(source.len()));
    let before = &source[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The largest char boundary at or below `offset` (`str::floor_char_boundary` is not
/// stable yet).
fn floor_char_boundary(source: &str, mut offset: usize) -> usize {
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

/// Every problem found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// One error.
    pub fn single(e: ConfigError) -> ConfigErrors {
        ConfigErrors(vec![e])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(line_column(src, 0), (1, 1));
        assert_eq!(line_column(src, 6), (2, 1));
        assert_eq!(line_column(src, 11), (2, 6));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let src = "x = \"é\" y";
        // 'y' starts at byte 9, after 8 characters: column 9, not 10.
        assert_eq!(line_column(src, 9), (1, 9));
    }

    #[test]
    fn offset_past_end_points_after_last_character() {
        assert_eq!(line_column("ab", 7), (1, 3));
    }

    #[test]
    fn error_displays_file_line_column() {
        let e = ConfigError::at("m.toml", "a\nbc", 3..4, "bad".to_string());
        assert_eq!(e.to_string(), "m.toml:2:2: bad");
    }
}
