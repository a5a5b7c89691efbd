//! gRPC calls through maitred to a tonic server over h2c (and h2 over TLS): every kind
//! of call, statuses and trailers passed through, `grpc-timeout` bounding a call, slow
//! streams that no body timeout cuts, a backend killed mid-stream, and maitred's own
//! errors in gRPC's form (HTTP 200, trailers-only, never a page).

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use maitred::app::Daemon;
use prost::Message as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use super::echo::{EchoClient, EchoRequest};
use super::{GrpcBackend, grpc_config, raw_call};
use crate::common::*;
use crate::test_ca::TestCa;

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

fn timeouts(listener_ms: u64) -> String {
    format!("client_body_timeout = \"{listener_ms}ms\"\nsend_timeout = \"{listener_ms}ms\"\n")
}

async fn through_maitred(pool: &str, listener: &str) -> (GrpcBackend, Arc<Daemon>) {
    let b = GrpcBackend::start().await;
    let d = start_daemon(&grpc_config(&[b.addr], pool, listener)).await;
    (b, d)
}

#[tokio::test]
async fn a_unary_call_passes_through() {
    let (_b, d) = through_maitred("", "").await;
    let mut client = EchoClient::connect(addr(&d)).await;
    let reply = client
        .unary(tonic::Request::new(EchoRequest::say("hello")))
        .await
        .unwrap();
    assert_eq!(reply.get_ref().message, "hello");
    assert_eq!(
        reply.metadata().get("content-type").unwrap(),
        "application/grpc"
    );
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn a_client_streaming_call_passes_through() {
    let (_b, d) = through_maitred("", "").await;
    let mut client = EchoClient::connect(addr(&d)).await;
    let words = ["one", "two", "three", "four", "five"].map(EchoRequest::say);
    let reply = client
        .collect(tonic::Request::new(tokio_stream::iter(words)))
        .await
        .unwrap();
    assert_eq!(reply.get_ref().message, "one two three four five");
    assert_eq!(reply.get_ref().seq, 5);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn a_server_streaming_call_passes_through_with_its_trailers() {
    let (_b, d) = through_maitred("", "").await;
    let mut client = EchoClient::connect(addr(&d)).await;
    let req = EchoRequest {
        count: 5,
        interval_ms: 20,
        ..EchoRequest::say("tick")
    };
    let mut stream = client.spread_ok(req).await;
    for seq in 0..5 {
        let m = stream.message().await.unwrap().unwrap();
        assert_eq!(m.message, format!("tick {seq}"));
    }
    assert!(stream.message().await.unwrap().is_none());
    // Custom metadata in the server's trailers arrives.
    let trailers = stream.trailers().await.unwrap().unwrap();
    assert_eq!(trailers.get("x-sent").unwrap(), "5");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn a_bidirectional_call_streams_message_by_message() {
    let (_b, d) = through_maitred("", "").await;
    let mut client = EchoClient::connect(addr(&d)).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut replies = client
        .chat(tonic::Request::new(ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    // Each reply comes before the next message is sent: nothing is held back whole.
    for i in 1..=5u32 {
        tx.send(EchoRequest::say(&format!("m{i}"))).await.unwrap();
        let reply = tokio::time::timeout(DEADLINE, replies.message())
            .await
            .expect("a reply before the next message")
            .unwrap()
            .unwrap();
        assert_eq!((reply.message.as_str(), reply.seq), (&*format!("m{i}"), i));
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none());
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn status_codes_and_their_metadata_reach_the_client() {
    let (_b, d) = through_maitred("", "").await;
    let mut client = EchoClient::connect(addr(&d)).await;
    // Unary: the status comes trailers-only.
    let failing = EchoRequest {
        fail_code: Code::NotFound as i32,
        ..EchoRequest::say("cart-7")
    };
    let status = client
        .unary(tonic::Request::new(failing.clone()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "no such thing: cart-7");
    assert_eq!(status.metadata().get("x-reason").unwrap(), "asked-to-fail");
    // A stream: messages first, then the status in real trailers.
    let req = EchoRequest {
        count: 2,
        ..failing
    };
    let mut stream = client.spread_ok(req).await;
    assert_eq!(stream.message().await.unwrap().unwrap().seq, 0);
    assert_eq!(stream.message().await.unwrap().unwrap().seq, 1);
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "no such thing: cart-7");
    assert_eq!(status.metadata().get("x-reason").unwrap(), "asked-to-fail");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn a_backend_killed_mid_stream_ends_the_call_unavailable() {
    let (b, d) = through_maitred("", "").await;
    let mut client = EchoClient::connect(addr(&d)).await;
    let req = EchoRequest {
        count: 1000,
        interval_ms: 50,
        ..EchoRequest::say("tick")
    };
    let mut stream = client.spread_ok(req).await;
    assert_eq!(stream.message().await.unwrap().unwrap().seq, 0);
    b.kill();
    // Messages already on their way may still come; then the call ends, never hangs.
    let ended = tokio::time::timeout(DEADLINE, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the call ends");
    let status = ended.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(wait_until(DEADLINE, || async { in_flight(&d) == 0 }).await);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn grpc_timeout_bounds_the_call_instead_of_response_timeout() {
    let (_b, d) = through_maitred("response_timeout = \"500ms\"\n", "").await;
    let slow = |delay_ms| EchoRequest {
        delay_ms,
        ..EchoRequest::say("slow")
    };
    // Longer than response_timeout, within the call's own deadline: answered.
    let call = raw_call(
        addr(&d),
        "/test.Echo/Unary",
        slow(1200).encode_to_vec().into(),
        &[("grpc-timeout", "10S")],
    )
    .await;
    assert_eq!(call.grpc_status(), Some("0"), "{call:?}");
    // Without one, response_timeout applies, as DEADLINE_EXCEEDED.
    let call = raw_call(
        addr(&d),
        "/test.Echo/Unary",
        slow(1200).encode_to_vec().into(),
        &[],
    )
    .await;
    assert_eq!((call.status, call.grpc_status()), (200, Some("4")));
    // A deadline shorter than the server's delay: DEADLINE_EXCEEDED at the deadline.
    let t0 = Instant::now();
    let call = raw_call(
        addr(&d),
        "/test.Echo/Unary",
        slow(5000).encode_to_vec().into(),
        &[("grpc-timeout", "300m")],
    )
    .await;
    assert_eq!((call.status, call.grpc_status()), (200, Some("4")));
    assert_eq!(call.headers["content-type"], "application/grpc");
    assert!(
        t0.elapsed() < Duration::from_millis(3000),
        "{:?}",
        t0.elapsed()
    );
    // A malformed grpc-timeout is ignored (gRPC servers treat it as absent).
    let call = raw_call(
        addr(&d),
        "/test.Echo/Unary",
        slow(0).encode_to_vec().into(),
        &[("grpc-timeout", "soon")],
    )
    .await;
    assert_eq!(call.grpc_status(), Some("0"));
    assert!(wait_until(DEADLINE, || async { in_flight(&d) == 0 }).await);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn grpc_timeout_ends_a_stream_mid_body_with_deadline_exceeded() {
    let (_b, d) = through_maitred("", "").await;
    let req = EchoRequest {
        count: 1000,
        interval_ms: 100,
        ..EchoRequest::say("tick")
    };
    let t0 = Instant::now();
    let call = raw_call(
        addr(&d),
        "/test.Echo/Spread",
        req.encode_to_vec().into(),
        &[("grpc-timeout", "1S")],
    )
    .await;
    let took = t0.elapsed();
    assert_eq!(call.status, 200);
    assert!(!call.data.is_empty(), "messages came before the deadline");
    let trailers = call.trailers.as_ref().expect("the call ends with trailers");
    assert_eq!(trailers["grpc-status"], "4");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(wait_until(DEADLINE, || async { in_flight(&d) == 0 }).await);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn slow_streams_outlive_every_body_timeout() {
    // One second for each body timeout; messages two seconds apart each way.
    let (_b, d) = through_maitred("read_timeout = \"1s\"\n", &timeouts(1000)).await;
    let client = EchoClient::connect(addr(&d)).await;
    let mut other = client.clone();
    let server_side = async {
        let req = EchoRequest {
            count: 3,
            interval_ms: 2000,
            ..EchoRequest::say("slow")
        };
        let mut stream = client.clone().spread_ok(req).await;
        let mut seen = 0;
        while let Some(m) = stream.message().await.unwrap() {
            assert_eq!(m.seq, seen);
            seen += 1;
        }
        assert_eq!(seen, 3);
    };
    let client_side = async {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut replies = other
            .chat(tonic::Request::new(ReceiverStream::new(rx)))
            .await
            .unwrap()
            .into_inner();
        for i in 1..=3u32 {
            if i > 1 {
                tokio::time::sleep(Duration::from_millis(2000)).await;
            }
            tx.send(EchoRequest::say("hi")).await.unwrap();
            assert_eq!(replies.message().await.unwrap().unwrap().seq, i);
        }
        drop(tx);
        assert!(replies.message().await.unwrap().is_none());
    };
    tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(server_side, client_side)
    })
    .await
    .expect("both calls end");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn a_grpc_client_that_pauses_reading_is_not_cut_by_send_timeout() {
    let (_b, d) = through_maitred("", &timeouts(500)).await;
    let mut client = EchoClient::connect(addr(&d)).await;
    // 16 MiB: more than the client's flow-control windows and every buffer between.
    let req = EchoRequest {
        count: 256,
        size: 64 * 1024,
        ..EchoRequest::say("")
    };
    let mut stream = client.spread_ok(req).await;
    assert_eq!(stream.message().await.unwrap().unwrap().seq, 0);
    // Four send_timeouts without reading.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let mut seen = 1;
    while let Some(m) = stream.message().await.unwrap() {
        assert_eq!(m.seq, seen);
        seen += 1;
    }
    assert_eq!(seen, 256);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn calls_reach_a_backend_over_tls_with_h2() {
    let ca = TestCa::new("grpc-calls-ca");
    let b = GrpcBackend::start_tls(ca.server_config(&["backend.test"], &[b"h2"])).await;
    let tls = format!(
        "[pool.web.tls]\nca = \"{}\"\nserver_name = \"backend.test\"\n",
        ca.ca_path().display()
    );
    let config = grpc_config(&[b.addr], &tls, "").replace("\"h2c\"", "\"h2\"");
    let d = start_daemon(&config).await;
    let mut client = EchoClient::connect(addr(&d)).await;
    let reply = client
        .unary(tonic::Request::new(EchoRequest::say("over tls")))
        .await
        .unwrap();
    assert_eq!(reply.get_ref().message, "over tls");
    let req = EchoRequest {
        count: 3,
        ..EchoRequest::say("tick")
    };
    let mut stream = client.spread_ok(req).await;
    let mut seen = 0;
    while stream.message().await.unwrap().is_some() {
        seen += 1;
    }
    assert_eq!(seen, 3);
    let trailers = stream.trailers().await.unwrap().unwrap();
    assert_eq!(trailers.get("x-sent").unwrap(), "3");
    d.shutdown(Some(Duration::from_secs(1))).await;
}
