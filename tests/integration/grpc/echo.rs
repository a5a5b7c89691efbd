//! A gRPC service for the tests, written in the shape of tonic's generated code (there
//! is no protoc here): `test.Echo` with one method of each kind, its messages as
//! hand-written prost structs, the server as a `tower` service over
//! `tonic::server::Grpc`, and a client over `tonic::client::Grpc`.
//!
//! What the server does is steered by the request: `delay_ms` holds the answer (the
//! first message of a stream) back, `count`, `interval_ms` and `size` shape a server
//! stream, and a non-zero `fail_code` ends the call with that status and an `x-reason`
//! metadata entry (in the trailers of a stream that has sent messages).

// Test support, like `common`: not every test uses every call.
#![allow(dead_code)]

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use http::uri::PathAndQuery;
use tonic::codegen::{BoxFuture, Service};
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

/// `test.EchoRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(uint32, tag = "2")]
    pub delay_ms: u32,
    #[prost(uint32, tag = "3")]
    pub count: u32,
    #[prost(uint32, tag = "4")]
    pub interval_ms: u32,
    #[prost(int32, tag = "5")]
    pub fail_code: i32,
    /// A server stream's messages carry this many bytes of padding.
    #[prost(uint32, tag = "6")]
    pub size: u32,
}

impl EchoRequest {
    pub fn say(message: &str) -> EchoRequest {
        EchoRequest {
            message: message.to_string(),
            ..EchoRequest::default()
        }
    }
}

/// `test.EchoReply`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(uint32, tag = "2")]
    pub seq: u32,
}

/// The service's name, as a generated server declares it.
pub const SERVICE: &str = "test.Echo";

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

/// The server: answers `test.Echo` calls and counts them.
#[derive(Clone, Default)]
pub struct EchoServer {
    pub calls: Arc<AtomicUsize>,
}

impl NamedService for EchoServer {
    const NAME: &'static str = SERVICE;
}

fn failure(req: &EchoRequest) -> Option<Status> {
    if req.fail_code == 0 {
        return None;
    }
    let mut md = MetadataMap::new();
    md.insert("x-reason", "asked-to-fail".parse().unwrap());
    Some(Status::with_metadata(
        Code::from(req.fail_code),
        format!("no such thing: {}", req.message),
        md,
    ))
}

async fn pause(ms: u32) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
    }
}

struct Unary;

impl tonic::server::UnaryService<EchoRequest> for Unary {
    type Response = EchoReply;
    type Future = BoxFuture<Response<EchoReply>, Status>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        Box::pin(async move {
            let req = request.into_inner();
            pause(req.delay_ms).await;
            if let Some(status) = failure(&req) {
                return Err(status);
            }
            Ok(Response::new(EchoReply {
                message: req.message,
                seq: 1,
            }))
        })
    }
}

struct Collect;

impl tonic::server::ClientStreamingService<EchoRequest> for Collect {
    type Response = EchoReply;
    type Future = BoxFuture<Response<EchoReply>, Status>;

    fn call(&mut self, request: Request<Streaming<EchoRequest>>) -> Self::Future {
        Box::pin(async move {
            let mut stream = request.into_inner();
            let mut words = Vec::new();
            while let Some(req) = stream.message().await? {
                words.push(req.message);
            }
            Ok(Response::new(EchoReply {
                seq: words.len() as u32,
                message: words.join(" "),
            }))
        })
    }
}

struct Spread;

impl tonic::server::ServerStreamingService<EchoRequest> for Spread {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<Response<ReplyStream>, Status>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        Box::pin(async move {
            let req = request.into_inner();
            pause(req.delay_ms).await;
            let replies = futures_util::stream::unfold(0u32, move |seq| {
                let req = req.clone();
                async move {
                    if seq > req.count {
                        return None;
                    }
                    if seq == req.count {
                        // The end: a failure, or OK with custom trailers.
                        let status = failure(&req).unwrap_or_else(|| {
                            let mut md = MetadataMap::new();
                            md.insert("x-sent", req.count.to_string().parse().unwrap());
                            Status::with_metadata(Code::Ok, "", md)
                        });
                        return Some((Err(status), seq + 1));
                    }
                    if seq > 0 {
                        pause(req.interval_ms).await;
                    }
                    let message = match req.size {
                        0 => format!("{} {seq}", req.message),
                        n => "x".repeat(n as usize),
                    };
                    let reply = EchoReply { message, seq };
                    Some((Ok(reply), seq + 1))
                }
            });
            Ok(Response::new(Box::pin(replies) as ReplyStream))
        })
    }
}

struct Chat;

impl tonic::server::StreamingService<EchoRequest> for Chat {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<Response<ReplyStream>, Status>;

    fn call(&mut self, request: Request<Streaming<EchoRequest>>) -> Self::Future {
        Box::pin(async move {
            let mut seq = 0;
            let replies = request.into_inner().map(move |r| {
                seq += 1;
                r.map(|req| EchoReply {
                    message: req.message,
                    seq,
                })
            });
            Ok(Response::new(Box::pin(replies) as ReplyStream))
        })
    }
}

impl<B> Service<http::Request<B>> for EchoServer
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut grpc = tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
        match req.uri().path() {
            "/test.Echo/Unary" => Box::pin(async move { Ok(grpc.unary(Unary, req).await) }),
            "/test.Echo/Collect" => {
                Box::pin(async move { Ok(grpc.client_streaming(Collect, req).await) })
            }
            "/test.Echo/Spread" => {
                Box::pin(async move { Ok(grpc.server_streaming(Spread, req).await) })
            }
            "/test.Echo/Chat" => Box::pin(async move { Ok(grpc.streaming(Chat, req).await) }),
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// A client of `test.Echo` on one channel.
#[derive(Clone)]
pub struct EchoClient {
    inner: tonic::client::Grpc<Channel>,
}

impl EchoClient {
    /// Connects (HTTP/2 prior knowledge) to `addr`.
    pub async fn connect(addr: std::net::SocketAddr) -> EchoClient {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        EchoClient {
            inner: tonic::client::Grpc::new(channel),
        }
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))
    }

    pub async fn unary(
        &mut self,
        req: Request<EchoRequest>,
    ) -> Result<Response<EchoReply>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static("/test.Echo/Unary");
        self.inner.unary(req, path, ProstCodec::default()).await
    }

    pub async fn collect(
        &mut self,
        req: Request<impl Stream<Item = EchoRequest> + Send + 'static>,
    ) -> Result<Response<EchoReply>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static("/test.Echo/Collect");
        self.inner
            .client_streaming(req, path, ProstCodec::default())
            .await
    }

    /// `Spread` for `req`, which must be accepted: its stream of replies.
    pub async fn spread_ok(&mut self, req: EchoRequest) -> Streaming<EchoReply> {
        self.spread(Request::new(req)).await.unwrap().into_inner()
    }

    async fn spread(
        &mut self,
        req: Request<EchoRequest>,
    ) -> Result<Response<Streaming<EchoReply>>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static("/test.Echo/Spread");
        self.inner
            .server_streaming(req, path, ProstCodec::default())
            .await
    }

    pub async fn chat(
        &mut self,
        req: Request<impl Stream<Item = EchoRequest> + Send + 'static>,
    ) -> Result<Response<Streaming<EchoReply>>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static("/test.Echo/Chat");
        self.inner.streaming(req, path, ProstCodec::default()).await
    }
}
