//! A minimal gRPC server for benchmarks: `grpc.health.v1.Health` (tonic-health)
//! answering SERVING, on the loopback address given as the only argument
//! (default 127.0.0.1:19021). `benches/e2e/upstream_protocols.sh` drives unary Check
//! calls at it directly and through maitred with h2load.
//!
//!     cargo run --release --example grpc_backend -- 127.0.0.1:19021

use std::net::SocketAddr;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:19021".to_string())
        .parse()?;
    if !addr.ip().is_loopback() {
        return Err("grpc_backend listens on loopback addresses only".into());
    }
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    tonic::transport::Server::builder()
        .add_service(service)
        .serve(addr)
        .await?;
    Ok(())
}
