//! gRPC calls on the request path (DESIGN §12): which requests are gRPC, their
//! `grpc-timeout` deadline, maitred's own errors in gRPC's form, and the response body
//! that ends a call with a gRPC status at its deadline or when its backend fails.
//!
//! A gRPC call is an HTTP/2 request whose `content-type` begins with `application/grpc`
//! (gRPC is defined over HTTP/2 only, so an HTTP/1 request is never looked at: the
//! HTTP/1 hot path pays one version compare). A gRPC client reads a status from the
//! `grpc-status` trailer, or from the headers of a trailers-only answer; an HTML or
//! plain-text error page means nothing to it, so every error maitred answers itself is
//! an HTTP 200 with `grpc-status` and `grpc-message` in its headers and no body
//! ([`super::error::ProxyError::reply`]).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::upstream::UpstreamError;

/// Stands for "no limit" where a body timeout does not apply to a gRPC call: a year,
/// longer than any call, and within what tokio's timer keeps exactly.
pub const NO_LIMIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// A gRPC status code (the `grpc-status` values maitred writes itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 1: the call was cut because of the client.
    Cancelled,
    /// 4: the call's deadline passed.
    DeadlineExceeded,
    /// 13: the request cannot be handled (malformed).
    Internal,
    /// 14: no backend could take the call, or it failed on the way.
    Unavailable,
}

impl Code {
    /// The `grpc-status` value.
    pub fn value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Code::Cancelled => "1",
            Code::DeadlineExceeded => "4",
            Code::Internal => "13",
            Code::Unavailable => "14",
        })
    }
}

/// What the request path keeps of a gRPC call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// When the call must be over: its start plus `grpc-timeout`; `None` without one
    /// (or with a malformed one, which gRPC servers treat as absent).
    pub deadline: Option<Instant>,
}

impl Call {
    /// The call `headers` describe, if they are a gRPC request's; `start` is when the
    /// request arrived, from which its `grpc-timeout` counts.
    pub fn of(headers: &HeaderMap, start: Instant) -> Option<Call> {
        if !is_grpc(headers) {
            return None;
        }
        let deadline = headers
            .get("grpc-timeout")
            .and_then(|v| parse_timeout(v.as_bytes()))
            .and_then(|t| start.checked_add(t));
        Some(Call { deadline })
    }
}

/// Whether `headers` are a gRPC request's: `content-type` begins with
/// `application/grpc` (`application/grpc+proto`, `application/grpc+json` too).
/// Not inlined: only HTTP/2 requests ask, and the HTTP/1 path's code stays small.
#[inline(never)]
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes()
            .get(..16)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"application/grpc"))
    })
}

/// A `grpc-timeout` value: 1 to 8 digits, then the unit `H`, `M`, `S`, `m`, `u` or `n`
/// (gRPC over HTTP/2, "Requests").
pub fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The trailers that end a call with `code`.
fn status_trailers(code: Code, message: &'static str) -> HeaderMap {
    let mut t = HeaderMap::with_capacity(2);
    t.insert("grpc-status", code.value());
    t.insert("grpc-message", HeaderValue::from_static(message));
    t
}

/// A gRPC call's response body: the backend's, passed through (its trailers too),
/// ended with `grpc-status` 4 when the call's deadline passes and with 14 when the
/// backend fails mid-call, so the client always learns how its call ended.
#[derive(Debug)]
pub struct GrpcBody<B> {
    /// The backend's body; let go (with its slot, its stream and its access-log line)
    /// when maitred ends the call.
    inner: Option<B>,
    /// The call's deadline, if it has one.
    deadline: Option<Pin<Box<Sleep>>>,
    /// The trailers have gone out (the backend's or maitred's).
    ended: bool,
}

impl<B> GrpcBody<B> {
    /// Wraps the response body of `call`.
    pub fn new(inner: B, call: Call) -> GrpcBody<B> {
        GrpcBody {
            inner: Some(inner),
            deadline: call.deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            ended: false,
        }
    }

    /// The backend's body, until maitred ends the call.
    pub fn inner_mut(&mut self) -> Option<&mut B> {
        self.inner.as_mut()
    }

