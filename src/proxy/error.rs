//! What can go wrong on the request path, and what each failure means: the status the
//! client gets, whether another backend may be tried, and whether it counts against
//! the backend (passive ejection). A gRPC client gets each as a gRPC status instead
//! ([`ProxyError::reply`]).

use http::{HeaderValue, Response, StatusCode, header};

use super::body::ResponseBody;
use super::grpc;
use crate::upstream::UpstreamError;

/// A failure while proxying one request.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No backend of the pool can take the request.
    #[error("no backend available")]
    NoBackend,
    /// The connection to the backend failed (refused, unreachable, reset during connect).
    #[error("connect to backend failed: {0}")]
    Connect(#[source] std::io::Error),
    /// The backend did not accept the connection within `connect_timeout`.
    #[error("connect to backend timed out")]
    ConnectTimeout,
    /// The HTTP exchange with the backend failed (reset, closed, protocol error), or
    /// the client's body failed on its way there.
    #[error("backend exchange failed: {0}")]
    Upstream(#[source] crate::upstream::UpstreamError),
    /// The backend's response headers did not arrive within `response_timeout` of the
    /// request being sent (or the backend stopped taking the request for that long).
    #[error("backend response timed out")]
    ResponseTimeout,
    /// The client's request body made no progress within `client_body_timeout`.
    #[error("client request body timed out")]
    ClientBodyTimeout,
    /// The request is malformed or ambiguous and is never forwarded.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// A transfer coding other than chunked: never forwarded (nginx does the same).
    #[error("transfer coding not implemented")]
    UnsupportedCoding,
    /// The listener is gone from the config (reload removed it while this connection
    /// was open).
    #[error("listener no longer configured")]
    ListenerGone,
    /// A gRPC call's `grpc-timeout` passed before its backend answered: the client's
    /// own limit, never the backend's fault.
    #[error("gRPC deadline exceeded")]
    Deadline,
}

impl ProxyError {
    /// The status the client receives.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoBackend | ProxyError::ListenerGone => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Upstream(UpstreamError::ClientBody(_)) => StatusCode::BAD_REQUEST,
            ProxyError::Connect(_) | ProxyError::ConnectTimeout | ProxyError::Upstream(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::ResponseTimeout | ProxyError::Deadline => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ClientBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::UnsupportedCoding => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// Whether the backend is to blame (counts toward passive ejection and its error
    /// count).
    pub fn is_backend_fault(&self) -> bool {
        !self.is_client_fault()
            && matches!(
                self,
                ProxyError::Connect(_)
                    | ProxyError::ConnectTimeout
                    | ProxyError::Upstream(_)
                    | ProxyError::ResponseTimeout
            )
    }

    /// Whether the client caused it (its body failed or stalled, its gRPC deadline
    /// passed): never the backend's fault, and never worth trying another backend.
    pub fn is_client_fault(&self) -> bool {
        matches!(
            self,
            ProxyError::ClientBodyTimeout
                | ProxyError::Deadline
                | ProxyError::Upstream(
                    UpstreamError::ClientBody(_) | UpstreamError::ClientBodyTimeout
                )
        )
    }

    /// The short plain-text response for this error.
    pub fn response(&self) -> Response<ResponseBody> {
        let status = self.status();
        let text = match self {
            ProxyError::NoBackend | ProxyError::ListenerGone => "no backend available\n",
            ProxyError::Upstream(UpstreamError::ClientBody(_)) => "request body failed\n",
            ProxyError::Connect(_) | ProxyError::ConnectTimeout | ProxyError::Upstream(_) => {
                "bad gateway\n"
            }
            ProxyError::ResponseTimeout | ProxyError::Deadline => "gateway timeout\n",
            ProxyError::ClientBodyTimeout => "request body timed out\n",
            ProxyError::BadRequest(why) => why,
            ProxyError::UnsupportedCoding => "transfer coding not implemented\n",
        };
        let mut r = local_response(status, text);
        if status == StatusCode::REQUEST_TIMEOUT {
            // Where the unread rest of the body ends is unknown: the connection closes.
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

impl ProxyError {
    /// The answer to a client: [`ProxyError::response`], or for a gRPC call its gRPC
    /// form (HTTP 200, trailers-only, DESIGN §12).
    pub fn reply(&self, grpc: bool) -> Response<ResponseBody> {
        if grpc {
            self.grpc_response()
        } else {
            self.response()
        }
    }

    /// The trailers-only gRPC answer for this error: UNAVAILABLE when no backend took
    /// or finished the call, DEADLINE_EXCEEDED when time ran out.
    pub fn grpc_response(&self) -> Response<ResponseBody> {
        use grpc::Code;
        let (code, message) = match self {
            ProxyError::NoBackend | ProxyError::ListenerGone => {
                (Code::Unavailable, "no backend available")
            }
            ProxyError::Connect(_) | ProxyError::ConnectTimeout => {
                (Code::Unavailable, "backend unreachable")
            }
            ProxyError::Upstream(UpstreamError::ClientBody(_)) => {
                (Code::Cancelled, "request body failed")
            }
            ProxyError::Upstream(_) => (Code::Unavailable, "backend failed"),
            ProxyError::ResponseTimeout => (Code::DeadlineExceeded, "backend response timed out"),
            ProxyError::Deadline => (Code::DeadlineExceeded, "deadline exceeded at the proxy"),
            ProxyError::ClientBodyTimeout => (Code::Cancelled, "request body timed out"),
            ProxyError::BadRequest(_) | ProxyError::UnsupportedCoding => {
                (Code::Internal, "malformed request")
            }
        };
        grpc_reply(code, message)
    }
}

/// A trailers-only gRPC answer: HTTP 200, `content-type: application/grpc`, the status
/// and its message in the headers, no body.
fn grpc_reply(code: grpc::Code, message: &'static str) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::empty());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", code.value());
    h.insert("grpc-message", HeaderValue::from_static(message));
    r
}

/// A short plain-text response written by maitred itself.
pub fn local_response(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::local(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;

    #[test]
    fn a_grpc_client_gets_a_trailers_only_answer() {
        let r = ProxyError::NoBackend.reply(true);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "application/grpc");
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()["grpc-message"], "no backend available");
        assert!(r.body().is_end_stream());
        let r = ProxyError::Deadline.reply(true);
        assert_eq!(r.headers()["grpc-status"], "4");
        assert_eq!(ProxyError::NoBackend.reply(false).status(), 503);
    }
}
