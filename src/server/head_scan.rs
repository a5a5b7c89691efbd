//! A second look at HTTP/1 request heads, for the ambiguities hyper's parser tolerates
//! and DESIGN §6 refuses: a head with both Content-Length and Transfer-Encoding (hyper
//! lets Transfer-Encoding win; a backend behind another proxy might not — the classic
//! smuggling set-up), a bare LF line ending, and a Content-Length that is not a number.
//!
//! The scanner sees every byte the client sends (fed from the connection's I/O wrapper)
//! and follows the request framing as hyper does, from one head to the next: it skips a
//! Content-Length body and walks a chunked one, so a head is judged however it arrives —
//! alone, pipelined behind another request and its body, coalesced in one read or split
//! across reads. Each finished head gives one verdict, in order; [`Verdicts`] hands them
//! to the service, which takes one per HTTP/1 request. The scanner stops for good at a
//! head it refuses (the connection closes after the 400), at a head that asks for an
//! upgrade (what follows may be a tunnel; a connection whose upgrade does not happen
//! closes after its answer), at the HTTP/2 preface, and at framing it cannot follow
//! (hyper refuses it too). A request the service gets with no verdict is refused.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// Why a head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadProblem {
    /// Both Content-Length and Transfer-Encoding.
    LengthAndChunked,
    /// A line ended by LF alone.
    BareLf,
    /// A Content-Length that is not a number, or values that differ.
    BadLength,
    /// A request whose head the scanner did not see end (it had stopped).
    Unscanned,
}

impl HeadProblem {
    /// The plain-text reason sent with the 400.
    pub fn reason(self) -> &'static str {
        match self {
            HeadProblem::LengthAndChunked => "both Content-Length and Transfer-Encoding\n",
            HeadProblem::BareLf => "line ending without CR\n",
            HeadProblem::BadLength => "bad Content-Length\n",
            HeadProblem::Unscanned => "request head not understood\n",
        }
    }

    fn code(self) -> u8 {
        match self {
            HeadProblem::LengthAndChunked => 1,
            HeadProblem::BareLf => 2,
            HeadProblem::BadLength => 3,
            HeadProblem::Unscanned => 4,
        }
    }

    fn from_code(code: u8) -> HeadProblem {
        match code {
            1 => HeadProblem::LengthAndChunked,
            2 => HeadProblem::BareLf,
            3 => HeadProblem::BadLength,
            _ => HeadProblem::Unscanned,
        }
    }
}

/// The scanner's verdicts on one connection's heads, taken by the service in order.
///
/// Written by the connection's I/O wrapper ([`Verdicts::note`]), read by its service
/// ([`Verdicts::take`]); both run on the connection's task, one after the other, so
/// `Relaxed` suffices. Only the first refused head is kept: the connection closes after
/// its answer, so no later request is served.
#[derive(Debug, Default)]
pub struct Verdicts {
    /// Heads scanned to their end.
    scanned: AtomicU64,
    /// Verdicts taken by the service.
    taken: AtomicU64,
    /// The number (from 1) of the first refused head; 0 = none.
    refused_at: AtomicU64,
    /// Its [`HeadProblem`] code.
    refused_why: AtomicU8,
}

impl Verdicts {
    /// The scanner finished a head.
    #[inline]
    pub fn note(&self, verdict: Result<(), HeadProblem>) {
        let n = self.scanned.load(Ordering::Relaxed) + 1;
        if let Err(p) = verdict {
            if self.refused_at.load(Ordering::Relaxed) == 0 {
                self.refused_why.store(p.code(), Ordering::Relaxed);
                self.refused_at.store(n, Ordering::Relaxed);
            }
        }
        self.scanned.store(n, Ordering::Relaxed);
    }

    /// The verdict on the head of the HTTP/1 request now starting.
    #[inline]
    pub fn take(&self) -> Result<(), HeadProblem> {
        let n = self.taken.load(Ordering::Relaxed) + 1;
        self.taken.store(n, Ordering::Relaxed);
        if n > self.scanned.load(Ordering::Relaxed) {
            return Err(HeadProblem::Unscanned);
        }
        if self.refused_at.load(Ordering::Relaxed) == n {
            return Err(HeadProblem::from_code(
                self.refused_why.load(Ordering::Relaxed),
            ));
        }
        Ok(())
    }

