//! The service manager's side of the daemon (systemd, `Type=notify`): readiness, reload
//! and stop notifications, the watchdog, and the new process's `MAINPID=` after a
//! binary upgrade.
//!
//! Every function does nothing when `NOTIFY_SOCKET` is not set, so the daemon calls
//! them unconditionally. A notification that cannot be sent is logged, never fatal:
//! serving matters more than telling systemd about it. Nothing here runs per request.

use std::time::Duration;

use sd_notify::NotifyState;

/// The daemon serves: sent once, after the listeners accept and the first health round.
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// A new process, started by a binary upgrade, serves and is the service's main
/// process from now on (`NotifyAccess=all` lets systemd take this from it).
pub fn ready_as_main() {
    send(&[NotifyState::MainPid(std::process::id()), NotifyState::Ready]);
}

/// A reload begins; [`ready`] ends it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the monotonic clock for RELOADING=1");
            send(&[NotifyState::Reloading]);
        }
    }
}

/// The daemon is shutting down.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Starts pinging the watchdog at half of `WATCHDOG_USEC` when the service manager
/// set it for this process. The pings run on the control runtime until the process
/// ends, through the grace period too: a daemon finishing its requests is alive.
pub fn spawn_watchdog() {
    let Some(limit) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (limit / 2).max(Duration::from_millis(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    });
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}
