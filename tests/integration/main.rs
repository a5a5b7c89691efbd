//! Integration tests: the real daemon on loopback ports in front of real backend
//! servers, spoken to over real sockets. One test binary, grouped by behaviour.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod balancing;
mod cli;
mod common;
mod health;
mod latency;
mod limits;
mod parking;
mod proxy;
mod queue;
mod reload;
mod tls;
mod upgrade;
mod upstream;
