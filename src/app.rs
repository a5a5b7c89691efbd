//! A running daemon: start it from a config, reload it, shut it down. `main.rs` and the
//! integration tests drive maitred through [`Daemon`] alone.
//!
//! The daemon owns the listening sockets (bound here, on the control side, and handed
//! to every worker), the worker threads, the health checkers, the admin listener and the
//! one reload path that SIGHUP and `POST /reload` share.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpSocket;
use tokio::sync::watch;

use crate::access_log::{AccessLog, FLUSH_INTERVAL};
use crate::admin;
use crate::config::{self, AccessLogTarget, AdminState, Config, ConfigErrors, DiscoveryConfig};
use crate::discovery::{self, AppliedChange};
use crate::health::HealthCheckers;
use crate::inherit::Inherited;
use crate::reload_report::ReloadReport;
use crate::server::workers::Workers;
use crate::shared::Shared;
use crate::shutdown::{self, ShutdownTrigger};
use crate::snapshot::{BuildError, Live, Snapshot};
use crate::upgrade::handover::{HandedSocket, Handover};

/// Listen backlog for client listeners.
const BACKLOG: u32 = 4096;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The snapshot could not be built (certificates).
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A socket could not be bound, or a worker thread not started.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a reload was refused; the running config keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file does not parse or validate.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The daemon was started without a file.
    #[error("no config file to reload from")]
    NoFile,
    /// Certificates failed to load.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A new listener could not be bound.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl ReloadError {
    /// One message per problem, for the admin API.
    pub fn messages(&self) -> Vec<String> {
        match self {
            ReloadError::Config(errs) => errs.0.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// Applies a new `server.log_level` to the process's logging (set by the binary, which
/// owns the tracing subscriber).
pub type LogLevelHook = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// A bound client listener.
#[derive(Debug)]
struct Bound {
    configured: SocketAddr,
    local: SocketAddr,
    stop: watch::Sender<bool>,
    /// The daemon's own copy of the listening socket (the workers hold theirs), handed
    /// over at a binary upgrade.
    socket: std::net::TcpListener,
}

/// The admin listener: how to stop it, and its socket for a binary upgrade.
#[derive(Debug)]
struct AdminBound {
    configured: SocketAddr,
    stop: watch::Sender<bool>,
    socket: std::net::TcpListener,
}

/// A running maitred.
pub struct Daemon {
    shared: Arc<Shared>,
    trigger: ShutdownTrigger,
    workers: Mutex<Option<Workers>>,
    listeners: Mutex<HashMap<String, Bound>>,
    health: Mutex<HealthCheckers>,
    admin_addr: Mutex<Option<SocketAddr>>,
    admin_bound: Mutex<Option<AdminBound>>,
    config_path: Option<PathBuf>,
    reload_lock: tokio::sync::Mutex<()>,
    log_level_hook: Mutex<Option<LogLevelHook>>,
    /// Discovery tasks send the name of a pool whose backend table must be rebuilt.
    discovery_changed: tokio::sync::mpsc::UnboundedSender<String>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("config_path", &self.config_path)
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StartError {
    let what = what.into();
    move |source| StartError::Io { what, source }
}

impl Daemon {
    /// Starts a daemon: binds every listener, starts the workers, the health checkers
    /// (waiting for their first round) and the admin listener. `config_path` is the file
    /// reloads read.
    pub async fn start(
        config: Config,
        config_path: Option<PathBuf>,
    ) -> Result<Arc<Daemon>, StartError> {
        Daemon::start_with(config, config_path, &Inherited::default(), None).await
    }

    /// Starts a daemon as [`Daemon::start`] does, serving on the `inherited` sockets
    /// instead of binding where they match (a binary upgrade, socket activation), and
    /// with the backends' runtime state `handed` over by the process this one replaces.
    pub async fn start_with(
        config: Config,
        config_path: Option<PathBuf>,
        inherited: &Inherited,
        handed: Option<&Handover>,
    ) -> Result<Arc<Daemon>, StartError> {
        let config = Arc::new(config);
        for w in config.warnings().iter().filter(|w| w.at_start) {
            tracing::warn!("{w}");
        }
        let snapshot = Snapshot::build(Arc::clone(&config), None)?;
        let access_log = AccessLog::open(&config.server.access_log, config.server.log_format)
            .map_err(io_err("cannot open access log"))?;
        let shared = Arc::new(Shared::new(Live::new(snapshot), access_log));
        let discovered = first_discovery(&shared, &config).await?;
        if let Some(handed) = handed {
            // After the first resolution, so discovered backends take their state too.
            let n = handed.apply(&shared.live.load_full());
            tracing::info!(backends = n, "upgrade: runtime state taken over");
        }
        let (trigger, shutdown) = shutdown::channel();
        let threads = match config.server.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let workers =
            Workers::start(threads, &shared, &shutdown).map_err(io_err("cannot start workers"))?;
        let (discovery_changed, changed_rx) = tokio::sync::mpsc::unbounded_channel();
        let daemon = Arc::new(Daemon {
            shared: Arc::clone(&shared),
            trigger,
            workers: Mutex::new(Some(workers)),
            listeners: Mutex::new(HashMap::new()),
            health: Mutex::new(HealthCheckers::default()),
            admin_addr: Mutex::new(None),
            admin_bound: Mutex::new(None),
            config_path,
            reload_lock: tokio::sync::Mutex::new(()),
            log_level_hook: Mutex::new(None),
            discovery_changed,
        });
        spawn_discovery_applier(&daemon, changed_rx);
        daemon.start_discovery(discovered);
        let first_round = daemon.restart_health();
        first_round.await;
        let mut fresh = Vec::new();
        for l in &config.listeners {
            let bound = match inherited.take_listener(&l.name, l.bind) {
                Some(socket) => socket,
                None => bind(l.bind).map_err(io_err(format!(
                    "cannot bind listener {} on {}",
                    l.name, l.bind
                )))?,
            };
            fresh.push((l.name.clone(), l.bind, bound));
        }
        daemon
            .start_listeners(fresh)
            .map_err(io_err("cannot start listener"))?;
        if let Some(admin) = &config.admin {
            daemon
                .start_admin(admin.bind, inherited.take_admin(admin.bind))
                .await
                .map_err(io_err(format!(
                    "cannot bind admin listener on {}",
                    admin.bind
                )))?;
        }
        inherited.close_unclaimed();
        spawn_log_flusher(&shared, daemon.trigger.subscribe());
        crate::upkeep::spawn(&shared, daemon.trigger.subscribe());
        crate::sampler::spawn(&shared, daemon.trigger.subscribe());
        Ok(daemon)
    }

    /// What a binary upgrade hands the new process: a copy of every listening socket
    /// (client listeners, then the admin listener) and the document that says which is
    /// which, with the backends' runtime state.
    pub fn handover(&self) -> std::io::Result<(Handover, Vec<OwnedFd>)> {
        let mut doc = Handover::capture(&self.shared.live.load());
        let mut fds = Vec::new();
        if let Ok(map) = self.listeners.lock() {
            let mut names: Vec<&String> = map.keys().collect();
            names.sort();
            for name in names {
                let b = &map[name];
                fds.push(b.socket.as_fd().try_clone_to_owned()?);
                doc.sockets.push(HandedSocket {
                    role: "listener".into(),
                    name: name.clone(),
                    bind: Some(b.configured),
                });
            }
        }
        if let Ok(admin) = self.admin_bound.lock() {
            if let Some(a) = admin.as_ref() {
                fds.push(a.socket.as_fd().try_clone_to_owned()?);
                doc.sockets.push(HandedSocket {
                    role: "admin".into(),
                    name: String::new(),
                    bind: Some(a.configured),
                });
            }
        }
        Ok((doc, fds))
    }

    /// Lets reloads apply a changed `server.log_level`.
    pub fn set_log_level_hook(&self, hook: LogLevelHook) {
        if let Ok(mut h) = self.log_level_hook.lock() {
            *h = Some(hook);
        }
    }

    fn apply_log_level(&self, level: &str) {
        let Ok(hook) = self.log_level_hook.lock() else {
            return;
        };
        if let Some(Err(e)) = hook.as_ref().map(|apply| apply(level)) {
            tracing::warn!("log_level {level:?} not applied: {e}");
        }
    }

    /// Shared state (snapshot, counters) for the admin listener and tests.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The local address a listener is bound to (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.lock().ok()?.get(name).map(|b| b.local)
    }

    /// The admin listener's local address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        *self.admin_addr.lock().ok()?
    }

    /// Reloads from the config file: the one path SIGHUP and `POST /reload` share.
    /// With `dry_run`, validates and reports without applying.
    ///
    /// The future is boxed with its `Send` bound spelled out because the admin listener
    /// both calls this and is (re)started by it.
    pub fn reload(
        self: &Arc<Self>,
        dry_run: bool,
    ) -> Pin<Box<dyn Future<Output = Result<ReloadReport, ReloadError>> + Send + '_>> {
        Box::pin(async move {
            let result = match &self.config_path {
                None => Err(ReloadError::NoFile),
                Some(p) => match config::load(p) {
                    Ok(c) => {
                        if !dry_run {
                            for w in c.warnings().iter().filter(|w| w.at_start) {
                                tracing::warn!("reload: {w}");
                            }
                        }
                        self.apply(c, dry_run).await
                    }
                    Err(e) => Err(ReloadError::Config(e)),
                },
            };
            self.count_reload(&result, dry_run);
            result
        })
    }

    fn count_reload(&self, result: &Result<ReloadReport, ReloadError>, dry_run: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        match result {
            Ok(report) if !dry_run => {
                self.shared.reloads_ok.fetch_add(1, Relaxed);
                tracing::info!("reload: {}", report.summary_line());
            }
            Ok(_) => {}
            Err(e) => {
                self.shared.reloads_failed.fetch_add(1, Relaxed);
                for m in e.messages() {
                    tracing::error!("reload failed, running config kept: {m}");
                }
            }
        }
    }

    /// Applies a validated config: builds the whole new snapshot (carrying backend
    /// state, changing none), binds new listeners and a moved admin listener, swaps and
    /// applies the file's backend states, then retires what the new config dropped.
    /// Nothing changes unless every step that can fail has succeeded.
    pub async fn apply(
        self: &Arc<Self>,
        config: Config,
        dry_run: bool,
    ) -> Result<ReloadReport, ReloadError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let old = self.shared.live.load_full();
        // Discovered backends stay across a reload (DESIGN §10): the new file's pools
        // get the running discovered sets of the pools that still have discovery.
        let config = Arc::new(self.shared.discovery.compose(&config));
        let next = Snapshot::build(Arc::clone(&config), Some(&old))?;
        let report = ReloadReport::compare(&old, &next);
        if dry_run {
            return Ok(report);
        }
        let admin_changes = next.admin_changes(&old);
        if config.server.threads != old.config.server.threads {
            tracing::warn!(
                "server.threads changed from {} to {}: this takes effect at the next restart",
                old.config.server.threads,
                config.server.threads
            );
        }
        if config.server.log_format != old.config.server.log_format {
            tracing::warn!(
                "server.log_format changed: the access log uses it now, the daemon's own log at the next restart"
            );
        }
        let fresh = self.bind_changed(&config)?;
        let admin_move = bind_admin_move(&old.config, &config).await?;
        // A file target is reopened on every reload, so log rotation (move the file,
        // then SIGHUP) needs nothing else; stdout and off are reopened only on change.
        let reopen = matches!(config.server.access_log, AccessLogTarget::File(_))
            || config.server.access_log != old.config.server.access_log
            || config.server.log_format != old.config.server.log_format;
        let access_log = if reopen {
            Some(
                AccessLog::open(&config.server.access_log, config.server.log_format).map_err(
                    |source| ReloadError::Io {
                        what: "cannot open access log".into(),
                        source,
                    },
                )?,
            )
        } else {
            None
        };
        self.shared.live.store(Arc::new(next));
        admin_changes.apply();
        if config.server.log_level != old.config.server.log_level {
            self.apply_log_level(&config.server.log_level);
        }
        if let Some(log) = access_log {
            if let Some(old_log) = self.shared.access_log.swap(log) {
                old_log.flush();
            }
        }
        self.retire_listeners(&config);
        self.start_listeners(fresh)
            .map_err(|source| ReloadError::Io {
                what: "cannot start listener".into(),
                source,
            })?;
        self.retire_backends(&old);
        self.move_admin(admin_move);
        let restart = self.shared.discovery.sync(&config);
        self.start_discovery(
            restart
                .into_iter()
                .map(|(pool, dc)| (pool, dc, Duration::ZERO))
                .collect(),
        );
        // New backends of checked pools wait for their first check before taking
        // traffic; no need to hold the reload for it.
        drop(self.restart_health());
        Ok(report)
    }

    /// Starts (or restarts) the discovery task of each pool given, its first question
    /// after the duration given.
    fn start_discovery(&self, pools: Vec<(String, DiscoveryConfig, Duration)>) {
        let shared = Arc::clone(&self.shared);
        let ctx = discovery::TaskContext {
            registry: Arc::clone(&self.shared.discovery),
            current: Arc::new(move || shared.live.load_full()),
            changed: self.discovery_changed.clone(),
            shutdown: self.trigger.subscribe(),
        };
        for (pool, dc, first_wait) in pools {
            discovery::spawn(ctx.clone(), pool, dc, first_wait);
        }
    }

    /// Rebuilds the backend table from the file's config and the discovered sets, the
    /// way a reload does (live state carried by address, the sticky share moved
    /// measured by the reload report), and swaps it in; one log line per pool changed.
    async fn apply_discovered(self: &Arc<Self>) {
        let _one_at_a_time = self.reload_lock.lock().await;
        let old = self.shared.live.load_full();
        let config = self.shared.discovery.compose(&old.config);
        if config == *old.config {
            return;
        }
        let next = match Snapshot::rebuild_backends(Arc::new(config), &old) {
            Ok(n) => Arc::new(n),
            Err(e) => {
                tracing::error!("discovery: backend table not rebuilt: {e}");
                return;
            }
        };
        let report = ReloadReport::compare(&old, &next);
        let admin_changes = next.admin_changes(&old);
        self.shared.live.store(Arc::clone(&next));
        admin_changes.apply();
        discovery::after_swap(&self.shared.discovery, &old, &next);
        self.retire_backends(&old);
        drop(self.restart_health());
        for (pool, change) in applied_changes(&report, &old, &next) {
            tracing::info!("{}", change.line(&pool));
            self.shared.discovery.applied(&pool, change);
        }
    }

    /// Binds listeners that are new or whose address changed.
    fn bind_changed(
        &self,
        config: &Config,
    ) -> Result<Vec<(String, SocketAddr, std::net::TcpListener)>, ReloadError> {
        let current: HashMap<String, SocketAddr> = self
            .listeners
            .lock()
            .map(|m| m.iter().map(|(k, b)| (k.clone(), b.configured)).collect())
            .unwrap_or_default();
        let mut fresh = Vec::new();
        for l in &config.listeners {
            if current.get(&l.name) == Some(&l.bind) {
                continue;
            }
            let socket = bind(l.bind).map_err(|source| ReloadError::Io {
                what: format!("cannot bind listener {} on {}", l.name, l.bind),
                source,
            })?;
            fresh.push((l.name.clone(), l.bind, socket));
        }
        Ok(fresh)
    }

    /// Stops accepting on listeners the config no longer has, or has at another address.
    fn retire_listeners(&self, config: &Config) {
        let Ok(mut map) = self.listeners.lock() else {
            return;
        };
        map.retain(|name, b| {
            let keep = config
                .listener(name)
                .is_some_and(|l| l.bind == b.configured);
            if !keep {
                let _ = b.stop.send(true);
            }
            keep
        });
    }

    fn start_listeners(
        &self,
        fresh: Vec<(String, SocketAddr, std::net::TcpListener)>,
    ) -> std::io::Result<()> {
        for (name, configured, std_socket) in fresh {
            // Inherited sockets may come blocking (socket activation); workers need
            // them non-blocking.
            std_socket.set_nonblocking(true)?;
            let local = std_socket.local_addr()?;
            let (stop, stop_rx) = watch::channel(false);
            if let Ok(workers) = self.workers.lock() {
                if let Some(w) = workers.as_ref() {
                    w.listen(&Arc::from(name.as_str()), &std_socket, &stop_rx)?;
                }
            }
            if let Ok(mut map) = self.listeners.lock() {
                map.insert(
                    name,
                    Bound {
                        configured,
                        local,
                        stop,
                        socket: std_socket,
                    },
                );
            }
        }
        Ok(())
    }

    /// Idle connections to backends that left their pool are closed; in-flight ones
    /// finish on the old snapshot.
    fn retire_backends(&self, old: &Snapshot) {
        let now = self.shared.live.load();
        for pool in &old.pools {
            for b in &pool.backends {
                let stays = now
                    .pool(&pool.name)
                    .is_some_and(|p| p.backends.iter().any(|n| n.name == b.name));
                if !stays {
                    b.live.conns.clear();
                }
            }
        }
    }

    fn restart_health(&self) -> impl std::future::Future<Output = ()> + use<> {
        let snapshot = self.shared.live.load_full();
        let shutdown = self.trigger.subscribe();
        match self.health.lock() {
            Ok(mut h) => h.restart(&snapshot, shutdown),
            Err(_) => HealthCheckers::nothing_to_wait_for(),
        }
    }

    /// Applies an admin listener move, after the swap.
    fn move_admin(self: &Arc<Self>, change: AdminMove) {
        match change {
            AdminMove::Keep => {}
            AdminMove::Remove => self.stop_admin(),
            AdminMove::To(listener, local, bind) => {
                self.stop_admin();
                if let Err(e) = self.serve_admin(listener, local, bind) {
                    tracing::error!(error = %e, "cannot start the admin listener");
                }
            }
        }
    }

    async fn start_admin(
        self: &Arc<Self>,
        bind: SocketAddr,
        inherited: Option<std::net::TcpListener>,
    ) -> std::io::Result<()> {
        let listener = match inherited {
            Some(socket) => {
                socket.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(socket)?
            }
            None => tokio::net::TcpListener::bind(bind).await?,
        };
        let local = listener.local_addr()?;
        self.serve_admin(listener, local, bind)
    }

    fn serve_admin(
        self: &Arc<Self>,
        listener: tokio::net::TcpListener,
        local: SocketAddr,
        configured: SocketAddr,
    ) -> std::io::Result<()> {
        let socket = std::net::TcpListener::from(listener.as_fd().try_clone_to_owned()?);
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(admin::serve(
            Arc::clone(self),
            listener,
            stop_rx,
            self.trigger.subscribe(),
        ));
        if let Ok(mut a) = self.admin_addr.lock() {
            *a = Some(local);
        }
        if let Ok(mut s) = self.admin_bound.lock() {
            *s = Some(AdminBound {
                configured,
                stop,
                socket,
            });
        }
        Ok(())
    }

    fn stop_admin(&self) {
        if let Ok(mut s) = self.admin_bound.lock() {
            if let Some(admin) = s.take() {
                let _ = admin.stop.send(true);
            }
        }
        if let Ok(mut a) = self.admin_addr.lock() {
            *a = None;
        }
    }

    /// Graceful shutdown: stop accepting, let in-flight requests and tunnels finish
    /// within `grace` (the config's `grace_period` when `None`), then stop the workers.
    /// Returns whether everything finished within the grace period.
    pub async fn shutdown(&self, grace: Option<Duration>) -> bool {
        let grace = grace.unwrap_or_else(|| self.shared.live.load().config.server.grace_period);
        self.trigger.trigger();
        self.shared.discovery.stop();
        // Open client connections watch their listener's stop flag only.
        if let Ok(map) = self.listeners.lock() {
            for b in map.values() {
                let _ = b.stop.send(true);
            }
        }
        let clean = self.shared.tracker.wait_idle(grace).await;
        let workers = self.workers.lock().ok().and_then(|mut w| w.take());
        if let Some(w) = workers {
            let _ = tokio::task::spawn_blocking(move || w.stop()).await;
        }
        if let Some(log) = self.shared.access_log.load_full() {
            log.flush();
        }
        clean
    }
}

