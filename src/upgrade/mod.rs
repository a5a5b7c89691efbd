//! Binary upgrade on SIGUSR2 (DESIGN §14), as nginx does it, without losing a
//! connection.
//!
//! The old process starts the executable at the path it was started from (the file
//! there now, which a package manager may have replaced) with the same arguments,
//! its standard input being one end of a Unix socket pair ([`channel`]). Over it go
//! every listening socket (`SCM_RIGHTS`) and the runtime state ([`handover`]). The
//! new process binds nothing it was handed: it serves on the same sockets, so the
//! connections queued in their backlogs are accepted by one process or the other and
//! never lost (no close and rebind, and no `SO_REUSEPORT`, whose second socket would
//! drop the first one's queue when it closes). Once it has run its first health round
//! and accepts, the new process answers `ready`; only then does the old one stop
//! accepting (its copies of the sockets close, the sockets stay open in the new one),
//! finish what it serves, and exit 0. A new process that fails, exits or stays silent
//! for [`READY_LIMIT`] is killed, and the old one keeps serving.
//!
//! One upgrade at a time: a SIGUSR2 is refused while an upgrade is under way, and in
//! a new process while its old one still runs (the channel is open until it exits).

pub mod channel;
pub mod handover;

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::AsyncReadExt as _;

use crate::app::Daemon;
use crate::inherit::{InheritedSocket, Role};
use handover::Handover;

/// The environment variable that tells a process it was started by an upgrade, and
/// which descriptor is its channel to the old process (always 0, its standard input).
pub const ENV: &str = "MAITRED_UPGRADE_FD";

/// How long a new process has to load its config, run its first health round and
/// report ready.
pub const READY_LIMIT: Duration = Duration::from_secs(30);

/// How long sending or receiving the hand-over may block.
const HANDOVER_LIMIT: Duration = Duration::from_secs(10);

/// Whether this process was started by an upgrade and its old process still runs.
/// Written by the task watching the channel, read when a SIGUSR2 arrives.
static OLD_RUNNING: AtomicBool = AtomicBool::new(false);

