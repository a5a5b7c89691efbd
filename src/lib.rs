//! maitred: an HTTP reverse-proxy load balancer.
pub mod backend;
pub mod balancer;
pub mod config;
pub mod proxy;
