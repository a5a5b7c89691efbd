//! One worker thread's own state, as one type with one life cycle.
//!
//! maitred runs one current-thread tokio runtime per worker thread
//! ([`super::workers`]), and a task never leaves the worker that spawned it: a client
//! connection, its backend connections and their wake-ups stay on one thread. So the
//! request path keeps its per-worker state in thread-locals, read without a lock and
//! without a pointer threaded through hyper:
//!
//! - the parking lots of idle client connections (here);
//! - the worker's slot in every backend's idle-connection pool, and its heartbeat count
//!   ([`crate::upstream::pool`]);
//! - its HTTP/2 connections to each backend ([`crate::upstream::http2`]);
//! - spare header maps and the response header names seen ([`crate::upstream::response`]);
//! - issued and verified affinity tokens ([`crate::balancer`]);
//! - the access-log line buffer ([`crate::access_log`]);
//! - what the current HTTP/2 stream's poll waited for ([`super::stream_clock`]).
//!
//! [`Worker`] is where all of it begins and ends: made on the worker's thread before
//! its runtime runs, beaten by the worker's heartbeat, cleared when the runtime has
//! stopped. Each piece is otherwise made lazily on first use by its own module; no
//! other code installs or clears per-worker state.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::thread::LocalKey;

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::http_conn::resume_conn;
use super::park_lot::{Lot, Parkable};
use crate::snapshot::Snapshot;
use crate::upstream::pool as conn_pool;

thread_local! {
    /// The worker's lot of idle plain connections, made on its thread when the first one
    /// parks; a connection whose client sends again is served by [`resume_conn`].
    static TCP_LOT: RefCell<Lot<TcpStream>> = RefCell::new(Lot::new(resume_conn));
    /// The worker's lot of idle TLS connections, likewise.
    static TLS_LOT: RefCell<Lot<TlsStream<TcpStream>>> = RefCell::new(Lot::new(resume_conn));
}

impl Parkable for TcpStream {
    fn lot() -> &'static LocalKey<RefCell<Lot<Self>>> {
        &TCP_LOT
    }
}

impl Parkable for TlsStream<TcpStream> {
    fn lot() -> &'static LocalKey<RefCell<Lot<Self>>> {
        &TLS_LOT
    }
}

/// The per-thread state of worker `index`, alive from [`Worker::start`] to its drop,
/// both on the worker's own thread (it is neither `Send` nor `Sync`).
#[derive(Debug)]
pub(super) struct Worker {
    index: usize,
    /// Ties the value to the thread whose thread-locals it stands for.
    _thread: PhantomData<*const ()>,
}

impl Worker {
    /// Marks the current thread as worker `index`: it uses its own slot in every
    /// backend's idle pool from now on.
    pub(super) fn start(index: usize) -> Worker {
        conn_pool::set_worker_index(index);
        Worker {
            index,
            _thread: PhantomData,
        }
    }

    /// The worker's heartbeat, on its thread: sweeps the worker's idle backend
    /// connections with each pool's `keepalive_timeout` ([`conn_pool::heartbeat`]), and
    /// refreshes the thread's recent time ([`crate::latency::recent_ns`]).
    pub(super) fn heartbeat(snap: &Snapshot) {
        crate::latency::clock_ns();
        conn_pool::heartbeat(snap.pools.iter().flat_map(|pool| {
            let keepalive = pool.keepalive_timeout;
            pool.backends
                .iter()
                .filter_map(move |b| Some((conn_pool::of(&b.live)?, keepalive)))
        }));
        crate::upstream::http2::heartbeat();
    }
}

impl Drop for Worker {
    /// The worker has stopped: closes what its lots still hold and frees its caches
    /// and buffers.
    fn drop(&mut self) {
        clear_lot(&TCP_LOT);
        clear_lot(&TLS_LOT);
        crate::upstream::response::clear_worker_state();
        crate::upstream::http2::clear_worker_state();
        crate::balancer::clear_worker_caches();
        crate::access_log::clear_worker_buffer();
        tracing::trace!(worker = self.index, "worker state cleared");
    }
}

fn clear_lot<IO: Parkable>(lot: &'static LocalKey<RefCell<Lot<IO>>>) {
    let _ = lot.try_with(|lot| {
        if let Ok(mut lot) = lot.try_borrow_mut() {
            lot.clear();
        }
    });
}
