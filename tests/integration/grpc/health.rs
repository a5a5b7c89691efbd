//! gRPC health checks (`[pool.NAME.health] grpc = true`): the backend's state follows
//! what its `grpc.health.v1` service says of the service named by `path` (or of the
//! whole server), over h2c and over TLS with h2.

use std::net::SocketAddr;
use std::time::Duration;

use maitred::app::Daemon;
use maitred::backend::Health;
use tonic_health::ServingStatus;

use super::GrpcBackend;
use super::echo::SERVICE;
use crate::common::*;
use crate::test_ca::TestCa;

fn grpc_checks(pool: &str, service: &str) -> String {
    format!(
        "\n[pool.{pool}.health]\ngrpc = true\npath = \"{service}\"\ninterval = \"200ms\"\ntimeout = \"1s\"\nrise = 1\nfall = 1\n"
    )
}

/// The health and the last check's detail of the backend at `addr` in `pool`.
fn state(d: &Daemon, pool: &str, addr: SocketAddr) -> (Health, String) {
    let snap = d.shared().live.load();
    let name = addr.to_string();
    let b = snap
        .pool(pool)
        .unwrap()
        .backends
        .iter()
        .find(|b| *b.name == *name)
        .unwrap();
    let detail = b.live.last_check().map(|c| c.detail).unwrap_or_default();
    (b.live.health(), detail)
}

async fn wait_for(d: &Daemon, pool: &str, addr: SocketAddr, want: Health, detail: &str) {
    let reached = wait_until(DEADLINE, || async {
        state(d, pool, addr) == (want, detail.to_string())
    })
    .await;
    assert!(reached, "{pool}: {:?}", state(d, pool, addr));
}

#[tokio::test]
async fn a_grpc_health_check_follows_the_services_serving_status() {
    let b = GrpcBackend::start().await;
    b.health
        .set_service_status(SERVICE, ServingStatus::Serving)
        .await;
    let pools = format!(
        "{}\n[pool.unknown]\nbalancer = \"round-robin\"\nprotocol = \"h2c\"\nbackends = [\"{}\"]\n{}",
        grpc_checks("web", SERVICE),
        b.addr,
        grpc_checks("unknown", "no.Such"),
    );
    let d = start_daemon(&super::grpc_config(&[b.addr], &pools, "")).await;
    assert_eq!(state(&d, "web", b.addr), (Health::Up, "SERVING".into()));
    // tonic-health answers NOT_FOUND for a service it does not know.
    assert_eq!(
        state(&d, "unknown", b.addr),
        (Health::Down, "grpc-status 5".into())
    );
    b.health
        .set_service_status(SERVICE, ServingStatus::NotServing)
        .await;
    wait_for(&d, "web", b.addr, Health::Down, "NOT_SERVING").await;
    b.health
        .set_service_status(SERVICE, ServingStatus::Serving)
        .await;
    wait_for(&d, "web", b.addr, Health::Up, "SERVING").await;
    b.kill();
    wait_for(&d, "web", b.addr, Health::Down, "refused").await;
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn a_grpc_health_check_runs_over_tls_with_h2() {
    let ca = TestCa::new("grpc-health-ca");
    let b = GrpcBackend::start_tls(ca.server_config(&["backend.test"], &[b"h2"])).await;
    let pool = format!(
        "[pool.web.tls]\nca = \"{}\"\nserver_name = \"backend.test\"\n{}",
        ca.ca_path().display(),
        grpc_checks("web", ""),
    );
    let config = super::grpc_config(&[b.addr], &pool, "").replace("\"h2c\"", "\"h2\"");
    let d = start_daemon(&config).await;
    assert_eq!(state(&d, "web", b.addr), (Health::Up, "SERVING".into()));
    b.health.set_not_serving::<super::echo::EchoServer>().await;
    // The whole server ("") is still serving: four more checks change nothing.
    let seen = b.calls();
    assert!(wait_until(DEADLINE, || async { b.calls() >= seen + 4 }).await);
    assert_eq!(state(&d, "web", b.addr), (Health::Up, "SERVING".into()));
    b.health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    wait_for(&d, "web", b.addr, Health::Down, "NOT_SERVING").await;
    d.shutdown(Some(Duration::from_secs(1))).await;
}
