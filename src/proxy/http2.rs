//! The request path for a pool whose backends speak HTTP/2 (`protocol = "h2c"` or
//! `"h2"`, DESIGN §12): the same pick, retries, affinity, passive ejection, latency feed
//! and in-flight guard as HTTP/1.1, per stream, over [`crate::upstream::http2`].
//!
//! What differs: the request goes as an HTTP/2 head (`scheme://authority/path`, with
//! `TE: trailers` kept, which gRPC needs), its body is pumped beside the response, and
//! a request the backend never processed (REFUSED_STREAM, above a graceful GOAWAY's
//! last stream id) goes again on another connection without counting against the
//! backend or spending a retry, as a stale HTTP/1 connection's does; so does, once, an
//! idempotent bodiless request whose connection broke under it. A gRPC request
//! (`content-type: application/grpc…`, [`super::grpc`]) has no body timeouts, and gets
//! maitred's own errors as gRPC statuses.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, Uri, Version};
use hyper::body::{Body as _, Incoming};

use super::body::ResponseBody;
use super::error::ProxyError;
use super::headers::{self, Forwarded};
use super::{
    Checked, Client, ConnInfo, feed_latency, is_idempotent, note_failure, note_status, now_secs,
};
use crate::balancer::{PickContext, Tried};
use crate::latency::clock_ns;
use crate::pool::{Chosen, Pool};
use crate::upstream::http2::{self, Answer, ConnectFailure, H2Limits, ReplayBody, Target};
use crate::upstream::{AddedHeaders as _, RequestBody, UpstreamError};

/// How many times one backend may refuse a request unprocessed before the attempt
/// counts as failed (and the next backend, if retries allow, is tried).
const MAX_REFUSALS: u32 = 3;

/// Forwards to an HTTP/2 pool with retries; returns the response and the backend that
/// gave it.
pub(super) async fn proxy(
    pool: &Pool,
    conn: &ConnInfo,
    client: Client,
    req: Request<Incoming>,
    checked: Checked,
) -> (Response<ResponseBody>, Option<Arc<str>>) {
    let Checked { host, present } = checked;
    let (mut parts, body) = req.into_parts();
    let te_trailers = present.te() && headers::te_has_trailers(&parts.headers);
    headers::strip_hop_by_hop(&mut parts.headers, present, false);
    let forwarded = Forwarded::new(&parts.headers, present, client.ip, conn.tls, host.value);
    let grpc = client.grpc;
    let target = match request_uri(pool, &parts.uri, &parts.headers, &forwarded) {
        Some(uri) => uri,
        None => {
            let e = ProxyError::BadRequest("malformed request target\n");
            return (e.reply(grpc.is_some()), None);
        }
    };
    let fields = header_fields(&parts.headers, &forwarded, te_trailers);
    let bodiless = body.is_end_stream();
    let replayable = bodiless && is_idempotent(&parts.method);
    let mut body = (!bodiless).then(|| ReplayBody::new(RequestBody::Client(body)));
    // No body timeout cuts a gRPC call (DESIGN §12); its deadline, when it has one,
    // bounds it instead of `response_timeout` (the head: `handle`; the body: GrpcBody).
    let timed = grpc.is_none();
    let limits = H2Limits {
        response: match grpc.and_then(|c| c.deadline) {
            Some(_) => super::grpc::NO_LIMIT,
            None => pool.response_timeout,
        },
        client_body: timed.then_some(client.body_timeout),
        write_stall: timed.then_some(pool.response_timeout),
        read: timed.then_some(pool.read_timeout),
    };
    let head = || {
        let mut r = Request::new(());
        *r.method_mut() = parts.method.clone();
        *r.uri_mut() = target.clone();
        *r.version_mut() = Version::HTTP_2;
        *r.headers_mut() = fields.clone();
        r
    };

    let now = if pool.needs_clock() { now_secs() } else { 0 };
    let mut tried = Tried::new();
    let mut queued_until = None;
    let mut last_err = ProxyError::NoBackend;
    for attempt in 0..=pool.retries {
        let mut ctx = PickContext {
            client_ip: client.ip,
            headers: &parts.headers,
            uri: &parts.uri,
            now_secs: now,
            pool_in_flight: 0,
        };
        let picked = match pool.pick_now(&mut ctx, &mut tried) {
            Ok(picked) => picked,
            Err(queue) => {
                pool.wait_for_slot(queue, &mut ctx, &tried, &mut queued_until)
                    .await
            }
        };
        let Some(chosen) = picked else {
            break;
        };
        tried.insert(chosen.index);
        let started = pool.latency().map(|_| clock_ns());
        if attempt > 0 {
            pool.stats.retries.fetch_add(1, Ordering::Relaxed);
        }
        let to = Target {
            backend: chosen.backend,
            transport: &pool.transport,
            connect_timeout: pool.connect_timeout,
            keepalive_timeout: pool.keepalive_timeout,
        };
        let (mut refusals, mut stale) = (0, false);
        // Each turn is one stream; a refused one goes again, at most MAX_REFUSALS times,
        // and one that found its connection broken once.
        let sent = loop {
            let lease = match http2::checkout(to).await {
                Ok(lease) => lease,
                Err(f) => break Err((connect_error(f), false, false)),
            };
            match http2::send(lease, head(), body.take(), limits).await {
                Ok(answer) => break Ok(answer),
                Err(f)
                    if f.refused && refusals < MAX_REFUSALS && (bodiless || f.body.is_some()) =>
                {
                    refusals += 1;
                    body = f.body;
                    pool.stats.stale_retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(pool = %pool.name, backend = %chosen.backend.name, error = %f.error, "HTTP/2 request refused unprocessed; sent again");
                }
                // The connection broke under the request (DESIGN §6's stale connection):
                // an idempotent bodiless request goes once more, not a failure.
                Err(f) if f.stale && !stale && replayable => {
                    stale = true;
                    pool.stats.stale_retries.fetch_add(1, Ordering::Relaxed);
                }
                Err(f) => {
                    body = f.body;
                    break Err((exchange_error(f.error), f.delivered, f.refused));
                }
            }
        };
        match sent {
            Ok(answer) => {
                let name = Arc::clone(&chosen.backend.name);
                if let (Some(latency), Some(started)) = (pool.latency(), started) {
                    feed_latency(
                        latency,
                        pool,
                        chosen.index,
                        answer.head.status,
                        &answer.head.headers,
                        started,
                    );
                }
                let mut resp = respond(pool, chosen, answer);
                if let Some(call) = grpc {
                    resp.body_mut().make_grpc(call);
                }
                return (resp, Some(name));
            }
            Err((e, delivered, refused)) => {
                // A request refused unprocessed is not the backend's fault.
                if !refused {
                    note_failure(pool, &chosen, &e);
                }
                let resend = !delivered || replayable;
                let final_answer = matches!(e, ProxyError::ResponseTimeout) || e.is_client_fault();
                if final_answer || !resend {
                    let answer = e.reply(grpc.is_some());
                    return (answer, Some(Arc::clone(&chosen.backend.name)));
                }
                last_err = e;
            }
        }
    }
    if matches!(last_err, ProxyError::NoBackend) {
        pool.stats.unavailable.fetch_add(1, Ordering::Relaxed);
    }
    (last_err.reply(grpc.is_some()), None)
}

