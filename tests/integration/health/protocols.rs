//! Health checks in the pool's protocol (DESIGN §12): an h2c pool is probed with
//! HTTP/2, an https pool over TLS verified by the pool's CA, an h2 pool over TLS with
//! ALPN h2; a certificate that fails verification, or a backend that does not agree on
//! h2, fails the check with the reason in its detail.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use maitred::app::Daemon;
use maitred::backend::{CheckResult, Health};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::common::*;
use crate::test_ca::TestCa;

/// A backend answering `/healthz` with `status` in HTTP/1.1 or HTTP/2 (prior knowledge
/// or ALPN), over TCP or TLS, noting the version of every request.
struct ProtoBackend {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    versions: Arc<Mutex<Vec<Version>>>,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl ProtoBackend {
    async fn start(tls: Option<Arc<rustls::ServerConfig>>) -> ProtoBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(200));
        let versions = Arc::new(Mutex::new(Vec::new()));
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let (s, v, t) = (
            Arc::clone(&status),
            Arc::clone(&versions),
            Arc::clone(&tasks),
        );
        tasks.lock().unwrap().spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (s, v, tls) = (Arc::clone(&s), Arc::clone(&v), tls.clone());
                t.lock().unwrap().spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        v.lock().unwrap().push(req.version());
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"ok\n")));
                        *resp.status_mut() =
                            http::StatusCode::from_u16(s.load(Ordering::SeqCst)).unwrap();
                        async move { Ok::<_, std::convert::Infallible>(resp) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                        Some(cfg) => {
                            let Ok(io) = TlsAcceptor::from(cfg).accept(tcp).await else {
                                return;
                            };
                            let _ = builder.serve_connection(TokioIo::new(io), svc).await;
                        }
                    }
                });
            }
        });
        ProtoBackend {
            addr,
            status,
            versions,
            tasks,
        }
    }

    fn versions(&self) -> Vec<Version> {
        self.versions.lock().unwrap().clone()
    }
}

impl Drop for ProtoBackend {
    fn drop(&mut self) {
        self.tasks.lock().unwrap().abort_all();
    }
}

/// The health and last check of the backend at `addr` in `pool`.
fn check_of(d: &Daemon, pool: &str, addr: SocketAddr) -> (Health, Option<CheckResult>) {
    let snap = d.shared().live.load();
    let name = addr.to_string();
    let b = snap
        .pool(pool)
        .unwrap()
        .backends
        .iter()
        .find(|b| *b.name == *name)
        .unwrap();
    (b.live.health(), b.live.last_check())
}

fn checks(pool: &str) -> String {
    format!(
        "\n[pool.{pool}.health]\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"1s\"\nrise = 1\nfall = 1\n"
    )
}

fn tls_section(pool: &str, ca: &TestCa) -> String {
    format!(
        "\n[pool.{pool}.tls]\nca = \"{}\"\nserver_name = \"backend.test\"\n",
        ca.ca_path().display()
    )
}

#[tokio::test]
async fn an_h2c_pool_is_probed_with_http2() {
    let b = ProtoBackend::start(None).await;
    let pool = format!("protocol = \"h2c\"\n{}", checks("web"));
    let d = start_daemon(&config_for("round-robin", &[b.addr], &pool)).await;
    let (health, check) = check_of(&d, "web", b.addr);
    assert_eq!(health, Health::Up, "first round runs at start-up");
    assert_eq!(check.unwrap().detail, "200");
    assert!(!b.versions().is_empty());
    assert!(b.versions().iter().all(|v| *v == Version::HTTP_2));
    b.status.store(503, Ordering::SeqCst);
    assert!(
        wait_until(DEADLINE, || async {
            check_of(&d, "web", b.addr).0 == Health::Down
        })
        .await
    );
    assert_eq!(check_of(&d, "web", b.addr).1.unwrap().detail, "503");
    d.shutdown(Some(std::time::Duration::from_secs(1))).await;
}

#[tokio::test]
async fn an_https_pool_is_probed_over_tls_verified_by_its_ca() {
    let (ca, stranger_ca) = (TestCa::new("probe-ca"), TestCa::new("probe-other-ca"));
    let good = ProtoBackend::start(Some(ca.server_config(&["backend.test"], &[]))).await;
    // A certificate the pool's CA did not issue, and one for another name.
    let unknown =
        ProtoBackend::start(Some(stranger_ca.server_config(&["backend.test"], &[]))).await;
    let misnamed = ProtoBackend::start(Some(ca.server_config(&["other.test"], &[]))).await;
    let pool = format!(
        "protocol = \"https\"\n{}{}\n[pool.bad]\nbalancer = \"round-robin\"\nprotocol = \"https\"\nbackends = [\"{}\", \"{}\"]\n{}{}",
        tls_section("web", &ca),
        checks("web"),
        unknown.addr,
        misnamed.addr,
        tls_section("bad", &ca),
        checks("bad"),
    );
    let d = start_daemon(&config_for("round-robin", &[good.addr], &pool)).await;
    let (health, check) = check_of(&d, "web", good.addr);
    assert_eq!(health, Health::Up, "{check:?}");
    assert!(good.versions().iter().all(|v| *v == Version::HTTP_11));
    let (health, check) = check_of(&d, "bad", unknown.addr);
    assert_eq!(health, Health::Down);
    let detail = check.unwrap().detail;
    assert!(
        detail.starts_with("TLS: invalid peer certificate") && detail.contains("UnknownIssuer"),
        "{detail}"
    );
    let (health, check) = check_of(&d, "bad", misnamed.addr);
    assert_eq!(health, Health::Down);
    let detail = check.unwrap().detail;
    assert!(detail.contains("not valid for name"), "{detail}");
    assert!(unknown.versions().is_empty() && misnamed.versions().is_empty());
    d.shutdown(Some(std::time::Duration::from_secs(1))).await;
}

#[tokio::test]
async fn an_h2_pool_is_probed_with_http2_agreed_by_alpn() {
    let ca = TestCa::new("probe-h2-ca");
    let h2 = ProtoBackend::start(Some(ca.server_config(&["backend.test"], &[b"h2"]))).await;
    // Speaks TLS but offers no ALPN: HTTP/2 frames cannot be sent to it.
    let no_alpn = ProtoBackend::start(Some(ca.server_config(&["backend.test"], &[]))).await;
    let pool = format!(
        "protocol = \"h2\"\n{}{}",
        tls_section("web", &ca),
        checks("web")
    );
    let d = start_daemon(&config_for("round-robin", &[h2.addr, no_alpn.addr], &pool)).await;
    let (health, check) = check_of(&d, "web", h2.addr);
    assert_eq!(health, Health::Up, "{check:?}");
    assert!(!h2.versions().is_empty());
    assert!(h2.versions().iter().all(|v| *v == Version::HTTP_2));
    let (health, check) = check_of(&d, "web", no_alpn.addr);
    assert_eq!(health, Health::Down);
    assert_eq!(
        check.unwrap().detail,
        "TLS: the backend did not agree on h2 (ALPN)"
    );
    assert!(no_alpn.versions().is_empty());
    d.shutdown(Some(std::time::Duration::from_secs(1))).await;
}
