//! The live world: every listener's routing and every pool, built from one validated
//! config, swapped in atomically as a whole.
//!
//! The request path loads the current [`Snapshot`] once per request (an `ArcSwap` load,
//! no lock) and uses it to the end of that request, so a reload never changes a request
//! half-way. Building a snapshot carries over the live state of every backend that stays
//! in its pool at the same address (health, ejection, in-flight, counters, pooled
//! connections, and an admin state set at runtime unless the file changes that
//! backend's `state`), and every pool's counters and wait queue by the pool's name.
//!
//! Building never writes to the running world: a dry run, or a reload that fails after
//! the build, leaves it as it was. What the new file changes on carried-over state (a
//! backend's `state`) is returned as [`AdminChanges`], applied by the reload when it
//! swaps the new snapshot in.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ipnet::IpNet;

use crate::backend::BackendLive;
use crate::backend_tls::BackendTls;
use crate::config::PoolConfig;
use crate::config::{AdminState, Config};
use crate::conn_limit::ConnLimit;
use crate::pool::{Pool, Transport};
use crate::router::Router;
use crate::tls::{self, TlsError};

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
    /// No progress writing a response for this long closes the stream or connection.
    pub send_timeout: Duration,
    /// No progress reading a request body for this long: 408.
    pub client_body_timeout: Duration,
    /// `max_connections` (0 = unlimited).
    pub max_connections: u32,
    /// The open-connection count the accept loops share, carried over reloads by name.
    pub conn_limit: Arc<ConnLimit>,
    /// Expect a PROXY protocol header.
    pub proxy_protocol: bool,
    /// TLS termination.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Upgrade protocols tunnelled, lower case (never `h2c`).
    pub upgrades: Vec<String>,
}

/// The listener `name`'s connection limit: the running one (its new `max` is applied
/// when the snapshot is published, never by building it), or a new one.
fn conn_limit(previous: Option<&Snapshot>, name: &str, max: u32) -> Arc<ConnLimit> {
    match previous.and_then(|s| s.listener(name)) {
        Some(l) => Arc::clone(&l.conn_limit),
        None => ConnLimit::new(max),
    }
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
    /// A pool's CA, client certificate or key for TLS to its backends failed to load.
    #[error("pool {pool} [tls]: {source}")]
    BackendTls {
        /// The pool.
        pool: String,
        /// What failed.
        #[source]
        source: TlsError,
    },
}

impl Snapshot {
    /// Builds the snapshot for `config`, carrying live backend state over from
    /// `previous` without changing it: the admin states the new file sets on
    /// carried-over backends are left to [`Snapshot::admin_changes`].
    pub fn build(config: Arc<Config>, previous: Option<&Snapshot>) -> Result<Snapshot, BuildError> {
        Snapshot::build_with(config, previous, Certificates::Load)
    }

    /// Builds the snapshot for `config`, which differs from `previous`'s only in its
    /// discovered backends: listeners keep the TLS configurations `previous` loaded
    /// (no certificate is read again; only a listener `previous` lacks would load its
    /// own, and discovery adds none).
    pub fn rebuild_backends(
        config: Arc<Config>,
        previous: &Snapshot,
    ) -> Result<Snapshot, BuildError> {
        Snapshot::build_with(config, Some(previous), Certificates::Keep)
    }