impl admin::Control for Daemon {
    fn shared(&self) -> &Shared {
        &self.shared
    }

    fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        Daemon::listener_addr(self, name)
    }

    fn reload(
        self: &Arc<Self>,
        dry_run: bool,
    ) -> impl Future<Output = Result<ReloadReport, Vec<String>>> + Send + '_ {
        let reload = Daemon::reload(self, dry_run);
        async move { reload.await.map_err(|e| e.messages()) }
    }
}

/// What a reload does to the admin listener.
enum AdminMove {
    /// Same bind address (or still none): the running one stays.
    Keep,
    /// `[admin]` is gone: stop it.
    Remove,
    /// Moved: the new socket, bound before the swap, its local address and the
    /// configured one.
    To(tokio::net::TcpListener, SocketAddr, SocketAddr),
}

/// Binds the admin listener's new address when the reload moves it, before anything
/// changes: a bind that fails fails the reload and the running admin keeps serving.
async fn bind_admin_move(old: &Config, new: &Config) -> Result<AdminMove, ReloadError> {
    let bind = new.admin.as_ref().map(|a| a.bind);
    if bind == old.admin.as_ref().map(|a| a.bind) {
        return Ok(AdminMove::Keep);
    }
    let Some(bind) = bind else {
        return Ok(AdminMove::Remove);
    };
    let io_err = |source| ReloadError::Io {
        what: format!("cannot bind admin listener on {bind}"),
        source,
    };
    let listener = tokio::net::TcpListener::bind(bind).await.map_err(io_err)?;
    let local = listener.local_addr().map_err(io_err)?;
    Ok(AdminMove::To(listener, local, bind))
}