/// Why an upgrade did not happen; the process that tried keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The listening sockets could not be duplicated, or the channel made.
    #[error("cannot prepare the hand-over: {0}")]
    Prepare(#[source] io::Error),
    /// The executable could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The executable.
        program: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The hand-over could not be sent or received.
    #[error("hand-over failed: {0}")]
    Handover(#[source] io::Error),
    /// The new process ended before it reported ready (its own log says why).
    #[error("the new process (pid {pid}) exited with {status} before it was ready")]
    Exited {
        /// Its process id.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// The new process did not report ready in time, and was killed.
    #[error("the new process (pid {pid}) was not ready within {limit:?}: stopped")]
    NotReady {
        /// Its process id.
        pid: u32,
        /// The limit.
        limit: Duration,
    },
    /// A process started by an upgrade was given a channel it cannot use.
    #[error("{ENV}={0:?}: expected 0 (standard input)")]
    BadChannel(String),
}

/// How this process was started: what an upgrade starts again.
#[derive(Debug, Clone)]
pub struct Upgrader {
    program: PathBuf,
    args: Vec<OsString>,
}

/// A new process that reported ready. Its channel stays open as long as this value
/// lives, which must be until this process exits: the new process refuses upgrades
/// until then.
#[derive(Debug)]
pub struct Successor {
    /// Its process id.
    pub pid: u32,
    _channel: tokio::net::UnixStream,
}

impl Upgrader {
    /// The start path and arguments of this process. The path is `argv[0]` made
    /// absolute against the start directory, or looked up in `PATH` as the shell did;
    /// not `/proc/self/exe`, which names the image in memory, not the file a package
    /// manager replaced.
    pub fn from_start() -> Upgrader {
        let mut args = std::env::args_os();
        let argv0 = args.next().map(PathBuf::from).unwrap_or_default();
        let program = start_path(&argv0)
            .or_else(|| std::env::current_exe().ok())
            .unwrap_or(argv0);
        Upgrader {
            program,
            args: args.collect(),
        }
    }

    /// Starts the new process, hands `daemon`'s sockets and state over, and waits for
    /// it to report ready. On any failure the new process is gone when this returns.
    pub async fn run(&self, daemon: &Arc<Daemon>) -> Result<Successor, UpgradeError> {
        let (doc, fds) = daemon.handover().map_err(UpgradeError::Prepare)?;
        let (ours, theirs) = UnixStream::pair().map_err(UpgradeError::Prepare)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .env(ENV, "0")
            // Systemd's variables were this process's, not the new one's; without
            // WATCHDOG_PID the new process pings the watchdog as the main process.
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("WATCHDOG_PID")
            .spawn()
            .map_err(|source| UpgradeError::Spawn {
                program: self.program.display().to_string(),
                source,
            })?;
        let mut child = KillOnDrop(Some(child));
        let pid = child.id();
        tracing::info!(
            "upgrade: new process {pid} started from {}; handing over {} sockets",
            self.program.display(),
            fds.len()
        );
        let sent = tokio::task::spawn_blocking(move || {
            ours.set_write_timeout(Some(HANDOVER_LIMIT))?;
            channel::send(&ours, &doc, &fds)?;
            ours.set_nonblocking(true)?;
            Ok::<_, io::Error>(ours)
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)));
        let ours = match sent {
            Ok(ours) => ours,
            // A new process that exits at once closes the channel under the send: its
            // exit status says more than the broken pipe.
            Err(e) => return Err(child.exited(UpgradeError::Handover(e)).await),
        };
        let mut stream = match tokio::net::UnixStream::from_std(ours) {
            Ok(s) => s,
            Err(e) => return Err(child.fail(UpgradeError::Handover(e)).await),
        };
        let mut answer = [0u8; channel::READY.len()];
        match tokio::time::timeout(READY_LIMIT, stream.read_exact(&mut answer)).await {
            Ok(Ok(_)) if answer == channel::READY => {
                child.disarm();
                Ok(Successor {
                    pid,
                    _channel: stream,
                })
            }
            Ok(_) => Err(child
                .exited(UpgradeError::NotReady {
                    pid,
                    limit: READY_LIMIT,
                })
                .await),
            Err(_) => Err(child
                .fail(UpgradeError::NotReady {
                    pid,
                    limit: READY_LIMIT,
                })
                .await),
        }
    }
}

/// `argv0` as an absolute path: joined to the start directory when relative with a
/// slash, looked up in `PATH` when a bare name.
fn start_path(argv0: &std::path::Path) -> Option<PathBuf> {
    if argv0.as_os_str().is_empty() {
        return None;
    }
    if argv0.components().count() > 1 || argv0.is_absolute() {
        return std::env::current_dir().ok().map(|d| d.join(argv0));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(argv0))
        .find(|candidate| candidate.is_file())
}

/// The new process while it is not yet known to be ready: killed and reaped if the
/// upgrade fails, or if the old process stops waiting for it.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    fn disarm(&mut self) {
        // Not waited for: it outlives this process, which exits once it drained.
        self.0.take();
    }

    /// Kills and reaps the new process; returns `error`.
    async fn fail(mut self, error: UpgradeError) -> UpgradeError {
        if let Some(child) = self.0.take() {
            let _ = tokio::task::spawn_blocking(move || reap(child)).await;
        }
        error
    }

    /// The new process closed the channel without `ready`: its exit status, or
    /// `otherwise` if it had to be killed.
    async fn exited(mut self, otherwise: UpgradeError) -> UpgradeError {
        let pid = self.id();
        let Some(child) = self.0.take() else {
            return otherwise;
        };
        match tokio::task::spawn_blocking(move || reap_exited(child)).await {
            Ok(Some(status)) => UpgradeError::Exited { pid, status },
            _ => otherwise,
        }
    }
}

/// Kills and reaps `child`.
fn reap(mut child: Child) -> Option<ExitStatus> {
    let _ = child.kill();
    child.wait().ok()
}

