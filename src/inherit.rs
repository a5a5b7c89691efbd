//! Listening sockets the daemon did not bind itself: handed over by the process it
//! replaces (a binary upgrade, [`crate::upgrade`]) or passed by systemd's socket
//! activation (`LISTEN_FDS`, `LISTEN_PID`). The daemon asks here before it binds a
//! listener or the admin listener at start-up, and uses a socket found here as it is:
//! the same listening socket, with the connections already queued in its backlog.
//!
//! A socket is matched to the listener it was bound for (an upgrade names it) or by
//! address (socket activation, where the unit's `ListenStream=` must equal `bind`).
//! Sockets nothing matched are closed once the daemon has started, with a log line.

use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;

/// What a socket was bound for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The client listener of this name.
    Listener(String),
    /// The admin listener.
    Admin,
    /// Passed by the service manager: whatever listens at its address.
    Activated,
}

/// One inherited listening socket.
#[derive(Debug)]
pub struct InheritedSocket {
    /// What it was bound for.
    pub role: Role,
    /// The address it was bound for, as configured (`127.0.0.1:0` stays port 0).
    pub bind: SocketAddr,
    /// The socket, close-on-exec.
    pub socket: TcpListener,
}

/// The sockets inherited at start-up, taken one by one as listeners claim them.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: Mutex<Vec<InheritedSocket>>,
}

impl Inherited {
    /// A set of sockets.
    pub fn new(sockets: Vec<InheritedSocket>) -> Inherited {
        Inherited {
            sockets: Mutex::new(sockets),
        }
    }

    /// The TCP sockets systemd passed (`LISTEN_FDS` for this `LISTEN_PID`), each marked
    /// close-on-exec; none when the variables are absent. Call before any thread
    /// starts: the variables are removed from the environment, so that a process this
    /// one starts does not take them for its own.
    pub fn from_service_manager() -> Inherited {
        let mut fds = listenfd::ListenFd::from_env();
        let mut sockets = Vec::new();
        for i in 0..fds.len() {
            match fds.take_tcp_listener(i) {
                Ok(Some(socket)) => match socket.local_addr() {
                    Ok(bind) => sockets.push(InheritedSocket {
                        role: Role::Activated,
                        bind,
                        socket,
                    }),
                    Err(e) => eprintln!("maitred: socket activation: fd {}: {e}", i + 3),
                },
                Ok(None) => {}
                Err(e) => eprintln!(
                    "maitred: socket activation: fd {} is not a listening TCP socket: {e}",
                    i + 3
                ),
            }
        }
        Inherited::new(sockets)
    }

    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.sockets.lock().map_or(true, |s| s.is_empty())
    }

    /// The socket for the client listener `name` bound at `bind`, if one was inherited.
    pub fn take_listener(&self, name: &str, bind: SocketAddr) -> Option<TcpListener> {
        self.take(&Role::Listener(name.to_string()), bind)
    }

    /// The socket for the admin listener bound at `bind`, if one was inherited.
    pub fn take_admin(&self, bind: SocketAddr) -> Option<TcpListener> {
        self.take(&Role::Admin, bind)
    }

    /// The socket bound for `role` at `bind`; else one at `bind` passed by the service
    /// manager; else, for a fixed port, one at `bind` bound for something else (a
    /// listener renamed between two versions keeps its socket).
    fn take(&self, role: &Role, bind: SocketAddr) -> Option<TcpListener> {
        let mut sockets = self.sockets.lock().ok()?;
        let at = sockets
            .iter()
            .position(|s| &s.role == role && s.bind == bind)
            .or_else(|| {
                sockets
                    .iter()
                    .position(|s| s.role == Role::Activated && s.bind == bind)
            })
            .or_else(|| {
                (bind.port() != 0)
                    .then(|| sockets.iter().position(|s| s.bind == bind))
                    .flatten()
            })?;
        Some(sockets.swap_remove(at).socket)
    }

    /// Closes the sockets no listener claimed, saying so.
    pub fn close_unclaimed(&self) {
        let Ok(mut sockets) = self.sockets.lock() else {
            return;
        };
        for s in sockets.drain(..) {
            tracing::warn!(
                bind = %s.bind,
                role = ?s.role,
                "an inherited listening socket matches no listener of the config: closed"
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn socket(role: Role, bind: &str) -> InheritedSocket {
        InheritedSocket {
            role,
            bind: bind.parse().unwrap(),
            socket: TcpListener::bind("127.0.0.1:0").unwrap(),
        }
    }

    fn port(l: &TcpListener) -> u16 {
        l.local_addr().unwrap().port()
    }

    #[test]
    fn sockets_go_to_their_listener_then_by_address() {
        let a = socket(Role::Listener("a".into()), "127.0.0.1:0");
        let b = socket(Role::Listener("b".into()), "127.0.0.1:0");
        let admin = socket(Role::Admin, "127.0.0.1:9100");
        let activated = socket(Role::Activated, "127.0.0.1:8080");
        let (pa, pb, padmin, pact) = (
            port(&a.socket),
            port(&b.socket),
            port(&admin.socket),
            port(&activated.socket),
        );
        let set = Inherited::new(vec![a, b, admin, activated]);
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(port(&set.take_listener("b", any).unwrap()), pb);
        // Port 0 is no identity: an unknown name gets a fresh bind.
        assert!(set.take_listener("c", any).is_none());
        assert_eq!(port(&set.take_listener("a", any).unwrap()), pa);
        let fixed: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(port(&set.take_listener("web", fixed).unwrap()), pact);
        // The admin socket, at a fixed port, follows its address whatever asks.
        let admin_bind: SocketAddr = "127.0.0.1:9100".parse().unwrap();
        assert_eq!(port(&set.take_admin(admin_bind).unwrap()), padmin);
        assert!(set.is_empty());
    }
}
