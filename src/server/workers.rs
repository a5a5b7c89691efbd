//! Worker threads: one single-threaded tokio runtime per core, each running an accept
//! loop for every listener, the connections it accepts, and the parking lots that keep
//! its idle ones.
//!
//! A runtime per core (as nginx runs a process per core) keeps a connection, its
//! upstream connections and their wake-ups on one thread; measured cheaper per request
//! than a multi-threaded runtime. All workers accept from the same listening socket.
//! The control side (signals, reload, health checks, admin) runs elsewhere and talks to
//! workers only through [`Workers::listen`].

use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, watch};

use super::listener::accept_loop;
use super::worker::Worker;
use crate::shared::Shared;
use crate::shutdown::Shutdown;
use crate::upstream::pool as conn_pool;

enum Command {
    Listen {
        name: Arc<str>,
        socket: std::net::TcpListener,
        stop: watch::Receiver<bool>,
    },
}

/// The running worker threads.
#[derive(Debug)]
pub struct Workers {
    senders: Vec<mpsc::UnboundedSender<Command>>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Listen { name, .. } => write!(f, "Listen({name})"),
        }
    }
}

impl Workers {
    /// Starts `count` worker threads.
    pub fn start(
        count: usize,
        shared: &Arc<Shared>,
        shutdown: &Shutdown,
    ) -> std::io::Result<Workers> {
        let mut senders = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for index in 0..count {
            let (tx, rx) = mpsc::unbounded_channel();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let shared = Arc::clone(shared);
            let shutdown = shutdown.clone();
            let thread = std::thread::Builder::new()
                .name(format!("maitred-worker-{index}"))
                .spawn(move || {
                    let worker = Worker::start(index);
                    runtime.block_on(run(rx, shared, shutdown));
                    // The runtime's tasks (connections, the parking lots' tasks) end
                    // first, then the worker's own state goes.
                    drop(runtime);
                    drop(worker);
                })?;
            senders.push(tx);
            threads.push(thread);
        }
        Ok(Workers { senders, threads })
    }

    /// Starts accepting on `socket` in every worker until `stop` turns true.
    pub fn listen(
        &self,
        name: &Arc<str>,
        socket: &std::net::TcpListener,
        stop: &watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        for tx in &self.senders {
            let cmd = Command::Listen {
                name: Arc::clone(name),
                socket: socket.try_clone()?,
                stop: stop.clone(),
            };
            let _ = tx.send(cmd);
        }
        Ok(())
    }

    /// Ends every worker: their remaining connections are dropped. Call after the
    /// graceful part of shutdown.
    pub fn stop(self) {
        drop(self.senders);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Period of the worker's heartbeat timer.
///
/// tokio interrupts its driver (an eventfd write, one system call) whenever a timer is
/// registered that is due before the driver's next planned wake-up. Every request
/// registers a response timeout; with a heartbeat always due sooner than those, the
/// driver is never interrupted for them. Costs two wake-ups a second per worker. Each
/// beat also closes this worker's backend connections idle past `keepalive_timeout`
/// or closed by the backend, and frees the buffers of those that have stayed idle
/// since the one before ([`conn_pool::heartbeat`]).
const HEARTBEAT: std::time::Duration = conn_pool::HEARTBEAT;

async fn run(mut rx: mpsc::UnboundedReceiver<Command>, shared: Arc<Shared>, shutdown: Shutdown) {
    let beating = Arc::clone(&shared);
    tokio::spawn(async move {
        let mut beat = tokio::time::interval(HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            beat.tick().await;
            Worker::heartbeat(&beating.live.load());
        }
    });
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Command::Listen { name, socket, stop } => {
                match tokio::net::TcpListener::from_std(socket) {
                    Ok(l) => {
                        tokio::spawn(accept_loop(
                            l,
                            name,
                            Arc::clone(&shared),
                            stop,
                            shutdown.clone(),
                        ));
                    }
                    Err(e) => {
                        tracing::error!(listener = %name, error = %e, "worker cannot use listener")
                    }
                }
            }
        }
    }
}
