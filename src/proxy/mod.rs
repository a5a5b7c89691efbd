//! The request path.
pub mod body;
pub mod conn_pool;
