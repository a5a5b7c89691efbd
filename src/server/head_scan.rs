//! A second look at HTTP/1 request heads, for the ambiguities hyper's parser tolerates
//! and DESIGN §6 refuses: a head with both Content-Length and Transfer-Encoding (hyper
//! lets Transfer-Encoding win; a backend behind another proxy might not — the classic
//! smuggling set-up), and a bare LF line ending.
//!
//! The scanner sees the bytes of each client read that starts a new request (no request
//! in progress), up to the blank line that ends the head; it never looks into bodies.
//! Pipelined heads that arrive while a request is in progress are left to hyper, which
//! normalises them safely (chunked wins, the connection closes after the response).

/// Why a head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadProblem {
    /// Both Content-Length and Transfer-Encoding.
    LengthAndChunked,
    /// A line ended by LF alone.
    BareLf,
}

impl HeadProblem {
    /// The plain-text reason sent with the 400.
    pub fn reason(self) -> &'static str {
        match self {
            HeadProblem::LengthAndChunked => "both Content-Length and Transfer-Encoding\n",
            HeadProblem::BareLf => "line ending without CR\n",
        }
    }
}

/// Scanner state for one head.
#[derive(Debug, Default, Clone)]
pub struct HeadScan {
    scanning: bool,
    /// Nothing of this head has been fed yet.
    fresh: bool,
    line: [u8; 18],
    line_len: usize,
    prev_cr: bool,
    empty_line: bool,
    content_length: bool,
    transfer_encoding: bool,
    bare_lf: bool,
}

impl HeadScan {
    /// Starts scanning a new head.
    pub fn start(&mut self) {
        *self = HeadScan {
            scanning: true,
            fresh: true,
            empty_line: true,
            ..HeadScan::default()
        };
    }

    /// Whether a head is being scanned.
    pub fn is_scanning(&self) -> bool {
        self.scanning
    }

    /// Feeds bytes; returns the verdict once the head's blank line is seen. Jumps from
    /// line end to line end (memchr) and looks only at the start of each line.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Option<Result<(), HeadProblem>> {
        if !self.scanning {
            return None;
        }
        if std::mem::take(&mut self.fresh) {
            if let Some(verdict) = scan_whole(bytes) {
                self.scanning = false;
                return Some(verdict);
            }
        }
        while !bytes.is_empty() {
            let Some(i) = memchr::memchr(b'\n', bytes) else {
                self.take_line_bytes(bytes);
                return None;
            };
            let ended_by_cr = if i > 0 {
                bytes[i - 1] == b'\r'
            } else {
                self.prev_cr
            };
            if !ended_by_cr {
                self.bare_lf = true;
            }
            self.take_line_bytes(&bytes[..i]);
            self.end_of_line();
            if !self.scanning {
                return Some(self.verdict());
            }
            bytes = &bytes[i + 1..];
        }
        None
    }

    /// Part of the current line: only its first bytes are kept (enough to recognise the
    /// two header names), and whether it has anything but CR.
    fn take_line_bytes(&mut self, b: &[u8]) {
        let Some(&last) = b.last() else { return };
        self.prev_cr = last == b'\r';
        if self.empty_line && b.iter().any(|&c| c != b'\r') {
            self.empty_line = false;
        }
        // Only Content-Length and Transfer-Encoding lines matter: other lines are not
        // copied past their first byte.
        if self.line_len > 0 && !matches!(self.line[0], b'c' | b't') {
            return;
        }
        let room = if self.line_len == 0 && !matches!(b[0].to_ascii_lowercase(), b'c' | b't') {
            1
        } else {
            self.line.len() - self.line_len
        };
        for &c in b.iter().take(room) {
            self.line[self.line_len] = c.to_ascii_lowercase();
            self.line_len += 1;
        }
    }

    fn end_of_line(&mut self) {
        let line = &self.line[..self.line_len];
        if line.starts_with(b"content-length:") || line.starts_with(b"content-length ") {
            self.content_length = true;
        }
        if line.starts_with(b"transfer-encoding:") || line.starts_with(b"transfer-encoding ") {
            self.transfer_encoding = true;
        }
        if self.empty_line {
            self.scanning = false;
        }
        self.line_len = 0;
        self.prev_cr = false;
        self.empty_line = true;
    }

    fn verdict(&self) -> Result<(), HeadProblem> {
        if self.content_length && self.transfer_encoding {
            return Err(HeadProblem::LengthAndChunked);
        }
        if self.bare_lf {
            return Err(HeadProblem::BareLf);
        }
        Ok(())
    }
}

