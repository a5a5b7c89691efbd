//! The request path, top to bottom: validate the request, find its pool (router), pick a
//! backend (pool + balancer), forward it with retries, and rewrite the response.
//!
//! Called by the listener for every request on every client connection, HTTP/1.1 or
//! HTTP/2. It loads the current snapshot once and uses it for the whole request. It
//! never forwards a request it does not fully understand, and every way out of it
//! releases the backend's in-flight slot (the guard travels inside the response body).

pub mod body;
pub mod client_ip;
pub mod error;
pub mod forward;
pub mod grpc;
pub mod headers;
pub mod host;
mod http2;
mod upgrade;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use hyper::body::{Body as _, Incoming};

use crate::access_log::Pending;
use crate::backend::Health;
use crate::balancer::{Latency, PickContext, Tried};
use crate::latency::clock_ns;
use crate::pool::{Chosen, Pool};
use crate::shared::Shared;
use crate::upstream;
use crate::upstream::RequestBody;
use body::ResponseBody;
use error::{ProxyError, local_response};

/// What the proxy knows about the client connection a request arrived on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The listener's name.
    pub listener: Arc<str>,
    /// The socket peer, or the PROXY-protocol source address.
    pub peer_ip: IpAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

impl ConnInfo {
    /// What the proxy keeps about a new client connection.
    pub fn new(listener: Arc<str>, peer_ip: IpAddr, tls: bool) -> ConnInfo {
        ConnInfo {
            listener,
            peer_ip,
            tls,
        }
    }
}

