//! TLS termination with SNI, HTTP/2 (ALPN and h2c), WebSocket tunnels, PROXY protocol.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::common::*;

/// Accepts any certificate and remembers the one presented.
#[derive(Debug)]
struct Recorder {
    seen: Mutex<Option<Vec<u8>>>,
    provider: rustls::crypto::CryptoProvider,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Some(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

struct Certs {
    dir: PathBuf,
    a_der: Vec<u8>,
    b_der: Vec<u8>,
}

fn make_certs() -> Certs {
    let dir = scratch_dir("tls");
    let write = |name: &str, host: &str| {
        let ck = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
        std::fs::write(dir.join(format!("{name}.crt")), ck.cert.pem()).unwrap();
        std::fs::write(
            dir.join(format!("{name}.key")),
            ck.signing_key.serialize_pem(),
        )
        .unwrap();
        ck.cert.der().to_vec()
    };
    let a_der = write("a", "a.test");
    let b_der = write("b", "*.b.test");
    Certs { dir, a_der, b_der }
}

fn tls_config(dir: &Path, backends: &[&TestBackend], alpn: &str) -> String {
    simple_config("round-robin", backends, "").replace(
        "pool = \"web\"\n",
        &format!(
            "pool = \"web\"\n\n[listener.tls]\ncertificates = [{{ cert = \"{0}/a.crt\", key = \"{0}/a.key\" }}, {{ cert = \"{0}/b.crt\", key = \"{0}/b.key\" }}]\nalpn = {alpn}\n",
            dir.display()
        ),
    )
}

async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
) -> (tokio_rustls::client::TlsStream<TcpStream>, Option<Vec<u8>>) {
    let recorder = Arc::new(Recorder {
        seen: Mutex::new(None),
        provider: rustls::crypto::ring::default_provider(),
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(recorder.clone())
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let stream = TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
        .unwrap();
    let seen = recorder.seen.lock().unwrap().clone();
    (stream, seen)
}

async fn h1_over(stream: tokio_rustls::client::TlsStream<TcpStream>) -> String {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", "a.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned()
}

#[tokio::test]
async fn sni_picks_the_certificate_and_the_first_is_the_default() {
    let b = TestBackend::start("a").await;
    let certs = make_certs();
    let d = start_daemon(&tls_config(&certs.dir, &[&b], "[\"http/1.1\"]")).await;
    let (s, seen) = tls_connect(addr(&d), "x.b.test", &[]).await;
    assert_eq!(
        seen.as_deref(),
        Some(certs.b_der.as_slice()),
        "SNI x.b.test should get the *.b.test certificate"
    );
    assert_eq!(h1_over(s).await, "backend a\n");
    let (_, seen) = tls_connect(addr(&d), "a.test", &[]).await;
    assert_eq!(seen.as_deref(), Some(certs.a_der.as_slice()));
    let (_, seen) = tls_connect(addr(&d), "unknown.test", &[]).await;
    assert_eq!(
        seen.as_deref(),
        Some(certs.a_der.as_slice()),
        "no match → first certificate"
    );
    let r = b.last_seen().unwrap();
    assert_eq!(r.headers["x-forwarded-proto"], "https");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn idle_tls_connection_is_parked_and_serves_again() {
    let b = TestBackend::start("a").await;
    let certs = make_certs();
    let d = start_daemon(&tls_config(&certs.dir, &[&b], "[\"http/1.1\"]")).await;
    let (s, _) = tls_connect(addr(&d), "a.test", &[]).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let parked = || d.shared().parked.load(std::sync::atomic::Ordering::Relaxed);
    for round in 0..3 {
        sender.ready().await.unwrap();
        let req = Request::get("/")
            .header("host", "a.test")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "backend a\n", "round {round}");
        assert!(
            wait_until(DEADLINE, || async { parked() == 1 }).await,
            "TLS connection not parked"
        );
    }
    d.shutdown(Some(Duration::from_secs(1))).await;
}

async fn h2_get_many(
    io: impl hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    n: usize,
) -> Vec<String> {
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut tasks = Vec::new();
    for _ in 0..n {
        let mut s = sender.clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::get("http://h2.test/")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = s.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes())
                .into_owned()
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn http2_over_tls_spreads_streams_over_the_pool() {
    let (a, b, c) = (
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    );
    let certs = make_certs();
    let d = start_daemon(&tls_config(
        &certs.dir,
        &[&a, &b, &c],
        "[\"h2\", \"http/1.1\"]",
    ))
    .await;
    let (s, _) = tls_connect(addr(&d), "a.test", &[b"h2"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let bodies = h2_get_many(TokioIo::new(s), 30).await;
    let counts = tally(&bodies);
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|&n| n == 10), "{counts:?}");
    let seen = a.last_seen().unwrap();
    assert_eq!(seen.headers["host"], "h2.test");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn h2c_prior_knowledge_on_plain_listener() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let d = start_daemon(&simple_config("round-robin", &[&a, &b], "")).await;
    let tcp = TcpStream::connect(addr(&d)).await.unwrap();
    let bodies = h2_get_many(TokioIo::new(tcp), 10).await;
    assert_eq!(tally(&bodies).len(), 2);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn websocket_is_tunnelled_both_ways() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let d = start_daemon(&simple_config("round-robin", &[&a, &b], "")).await;
    let tcp = TcpStream::connect(addr(&d)).await.unwrap();
    let url = format!("ws://{}/ws", addr(&d));
    let (mut ws, resp) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..5 {
        ws.send(format!("hello {i}").into()).await.unwrap();
        let reply = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let text = reply.into_text().unwrap();
        assert!(text.ends_with(&format!(": hello {i}")), "{text}");
    }
    ws.close(None).await.unwrap();
    d.shutdown(Some(Duration::from_secs(1))).await;
}

fn proxy_v2(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&80u16.to_be_bytes());
    h
}

async fn via_proxy_header(addr: SocketAddr, header: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(header).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    text.lines().last().unwrap_or_default().to_string()
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_feed_the_client_ip() {
    let backends = [
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    ];
    let refs: Vec<&TestBackend> = backends.iter().collect();
    let toml = simple_config("ip-hash", &refs, "").replace(
        "pool = \"web\"\n",
        "pool = \"web\"\nproxy_protocol = true\n",
    );
    let d = start_daemon(&toml).await;
    let a = addr(&d);

    let v1 = b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 80\r\n";
    let first = via_proxy_header(a, v1).await;
    assert!(first.starts_with("backend "), "{first}");
    let all_seen: Vec<_> = backends.iter().filter_map(|b| b.last_seen()).collect();
    assert!(
        all_seen
            .iter()
            .any(|s| s.headers["x-forwarded-for"] == "198.51.100.7")
    );
    // The same source, by v1 or v2, always reaches the same backend.
    for _ in 0..4 {
        assert_eq!(via_proxy_header(a, v1).await, first);
        assert_eq!(
            via_proxy_header(a, &proxy_v2([198, 51, 100, 7], 40001)).await,
            first
        );
    }
    // Many sources spread over the pool.
    let mut spread = Vec::new();
    for i in 0..30u8 {
        spread.push(via_proxy_header(a, &proxy_v2([203, 0, 113, i], 5000)).await);
    }
    assert!(tally(&spread).len() >= 2, "{:?}", tally(&spread));
    // No header: refused (closed without an answer), nothing forwarded.
    let hits: usize = backends.iter().map(|b| b.hits()).sum();
    let out = raw_until_closed(a, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(out.is_empty(), "{out}");
    assert_eq!(backends.iter().map(|b| b.hits()).sum::<usize>(), hits);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn bad_certificate_on_reload_keeps_the_old_one_serving() {
    let b = TestBackend::start("a").await;
    let certs = make_certs();
    let path = certs.dir.join("maitred.toml");
    std::fs::write(&path, tls_config(&certs.dir, &[&b], "[\"http/1.1\"]")).unwrap();
    let d = start_daemon_file(&path).await;
    std::fs::write(
        certs.dir.join("b.crt"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = d.reload(false).await.unwrap_err();
    assert!(err.to_string().contains("b.crt"), "{err}");
    let (s, seen) = tls_connect(addr(&d), "x.b.test", &[]).await;
    assert_eq!(seen.as_deref(), Some(certs.b_der.as_slice()));
    assert_eq!(h1_over(s).await, "backend a\n");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn shutdown_waits_for_open_tunnels_then_closes_them() {
    let a = TestBackend::start("a").await;
    let d = start_daemon(&simple_config("round-robin", &[&a], "")).await;
    let tcp = TcpStream::connect(addr(&d)).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", addr(&d)), tcp)
        .await
        .unwrap();
    ws.send("hi".into()).await.unwrap();
    assert!(
        tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap()
            .is_some()
    );
    // The tunnel is still open when the grace period ends: not a clean shutdown.
    assert!(!d.shutdown(Some(Duration::from_millis(300))).await);
    // After it, the tunnel is closed.
    let ended = tokio::time::timeout(DEADLINE, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return true,
                Some(Ok(m)) if m.is_close() => return true,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert_eq!(ended, Ok(true));
}

#[tokio::test]
async fn shutdown_is_clean_when_tunnels_finish_within_the_grace_period() {
    let a = TestBackend::start("a").await;
    let d = start_daemon(&simple_config("round-robin", &[&a], "")).await;
    let tcp = TcpStream::connect(addr(&d)).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", addr(&d)), tcp)
        .await
        .unwrap();
    let closer = tokio::spawn(async move {
        ws.send("bye".into()).await.unwrap();
        let _ = ws.next().await;
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    });
    assert!(
        d.shutdown(Some(DEADLINE)).await,
        "shutdown did not see the tunnel end"
    );
    closer.await.unwrap();
}
