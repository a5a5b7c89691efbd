//! Unix signals: SIGHUP reloads, SIGUSR2 upgrades the binary ([`crate::upgrade`]),
//! SIGTERM / SIGINT shut down gracefully, and a second SIGTERM / SIGINT during the
//! grace period exits at once. The service manager hears of each ([`crate::service`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::app::Daemon;
use crate::service;
use crate::upgrade::{self, Successor, UpgradeError, Upgrader};

/// Exit status when a second signal cuts the grace period short.
pub const FORCED_EXIT: i32 = 1;

/// The signals the daemon answers, caught from the moment this is made: install them
/// before starting the daemon, so that an early SIGUSR2 or SIGHUP is not fatal.
#[derive(Debug)]
pub struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
    usr2: Signal,
}

impl Signals {
    /// Catches SIGHUP, SIGTERM, SIGINT and SIGUSR2. Call on a runtime.
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }
}

type Upgrading<'a> = Pin<Box<dyn Future<Output = Result<Successor, UpgradeError>> + Send + 'a>>;

/// Serves signals until the daemon has shut down; returns the process exit status.
/// Without an `upgrader` (the demo), SIGUSR2 is refused.
pub async fn run(
    daemon: Arc<Daemon>,
    mut signals: Signals,
    upgrader: Option<Upgrader>,
) -> std::io::Result<i32> {
    let mut upgrading: Option<Upgrading<'_>> = None;
    let mut successor = None;
    loop {
        tokio::select! {
            _ = signals.hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                service::reloading();
                // Outcome is logged and counted by the reload path itself.
                let _ = daemon.reload(false).await;
                service::ready();
            }
            _ = signals.usr2.recv() => {
                if let Some(why) = refusal(upgrading.is_some(), upgrader.is_some()) {
                    tracing::warn!("SIGUSR2 refused: {why}");
                    continue;
                }
                if let Some(u) = &upgrader {
                    tracing::info!("SIGUSR2: upgrading the binary");
                    upgrading = Some(Box::pin(u.run(&daemon)));
                }
            }
            done = async { upgrading.as_mut()?.await.into() }, if upgrading.is_some() => {
                upgrading = None;
                match done {
                    Some(Ok(next)) => {
                        tracing::info!(
                            "upgrade: the new process {} serves; this one stops accepting, finishes its requests and tunnels, and exits",
                            next.pid
                        );
                        successor = Some(next);
                        break;
                    }
                    Some(Err(e)) => tracing::error!("upgrade failed, this process keeps serving: {e}"),
                    None => {}
                }
            }
            _ = signals.term.recv() => break,
            _ = signals.int.recv() => break,
        }
    }
    // A stopped upgrade kills the new process it started.
    drop(upgrading);
    if successor.is_none() {
        service::stopping();
        tracing::info!("shutting down: no new connections, finishing requests in flight");
    }
    let graceful = daemon.shutdown(None);
    tokio::pin!(graceful);
    let code = loop {
        tokio::select! {
            clean = &mut graceful => {
                if !clean {
                    tracing::warn!("grace period over: closing the connections still open");
                }
                break 0;
            }
            _ = signals.usr2.recv() => tracing::warn!("SIGUSR2 refused: this process is shutting down"),
            _ = signals.hup.recv() => tracing::warn!("SIGHUP ignored: this process is shutting down"),
            _ = signals.term.recv() => break FORCED_EXIT,
            _ = signals.int.recv() => break FORCED_EXIT,
        }
    };
    // The new process's channel closes with this process: it may upgrade from now on.
    drop(successor);
    Ok(code)
}

/// Why a SIGUSR2 cannot start an upgrade now, if it cannot.
fn refusal(upgrading: bool, can_upgrade: bool) -> Option<&'static str> {
    if !can_upgrade {
        return Some("this daemon runs without a config file (demo)");
    }
    if upgrading {
        return Some("an upgrade is already under way");
    }
    if upgrade::old_process_running() {
        return Some("the process this one replaced is still finishing its connections");
    }
    None
}
