//! The admin listener (DESIGN §7): status as JSON, Prometheus metrics, the dashboard,
//! runtime drain / disable / enable, and reload.
//!
//! It runs on the control runtime, never on the workers, and reads the same snapshot
//! and atomics the request path writes. Every request first passes the guard against
//! web pages (`guard.rs`: its Host must name this listener, a POST's Origin must be
//! its own). Mutating endpoints need the bearer token when one is configured (checked
//! before anything else about the request, so a caller without it learns nothing about
//! pools); an unknown pool, backend or action is a 404. A backend address
//! in a path may be plain (`127.0.0.1:9001`) or percent-encoded (`127.0.0.1%3A9001`).

mod guard;
mod status;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::AdminState;
use crate::reload_report::ReloadReport;
use crate::shared::Shared;
use crate::shutdown::Shutdown;

/// What the admin listener needs of the running daemon. The daemon implements it and
/// starts, moves and stops the listener; this module knows the daemon only through it,
/// so the dependency runs one way.
pub trait Control: Send + Sync + 'static {
    /// The live snapshot and the daemon-wide counters.
    fn shared(&self) -> &Shared;

    /// The local address client listener `name` is bound to (the real port with port 0).
    fn listener_addr(&self, name: &str) -> Option<SocketAddr>;

    /// Reloads from the config file, the same path as SIGHUP; with `dry_run`, validates
    /// and reports without applying. A refusal is one message per problem (the reload
    /// path has logged them already).
    fn reload(
        self: &Arc<Self>,
        dry_run: bool,
    ) -> impl Future<Output = Result<ReloadReport, Vec<String>>> + Send + '_;
}

/// How long an admin client may take to send a request head, or to start the next one.
const ADMIN_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The longest an admin connection lives.
const ADMIN_CONN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

/// Serves the admin listener until stopped.
pub async fn serve<D: Control>(
    daemon: Arc<D>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    mut shutdown: Shutdown,
) {
    let listener_addr = listener.local_addr().ok();
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = crate::shutdown::flag_set(&mut stop) => return,
            _ = shutdown.wait() => return,
        };
        let Some(local) = stream.local_addr().ok().or(listener_addr) else {
            continue;
        };
        let daemon = Arc::clone(&daemon);
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let daemon = Arc::clone(&daemon);
                async move { Ok::<_, std::convert::Infallible>(handle(&daemon, req, local).await) }
            });
            // Bounded like every wait: a head (or the next one) within
            // ADMIN_HEADER_TIMEOUT, a connection for at most ADMIN_CONN_LIFETIME (a
            // dashboard simply reconnects).
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(ADMIN_CONN_LIFETIME, conn).await;
        });
    }
}

