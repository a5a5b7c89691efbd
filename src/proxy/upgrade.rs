//! Tunnels for WebSocket and other `Upgrade` requests: after the backend answers 101,
//! bytes are copied both ways until either side closes.
//!
//! The tunnel holds the backend's in-flight slot (a draining backend keeps its open
//! tunnels, and least-connections sees them), is counted among the backend's open
//! tunnels once both sides have upgraded, and is tracked, so graceful shutdown waits
//! for it up to the grace period. A backend removed while its tunnels are open (DNS
//! discovery's `drain_timeout`) ends them.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt as _;

use crate::backend::InFlight;
use crate::shared::Shared;
use crate::upstream::UpConn;

/// Starts the tunnel task for an upgrade both sides agreed to: once hyper has sent the
/// 101 to the client, whatever the backend sent after its own 101 goes first, then bytes
/// flow both ways.
pub fn spawn_tunnel(shared: &Shared, client: OnUpgrade, backend: UpConn, guard: InFlight) {
    let tracked = shared.tracker.track();
    tokio::spawn(async move {
        let _tracked = tracked;
        let client = match client.await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let _open = guard.live().open_tunnel();
        let mut client = TokioIo::new(client);
        let (mut backend, early) = backend.into_tunnel();
        if !early.is_empty() {
            if let Err(e) = client.write_all(&early).await {
                tracing::debug!(error = %e, "tunnel ended with an error");
                return;
            }
        }
        let live = std::sync::Arc::clone(guard.live());
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut client, &mut backend) => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "tunnel ended with an error");
                }
            }
            () = live.tunnels_closed() => {
                tracing::info!("tunnel closed: its backend was removed");
            }
        }
    });
}