/// Reaps `child` if it exits within a second of closing its channel (its status);
/// kills and reaps it otherwise (`None`).
fn reap_exited(mut child: Child) -> Option<ExitStatus> {
    for _ in 0..100 {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    reap(child);
    None
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            std::thread::spawn(move || reap(child));
        }
    }
}

/// Whether this process was started by an upgrade whose old process still runs.
pub fn old_process_running() -> bool {
    OLD_RUNNING.load(Ordering::Relaxed)
}

/// What a process started by an upgrade was handed.
#[derive(Debug)]
pub struct Handed {
    /// The listening sockets, each with what it was bound for.
    pub sockets: Vec<InheritedSocket>,
    /// The runtime state.
    pub state: Handover,
    channel: UnixStream,
}

/// Takes the hand-over when this process was started by an upgrade ([`ENV`] set);
/// `None` otherwise. Call at start, before the config is loaded: the old process waits.
/// Standard input, which carried the channel, is then `/dev/null`.
pub fn take_handover() -> Result<Option<Handed>, UpgradeError> {
    let Some(value) = std::env::var_os(ENV) else {
        return Ok(None);
    };
    if value != "0" {
        return Err(UpgradeError::BadChannel(
            value.to_string_lossy().into_owned(),
        ));
    }
    let channel = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(UpgradeError::Handover)?;
    let channel = UnixStream::from(channel);
    let null = std::fs::File::open("/dev/null").map_err(UpgradeError::Handover)?;
    rustix::stdio::dup2_stdin(&null).map_err(|e| UpgradeError::Handover(e.into()))?;
    drop(null);
    channel
        .set_read_timeout(Some(HANDOVER_LIMIT))
        .map_err(UpgradeError::Handover)?;
    let (state, fds) = channel::receive(&channel).map_err(UpgradeError::Handover)?;
    channel
        .set_read_timeout(None)
        .map_err(UpgradeError::Handover)?;
    let mut sockets = Vec::with_capacity(fds.len());
    for (fd, what) in fds.into_iter().zip(state.sockets.iter()) {
        let socket = std::net::TcpListener::from(fd);
        let role = match what.role.as_str() {
            "admin" => Role::Admin,
            _ => Role::Listener(what.name.clone()),
        };
        let Some(bind) = what.bind.or_else(|| socket.local_addr().ok()) else {
            continue;
        };
        sockets.push(InheritedSocket { role, bind, socket });
    }
    OLD_RUNNING.store(true, Ordering::Relaxed);
    Ok(Some(Handed {
        sockets,
        state,
        channel,
    }))
}

impl Handed {
    /// Tells the old process that this one serves, and watches the channel until the
    /// old process has exited, refusing upgrades until then. Call on the control
    /// runtime.
    pub fn report_ready(channel: UnixStream, from_pid: u32) -> io::Result<()> {
        use std::io::Write as _;
        (&channel).write_all(channel::READY)?;
        channel.set_nonblocking(true)?;
        let mut stream = tokio::net::UnixStream::from_std(channel)?;
        tokio::spawn(async move {
            let mut sink = [0u8; 64];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            OLD_RUNNING.store(false, Ordering::Relaxed);
            tracing::info!(pid = from_pid, "upgrade: the previous process has exited");
        });
        Ok(())
    }

    /// The sockets, the state and the channel, taken apart.
    pub fn into_parts(self) -> (Vec<InheritedSocket>, Handover, UnixStream) {
        (self.sockets, self.state, self.channel)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_start_path_is_made_absolute_or_found_in_path() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            start_path(std::path::Path::new("target/debug/maitred")),
            Some(cwd.join("target/debug/maitred"))
        );
        assert_eq!(
            start_path(std::path::Path::new("/usr/sbin/maitred")),
            Some(PathBuf::from("/usr/sbin/maitred"))
        );
        // A bare name is looked up as the shell did: `sh` is on every PATH.
        let sh = start_path(std::path::Path::new("sh")).unwrap();
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{sh:?}");
        assert_eq!(start_path(std::path::Path::new("")), None);
    }
}
