//! HTTP/1.1 over TLS to backends (`protocol = "https"`, DESIGN §12): verification by a
//! configured CA and name, `verify = false`, client certificates, certificates re-read
//! on reload, and WebSocket tunnels, against real TLS backends on loopback.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::ExtendedKeyUsagePurpose;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::common::*;
use crate::test_ca::{Leaf, TestCa};

/// The test's certificates: a CA signing the backend's certificate (for `localhost`
/// and 127.0.0.1), another CA signing a certificate for the same names, and a client CA
/// signing maitred's client certificate; `dir` is a scratch directory for configs.
struct Pki {
    dir: PathBuf,
    /// The CA that signs `server`.
    ca: PathBuf,
    /// A CA that signs `stranger` and not `server`.
    other_ca: PathBuf,
    client_ca_der: CertificateDer<'static>,
    server: Leaf,
    stranger: Leaf,
    client: Leaf,
}

fn pki() -> Pki {
    let good = TestCa::new("upstream-tls-ca");
    let other = TestCa::new("upstream-tls-other-ca");
    let clients = TestCa::new("upstream-tls-client-ca");
    let names = ["localhost", "127.0.0.1"];
    let server = ExtendedKeyUsagePurpose::ServerAuth;
    Pki {
        dir: scratch_dir("upstream-tls"),
        ca: good.ca_path(),
        other_ca: other.ca_path(),
        client_ca_der: clients.der().clone(),
        server: good.leaf("server", &names, server.clone()),
        stranger: other.leaf("stranger", &names, server),
        client: clients.leaf(
            "client",
            &["maitred.test"],
            ExtendedKeyUsagePurpose::ClientAuth,
        ),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A backend's TLS config presenting `leaf`; with `client_ca`, it requires a client
/// certificate signed by that CA.
fn server_config(leaf: &Leaf, client_ca: Option<&CertificateDer<'static>>) -> rustls::ServerConfig {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.into(),
                provider(),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key.clone()));
    builder
        .with_single_cert(vec![leaf.der.clone()], key)
        .unwrap()
}

/// An HTTPS backend on loopback: TLS (tokio-rustls) in front of a hyper HTTP/1.1
/// server. `/` answers `backend NAME`, `/echo` sends the request body back, `/ws`
/// upgrades to a WebSocket that echoes each message prefixed with the name. Counts
/// completed handshakes, open connections and the requests it answered.
struct TlsBackend {
    addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    accept: JoinSet<()>,
    conns: Arc<Mutex<JoinSet<()>>>,
}

