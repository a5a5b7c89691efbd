//! Integration tests: the real daemon on loopback ports in front of real backend
//! servers, spoken to over real sockets. One test binary, grouped by behaviour.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod balancing;
mod cli;
mod common;
mod discovery;
mod grpc;
mod h2_upstream;
mod health;
mod latency;
mod limits;
mod parking;
mod pinned;
mod proxy;
mod queue;
mod reload;
mod slow_start;
mod test_ca;
mod tls;
mod upgrade;
mod upstream;
mod upstream_tls;
