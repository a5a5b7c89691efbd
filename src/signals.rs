//! Unix signals: SIGHUP reloads, SIGTERM / SIGINT shut down gracefully, and a second
//! SIGTERM / SIGINT during the grace period exits at once.

use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};

use crate::app::Daemon;

/// Exit status when a second signal cuts the grace period short.
pub const FORCED_EXIT: i32 = 1;

/// Serves signals until the daemon has shut down; returns the process exit status.
pub async fn run(daemon: Arc<Daemon>) -> std::io::Result<i32> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                // Outcome is logged and counted by the reload path itself.
                let _ = daemon.reload(false).await;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down: no new connections, finishing requests in flight");
    let graceful = daemon.shutdown(None);
    tokio::pin!(graceful);
    tokio::select! {
        clean = &mut graceful => {
            if !clean {
                tracing::warn!("grace period over: closing the connections still open");
            }
            Ok(0)
        }
        _ = term.recv() => Ok(FORCED_EXIT),
        _ = int.recv() => Ok(FORCED_EXIT),
    }
}
