//! Client-facing side: listeners, workers, connection timeouts, TLS, PROXY protocol and
//! the client IP.

pub mod client_ip;
pub mod conn_clock;
pub mod head_scan;
mod http_conn;
pub mod listener;
pub mod proxy_protocol;
pub mod tls;
mod wake_gate;
pub mod workers;
