//! The access log: one line per request, written when the response completes (or the
//! client goes away), to stdout or a file.
//!
//! Lines are formatted in a buffer each worker reuses (no allocation, the time of day
//! formatted once a second), go into a shared buffer behind a mutex held only for the
//! copy, and a flusher task writes that out every [`FLUSH_INTERVAL`] and at shutdown,
//! so a request never waits for a write system call. The format is space-separated:
//!
//! `TIME CLIENT METHOD PATH STATUS POOL BACKEND DURATION_MS BYTES`
//!
//! with `-` for a field that does not apply (no backend was reached). With
//! `log_format = "json"` each line is one JSON object with the same fields, named
//! `time`, `client`, `method`, `path`, `status`, `pool`, `backend`, `duration_ms` and
//! `bytes` (`null` for a field that does not apply).

use std::cell::RefCell;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};

use crate::config::{AccessLogTarget, LogFormat};
use crate::proxy::headers::IpText;

/// How often buffered lines are written out.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// Buffered lines beyond this size are written out at once, by the request that
/// crossed it.
const BUFFER_LIMIT: usize = 64 * 1024;

/// An open access log.
pub struct AccessLog {
    format: LogFormat,
    buffer: Mutex<Vec<u8>>,
    out: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").finish_non_exhaustive()
    }
}

impl AccessLog {
    /// Opens the configured target, to write lines in `format`; `None` for `off`.
    pub fn open(target: &AccessLogTarget, format: LogFormat) -> io::Result<Option<Arc<AccessLog>>> {
        let out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Off => return Ok(None),
            AccessLogTarget::Stdout => Box::new(io::stdout()),
            AccessLogTarget::File(p) => Box::new(open_append(p)?),
        };
        Ok(Some(Arc::new(AccessLog {
            format,
            buffer: Mutex::new(Vec::with_capacity(BUFFER_LIMIT)),
            out: Mutex::new(out),
        })))
    }

    fn push(&self, line: &[u8]) {
        let full = {
            let Ok(mut b) = self.buffer.lock() else {
                return;
            };
            b.extend_from_slice(line);
            b.len() >= BUFFER_LIMIT
        };
        if full {
            self.flush();
        }
    }

    /// Writes buffered lines out.
    pub fn flush(&self) {
        let pending = match self.buffer.lock() {
            Ok(mut b) if !b.is_empty() => {
                let room = b.capacity();
                std::mem::replace(&mut *b, Vec::with_capacity(room))
            }
            _ => return,
        };
        if let Ok(mut out) = self.out.lock() {
            let _ = out.write_all(&pending).and_then(|_| out.flush());
        }
    }
}

fn open_append(p: &Path) -> io::Result<std::fs::File> {
    OpenOptions::new().create(true).append(true).open(p)
}

/// One request's line, written when dropped.
#[derive(Debug)]
pub struct Pending {
    log: Arc<AccessLog>,
    start: Instant,
    client: IpAddr,
    method: Method,
    path: String,
    /// Response status.
    pub status: StatusCode,
    pool: Option<Arc<str>>,
    /// Backend that served the request.
    pub backend: Option<Arc<str>>,
    /// Response body bytes sent.
    pub bytes: u64,
}