    /// A fresh scanner starts at a message boundary (a parked connection served again):
    /// whatever was scanned and not taken is scanned again.
    pub fn resync(&self) {
        self.scanned
            .store(self.taken.load(Ordering::Relaxed), Ordering::Relaxed);
        self.refused_at.store(0, Ordering::Relaxed);
    }
}

/// Where the scanner is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    /// Between messages: empty lines before a head are skipped (as httparse does).
    #[default]
    Idle,
    /// Inside a head.
    Head,
    /// Inside a Content-Length body: bytes left.
    Body(u64),
    /// Inside a chunked body.
    Chunked(Chunk),
    /// Not scanning any more.
    Stopped,
}

/// The chunked-body states, as hyper's decoder has them (so both agree where each
/// message ends); anything hyper refuses stops the scanner, hyper closing the
/// connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Start,
    Size(u64),
    SizeLws(u64),
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
}

/// The longest header line whose value is read (a Content-Length); a longer one is
/// refused.
const LINE_MAX: usize = 32;

/// What a head's lines say, gathered line by line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Facts {
    length: Length,
    chunked: bool,
    bare_lf: bool,
    upgrade: bool,
    preface: bool,
}

/// A head's Content-Length.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Length {
    #[default]
    Absent,
    Value(u64),
    Bad,
}

impl Facts {
    /// Notes one line (with any CRs before its LF); `len` is its whole length when only
    /// its first bytes are given.
    #[inline]
    fn line(&mut self, line: &[u8], len: usize, first: bool) {
        if first {
            self.preface = line.starts_with(b"PRI * HTTP/2.0");
            return;
        }
        match line.first() {
            Some(b'c' | b'C') if header_is(line, b"content-length") => {
                let n = if len > LINE_MAX {
                    None
                } else {
                    parse_length(&line[b"content-length".len()..])
                };
                self.length = match (self.length, n) {
                    (Length::Absent, Some(n)) => Length::Value(n),
                    (Length::Value(m), Some(n)) if m == n => Length::Value(n),
                    _ => Length::Bad,
                };
            }
            Some(b't' | b'T') => self.chunked |= header_is(line, b"transfer-encoding"),
            Some(b'u' | b'U') => self.upgrade |= header_is(line, b"upgrade"),
            _ => {}
        }
    }

    fn verdict(&self) -> Result<(), HeadProblem> {
        if self.length != Length::Absent && self.chunked {
            return Err(HeadProblem::LengthAndChunked);
        }
        if self.bare_lf {
            return Err(HeadProblem::BareLf);
        }
        if self.length == Length::Bad {
            return Err(HeadProblem::BadLength);
        }
        Ok(())
    }

    /// The verdict to give (none for the HTTP/2 preface) and where the scanner goes
    /// next.
    fn conclude(&self) -> (Option<Result<(), HeadProblem>>, Phase) {
        if self.preface {
            return (None, Phase::Stopped);
        }
        let verdict = self.verdict();
        let next = if verdict.is_err() || self.upgrade {
            Phase::Stopped
        } else if self.chunked {
            Phase::Chunked(Chunk::Start)
        } else {
            match self.length {
                Length::Value(n) if n > 0 => Phase::Body(n),
                _ => Phase::Idle,
            }
        };
        (Some(verdict), next)
    }
}

/// `line` is a header `name` (any case) followed by its colon, or by the whitespace
/// hyper refuses before one.
fn header_is(line: &[u8], name: &[u8]) -> bool {
    line.len() > name.len()
        && line[..name.len()].eq_ignore_ascii_case(name)
        && matches!(line[name.len()], b':' | b' ')
}

/// A Content-Length value as hyper reads it: digits, or a list of equal digit runs.
/// `rest` is the line after the name: colon, value, CRs.
fn parse_length(rest: &[u8]) -> Option<u64> {
    let value = rest.strip_prefix(b":")?;
    let mut out = None;
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part
            .iter()
            .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
        if out.is_some_and(|o| o != n) {
            return None;
        }
        out = Some(n);
    }
    out
}

/// Scanner state for one connection.
#[derive(Debug, Default, Clone)]
pub struct HeadScan {
    phase: Phase,
    facts: Facts,
    /// The first bytes of the current line, when they may matter.
    line: [u8; LINE_MAX],
    line_len: usize,
    /// The current line's whole length so far.
    line_total: usize,
    /// The current line's first bytes are kept.
    keep: bool,
    /// The current line is the head's first (the request line).
    first_line: bool,
    prev_cr: bool,
    empty_line: bool,
}