    /// Ends the call with `code`: the backend's body is let go, and the trailers are
    /// the last frame.
    fn end(&mut self, code: Code, message: &'static str) -> Frame<Bytes> {
        self.ended = true;
        self.deadline = None;
        self.inner = None;
        Frame::trailers(status_trailers(code, message))
    }
}

impl<B> Body for GrpcBody<B>
where
    B: Body<Data = Bytes, Error = UpstreamError> + Unpin,
{
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut().filter(|_| !this.ended) else {
            return Poll::Ready(None);
        };
        if this
            .deadline
            .as_mut()
            .is_some_and(|d| d.as_mut().poll(cx).is_ready())
        {
            tracing::debug!("gRPC call reached its grpc-timeout; ended with DEADLINE_EXCEEDED");
            let frame = this.end(Code::DeadlineExceeded, "deadline exceeded at the proxy");
            return Poll::Ready(Some(Ok(frame)));
        }
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                tracing::debug!(error = %e, "gRPC call's backend failed mid-call; ended with UNAVAILABLE");
                let frame = this.end(Code::Unavailable, "backend failed during the call");
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.ended = frame.is_trailers();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        // The call may be cut short: never announce a length.
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_takes_one_to_eight_digits_and_a_unit() {
        let t = |s: &str| parse_timeout(s.as_bytes());
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("2M"), Some(Duration::from_secs(120)));
        assert_eq!(t("30S"), Some(Duration::from_secs(30)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(t("5n"), Some(Duration::from_nanos(5)));
        assert_eq!(t("99999999H"), Some(Duration::from_secs(99_999_999 * 3600)));
        for bad in [
            "",
            "S",
            "100",
            "123456789S",
            "1s",
            "-1S",
            "1.5S",
            " 1S",
            "1 S",
        ] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_call_is_an_application_grpc_content_type() {
        let start = Instant::now();
        let call = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            Call::of(&h, start)
        };
        assert_eq!(call(&[]), None);
        assert_eq!(call(&[("content-type", "application/json")]), None);
        assert_eq!(call(&[("content-type", "application/grp")]), None);
        let plain = Some(Call { deadline: None });
        assert_eq!(call(&[("content-type", "application/grpc")]), plain);
        assert_eq!(call(&[("content-type", "application/grpc+proto")]), plain);
        assert_eq!(call(&[("content-type", "Application/GRPC")]), plain);
        // A malformed grpc-timeout is ignored, as gRPC servers do.
        let bad = [("content-type", "application/grpc"), ("grpc-timeout", "1s")];
        assert_eq!(call(&bad), plain);
        let timed = [
            ("content-type", "application/grpc"),
            ("grpc-timeout", "20m"),
        ];
        assert_eq!(
            call(&timed),
            Some(Call {
                deadline: Some(start + Duration::from_millis(20))
            })
        );
    }

    /// A backend body that never ends: the backend still streaming.
    struct Streaming;

    impl Body for Streaming {
        type Data = Bytes;
        type Error = UpstreamError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
            Poll::Pending
        }
    }

    /// A backend body that fails at once.
    struct Failing;

    impl Body for Failing {
        type Data = Bytes;
        type Error = UpstreamError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
            Poll::Ready(Some(Err(UpstreamError::Truncated)))
        }
    }

    #[tokio::test]
    async fn a_backend_failing_mid_call_ends_it_with_unavailable() {
        use http_body_util::BodyExt;
        let mut body = GrpcBody::new(Failing, Call { deadline: None });
        let frame = body.frame().await.expect("a frame").expect("no error");
        let trailers = frame.into_trailers().expect("trailers");
        assert_eq!(trailers["grpc-status"], "14");
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn the_deadline_ends_the_body_with_deadline_exceeded() {
        use http_body_util::BodyExt;
        let call = Call {
            deadline: Some(Instant::now() + Duration::from_millis(50)),
        };
        let mut body = GrpcBody::new(Streaming, call);
        let frame = body.frame().await.expect("a frame").expect("no error");
        let trailers = frame.into_trailers().expect("trailers");
        assert_eq!(trailers["grpc-status"], "4");
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
    }
}