/// One open connection of a [`TlsBackend`], counted until dropped.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl TlsBackend {
    async fn start(name: &str, config: rustls::ServerConfig) -> TlsBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let handshakes = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let conns = Arc::new(Mutex::new(JoinSet::new()));
        let (h, o, r, c, name) = (
            Arc::clone(&handshakes),
            Arc::clone(&open),
            Arc::clone(&requests),
            Arc::clone(&conns),
            name.to_string(),
        );
        let mut accept = JoinSet::new();
        accept.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, h, r, name) = (
                    acceptor.clone(),
                    Arc::clone(&h),
                    Arc::clone(&r),
                    name.clone(),
                );
                o.fetch_add(1, Ordering::SeqCst);
                let open = Open(Arc::clone(&o));
                c.lock().unwrap().spawn(async move {
                    let _open = open;
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    h.fetch_add(1, Ordering::SeqCst);
                    let svc = service_fn(move |req| {
                        r.fetch_add(1, Ordering::SeqCst);
                        answer(name.clone(), req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        TlsBackend {
            addr,
            handshakes,
            open,
            requests,
            accept,
            conns,
        }
    }

    fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Closes every open connection (without a TLS close_notify, as a backend that
    /// exits would) and waits until they are gone; it goes on accepting new ones.
    async fn drop_connections(&self) {
        self.conns.lock().unwrap().abort_all();
        let open = Arc::clone(&self.open);
        let gone = wait_until(DEADLINE, move || {
            let open = Arc::clone(&open);
            async move { open.load(Ordering::SeqCst) == 0 }
        })
        .await;
        assert!(gone, "the backend's connections did not close");
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.accept.abort_all();
        self.conns.lock().unwrap().abort_all();
    }
}

async fn answer(name: String, mut req: Request<Incoming>) -> Result<Response<BoxBody>, Infallible> {
    match req.uri().path() {
        "/echo" => {
            let body = req.into_body().map_err(BoxError::from).boxed();
            Ok(Response::new(body))
        }
        "/ws" => Ok(websocket_echo(name, &mut req)),
        _ => Ok(Response::new(full(format!("backend {name}\n")))),
    }
}

/// The daemon's config: one listener in front of pool `web` speaking `https` to
/// `backend`, with `tls` as the body of `[pool.web.tls]`.
fn https_config(backend: SocketAddr, tls: &str) -> String {
    config_for(
        "round-robin",
        &[backend],
        &format!("protocol = \"https\"\n\n[pool.web.tls]\n{tls}\n"),
    )
}

fn verified_by(ca: &Path, server_name: &str) -> String {
    format!("ca = \"{}\"\nserver_name = \"{server_name}\"", ca.display())
}

#[tokio::test]
async fn verified_backend_answers_and_its_connection_is_reused() {
    let pki = pki();
    let b = TlsBackend::start("a", server_config(&pki.server, None)).await;
    let d = start_daemon(&https_config(b.addr, &verified_by(&pki.ca, "localhost"))).await;
    let mut client = Client::connect(addr(&d)).await;
    for _ in 0..2 {
        let r = client.get("/", &[]).await;
        assert_eq!((r.status, r.body.as_str()), (200, "backend a\n"));
    }
    // A body goes over TLS too, pumped piece by piece.
    let body = bytes::Bytes::from(vec![b'x'; 100 * 1024]);
    let r = client
        .send("POST", "/echo", &[], body.clone())
        .await
        .unwrap();
    assert_eq!((r.status, r.body.len()), (200, body.len()));
    assert_eq!(b.requests(), 3);
    assert_eq!(
        b.handshakes(),
        1,
        "one TLS connection carried every request"
    );

    // The backend closes its idle connection: the next request sees it closed before
    // sending on it, and opens another (no stale send, no retry).
    b.drop_connections().await;
    let r = client.get("/", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "backend a\n"));
    assert_eq!(b.handshakes(), 2);
    assert_eq!(
        stale_retries(&d),
        0,
        "the closed connection was not sent on"
    );
    d.shutdown(Some(Duration::from_secs(1))).await;
}

fn stale_retries(d: &maitred::app::Daemon) -> u64 {
    d.shared()
        .live
        .load()
        .pools
        .iter()
        .map(|p| p.stats.stale_retries.load(Ordering::Relaxed))
        .sum()
}

#[tokio::test]
async fn a_certificate_for_another_name_or_from_another_ca_is_a_bad_gateway() {
    let pki = pki();
    let b = TlsBackend::start("a", server_config(&pki.server, None)).await;
    let d = start_daemon(&https_config(
        b.addr,
        &verified_by(&pki.ca, "other.example"),
    ))
    .await;
    assert_eq!(get(addr(&d), "/").await.status, 502);
    d.shutdown(Some(Duration::from_secs(1))).await;
    assert_eq!(b.requests(), 0, "no request went to an unverified backend");

    // Verified by its IP address (no server_name), but signed by a CA not trusted.
    let stranger = TlsBackend::start("s", server_config(&pki.stranger, None)).await;
    let tls = format!("ca = \"{}\"", pki.ca.display());
    let d = start_daemon(&https_config(stranger.addr, &tls)).await;
    assert_eq!(get(addr(&d), "/").await.status, 502);
    d.shutdown(Some(Duration::from_secs(1))).await;
    assert_eq!(stranger.requests(), 0);
}

#[tokio::test]
async fn verify_false_accepts_any_certificate_and_check_warns() {
    let pki = pki();
    let stranger = TlsBackend::start("s", server_config(&pki.stranger, None)).await;
    let tls = format!("ca = \"{}\"\nverify = false", pki.ca.display());
    let cfg = https_config(stranger.addr, &tls);
    let d = start_daemon(&cfg).await;
    let r = get(addr(&d), "/").await;
    assert_eq!((r.status, r.body.as_str()), (200, "backend s\n"));
    d.shutdown(Some(Duration::from_secs(1))).await;

    let path = pki.dir.join("maitred.toml");
    std::fs::write(&path, &cfg).unwrap();
    let stdout = crate::cli::check_passes(&path);
    assert!(
        stdout.contains("warning: pool web: [tls] verify = false"),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_backend_that_requires_a_client_certificate_gets_the_configured_one() {
    let pki = pki();
    let b = TlsBackend::start("m", server_config(&pki.server, Some(&pki.client_ca_der))).await;
    let d = start_daemon(&https_config(b.addr, &verified_by(&pki.ca, "localhost"))).await;
    assert_eq!(get(addr(&d), "/").await.status, 502);
    d.shutdown(Some(Duration::from_secs(1))).await;
    assert_eq!(b.requests(), 0);

    let tls = format!(
        "{}\nclient_cert = \"{}\"\nclient_key = \"{}\"",
        verified_by(&pki.ca, "localhost"),
        pki.client.cert_path.display(),
        pki.client.key_path.display()
    );
    let d = start_daemon(&https_config(b.addr, &tls)).await;
    let r = get(addr(&d), "/").await;
    assert_eq!((r.status, r.body.as_str()), (200, "backend m\n"));
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn a_client_certificate_the_backend_refuses_after_the_handshake_is_logged() {
    // With TLS 1.3 the backend judges the client certificate after maitred's side of
    // the handshake is done: its alert arrives with the answer, and is logged there.
    let pki = pki();
    let b = TlsBackend::start("m", server_config(&pki.server, Some(&pki.client_ca_der))).await;
    let path = pki.dir.join("maitred.toml");
    let cfg = https_config(b.addr, &verified_by(&pki.ca, "localhost"));
    std::fs::write(&path, cfg).unwrap();
    let mut p = crate::cli::Proc::start(&path);
    let target = p.listening_addr().await;
    assert_eq!(get(target, "/").await.status, 502);
    assert!(
        p.wait_log("TLS to backend failed").await && p.log().contains("alert"),
        "{}",
        p.log()
    );
    assert!(p.log().contains(&b.addr.to_string()), "{}", p.log());
}

#[tokio::test]
async fn a_reload_reads_the_ca_again_and_a_bad_one_keeps_the_running_config() {
    let pki = pki();
    let b = TlsBackend::start("a", server_config(&pki.server, None)).await;
    // The pool's CA file starts as the CA that did not sign the backend.
    let ca = pki.dir.join("pool-ca.pem");
    std::fs::copy(&pki.other_ca, &ca).unwrap();
    let path = pki.dir.join("maitred.toml");
    std::fs::write(&path, https_config(b.addr, &verified_by(&ca, "localhost"))).unwrap();
    let d = start_daemon_file(&path).await;
    assert_eq!(get(addr(&d), "/").await.status, 502);

    std::fs::copy(&pki.ca, &ca).unwrap();
    d.reload(false).await.unwrap();
    // One client connection, so one worker and its idle backend connections.
    let mut client = Client::connect(addr(&d)).await;
    for _ in 0..2 {
        let r = client.get("/", &[]).await;
        assert_eq!((r.status, r.body.as_str()), (200, "backend a\n"));
    }
    assert_eq!(b.handshakes(), 1);

    // A reload reads the TLS files again and starts the pool's connections afresh,
    // even when they have not changed.
    d.reload(false).await.unwrap();
    let r = client.get("/", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "backend a\n"));
    assert_eq!(
        b.handshakes(),
        2,
        "the idle connection of before was not reused"
    );

    std::fs::write(&ca, "not a certificate\n").unwrap();
    let err = d.reload(false).await.unwrap_err();
    let msgs = err.messages().join("\n");
    assert!(msgs.contains("pool-ca.pem"), "{msgs}");
    let r = client.get("/", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "backend a\n"));
    assert_eq!(b.handshakes(), 2, "a failed reload changed nothing");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn a_websocket_tunnels_through_an_https_pool() {
    let pki = pki();
    let b = TlsBackend::start("w", server_config(&pki.server, None)).await;
    let d = start_daemon(&https_config(b.addr, &verified_by(&pki.ca, "localhost"))).await;
    let tcp = tokio::net::TcpStream::connect(addr(&d)).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(ws_request(addr(&d), None), tcp)
        .await
        .unwrap();
    for i in 0..3 {
        ws.send(format!("m{i}").into()).await.unwrap();
        let reply = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), format!("w: m{i}"));
    }
    ws.close(None).await.unwrap();
    assert_eq!(b.handshakes(), 1);
    d.shutdown(Some(Duration::from_secs(1))).await;
}