impl HeadScan {
    /// Feeds bytes the client sent; `on_head` gets the verdict on each head that ends
    /// in them, in order. A head that arrives whole goes through one pass over its line
    /// ends; a split one goes line by line.
    pub fn feed(&mut self, mut bytes: &[u8], mut on_head: impl FnMut(Result<(), HeadProblem>)) {
        while !bytes.is_empty() {
            bytes = match self.phase {
                Phase::Stopped => return,
                Phase::Idle => self.idle(bytes, &mut on_head),
                Phase::Head => self.head(bytes, &mut on_head),
                Phase::Body(left) => {
                    let n = left.min(bytes.len() as u64);
                    self.phase = match left - n {
                        0 => Phase::Idle,
                        more => Phase::Body(more),
                    };
                    &bytes[n as usize..]
                }
                Phase::Chunked(c) => self.chunked(c, bytes),
            };
        }
    }

    /// Skips empty lines; a head starts at the first other byte.
    fn idle<'a>(
        &mut self,
        bytes: &'a [u8],
        on_head: &mut impl FnMut(Result<(), HeadProblem>),
    ) -> &'a [u8] {
        let Some(start) = bytes.iter().position(|&b| b != b'\r' && b != b'\n') else {
            return &[];
        };
        let bytes = &bytes[start..];
        if let Some((facts, len)) = scan_whole(bytes) {
            self.finish(facts, on_head);
            return &bytes[len..];
        }
        *self = HeadScan {
            phase: Phase::Head,
            first_line: true,
            empty_line: true,
            ..HeadScan::default()
        };
        bytes
    }

    fn finish(&mut self, facts: Facts, on_head: &mut impl FnMut(Result<(), HeadProblem>)) {
        let (verdict, next) = facts.conclude();
        if let Some(v) = verdict {
            on_head(v);
        }
        self.phase = next;
    }

    /// Part of a head, line by line: jumps from line end to line end (memchr) and keeps
    /// only the first bytes of the lines that matter.
    fn head<'a>(
        &mut self,
        mut bytes: &'a [u8],
        on_head: &mut impl FnMut(Result<(), HeadProblem>),
    ) -> &'a [u8] {
        while !bytes.is_empty() {
            let Some(i) = memchr::memchr(b'\n', bytes) else {
                self.take_line_bytes(bytes);
                return &[];
            };
            let ended_by_cr = if i > 0 {
                bytes[i - 1] == b'\r'
            } else {
                self.prev_cr
            };
            if !ended_by_cr {
                self.facts.bare_lf = true;
            }
            self.take_line_bytes(&bytes[..i]);
            bytes = &bytes[i + 1..];
            if self.end_of_line() {
                let facts = self.facts;
                self.finish(facts, on_head);
                return bytes;
            }
        }
        bytes
    }

    /// Part of the current line: only the first bytes of lines that may matter are
    /// kept, and whether it has anything but CR.
    fn take_line_bytes(&mut self, b: &[u8]) {
        let Some(&last) = b.last() else { return };
        self.prev_cr = last == b'\r';
        if self.empty_line && b.iter().any(|&c| c != b'\r') {
            self.empty_line = false;
        }
        if self.line_total == 0 {
            self.keep = self.first_line || matches!(b[0] | 0x20, b'c' | b't' | b'u');
        }
        self.line_total += b.len();
        if self.keep {
            let room = self.line.len() - self.line_len;
            let n = room.min(b.len());
            self.line[self.line_len..self.line_len + n].copy_from_slice(&b[..n]);
            self.line_len += n;
        }
    }

    /// A line ended; returns whether it was the head's blank line.
    fn end_of_line(&mut self) -> bool {
        if self.empty_line {
            return true;
        }
        let line = &self.line[..self.line_len];
        self.facts.line(line, self.line_total, self.first_line);
        self.first_line = false;
        self.line_len = 0;
        self.line_total = 0;
        self.prev_cr = false;
        self.empty_line = true;
        false
    }

    /// Part of a chunked body, byte by byte but for chunk data and trailer lines.
    fn chunked<'a>(&mut self, mut state: Chunk, mut bytes: &'a [u8]) -> &'a [u8] {
        while let Some((&b, rest)) = bytes.split_first() {
            let next = match state {
                Chunk::Data(left) => {
                    let n = left.min(bytes.len() as u64);
                    bytes = &bytes[n as usize..];
                    state = match left - n {
                        0 => Chunk::DataCr,
                        more => Chunk::Data(more),
                    };
                    continue;
                }
                Chunk::Trailer => {
                    let Some(i) = memchr::memchr(b'\r', bytes) else {
                        bytes = &[];
                        continue;
                    };
                    bytes = &bytes[i + 1..];
                    state = Chunk::TrailerLf;
                    continue;
                }
                other => chunk_step(other, b),
            };
            bytes = rest;
            match next {
                Some(Some(s)) => state = s,
                Some(None) => {
                    self.phase = Phase::Idle;
                    return bytes;
                }
                None => {
                    self.phase = Phase::Stopped;
                    return &[];
                }
            }
        }
        self.phase = Phase::Chunked(state);
        bytes
    }
}

