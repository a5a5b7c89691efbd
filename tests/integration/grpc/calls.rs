//! gRPC calls through maitred: maitred's own errors in gRPC's form (HTTP 200,
//! trailers-only, never a page).

use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use tonic::Code;

use super::echo::{EchoClient, EchoRequest};
use super::{grpc_config, raw_call};
use crate::common::*;

#[tokio::test]
async fn no_backend_is_unavailable_with_http_200_and_no_body() {
    // One backend that refuses connections, found down by its first health check.
    let (_held, refusing) = refusing_addr();
    let checks = "\n[pool.web.health]\npath = \"/\"\ninterval = \"1s\"\ntimeout = \"500ms\"\n";
    let d = start_daemon(&grpc_config(&[refusing], checks, "")).await;
    let call = raw_call(addr(&d), "/test.Echo/Unary", Default::default(), &[]).await;
    assert_eq!(call.status, 200);
    assert_eq!(call.headers["content-type"], "application/grpc");
    assert_eq!(call.headers["grpc-status"], "14");
    assert_eq!(call.headers["grpc-message"], "no backend available");
    assert!(call.data.is_empty() && call.trailers.is_none());
    let status = EchoClient::connect(addr(&d))
        .await
        .unary(tonic::Request::new(EchoRequest::say("hello")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // A request that is not gRPC still gets the plain 503.
    let mut h2 = h2_client(addr(&d)).await;
    let resp = h2
        .send_request(
            Request::get("http://test.local/")
                .body(full(Vec::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"no backend available\n");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn a_backend_that_refuses_the_connection_is_unavailable() {
    let (_held, refusing) = refusing_addr();
    let d = start_daemon(&grpc_config(&[refusing], "", "")).await;
    let call = raw_call(addr(&d), "/test.Echo/Unary", Default::default(), &[]).await;
    assert_eq!(call.status, 200);
    assert_eq!(call.headers["grpc-status"], "14");
    assert_eq!(call.headers["grpc-message"], "backend unreachable");
    assert!(call.data.is_empty());
    d.shutdown(Some(Duration::from_secs(1))).await;
}