/// Asks every discovery section of the starting config once and, when some pool has
/// one, swaps in a first snapshot with the backends found; returns the pools whose tasks
/// to start, each with the wait its first answer asks for.
async fn first_discovery(
    shared: &Shared,
    config: &Arc<Config>,
) -> Result<Vec<(String, DiscoveryConfig, Duration)>, StartError> {
    let pools = shared.discovery.sync(config);
    if pools.is_empty() {
        return Ok(Vec::new());
    }
    let bare = shared.live.load_full();
    let waits = discovery::first_answers(&shared.discovery, config, &bare).await;
    let composed = Arc::new(shared.discovery.compose(config));
    shared
        .live
        .store(Arc::new(Snapshot::rebuild_backends(composed, &bare)?));
    let first = shared.live.load_full();
    // Backends found at start are present at start: they do not ramp (DESIGN §11).
    for pool in &first.pools {
        for b in &pool.backends {
            b.live.advance_ramp(0, Duration::ZERO);
        }
    }
    for (pool, change) in applied_changes(&ReloadReport::compare(&bare, &first), &bare, &first) {
        tracing::info!("{}", change.line(&pool));
        shared.discovery.applied(&pool, change);
    }
    Ok(pools
        .into_iter()
        .map(|(pool, dc)| {
            let wait = waits.get(&pool).copied().unwrap_or(dc.min_interval);
            (pool, dc, wait)
        })
        .collect())
}

