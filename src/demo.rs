//! `maitred demo`: three small backends on loopback that answer with their own name, and
//! a balancer in front of them with a stateless and a sticky pool, from the embedded
//! `config/demo.toml`. Needs no file and no network beyond loopback.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::app::Daemon;
use crate::config::{self, Config};

/// The demo's config template.
pub const DEMO_CONFIG: &str = include_str!("../config/demo.toml");

/// Where the demo prefers to listen; a busy port falls back to one the OS picks.
const PREFERRED_LISTEN: &str = "127.0.0.1:8080";
const PREFERRED_ADMIN: &str = "127.0.0.1:9100";

/// Loopback, port 0: the daemon binds it and the OS picks a free port.
const ANY_PORT: &str = "127.0.0.1:0";

/// A running demo.
#[derive(Debug)]
pub struct Demo {
    /// The balancer.
    pub daemon: Arc<Daemon>,
    /// The demo backends' addresses.
    pub backends: Vec<SocketAddr>,
}

/// Starts three demo backends and the balancer.
pub async fn start() -> Result<Demo, Box<dyn std::error::Error + Send + Sync>> {
    let mut backends = Vec::new();
    for n in 1..=3 {
        backends.push(spawn_backend(n).await?);
    }
    let listen = free_or_any(PREFERRED_LISTEN).await;
    let admin = free_or_any(PREFERRED_ADMIN).await;
    let daemon = match start_balancer(listen, admin, &backends).await {
        // Another process took a preferred port after it was found free.
        Err(e) if addr_in_use(&*e) => start_balancer(ANY_PORT, ANY_PORT, &backends).await?,
        started => started?,
    };
    Ok(Demo { daemon, backends })
}

/// Starts the balancer listening on `listen`, its admin on `admin`.
async fn start_balancer(
    listen: &str,
    admin: &str,
    backends: &[SocketAddr],
) -> Result<Arc<Daemon>, Box<dyn std::error::Error + Send + Sync>> {
    let text = DEMO_CONFIG
        .replace("{LISTEN}", listen)
        .replace("{ADMIN}", admin)
        .replace("{B1}", &backends[0].to_string())
        .replace("{B2}", &backends[1].to_string())
        .replace("{B3}", &backends[2].to_string());
    let cfg: Config = config::parse(&text, "demo.toml", Path::new("."))?;
    Ok(Daemon::start(cfg, None).await?)
}

/// Whether `e` says an address was already in use.
fn addr_in_use(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::AddrInUse;
        }
        cause = c.source();
    }
    false
}

/// Prints what to try (to stdout; a closed stdout is not an error worth dying for).
pub fn print_banner(demo: &Demo) {
    use std::fmt::Write as _;
    let Some(addr) = demo.daemon.listener_addr("demo") else {
        return;
    };
    let mut text = String::from("maitred demo is running.\n");
    for (i, b) in demo.backends.iter().enumerate() {
        let _ = writeln!(text, "  backend {} on http://{b}", i + 1);
    }
    let _ = writeln!(text, "  balancer on http://{addr}");
    if let Some(a) = demo.daemon.admin_addr() {
        let _ = writeln!(
            text,
            "  dashboard on http://{a}/  (status: http://{a}/status, metrics: http://{a}/metrics)"
        );
    }
    let _ = writeln!(
        text,
        "\nStateless (round-robin): each request may land on another backend:\n  \
         for i in 1 2 3 4 5 6; do curl -s http://{addr}/; done\n\
         Sticky (cookie-affinity): the cookie jar keeps you on one backend:\n  \
         for i in 1 2 3 4 5 6; do curl -s -b /tmp/maitred-demo.jar -c /tmp/maitred-demo.jar http://{addr}/sticky; done\n\n\
         Ctrl-C stops it."
    );
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

/// `preferred` if it is free now, else port 0. The daemon binds it later, so another
/// process may take it meanwhile: [`start`] then falls back to port 0.
async fn free_or_any(preferred: &'static str) -> &'static str {
    match TcpListener::bind(preferred).await {
        Ok(_) => preferred,
        Err(_) => ANY_PORT,
    }
}

/// Starts demo backend `n` on a loopback port the OS picks.
pub async fn spawn_backend(n: usize) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    let body = if req.uri().path() == "/healthz" {
                        "ok\n".to_string()
                    } else {
                        format!("backend {n}\n")
                    };
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    *r.status_mut() = StatusCode::OK;
                    Ok::<_, std::convert::Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}
