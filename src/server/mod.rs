//! Client-facing side: listeners, workers, connection timeouts, TLS, PROXY protocol and
//! the client IP.

pub mod client_ip;
pub mod conn_clock;
pub mod head_scan;
pub mod listener;
pub mod proxy_protocol;
pub mod tls;
pub mod workers;
