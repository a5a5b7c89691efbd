//! The live world: every listener's routing and every pool, built from one validated
//! config, swapped in atomically as a whole.
//!
//! The request path loads the current [`Snapshot`] once per request (an `ArcSwap` load,
//! no lock) and uses it to the end of that request, so a reload never changes a request
//! half-way. Building a snapshot carries over the live state of every backend that stays
//! in its pool at the same address (health, ejection, in-flight, counters, pooled
//! connections, and an admin state set at runtime unless the file changes that
//! backend's `state`).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ipnet::IpNet;

use crate::config::Config;
use crate::pool::Pool;
use crate::router::Router;
use crate::server::tls::{self, TlsError};

/// A listener's per-request settings.
#[derive(Debug)]
pub struct ListenerRuntime {
    /// The listener's name (its identity across reloads).
    pub name: Arc<str>,
    /// Host / path / header → pool index.
    pub router: Router,
    /// Peers whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// From a request's first byte to the end of its headers.
    pub header_timeout: Duration,
    /// Close a connection idle this long.
    pub idle_timeout: Duration,
    /// Expect a PROXY protocol header.
    pub proxy_protocol: bool,
    /// TLS termination.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Upgrade protocols tunnelled, lower case (never `h2c`).
    pub upgrades: Vec<String>,
}

/// The immutable live configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// The config this was built from.
    pub config: Arc<Config>,
    /// Listeners, in config order.
    pub listeners: Vec<ListenerRuntime>,
    /// Pools, sorted by name.
    pub pools: Vec<Arc<Pool>>,
}

/// Why a snapshot could not be built from a valid config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A certificate or key failed to load.
    #[error("listener {listener}: {source}")]
    Tls {
        /// The listener.
        listener: String,
        /// What failed.
        #[source]
        source: TlsError,
    },
}

impl Snapshot {
    /// Builds the snapshot for `config`, carrying live backend state over from `previous`.
    pub fn build(config: Arc<Config>, previous: Option<&Snapshot>) -> Result<Snapshot, BuildError> {
        let pools: Vec<Arc<Pool>> = config
            .pools
            .iter()
            .map(|pc| {
                let old_pool = previous.and_then(|s| s.pool(&pc.name));
                let old_cfg = previous.and_then(|s| s.config.pool(&pc.name));
                let stats = old_pool.map(|p| Arc::clone(&p.stats)).unwrap_or_default();
                let unchanged = old_pool.filter(|_| old_cfg == Some(pc)).map(|p| &**p);
                Arc::new(Pool::build(pc, stats, unchanged, |addr| {
                    let old = old_pool?.backends.iter().find(|b| &*b.name == addr)?;
                    let live = Arc::clone(&old.live);
                    let old_state = old_cfg
                        .and_then(|c| c.backends.iter().find(|b| b.addr == addr))
                        .map(|b| b.state);
                    let new_state = pc.backends.iter().find(|b| b.addr == addr).map(|b| b.state);
                    if let Some(s) = new_state.filter(|s| old_state != Some(*s)) {
                        live.set_admin(s);
                    }
                    Some(live)
                }))
            })
            .collect();
        let pool_index = |name: &str| pools.iter().position(|p| &*p.name == name);
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for lc in &config.listeners {
            let tls = match &lc.tls {
                Some(t) => Some(tls::server_config(t).map_err(|source| BuildError::Tls {
                    listener: lc.name.clone(),
                    source,
                })?),
                None => None,
            };
            let default_pool = pool_index(&lc.pool).unwrap_or(0);
            listeners.push(ListenerRuntime {
                name: Arc::from(lc.name.as_str()),
                router: Router::new(&lc.routes, default_pool, pool_index),
                trusted_proxies: lc.trusted_proxies.clone(),
                header_timeout: lc.header_timeout,
                idle_timeout: lc.idle_timeout,
                proxy_protocol: lc.proxy_protocol,
                tls,
                upgrades: lc.upgrades.clone(),
            });
        }
        Ok(Snapshot {
            config,
            listeners,
            pools,
        })
    }

    /// The pool with this name.
    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| &*p.name == name)
    }

    /// The listener with this name.
    #[inline]
    pub fn listener(&self, name: &str) -> Option<&ListenerRuntime> {
        self.listeners.iter().find(|l| &*l.name == name)
    }
}

/// The holder of the current snapshot: one atomic pointer, swapped once per reload.
#[derive(Debug)]
pub struct Live {
    current: ArcSwap<Snapshot>,
}

impl Live {
    /// Starts with `s`.
    pub fn new(s: Snapshot) -> Live {
        Live {
            current: ArcSwap::from_pointee(s),
        }
    }

    /// The current snapshot, for one request or one admin call.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc` (long-lived holders: tunnels, checkers).
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Publishes a new snapshot.
    pub fn store(&self, s: Arc<Snapshot>) {
        self.current.store(s);
    }
}