/// Runs the rebuilds discovery asks for, one at a time; names that arrive while one
/// runs are folded into the next.
fn spawn_discovery_applier(
    daemon: &Arc<Daemon>,
    mut changed: tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let daemon = Arc::downgrade(daemon);
    tokio::spawn(async move {
        while changed.recv().await.is_some() {
            while changed.try_recv().is_ok() {}
            let Some(d) = daemon.upgrade() else { return };
            d.apply_discovered().await;
        }
    });
}

/// What a discovery rebuild changed, per pool with discovery: backends added (or back
/// from draining), removed, and newly draining, with the sticky share moved.
fn applied_changes(
    report: &ReloadReport,
    old: &Snapshot,
    next: &Snapshot,
) -> Vec<(String, AppliedChange)> {
    let mut out = Vec::new();
    for pc in next.config.pools.iter().filter(|p| p.discovery.is_some()) {
        let prefix = format!("{}/", pc.name);
        let of_pool = |names: &[String]| -> Vec<String> {
            names
                .iter()
                .filter_map(|n| n.strip_prefix(&prefix).map(str::to_string))
                .collect()
        };
        let state_of = |c: &Config, addr: &str| {
            let b = c.pool(&pc.name)?.backends.iter().find(|b| b.addr == addr)?;
            Some(b.state)
        };
        let mut added = of_pool(&report.backends.added);
        let mut draining = Vec::new();
        for addr in of_pool(&report.backends.changed) {
            match (state_of(&old.config, &addr), state_of(&next.config, &addr)) {
                (Some(AdminState::Active), Some(AdminState::Drain)) => draining.push(addr),
                (Some(AdminState::Drain), Some(AdminState::Active)) => added.push(addr),
                _ => {}
            }
        }
        let removed = of_pool(&report.backends.removed);
        if added.is_empty() && removed.is_empty() && draining.is_empty() {
            continue;
        }
        out.push((
            pc.name.clone(),
            AppliedChange {
                at: std::time::SystemTime::now(),
                added,
                removed,
                draining,
                sticky_moved: report.sticky_moved.get(&pc.name).copied(),
            },
        ));
    }
    out
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)?.into_std()
}

fn spawn_log_flusher(shared: &Arc<Shared>, mut shutdown: shutdown::Shutdown) {
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait() => return,
            }
            if let Some(log) = shared.access_log.load_full() {
                log.flush();
            }
        }
    });
}
