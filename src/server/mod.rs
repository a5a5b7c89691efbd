//! Client-facing side: listeners, workers, connection timeouts, TLS and the PROXY
//! protocol.

mod conn;
pub mod conn_clock;
pub mod head_scan;
mod heap_trim;
mod http_conn;
pub mod listener;
mod park_lot;
mod peer_close;
pub mod proxy_protocol;
mod stream_clock;
mod wake_gate;
mod worker;
pub mod workers;
