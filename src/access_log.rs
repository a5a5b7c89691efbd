//! The access log: one line per request, written when the response completes (or the
//! client goes away), to stdout or a file.
//!
//! Lines go into a buffer behind a mutex held only for the copy, and a flusher task
//! writes the buffer out every [`FLUSH_INTERVAL`] and at shutdown, so a request never
//! waits for a write system call. The format is space-separated:
//!
//! `TIME CLIENT METHOD PATH STATUS POOL BACKEND DURATION_MS BYTES`
//!
//! with `-` for a field that does not apply (no backend was reached).

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::{Method, StatusCode};

use crate::config::AccessLogTarget;

/// How often buffered lines are written out.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// Buffered lines beyond this size are written out at once, by the request that
/// crossed it.
const BUFFER_LIMIT: usize = 64 * 1024;

/// An open access log.
pub struct AccessLog {
    buffer: Mutex<Vec<u8>>,
    out: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").finish_non_exhaustive()
    }
}

impl AccessLog {
    /// Opens the configured target; `None` for `off`.
    pub fn open(target: &AccessLogTarget) -> io::Result<Option<Arc<AccessLog>>> {
        let out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Off => return Ok(None),
            AccessLogTarget::Stdout => Box::new(io::stdout()),
            AccessLogTarget::File(p) => Box::new(open_append(p)?),
        };
        Ok(Some(Arc::new(AccessLog {
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
            Ok(mut b) if !b.is_empty() => std::mem::take(&mut *b),
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
        let ms = self.start.elapsed().as_secs_f64() * 1000.0;
        let line = format!(
            "{} {} {} {} {} {} {} {:.3} {}\n",
            humantime::format_rfc3339_millis(SystemTime::now()),
            self.client,
            self.method,
            self.path,
            self.status.as_u16(),
            self.pool.as_deref().unwrap_or("-"),
            self.backend.as_deref().unwrap_or("-"),
            ms,
            self.bytes,
        );
        self.log.push(line.as_bytes());
    }
}
