//! Integration tests: the real daemon on loopback ports in front of real backend
//! servers, spoken to over real sockets. One test binary, grouped by behaviour.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod proxy;
mod cli;
mod admin;
mod health;
mod reload;
mod tls;