    fn build_with(
        config: Arc<Config>,
        previous: Option<&Snapshot>,
        certificates: Certificates,
    ) -> Result<Snapshot, BuildError> {
        let mut pools: Vec<Arc<Pool>> = Vec::with_capacity(config.pools.len());
        for pc in &config.pools {
            let old_pool = previous.and_then(|s| s.pool(&pc.name));
            let old_cfg = previous.and_then(|s| s.config.pool(&pc.name));
            let stats = old_pool.map(|p| Arc::clone(&p.stats)).unwrap_or_default();
            let queue = old_pool.and_then(|p| p.queue().cloned());
            let unchanged = old_cfg == Some(pc);
            let transport = transport(pc, old_pool, old_cfg, certificates)?;
            let previous = old_pool.map(|p| &**p);
            pools.push(Arc::new(Pool::build(
                pc,
                transport,
                stats,
                queue,
                previous,
                unchanged,
                |addr| {
                    let old = old_pool?.backends.iter().find(|b| &*b.name == addr)?;
                    Some(Arc::clone(&old.live))
                },
            )));
        }
        let pool_index = |name: &str| pools.iter().position(|p| &*p.name == name);
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for lc in &config.listeners {
            let kept = match certificates {
                Certificates::Keep => previous.and_then(|s| s.listener(&lc.name)),
                Certificates::Load => None,
            };
            let tls = match (&lc.tls, kept) {
                (Some(_), Some(k)) if k.tls.is_some() => k.tls.clone(),
                (Some(t), _) => Some(tls::server_config(t).map_err(|source| BuildError::Tls {
                    listener: lc.name.clone(),
                    source,
                })?),
                (None, _) => None,
            };
            let default_pool = pool_index(&lc.pool).unwrap_or(0);
            listeners.push(ListenerRuntime {
                name: Arc::from(lc.name.as_str()),
                router: Router::new(&lc.routes, default_pool, pool_index),
                trusted_proxies: lc.trusted_proxies.clone(),
                header_timeout: lc.header_timeout,
                idle_timeout: lc.idle_timeout,
                send_timeout: lc.send_timeout,
                client_body_timeout: lc.client_body_timeout,
                max_connections: lc.max_connections,
                conn_limit: conn_limit(previous, &lc.name, lc.max_connections),
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

    /// The admin states this snapshot's file sets on backends it carried over from
    /// `previous`: those whose `state` differs between the two files. An admin state
    /// set at runtime survives a reload that leaves the backend's `state` alone.
    pub fn admin_changes(&self, previous: &Snapshot) -> AdminChanges {
        let mut changes = Vec::new();
        for pool in &self.pools {
            let (Some(new_cfg), Some(old_cfg)) = (
                self.config.pool(&pool.name),
                previous.config.pool(&pool.name),
            ) else {
                continue;
            };
            let carried = |name: &str| {
                previous
                    .pool(&pool.name)?
                    .backends
                    .iter()
                    .find(|b| &*b.name == name)
            };
            for bc in &new_cfg.backends {
                let old_state = old_cfg.backends.iter().find(|b| b.addr == bc.addr);
                if old_state.is_none_or(|o| o.state == bc.state) {
                    continue;
                }
                if let Some(b) = carried(&bc.addr) {
                    changes.push((Arc::clone(&b.live), bc.state));
                }
            }
        }
        AdminChanges(changes)
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

/// A pool's transport. With the same protocol and TLS settings as before, the previous
/// one (its idle connections stay usable), except that a reload
/// ([`Certificates::Load`]) loads a TLS pool's files again: a rotated CA or client
/// certificate takes effect, and connections start afresh as nginx's new workers'
/// would. Discovery rebuilds read no file.
fn transport(
    pc: &PoolConfig,
    old_pool: Option<&Arc<Pool>>,
    old_cfg: Option<&PoolConfig>,
    certificates: Certificates,
) -> Result<Transport, BuildError> {
    let same = old_cfg.is_some_and(|o| o.protocol == pc.protocol && o.tls == pc.tls);
    let reread = certificates == Certificates::Load && pc.tls.is_some();
    if let (true, false, Some(old)) = (same, reread, old_pool) {
        return Ok(old.transport.clone());
    }
    let tls = match &pc.tls {
        None => None,
        Some(t) => Some(Arc::new(BackendTls::load(t, pc.protocol).map_err(
            |source| BuildError::BackendTls {
                pool: pc.name.clone(),
                source,
            },
        )?)),
    };
    Ok(Transport::new(pc.protocol, tls))
}

/// Whether a build loads listener certificates from their files or keeps the previous
/// snapshot's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Certificates {
    Load,
    Keep,
}

/// Admin states a new file sets on backends carried over from the running snapshot,
/// held back until that snapshot is swapped in.
#[derive(Debug, Default)]
#[must_use = "admin changes take effect only when applied"]
pub struct AdminChanges(Vec<(Arc<BackendLive>, AdminState)>);

impl AdminChanges {
    /// Sets each state; called by the reload as it swaps the new snapshot in.
    pub fn apply(self) {
        for (live, state) in self.0 {
            live.set_admin(state);
        }
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

    /// Publishes a new snapshot, and with it its listeners' connection limits.
    pub fn store(&self, s: Arc<Snapshot>) {
        for l in &s.listeners {
            l.conn_limit.set_max(l.max_connections);
        }
        self.current.store(s);
    }
}
