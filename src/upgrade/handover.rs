//! The document a process hands its successor at a binary upgrade: which listening
//! socket is which, and the runtime state of every backend.
//!
//! JSON through serde, with every field defaulted and unknown fields ignored, so that
//! a newer binary reads an older one's document and the other way round: a release
//! adds a field (discovered backends, say) without breaking the upgrade from or to
//! the release before it.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::backend::Health;
use crate::config::AdminState;
use crate::snapshot::Snapshot;

/// The version of the document this binary writes.
pub const VERSION: u32 = 1;

/// Everything handed over besides the sockets themselves.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Handover {
    /// The document's version ([`VERSION`] when written by this binary).
    pub version: u32,
    /// The process id of the process handing over.
    pub from_pid: u32,
    /// One entry per socket passed, in the order of the descriptors.
    pub sockets: Vec<HandedSocket>,
    /// Every backend's runtime state.
    pub backends: Vec<HandedBackend>,
}

/// What a passed socket is.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HandedSocket {
    /// `"listener"` or `"admin"`.
    pub role: String,
    /// The listener's name (empty for the admin listener).
    pub name: String,
    /// The address it was bound for, as configured.
    pub bind: Option<SocketAddr>,
}

/// One backend's state at hand-over, named by pool and address.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HandedBackend {
    /// The pool.
    pub pool: String,
    /// The backend's address as configured.
    pub backend: String,
    /// Its admin state (`active`, `drain`, `disabled`), set by the file or the API.
    pub state: String,
    /// The state the old process's file gave it: an API state carries over only while
    /// the file still says the same, as on a reload.
    pub file_state: String,
    /// `up`, `down` or `unknown`.
    pub health: String,
    /// Milliseconds left in an ejection period; 0 = not ejected.
    pub ejected_for_ms: u64,
}

impl Handover {
    /// The state of `snapshot`'s backends, with no sockets yet.
    pub fn capture(snapshot: &Snapshot) -> Handover {
        let mut backends = Vec::new();
        for pool in &snapshot.pools {
            let Some(cfg) = snapshot.config.pool(&pool.name) else {
                continue;
            };
            for b in &pool.backends {
                let file_state = cfg
                    .backends
                    .iter()
                    .find(|c| *c.addr == *b.name)
                    .map_or(AdminState::Active, |c| c.state);
                backends.push(HandedBackend {
                    pool: pool.name.to_string(),
                    backend: b.name.to_string(),
                    state: b.live.admin().name().to_string(),
                    file_state: file_state.name().to_string(),
                    health: health_name(b.live.health()).to_string(),
                    ejected_for_ms: b.live.ejection_left_ms(),
                });
            }
        }
        Handover {
            version: VERSION,
            from_pid: std::process::id(),
            sockets: Vec::new(),
            backends,
        }
    }

    /// Gives `snapshot`'s backends the state handed over for the same pool and address,
    /// before it serves: health and ejection as they were, and an admin state unless
    /// the new file changed that backend's `state`. Returns how many backends took
    /// state over.
    pub fn apply(&self, snapshot: &Snapshot) -> usize {
        let mut applied = 0;
        for h in &self.backends {
            let Some(pool) = snapshot.pool(&h.pool) else {
                continue;
            };
            let Some(b) = pool.backends.iter().find(|b| *b.name == *h.backend) else {
                continue;
            };
            if let Some(health) = parse_health(&h.health) {
                b.live.restore(health, h.ejected_for_ms);
            }
            let now_in_file = snapshot
                .config
                .pool(&h.pool)
                .and_then(|c| c.backends.iter().find(|c| c.addr == h.backend))
                .map(|c| c.state);
            let (state, was_in_file) = (parse_state(&h.state), parse_state(&h.file_state));
            if let (Some(state), Some(file)) = (state, now_in_file) {
                if was_in_file == Some(file) {
                    b.live.set_admin(state);
                }
            }
            applied += 1;
        }
        applied
    }
}

fn health_name(h: Health) -> &'static str {
    match h {
        Health::Up => "up",
        Health::Down => "down",
        Health::Unknown => "unknown",
    }
}

fn parse_health(text: &str) -> Option<Health> {
    match text {
        "up" => Some(Health::Up),
        "down" => Some(Health::Down),
        "unknown" => Some(Health::Unknown),
        _ => None,
    }
}

fn parse_state(text: &str) -> Option<AdminState> {
    match text {
        "active" => Some(AdminState::Active),
        "drain" => Some(AdminState::Drain),
        "disabled" => Some(AdminState::Disabled),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn snapshot(states: &str) -> Snapshot {
        let toml = format!(
            "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
             [pool.p]\nbalancer = \"round-robin\"\nbackends = [{states}]\n"
        );
        let config = crate::config::parse(&toml, "t.toml", std::path::Path::new(".")).unwrap();
        Snapshot::build(Arc::new(config), None).unwrap()
    }

    #[test]
    fn state_crosses_over_unless_the_file_changed_it() {
        let old = snapshot(
            "\"127.0.0.1:1\", \"127.0.0.1:2\", { addr = \"127.0.0.1:3\", state = \"drain\" }",
        );
        let pool = old.pool("p").unwrap();
        pool.backends[0].live.set_admin(AdminState::Drain);
        pool.backends[1].live.set_admin(AdminState::Disabled);
        pool.backends[1].live.eject(60_000);
        pool.backends[2].live.set_health(Health::Down);
        let doc = serde_json::to_string(&Handover::capture(&old)).unwrap();

        // The new file sets backend 2 to drain itself: the file's change wins.
        let new = snapshot(
            "\"127.0.0.1:1\", { addr = \"127.0.0.1:2\", state = \"drain\" }, { addr = \"127.0.0.1:3\", state = \"drain\" }",
        );
        let handed: Handover = serde_json::from_str(&doc).unwrap();
        assert_eq!(handed.apply(&new), 3);
        let b = &new.pool("p").unwrap().backends;
        assert_eq!(b[0].live.admin(), AdminState::Drain);
        assert_eq!(b[1].live.admin(), AdminState::Drain);
        assert!(b[1].live.is_ejected());
        assert!(b[1].live.ejection_left_ms() > 50_000);
        assert_eq!(b[2].live.health(), Health::Down);
        assert_eq!(b[2].live.admin(), AdminState::Drain);
    }

    #[test]
    fn unknown_fields_and_missing_ones_are_fine() {
        let doc = r#"{"version": 9, "sockets": [{"role": "listener", "name": "l", "bind": "127.0.0.1:0", "tls": true}],
                      "discovered": [{"pool": "p", "addr": "10.0.0.1:80"}]}"#;
        let handed: Handover = serde_json::from_str(doc).unwrap();
        assert_eq!(handed.version, 9);
        assert_eq!(handed.sockets[0].name, "l");
        assert!(handed.backends.is_empty());
    }
}