/// Answers one admin request that reached the listener at `local`.
pub async fn handle<D: Control>(
    daemon: &Arc<D>,
    req: Request<Incoming>,
    local: SocketAddr,
) -> Response<Full<Bytes>> {
    if let Err(refusal) = check_guard(daemon.as_ref(), &req, local) {
        return refuse(refusal);
    }
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET, []) => html(include_str!("dashboard.html")),
        (&Method::GET, ["status"]) => json(StatusCode::OK, &status::status(daemon.as_ref())),
        (&Method::GET, ["metrics"]) => match crate::metrics::render(daemon.shared()) {
            Ok(body) => respond(StatusCode::OK, crate::metrics::CONTENT_TYPE, body),
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "metrics encoding failed\n",
            ),
        },
        (&Method::POST, ["reload"]) => {
            if let Some(denied) = check_token(daemon.as_ref(), &req) {
                return denied;
            }
            let dry_run = req.uri().query().is_some_and(|q| {
                q.split('&')
                    .any(|kv| kv == "dry_run=true" || kv == "dry_run=1")
            });
            match daemon.reload(dry_run).await {
                Ok(report) => json(
                    StatusCode::OK,
                    &serde_json::json!({"applied": !dry_run, "report": report}),
                ),
                Err(e) => json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &serde_json::json!({"applied": false, "errors": e}),
                ),
            }
        }
        (&Method::POST, ["pools", pool, "backends", addr, action]) => {
            if let Some(denied) = check_token(daemon.as_ref(), &req) {
                return denied;
            }
            set_state(daemon.as_ref(), pool, addr, action)
        }
        (&Method::GET | &Method::HEAD, ["reload"] | ["pools", _, "backends", _, _]) => {
            text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn set_state(daemon: &impl Control, pool: &str, addr: &str, action: &str) -> Response<Full<Bytes>> {
    let state = match action {
        "drain" => AdminState::Drain,
        "disable" => AdminState::Disabled,
        "enable" => AdminState::Active,
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                "unknown action; expected drain, disable or enable\n",
            );
        }
    };
    let (pool, addr) = (percent_decode(pool), percent_decode(addr));
    let snap = daemon.shared().live.load();
    let Some(p) = snap.pool(&pool) else {
        return text(StatusCode::NOT_FOUND, "unknown pool\n");
    };
    let Some(b) = p.backends.iter().find(|b| *b.name == *addr) else {
        return text(StatusCode::NOT_FOUND, "unknown backend\n");
    };
    b.live.set_admin(state);
    tracing::info!(pool = %p.name, backend = %b.name, state = state.name(), "backend state set through the admin API");
    json(StatusCode::OK, &status::backend_action(&p.name, b))
}

/// Decodes `%XX` escapes in one path segment, so a backend address can be given as
/// `127.0.0.1%3A9001` or `127.0.0.1:9001`. A `%` not followed by two hex digits is kept.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The DNS-rebinding and cross-origin checks, against the running `allowed_hosts`.
fn check_guard(
    daemon: &impl Control,
    req: &Request<Incoming>,
    local: SocketAddr,
) -> Result<(), guard::Refusal> {
    let snap = daemon.shared().live.load();
    let allowed = snap
        .config
        .admin
        .as_ref()
        .map_or(&[][..], |a| a.allowed_hosts.as_slice());
    let head = guard::RequestHead {
        method: req.method(),
        version: req.version(),
        authority: req.uri().authority().map(|a| a.as_str()),
        headers: req.headers(),
    };
    guard::check(head, local, allowed)
}

fn refuse(refusal: guard::Refusal) -> Response<Full<Bytes>> {
    respond(
        refusal.status(),
        "text/plain; charset=utf-8",
        format!("{refusal}\n"),
    )
}

/// `None` when the request may proceed; otherwise the 401 to send.
fn check_token(daemon: &impl Control, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let snap = daemon.shared().live.load();
    let token = snap.config.admin.as_ref()?.token.as_ref()?;
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    // Compare MACs of both under a throwaway key: constant time, whatever the lengths.
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"maitred admin token check");
    let expected = ring::hmac::sign(&key, token.as_bytes());
    let ok = presented
        .is_some_and(|p| ring::hmac::verify(&key, p.as_bytes(), expected.as_ref()).is_ok());
    if ok {
        return None;
    }
    let mut r = text(StatusCode::UNAUTHORIZED, "a bearer token is required\n");
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(r)
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body)
}

fn html(body: &'static str) -> Response<Full<Bytes>> {
    respond(StatusCode::OK, "text/html; charset=utf-8", body)
}

fn json(status: StatusCode, v: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(v).unwrap_or_else(|_| b"{}".to_vec());
    respond(status, "application/json", body)
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_decode_handles_escaped_plain_and_broken_input() {
        assert_eq!(percent_decode("127.0.0.1%3A9001"), "127.0.0.1:9001");
        assert_eq!(percent_decode("127.0.0.1:9001"), "127.0.0.1:9001");
        assert_eq!(percent_decode("%5B%3a%3A1%5D%3A80"), "[::1]:80");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("a%zz%41"), "a%zzA");
    }
}