/// One byte of a chunked body outside chunk data and trailer lines: the next state,
/// `Some(None)` at the end of the body, `None` where hyper refuses it.
fn chunk_step(state: Chunk, b: u8) -> Option<Option<Chunk>> {
    let size_line = |size: u64| match b {
        b'\t' | b' ' => Some(Some(Chunk::SizeLws(size))),
        b';' => Some(Some(Chunk::Extension(size))),
        b'\r' => Some(Some(Chunk::SizeLf(size))),
        _ => None,
    };
    let digit = (b as char).to_digit(16).map(u64::from);
    match state {
        Chunk::Start => digit.map(|d| Some(Chunk::Size(d))),
        Chunk::Size(size) => match digit {
            Some(d) => Some(Some(Chunk::Size(size.checked_mul(16)?.checked_add(d)?))),
            None => size_line(size),
        },
        Chunk::SizeLws(size) => size_line(size),
        Chunk::Extension(size) => match b {
            b'\r' => Some(Some(Chunk::SizeLf(size))),
            b'\n' => None,
            _ => Some(Some(Chunk::Extension(size))),
        },
        Chunk::SizeLf(size) => match (b, size) {
            (b'\n', 0) => Some(Some(Chunk::EndCr)),
            (b'\n', n) => Some(Some(Chunk::Data(n))),
            _ => None,
        },
        Chunk::DataCr => (b == b'\r').then_some(Some(Chunk::DataLf)),
        Chunk::DataLf => (b == b'\n').then_some(Some(Chunk::Start)),
        Chunk::EndCr => Some(Some(if b == b'\r' {
            Chunk::EndLf
        } else {
            Chunk::Trailer
        })),
        Chunk::TrailerLf => (b == b'\n').then_some(Some(Chunk::EndCr)),
        Chunk::EndLf => (b == b'\n').then_some(None),
        Chunk::Data(_) | Chunk::Trailer => None,
    }
}