impl Pending {
    /// Starts a line for a request.
    pub fn new(
        log: &Arc<AccessLog>,
        start: Instant,
        client: IpAddr,
        method: &Method,
        path: &str,
        pool: Option<Arc<str>>,
    ) -> Box<Pending> {
        Box::new(Pending {
            log: Arc::clone(log),
            start,
            client,
            method: method.clone(),
            path: path.to_string(),
            status: StatusCode::OK,
            pool,
            backend: None,
            bytes: 0,
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let (now, took) = (SystemTime::now(), self.start.elapsed());
        let written = LINE.try_with(|line| {
            let Ok(mut line) = line.try_borrow_mut() else {
                return false;
            };
            let Line { text, clock } = &mut *line;
            text.clear();
            self.format(text, clock, now, took);
            self.log.push(text);
            true
        });
        if written != Ok(true) {
            // The thread's buffer is gone (thread exit) or in use: a buffer of its own.
            let mut text = Vec::new();
            self.format(&mut text, &mut Clock::new(), now, took);
            self.log.push(&text);
        }
    }
}

thread_local! {
    /// Each worker formats its lines in one reused buffer, with the time of day of the
    /// current second kept formatted.
    static LINE: RefCell<Line> = const {
        RefCell::new(Line { text: Vec::new(), clock: Clock::new() })
    };
}

/// Frees the current worker's line buffer; called once when the worker stops.
pub fn clear_worker_buffer() {
    let _ = LINE.try_with(|l| {
        if let Ok(mut l) = l.try_borrow_mut() {
            l.text = Vec::new();
        }
    });
}

/// A worker's line buffer.
struct Line {
    text: Vec<u8>,
    clock: Clock,
}

/// `YYYY-MM-DDTHH:MM:SS` of one second (UTC), formatted once per second.
struct Clock {
    second: u64,
    text: [u8; 19],
}

impl Clock {
    /// A clock with no second formatted yet.
    const fn new() -> Clock {
        Clock {
            second: u64::MAX,
            text: [0; 19],
        }
    }

    /// Appends `now` as RFC 3339 UTC with milliseconds.
    fn write(&mut self, out: &mut Vec<u8>, now: SystemTime) {
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        if since.as_secs() != self.second {
            let whole = UNIX_EPOCH + Duration::from_secs(since.as_secs());
            let formatted = humantime::format_rfc3339_seconds(whole).to_string();
            if let Some(text) = formatted.as_bytes().get(..19) {
                self.text.copy_from_slice(text);
                self.second = since.as_secs();
            }
        }
        out.extend_from_slice(&self.text);
        out.push(b'.');
        push_padded(out, since.subsec_millis());
        out.push(b'Z');
    }
}

/// Appends `n` (below 1,000) as three digits.
fn push_padded(out: &mut Vec<u8>, n: u32) {
    out.extend_from_slice(&[
        b'0' + (n / 100 % 10) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]);
}

impl Pending {
    /// The line in the log's format.
    fn format(&self, out: &mut Vec<u8>, clock: &mut Clock, now: SystemTime, took: Duration) {
        match self.log.format {
            LogFormat::Text => self.format_text(out, clock, now, took),
            LogFormat::Json => self.format_json(out, clock, now, took),
        }
    }

    /// The text line: `TIME CLIENT METHOD PATH STATUS POOL BACKEND DURATION_MS BYTES`.
    fn format_text(&self, out: &mut Vec<u8>, clock: &mut Clock, now: SystemTime, took: Duration) {
        clock.write(out, now);
        out.push(b' ');
        out.extend_from_slice(IpText::new(self.client).as_ref());
        out.push(b' ');
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.path.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.pool.as_deref().unwrap_or("-").as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.backend.as_deref().unwrap_or("-").as_bytes());
        let micros = took.as_micros();
        let _ = write!(out, " {}.", micros / 1000);
        push_padded(out, (micros % 1000) as u32);
        let _ = writeln!(out, " {}", self.bytes);
    }

    /// The JSON line: the text line's fields, named, strings escaped.
    fn format_json(&self, out: &mut Vec<u8>, clock: &mut Clock, now: SystemTime, took: Duration) {
        out.extend_from_slice(b"{\"time\":\"");
        clock.write(out, now);
        out.extend_from_slice(b"\",\"client\":\"");
        out.extend_from_slice(IpText::new(self.client).as_ref());
        out.extend_from_slice(b"\",\"method\":");
        let _ = serde_json::to_writer(&mut *out, self.method.as_str());
        out.extend_from_slice(b",\"path\":");
        let _ = serde_json::to_writer(&mut *out, &self.path);
        let _ = write!(out, ",\"status\":{},\"pool\":", self.status.as_u16());
        let _ = serde_json::to_writer(&mut *out, &self.pool.as_deref());
        out.extend_from_slice(b",\"backend\":");
        let _ = serde_json::to_writer(&mut *out, &self.backend.as_deref());
        let micros = took.as_micros();
        let _ = write!(out, ",\"duration_ms\":{}.", micros / 1000);
        push_padded(out, (micros % 1000) as u32);
        let _ = writeln!(out, ",\"bytes\":{}}}", self.bytes);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The line as it was first written with `format!`, the reference.
    fn reference(p: &Pending, now: SystemTime, took: Duration) -> String {
        format!(
            "{} {} {} {} {} {} {} {:.3} {}\n",
            humantime::format_rfc3339_millis(now),
            p.client,
            p.method,
            p.path,
            p.status.as_u16(),
            p.pool.as_deref().unwrap_or("-"),
            p.backend.as_deref().unwrap_or("-"),
            took.as_micros() as f64 / 1000.0,
            p.bytes,
        )
    }

    #[test]
    fn lines_match_the_reference_format() {
        let log = Arc::new(AccessLog {
            format: LogFormat::Text,
            buffer: Mutex::new(Vec::new()),
            out: Mutex::new(Box::new(io::sink())),
        });
        let mut clock = Clock::new();
        let base = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        let cases = [
            (
                "10.1.2.3",
                "GET",
                "/",
                Some("web"),
                Some("10.0.0.1:80"),
                0,
                5,
            ),
            ("::1", "POST", "/a?b=c", None, None, 999_999, 0),
            (
                "192.168.0.254",
                "DELETE",
                "/x/y",
                Some("p"),
                None,
                1_234_567,
                1 << 40,
            ),
        ];
        for (i, (ip, method, path, pool, backend, micros, bytes)) in cases.into_iter().enumerate() {
            let mut p = Pending::new(
                &log,
                Instant::now(),
                ip.parse().unwrap(),
                &method.parse().unwrap(),
                path,
                pool.map(Arc::from),
            );
            p.backend = backend.map(Arc::from);
            p.bytes = bytes;
            p.status = StatusCode::from_u16(200 + i as u16).unwrap();
            // Within one second, across seconds, and with each millisecond digit.
            for offset_ms in [0, 7, 89, 999, 1_000, 61_001] {
                let now = base + Duration::from_millis(offset_ms);
                let took = Duration::from_micros(micros);
                let mut out = Vec::new();
                p.format(&mut out, &mut clock, now, took);
                assert_eq!(String::from_utf8(out).unwrap(), reference(&p, now, took));
            }
        }
    }

    #[test]
    fn json_lines_are_objects_with_the_text_fields() {
        let log = Arc::new(AccessLog {
            format: LogFormat::Json,
            buffer: Mutex::new(Vec::new()),
            out: Mutex::new(Box::new(io::sink())),
        });
        let mut p = Pending::new(
            &log,
            Instant::now(),
            "10.1.2.3".parse().unwrap(),
            &Method::GET,
            "/a\"b\\c?d=é",
            Some(Arc::from("web")),
        );
        p.status = StatusCode::NOT_FOUND;
        p.bytes = 42;
        let now = UNIX_EPOCH + Duration::from_millis(1_795_000_000_007);
        let mut out = Vec::new();
        p.format(
            &mut out,
            &mut Clock::new(),
            now,
            Duration::from_micros(1_234_567),
        );
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["time"], humantime::format_rfc3339_millis(now).to_string());
        assert_eq!(v["client"], "10.1.2.3");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/a\"b\\c?d=é");
        assert_eq!(v["status"], 404);
        assert_eq!(v["pool"], "web");
        assert_eq!(v["backend"], serde_json::Value::Null);
        assert_eq!(v["duration_ms"], 1234.567);
        assert_eq!(v["bytes"], 42);
    }
}
