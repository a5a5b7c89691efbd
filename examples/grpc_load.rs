//! A load generator for gRPC unary calls: `grpc.health.v1.Health/Check` from N
//! concurrent tonic clients (each on its own HTTP/2 connection, one call at a time) for
//! D seconds against each target in turn, printing calls per second, errors and latency
//! percentiles. Give it the backend itself and maitred in front of it (a pool with
//! `protocol = "h2c"`) to see what the proxy costs:
//!
//!     cargo run --release --example grpc_backend -- 127.0.0.1:19021 &
//!     cargo run --release --example grpc_load -- --clients 64 --seconds 10 \
//!         direct=127.0.0.1:19021 maitred=127.0.0.1:18080
//!
//! Targets are loopback addresses only, optionally named (`NAME=ADDR`); the order
//! alternates over `--rounds` so neither target always runs on a warmer machine.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// What to run.
struct Args {
    targets: Vec<(String, SocketAddr)>,
    clients: usize,
    seconds: u64,
    rounds: usize,
}

/// What one client saw in one run.
#[derive(Default)]
struct Tally {
    calls: u64,
    errors: u64,
    /// Latency of each successful call, in microseconds.
    micros: Vec<u32>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        targets: Vec::new(),
        clients: 64,
        seconds: 10,
        rounds: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .filter(|n| *n > 0)
                .ok_or(format!("{name} takes a positive number"))
        };
        match a.as_str() {
            "--clients" => args.clients = number("--clients")? as usize,
            "--seconds" => args.seconds = number("--seconds")?,
            "--rounds" => args.rounds = number("--rounds")? as usize,
            "-h" | "--help" => return Err(usage()),
            target => {
                let (name, addr) = target.split_once('=').unwrap_or((target, target));
                let addr: SocketAddr = addr
                    .parse()
                    .map_err(|e| format!("{target}: not an address: {e}"))?;
                if !addr.ip().is_loopback() {
                    return Err(format!("{target}: loopback addresses only"));
                }
                args.targets.push((name.to_string(), addr));
            }
        }
    }
    if args.targets.is_empty() {
        return Err(usage());
    }
    Ok(args)
}

fn usage() -> String {
    "usage: grpc_load [--clients N] [--seconds D] [--rounds R] [NAME=]ADDR...".to_string()
}

/// One client: calls one after another on its own connection until `end`.
async fn client(addr: SocketAddr, end: Instant) -> Tally {
    let mut tally = Tally::default();
    let channel = match Endpoint::from_shared(format!("http://{addr}")) {
        Ok(e) => e.tcp_nodelay(true).connect().await,
        Err(e) => {
            eprintln!("{addr}: {e}");
            tally.errors += 1;
            return tally;
        }
    };
    let Ok(channel) = channel else {
        tally.errors += 1;
        return tally;
    };
    let mut health = HealthClient::new(channel);
    while Instant::now() < end {
        let t0 = Instant::now();
        let req = HealthCheckRequest {
            service: String::new(),
        };
        match health.check(req).await {
            Ok(_) => {
                tally.calls += 1;
                tally
                    .micros
                    .push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
            }
            Err(_) => tally.errors += 1,
        }
    }
    tally
}

/// Runs `clients` clients against `addr` for `seconds`; prints one line.
async fn run(name: &str, addr: SocketAddr, clients: usize, seconds: u64) {
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(client(addr, end)))
        .collect();
    let mut all = Tally::default();
    for t in tasks {
        if let Ok(t) = t.await {
            all.calls += t.calls;
            all.errors += t.errors;
            all.micros.extend(t.micros);
        }
    }
    let took = start.elapsed().as_secs_f64();
    all.micros.sort_unstable();
    let pct = |p: f64| {
        let i = ((all.micros.len() as f64 - 1.0) * p).round() as usize;
        all.micros.get(i).map_or(0.0, |us| f64::from(*us) / 1000.0)
    };
    println!(
        "{name:>10} {addr}: {:>9.0} calls/s  {} calls  {} errors  p50 {:.2} ms  p99 {:.2} ms  ({clients} clients, {took:.1} s)",
        all.calls as f64 / took,
        all.calls,
        all.errors,
        pct(0.50),
        pct(0.99),
    );
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(async {
        for round in 0..args.rounds {
            let mut order: Vec<_> = args.targets.iter().collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for (name, addr) in order {
                run(name, *addr, args.clients, args.seconds).await;
            }
        }
    });
}