/// The verdict on a head that arrived whole in `bytes` (the common case), in one pass
/// over its line ends with no state kept between lines; `None` if the head's blank
/// line is not in `bytes`, which the line-by-line scanner then handles. Gives what
/// [`HeadScan::feed`] gives for the same bytes.
fn scan_whole(bytes: &[u8]) -> Option<Result<(), HeadProblem>> {
    let (mut length, mut chunked, mut bare_lf) = (false, false, false);
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', bytes) {
        let line = &bytes[start..end];
        start = end + 1;
        if line.last() != Some(&b'\r') {
            bare_lf = true;
        }
        let header_is = |name: &[u8]| {
            line.len() > name.len()
                && line[..name.len()].eq_ignore_ascii_case(name)
                && matches!(line[name.len()], b':' | b' ')
        };
        match line.first() {
            Some(b'c' | b'C') => length |= header_is(b"content-length"),
            Some(b't' | b'T') => chunked |= header_is(b"transfer-encoding"),
            _ => {}
        }
        if line.iter().all(|&c| c == b'\r') {
            return Some(if length && chunked {
                Err(HeadProblem::LengthAndChunked)
            } else if bare_lf {
                Err(HeadProblem::BareLf)
            } else {
                Ok(())
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole-head pass and the line-by-line scanner (fed a byte at a time) agree on
    /// every head of a corpus of line endings, names, cases and blank lines.
    #[test]
    fn whole_head_pass_agrees_with_the_line_scanner() {
        let lines: [&[u8]; 12] = [
            b"GET / HTTP/1.1",
            b"Host: a",
            b"Content-Length: 3",
            b"content-length : 3",
            b"CONTENT-LENGTHX: 3",
            b"Transfer-Encoding: chunked",
            b"transfer-encoding:chunked",
            b"Transfer-Encodin: x",
            b"Connection: close",
            b"c",
            b"t",
            b"\r",
        ];
        let ends: [&[u8]; 3] = [b"\r\n", b"\n", b"\r\r\n"];
        let mut checked = 0;
        for a in 0..lines.len() {
            for b in 0..lines.len() {
                for (ea, eb) in [(0, 0), (0, 1), (1, 0), (2, 0), (0, 2)] {
                    for blank in ends {
                        let mut head = Vec::new();
                        head.extend_from_slice(b"POST / HTTP/1.1\r\n");
                        head.extend_from_slice(lines[a]);
                        head.extend_from_slice(ends[ea]);
                        head.extend_from_slice(lines[b]);
                        head.extend_from_slice(ends[eb]);
                        head.extend_from_slice(blank);
                        head.extend_from_slice(b"transfer-encoding: x\n\n");
                        let bytewise: Vec<&[u8]> = head.chunks(1).collect();
                        assert_eq!(
                            scan(&[&head]),
                            scan(&bytewise),
                            "{}",
                            String::from_utf8_lossy(&head)
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 12 * 12 * 5 * 3);
    }

    fn scan(chunks: &[&[u8]]) -> Option<Result<(), HeadProblem>> {
        let mut s = HeadScan::default();
        s.start();
        let mut out = None;
        for c in chunks {
            if let Some(v) = s.feed(c) {
                out = Some(v);
            }
        }
        out
    }

    #[test]
    fn clean_head_passes() {
        let h: &[u8] = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(scan(&[h]), Some(Ok(())));
    }

    #[test]
    fn length_and_chunked_refused_even_split() {
        let a: &[u8] = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Len";
        let b: &[u8] = b"gth: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(scan(&[a, b]), Some(Err(HeadProblem::LengthAndChunked)));
    }

    #[test]
    fn bare_lf_refused() {
        let h: &[u8] = b"GET / HTTP/1.1\nHost: a\r\n\r\n";
        assert_eq!(scan(&[h]), Some(Err(HeadProblem::BareLf)));
    }

    #[test]
    fn body_is_not_scanned() {
        let h: &[u8] = b"POST / HTTP/1.1\r\nContent-Length: 40\r\n\r\ntransfer-encoding: x\n\n";
        assert_eq!(scan(&[h]), Some(Ok(())));
    }
}