/// Handles one client request.
pub async fn handle(
    shared: &Shared,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
) -> Response<ResponseBody> {
    let start = Instant::now();
    // gRPC is HTTP/2 only: an HTTP/1 request is never looked at.
    let grpc = match req.version() {
        Version::HTTP_2 => grpc::Call::of(req.headers(), start.into()),
        _ => None,
    };
    let snap = shared.live.load_full();
    let Some(listener) = snap.listener(&conn.listener) else {
        return ProxyError::ListenerGone.reply(grpc.is_some());
    };
    let client_ip = client_ip::resolve(conn.peer_ip, &listener.trusted_proxies, req.headers());
    let Some(pool) = snap
        .pools
        .get(listener.router.route(req.uri(), req.headers()))
    else {
        return ProxyError::NoBackend.reply(grpc.is_some());
    };
    let mut log = shared.access_log.load().as_ref().map(|l| {
        Pending::new(
            l,
            start,
            client_ip,
            req.method(),
            req.uri().path(),
            Some(Arc::clone(&pool.name)),
        )
    });

    let version = req.version();
    let (mut resp, backend, upgrade_asked) = match check_request(&req, conn.tls) {
        Err(e) => {
            let asked = req.headers().contains_key(header::UPGRADE);
            (e.reply(grpc.is_some()), None, asked)
        }
        Ok(checked) => {
            let asked = checked.present.upgrade();
            // An HTTP/2 backend cannot take an upgrade: the request goes without it.
            let tunnel = version == Version::HTTP_11
                && !pool.transport.protocol.is_http2()
                && headers::wants_upgrade(req.headers(), checked.present, &listener.upgrades);
            let client_upgrade = tunnel.then(|| hyper::upgrade::on(&mut req));
            let client = Client {
                ip: client_ip,
                body_timeout: listener.client_body_timeout,
                grpc,
            };
            let (resp, backend) = match grpc.and_then(|c| c.deadline) {
                // Awaited where it is made, so the request's future is built in place.
                None => proxy(shared, pool, conn, client, req, checked, client_upgrade).await,
                // Boxed: only calls with a deadline carry the timer and its future.
                Some(deadline) => {
                    Box::pin(proxy_until(
                        deadline,
                        shared,
                        pool,
                        conn,
                        client,
                        req,
                        checked,
                        client_upgrade,
                    ))
                    .await
                }
            };
            (resp, backend, asked)
        }
    };
    // The head scanner stops at a head with Upgrade (what follows may be a tunnel), so
    // an HTTP/1 connection whose upgrade does not happen closes after the answer.
    if upgrade_asked
        && version <= Version::HTTP_11
        && resp.status() != StatusCode::SWITCHING_PROTOCOLS
    {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    pool.stats.latency.observe(start.elapsed());
    if let Some(l) = log.as_mut() {
        l.status = resp.status();
        l.backend = backend;
    }
    resp.body_mut().set_log(log);
    resp
}

/// The 400 for a head the server's scanner refused, with its plain-text `reason`; the
/// connection closes after it, since where this request's body ends is exactly what is
/// in doubt.
pub fn refuse_head(reason: &'static str) -> Response<ResponseBody> {
    let mut r = ProxyError::BadRequest(reason).response();
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Requests that are refused before any backend sees them (DESIGN §6). hyper's parser
/// already answers 400 for bad chunking, differing Content-Lengths, obs-fold, whitespace
/// before a colon, bare CR and a last transfer coding other than chunked, and 431 for
/// oversized heads.
fn check_request(req: &Request<Incoming>, tls: bool) -> Result<Checked, ProxyError> {
    let present = headers::Present::scan(req.headers());
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let header_host = match (hosts.next(), hosts.next()) {
        (None, _) if req.version() == Version::HTTP_11 => {
            return Err(ProxyError::BadRequest("missing Host header\n"));
        }
        (Some(_), Some(_)) => return Err(ProxyError::BadRequest("more than one Host header\n")),
        (host, _) => host,
    };
    let host = request_host(req.uri(), header_host, tls)?;
    if req.method() == Method::CONNECT {
        return Err(ProxyError::BadRequest("CONNECT is not supported\n"));
    }
    // hyper has refused a Transfer-Encoding whose last coding is not chunked; any coding
    // before it (`gzip, chunked`) would reach the backend undeclared, so it is refused.
    let checked = Checked { host, present };
    if !present.transfer_encoding() {
        return Ok(checked);
    }
    let mut codings = req.headers().get_all(header::TRANSFER_ENCODING).iter();
    if let Some(first) = codings.next() {
        let plain = codings.next().is_none()
            && first
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked");
        if !plain {
            return Err(ProxyError::UnsupportedCoding);
        }
    }
    Ok(checked)
}

/// The client as one request sees it.
#[derive(Debug, Clone, Copy)]
struct Client {
    /// Its address (after PROXY protocol and trusted X-Forwarded-For).
    ip: IpAddr,
    /// Its listener's `client_body_timeout`.
    body_timeout: std::time::Duration,
    /// The gRPC call this request is, if it is one.
    grpc: Option<grpc::Call>,
}

/// The request's host (RFC 9112 §3.2.2): the target's authority when it has one
/// (absolute form, HTTP/2 `:authority`), which a Host header beside it must agree with,
/// else the Host header. Either must be a well-formed `host[:port]`.
fn request_host(
    uri: &http::Uri,
    header_host: Option<&HeaderValue>,
    tls: bool,
) -> Result<RequestHost, ProxyError> {
    let header = match header_host {
        Some(h) => Some(
            host::split(h.as_bytes()).ok_or(ProxyError::BadRequest("malformed Host header\n"))?,
        ),
        None => None,
    };
    let Some(authority) = uri.authority() else {
        return Ok(RequestHost {
            value: header_host.cloned(),
            from_target: false,
        });
    };
    let target = host::split(authority.as_str().as_bytes()).ok_or(ProxyError::BadRequest(
        "malformed request target authority\n",
    ))?;
    let https = match uri.scheme_str() {
        Some(scheme) => scheme.eq_ignore_ascii_case("https"),
        None => tls,
    };
    if let Some(header) = header {
        if !host::agree(header, target, if https { 443 } else { 80 }) {
            return Err(ProxyError::BadRequest(
                "Host header disagrees with the request target\n",
            ));
        }
    }
    let value = HeaderValue::from_str(authority.as_str())
        .map_err(|_| ProxyError::BadRequest("malformed request target authority\n"))?;
    Ok(RequestHost {
        value: Some(value),
        from_target: true,
    })
}

/// What the first look at a request found.
struct Checked {
    /// The request's host.
    host: RequestHost,
    /// Which hop-by-hop headers (and X-Forwarded-For) it carries.
    present: headers::Present,
}

/// The host a request is routed by, announced to the backend in Host and
/// X-Forwarded-Host.
struct RequestHost {
    /// The authority or Host value; none for an HTTP/1.0 request without Host.
    value: Option<HeaderValue>,
    /// It is the target's authority, which replaces any Host header.
    from_target: bool,
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// [`proxy`] for a gRPC call with a deadline, which bounds all of it up to the response
/// head (the body's share is the body's: `grpc::GrpcBody`).
#[allow(clippy::too_many_arguments)]
async fn proxy_until(
    deadline: tokio::time::Instant,
    shared: &Shared,
    pool: &Pool,
    conn: &ConnInfo,
    client: Client,
    req: Request<Incoming>,
    checked: Checked,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> (Response<ResponseBody>, Option<Arc<str>>) {
    let call = proxy(shared, pool, conn, client, req, checked, client_upgrade);
    tokio::time::timeout_at(deadline, call)
        .await
        .unwrap_or_else(|_| (ProxyError::Deadline.grpc_response(), None))
}

/// Forwards to the pool with retries; returns the response and the backend that gave it.
/// `checked` is what [`check_request`] found.
async fn proxy(
    shared: &Shared,
    pool: &Pool,
    conn: &ConnInfo,
    client: Client,
    req: Request<Incoming>,
    checked: Checked,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> (Response<ResponseBody>, Option<Arc<str>>) {
    if pool.transport.protocol.is_http2() {
        // Boxed: its state would otherwise size every HTTP/1.1 request's future.
        return Box::pin(http2::proxy(pool, conn, client, req, checked)).await;
    }
    let client_ip = client.ip;
    let Checked { host, present } = checked;
    let (mut parts, body) = req.into_parts();
    let upgrading = client_upgrade.is_some();
    headers::strip_hop_by_hop(&mut parts.headers, present, upgrading);
    let forwarded =
        headers::Forwarded::new(&parts.headers, present, client_ip, conn.tls, host.value);
    if host.from_target {
        if let Some(h) = &forwarded.host {
            // HTTP/2 and absolute-form requests: the authority becomes Host.
            parts.headers.insert(header::HOST, h.clone());
        }
    }
    let bodiless = body.is_end_stream();
    let replayable = bodiless && !upgrading && is_idempotent(&parts.method);
    let mut body = if bodiless {
        RequestBody::Empty
    } else {
        RequestBody::Client(body)
    };

    let now = if pool.needs_clock() { now_secs() } else { 0 };
    let mut limits = upstream::Limits {
        response: pool.response_timeout,
        client_body: client.body_timeout,
    };
    let mut read_timeout = pool.read_timeout;
    if let Some(call) = client.grpc {
        // The body timeouts never cut a gRPC stream (DESIGN §12); a deadline, when the
        // call has one, bounds it instead of `response_timeout`.
        limits.client_body = grpc::NO_LIMIT;
        read_timeout = grpc::NO_LIMIT;
        if call.deadline.is_some() {
            limits.response = grpc::NO_LIMIT;
        }
    }
    let mut tried = Tried::new();
    // When the request first waited in the pool's queue, plus `queue_timeout`.
    let mut queued_until = None;
    let mut last_err = ProxyError::NoBackend;
    for attempt in 0..=pool.retries {
        let mut ctx = PickContext {
            client_ip,
            headers: &parts.headers,
            uri: &parts.uri,
            now_secs: now,
            pool_in_flight: 0,
        };
        let picked = match pool.pick_now(&mut ctx, &mut tried) {
            Ok(picked) => picked,
            // Boxed: only requests that queue carry the wait's state.
            Err(queue) => {
                Box::pin(pool.wait_for_slot(queue, &mut ctx, &tried, &mut queued_until)).await
            }
        };
        let Some(chosen) = picked else {
            break;
        };
        tried.insert(chosen.index);
        // Only a peak-ewma pool times its attempts.
        let started = pool.latency().map(|_| clock_ns());
        if attempt > 0 {
            pool.stats
                .retries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let checkout = match forward::checkout(chosen.backend, pool).await {
            Ok(c) => c,
            Err(e) => {
                note_failure(pool, &chosen, &e);
                last_err = e;
                continue;
            }
        };
        let (mut conn, mut reused) = (checkout.conn, checkout.reused);
        let sent = loop {
            let sent = forward::send(
                &mut conn,
                chosen.backend,
                &parts,
                &forwarded,
                &mut body,
                limits,
            )
            .await;
            match sent {
                // A reused connection the backend had closed (its keep-alive timeout
                // raced ours) goes again once on a fresh one to the same backend: not
                // a backend failure, and no retry spent (DESIGN §6). The request must
                // be re-sendable: bodiless, and idempotent or not written whole.
                Err(f) if reused && f.stale && bodiless && (replayable || !f.written) => {
                    reused = false;
                    pool.stats
                        .stale_retries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    // Boxed: rare, and its state would size every request's future.
                    let fresh = Box::pin(forward::connect(chosen.backend, pool));
                    match fresh.await {
                        Ok(fresh) => conn = fresh,
                        Err(e) => break Err((e, false)),
                    }
                }
                Err(f) => break Err((f.error, f.delivered)),
                Ok(head) => break Ok(head),
            }
        };
        match sent {
            Ok(head) => {
                // The request's header map is done with: the next response head of
                // this worker is parsed into it.
                upstream::response::recycle(std::mem::take(&mut parts.headers));
                let name = Arc::clone(&chosen.backend.name);
                if let (Some(latency), Some(started)) = (pool.latency(), started) {
                    feed_latency(
                        latency,
                        pool,
                        chosen.index,
                        head.status,
                        &head.headers,
                        started,
                    );
                }
                let mut resp = respond(
                    shared,
                    pool,
                    chosen,
                    conn,
                    head,
                    client_upgrade,
                    read_timeout,
                );
                if let Some(call) = client.grpc {
                    resp.body_mut().make_grpc(call);
                }
                return (resp, Some(name));
            }
            Err((e, delivered)) => {
                note_failure(pool, &chosen, &e);
                let resend = !delivered || replayable;
                let final_answer = matches!(e, ProxyError::ResponseTimeout) || e.is_client_fault();
                if final_answer || !resend {
                    let answer = e.reply(client.grpc.is_some());
                    return (answer, Some(Arc::clone(&chosen.backend.name)));
                }
                last_err = e;
            }
        }
    }
    if matches!(last_err, ProxyError::NoBackend) {
        pool.stats
            .unavailable
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    (last_err.reply(client.grpc.is_some()), None)
}

/// Counts a failed attempt against its backend and ejects it when the streak is long
/// enough.
fn note_failure(pool: &Pool, chosen: &Chosen<'_>, e: &ProxyError) {
    if e.is_client_fault() {
        // The client's doing: no status, error or ejection mark for the backend.
        if matches!(e, ProxyError::ClientBodyTimeout) {
            crate::stats::CLIENT_EVENTS
                .body_timeouts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        return;
    }
    let live = &chosen.backend.live;
    live.record_status(e.status().as_u16());
    if !e.is_backend_fault() {
        return;
    }
    tracing::debug!(pool = %pool.name, backend = %chosen.backend.name, error = %e, "backend attempt failed");
    if let Some(latency) = pool.latency() {
        latency.penalize(&pool.backends, chosen.index, clock_ns());
    }
    eject_if_due(pool, chosen);
}

/// Feeds a peak-ewma pool's estimator with an answer (`status`, `headers`) that began
/// at `started`: its latency, or the penalty for a 5xx, or for a 429 the penalty and
/// its Retry-After.
fn feed_latency(
    latency: &Latency,
    pool: &Pool,
    index: usize,
    status: StatusCode,
    headers: &http::HeaderMap,
    started: u64,
) {
    let now = clock_ns();
    if status == StatusCode::TOO_MANY_REQUESTS {
        latency.penalize(&pool.backends, index, now);
        if let (Some(b), Some(wait)) = (pool.backends.get(index), retry_after(headers)) {
            latency.block(b, wait, now);
        }
    } else if status.is_server_error() {
        latency.penalize(&pool.backends, index, now);
    } else {
        let rtt = std::time::Duration::from_nanos(now.saturating_sub(started));
        latency.observe(&pool.backends, index, rtt, now);
    }
}

/// A Retry-After in its seconds form (RFC 9110 §10.2.3); an HTTP-date or garbage is
/// ignored.
fn retry_after(headers: &http::HeaderMap) -> Option<std::time::Duration> {
    let v = headers.get(header::RETRY_AFTER)?.to_str().ok()?;
    v.trim()
        .parse::<u64>()
        .ok()
        .map(std::time::Duration::from_secs)
}

fn eject_if_due(pool: &Pool, chosen: &Chosen<'_>) {
    let live = &chosen.backend.live;
    let (threshold, duration) = pool.ejection.unwrap_or((0, std::time::Duration::ZERO));
    if live.record_failure(threshold) {
        live.eject(duration.as_millis() as u64);
        if pool.checked {
            live.set_health(Health::Down);
        }
        tracing::warn!(
            pool = %pool.name,
            backend = %chosen.backend.name,
            failures = threshold,
            duration = %humantime::format_duration(duration),
            "backend ejected after consecutive failures"
        );
    }
}

/// Counts a backend's answer: its status class, and a 5xx toward ejection or anything
/// else as a success.
fn note_status(pool: &Pool, chosen: &Chosen<'_>, status: StatusCode) {
    let live = &chosen.backend.live;
    live.record_status(status.as_u16());
    if status.is_server_error() {
        eject_if_due(pool, chosen);
    } else {
        live.record_success();
    }
}

/// Turns the backend's response head into the client's response: the affinity cookie
/// in, the in-flight guard and the connection into the body (cut after `read_timeout`
/// without progress); an agreed upgrade becomes a tunnel.
fn respond(
    shared: &Shared,
    pool: &Pool,
    chosen: Chosen<'_>,
    conn: upstream::UpConn,
    head: upstream::ResponseHead,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    read_timeout: std::time::Duration,
) -> Response<ResponseBody> {
    let status = head.status;
    note_status(pool, &chosen, status);
    pool.stats.count_placement(chosen.placement);
    let mut headers = head.headers;
    if let Some(c) = chosen.set_cookie {
        headers.append(header::SET_COOKIE, c);
    }
    let body = if status == StatusCode::SWITCHING_PROTOCOLS {
        // A 101 the client did not ask for cannot be honoured, nor one that does not
        // say what it switches to.
        let Some(client) = client_upgrade.filter(|_| headers.contains_key(header::UPGRADE)) else {
            return local_response(StatusCode::BAD_GATEWAY, "bad gateway\n");
        };
        upgrade::spawn_tunnel(shared, client, conn, chosen.guard);
        ResponseBody::empty()
    } else {
        ResponseBody::Backend {
            body: upstream::BackendBody::new(conn, head.framing, head.keep_alive, read_timeout),
            guard: Some(chosen.guard),
            log: None,
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_in_seconds_only() {
        let with = |v: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert(header::RETRY_AFTER, HeaderValue::from_static(v));
            retry_after(&h)
        };
        assert_eq!(with("120"), Some(std::time::Duration::from_secs(120)));
        assert_eq!(with(" 5 "), Some(std::time::Duration::from_secs(5)));
        assert_eq!(with("Wed, 21 Oct 2026 07:28:00 GMT"), None);
        assert_eq!(with("-1"), None);
        assert_eq!(retry_after(&http::HeaderMap::new()), None);
    }
}