/// The client's response from the backend's: the affinity cookie in, the in-flight
/// guard and the stream into the body.
fn respond(pool: &Pool, chosen: Chosen<'_>, answer: Answer) -> Response<ResponseBody> {
    let Answer { head, body } = answer;
    note_status(pool, &chosen, head.status);
    pool.stats.count_placement(chosen.placement);
    let mut resp = Response::new(ResponseBody::H2 {
        body,
        guard: Some(chosen.guard),
        log: None,
    });
    *resp.status_mut() = head.status;
    *resp.headers_mut() = head.headers;
    if let Some(c) = chosen.set_cookie {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

/// The request's URI for the backend: `http://` (h2c) or `https://` (h2), the request's
/// host as authority (the backend's address for a request without one), and its path
/// and query.
fn request_uri(pool: &Pool, uri: &Uri, fields: &HeaderMap, forwarded: &Forwarded) -> Option<Uri> {
    let scheme = if pool.transport.protocol.is_tls() {
        "https"
    } else {
        "http"
    };
    let authority = forwarded
        .host
        .as_ref()
        .or_else(|| fields.get(header::HOST))
        .and_then(|h| h.to_str().ok());
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let path = if path.is_empty() { "/" } else { path };
    let mut builder = Uri::builder().scheme(scheme).path_and_query(path);
    builder = match authority {
        Some(a) => builder.authority(a),
        // HTTP/1.0 without Host: the first backend's address stands in (HTTP/2 needs one).
        None => builder.authority(pool.backends.first()?.addr.to_string()),
    };
    builder.build().ok()
}

/// The request's header fields for the backend: the client's (hop-by-hop ones already
/// gone) without Host, which travels as `:authority`, with the X-Forwarded-* fields in
/// place of any the client sent, and `TE: trailers` when the client asked for it.
fn header_fields(fields: &HeaderMap, forwarded: &Forwarded, te_trailers: bool) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(fields.len() + 4);
    for (name, value) in fields {
        if name != header::HOST && !Forwarded::replaces(name) {
            out.append(name.clone(), value.clone());
        }
    }
    for (name, value) in forwarded.lines() {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            out.append(name, v);
        }
    }
    if te_trailers {
        out.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    out
}

fn connect_error(f: ConnectFailure) -> ProxyError {
    match f {
        ConnectFailure::Timeout => ProxyError::ConnectTimeout,
        f => ProxyError::Connect(f.to_io()),
    }
}

fn exchange_error(e: UpstreamError) -> ProxyError {
    match e {
        UpstreamError::ResponseTimeout => ProxyError::ResponseTimeout,
        UpstreamError::ClientBodyTimeout => ProxyError::ClientBodyTimeout,
        e => ProxyError::Upstream(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_lose_host_and_client_forwarding_and_keep_te_trailers() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a.test"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("gopher"));
        h.insert("x-custom", HeaderValue::from_static("1"));
        let present = headers::Present::scan(&h);
        let ip = "10.0.0.1"
            .parse()
            .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
        let f = Forwarded::new(
            &h,
            present,
            ip,
            false,
            Some(HeaderValue::from_static("a.test")),
        );
        let out = header_fields(&h, &f, true);
        assert!(out.get(header::HOST).is_none());
        assert_eq!(
            out.get("x-forwarded-proto").map(|v| v.as_bytes()),
            Some(&b"http"[..])
        );
        assert_eq!(
            out.get("x-forwarded-for").map(|v| v.as_bytes()),
            Some(&b"10.0.0.1"[..])
        );
        assert_eq!(
            out.get("x-forwarded-host").map(|v| v.as_bytes()),
            Some(&b"a.test"[..])
        );
        assert_eq!(
            out.get(header::TE).map(|v| v.as_bytes()),
            Some(&b"trailers"[..])
        );
        assert_eq!(out.get("x-custom").map(|v| v.as_bytes()), Some(&b"1"[..]));
        assert!(header_fields(&h, &f, false).get(header::TE).is_none());
    }
}