/// The facts of a head that arrived whole at the start of `bytes` (the common case)
/// and its length, in one pass over its line ends; `None` if its blank line is not in
/// `bytes`, which the line-by-line scanner then handles. Gives what the line-by-line
/// scanner gives for the same bytes.
fn scan_whole(bytes: &[u8]) -> Option<(Facts, usize)> {
    let mut facts = Facts::default();
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', bytes) {
        let line = &bytes[start..end];
        let first = start == 0;
        start = end + 1;
        if line.last() != Some(&b'\r') {
            facts.bare_lf = true;
        }
        if line.iter().all(|&c| c == b'\r') {
            return Some((facts, start));
        }
        facts.line(line, line.len(), first);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole-head pass and the line-by-line scanner (fed a byte at a time) agree on
    /// every head of a corpus of line endings, names, cases and blank lines, and on
    /// what follows it.
    #[test]
    fn whole_head_pass_agrees_with_the_line_scanner() {
        let lines: [&[u8]; 14] = [
            b"GET / HTTP/1.1",
            b"Host: a",
            b"Content-Length: 3",
            b"content-length : 3",
            b"CONTENT-LENGTHX: 3",
            b"Transfer-Encoding: chunked",
            b"transfer-encoding:chunked",
            b"Transfer-Encodin: x",
            b"Connection: close",
            b"Content-Length: 3, 3",
            b"Upgrade: x",
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
                        head.extend_from_slice(b"3\r\nabc\r\n0\r\n\r\ntransfer-encoding: x\n\n");
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
        assert_eq!(checked, 14 * 14 * 5 * 3);
    }

    /// Every verdict given for `chunks` fed in order.
    fn scan(chunks: &[&[u8]]) -> Vec<Result<(), HeadProblem>> {
        let mut s = HeadScan::default();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |v| out.push(v));
        }
        out
    }

    /// The verdicts for `bytes` fed whole, a byte at a time, and cut at every point.
    fn scan_every_way(bytes: &[u8]) -> Vec<Result<(), HeadProblem>> {
        let whole = scan(&[bytes]);
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(scan(&bytewise), whole, "byte by byte");
        for cut in 1..bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(scan(&[a, b]), whole, "cut at {cut}");
        }
        whole
    }

    #[test]
    fn clean_head_passes() {
        let h: &[u8] = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(scan_every_way(h), [Ok(())]);
    }

    #[test]
    fn length_and_chunked_refused_even_split() {
        let a: &[u8] = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Len";
        let b: &[u8] = b"gth: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(scan(&[a, b]), [Err(HeadProblem::LengthAndChunked)]);
    }

    #[test]
    fn bare_lf_refused() {
        let h: &[u8] = b"GET / HTTP/1.1\nHost: a\r\n\r\n";
        assert_eq!(scan_every_way(h), [Err(HeadProblem::BareLf)]);
    }

    #[test]
    fn body_is_not_scanned() {
        let h: &[u8] = b"POST / HTTP/1.1\r\nContent-Length: 40\r\n\r\ntransfer-encoding: x\n\n";
        assert_eq!(scan_every_way(h), [Ok(())]);
    }

    #[test]
    fn pipelined_heads_after_a_length_body_are_judged() {
        let h: &[u8] = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
                        GET /b HTTP/1.1\r\nHost: a\r\n\r\n\
                        GET /c HTTP/1.1\nHost: a\n\n";
        assert_eq!(
            scan_every_way(h),
            [Ok(()), Ok(()), Err(HeadProblem::BareLf)]
        );
    }

    #[test]
    fn pipelined_heads_after_a_chunked_body_are_judged() {
        let h: &[u8] = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                        5;ext=1\r\nGET /\r\nA \r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n\
                        \r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            scan_every_way(h),
            [Ok(()), Err(HeadProblem::LengthAndChunked)]
        );
    }

    #[test]
    fn scanning_stops_at_an_upgrade_a_refused_head_and_bad_framing() {
        let upgrade: &[u8] = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\nGET / HTTP/1.1\n\n";
        assert_eq!(scan_every_way(upgrade), [Ok(())]);
        let refused: &[u8] = b"GET / HTTP/1.1\nHost: a\n\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(scan_every_way(refused), [Err(HeadProblem::BareLf)]);
        let bad_chunk: &[u8] =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(scan_every_way(bad_chunk), [Ok(())]);
        let preface: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00";
        assert_eq!(scan_every_way(preface), []);
    }

    #[test]
    fn content_lengths_are_read_as_hyper_reads_them() {
        let head = |cl: &str| format!("POST / HTTP/1.1\r\n{cl}\r\n\r\n");
        for ok in [
            "Content-Length: 0",
            "content-length:0",
            "Content-Length: 2, 2\r\nContent-Length: 2",
        ] {
            let h = head(ok);
            let v = scan_every_way(h.as_bytes());
            assert_eq!(v.first(), Some(&Ok(())), "{ok}");
        }
        for bad in [
            "Content-Length: +1",
            "Content-Length: 1, 2",
            "Content-Length: 1\r\nContent-Length: 2",
            "Content-Length:",
            "Content-Length: 99999999999999999999",
            "Content-Length:                  1",
        ] {
            let h = head(bad);
            assert_eq!(
                scan_every_way(h.as_bytes()),
                [Err(HeadProblem::BadLength)],
                "{bad}"
            );
        }
    }

    #[test]
    fn verdicts_go_to_requests_in_order() {
        let v = Verdicts::default();
        v.note(Ok(()));
        v.note(Err(HeadProblem::BareLf));
        assert_eq!(v.take(), Ok(()));
        assert_eq!(v.take(), Err(HeadProblem::BareLf));
        assert_eq!(v.take(), Err(HeadProblem::Unscanned));
        v.resync();
        v.note(Ok(()));
        assert_eq!(v.take(), Ok(()));
    }
}
