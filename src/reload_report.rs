//! What going from one config to another changes (DESIGN §9): listeners, pools and
//! backends added, removed and changed, and for every sticky pool present in both the
//! share of sticky keys that would land on another backend.
//!
//! One piece of code serves the reload log line, `check --against` and `POST /reload`.
//! The moved share is estimated on a fixed sample of keys, so the same change always
//! gives the same figure.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{AdminState, BalancerKind, Config, PoolConfig};
use crate::pool::Pool;
use crate::snapshot::Snapshot;

/// Sample size for the moved-keys estimate: the standard error of a share p is
/// sqrt(p(1-p)/n), under 0.4 percentage points here.
pub const SAMPLE_KEYS: u64 = 20_000;

/// Names added, removed and changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    /// New names.
    pub added: Vec<String>,
    /// Names gone.
    pub removed: Vec<String>,
    /// Names present in both whose settings differ.
    pub changed: Vec<String>,
}

impl Changes {
    fn counts(&self) -> String {
        format!(
            "+{} -{} ~{}",
            self.added.len(),
            self.removed.len(),
            self.changed.len()
        )
    }

    fn diff<T: PartialEq>(old: &BTreeMap<String, T>, new: &BTreeMap<String, T>) -> Changes {
        let mut c = Changes::default();
        for (k, v) in new {
            match old.get(k) {
                None => c.added.push(k.clone()),
                Some(o) if o != v => c.changed.push(k.clone()),
                Some(_) => {}
            }
        }
        c.removed = old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect();
        c
    }
}

/// The report of DESIGN §9.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReloadReport {
    /// Listeners by name.
    pub listeners: Changes,
    /// Pools by name.
    pub pools: Changes,
    /// Backends as `POOL/ADDR`.
    pub backends: Changes,
    /// For each sticky pool in both configs, the share (0 to 1) of keys that move.
    pub sticky_moved: BTreeMap<String, f64>,
}

impl ReloadReport {
    /// Compares two built snapshots.
    pub fn compare(old: &Snapshot, new: &Snapshot) -> ReloadReport {
        let mut r = ReloadReport::structure(&old.config, &new.config);
        for np in &new.pools {
            let (Some(op), Some(ocfg), Some(ncfg)) = (
                old.pool(&np.name),
                old.config.pool(&np.name),
                new.config.pool(&np.name),
            ) else {
                continue;
            };
            if let Some(share) = moved_share(op, ocfg, np, ncfg) {
                r.sticky_moved.insert(np.name.to_string(), share);
            }
        }
        r
    }

    /// Compares two configs (builds throwaway snapshots; binds nothing).
    pub fn between(
        old: &Config,
        new: &Config,
    ) -> Result<ReloadReport, crate::snapshot::BuildError> {
        let old_s = Snapshot::build(std::sync::Arc::new(old.clone()), None)?;
        let new_s = Snapshot::build(std::sync::Arc::new(new.clone()), None)?;
        Ok(ReloadReport::compare(&old_s, &new_s))
    }

    fn structure(old: &Config, new: &Config) -> ReloadReport {
        let listeners = |c: &Config| {
            c.listeners
                .iter()
                .map(|l| (l.name.clone(), l.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        let pools = |c: &Config| {
            c.pools
                .iter()
                .map(|p| (p.name.clone(), p.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        let backends = |c: &Config| {
            c.pools
                .iter()
                .flat_map(|p| {
                    p.backends
                        .iter()
                        .map(move |b| (format!("{}/{}", p.name, b.addr), (b.weight, b.state)))
                })
                .collect::<BTreeMap<_, _>>()
        };
        ReloadReport {
            listeners: Changes::diff(&listeners(old), &listeners(new)),
            pools: Changes::diff(&pools(old), &pools(new)),
            backends: Changes::diff(&backends(old), &backends(new)),
            sticky_moved: BTreeMap::new(),
        }
    }

    /// The one-line form logged on every reload.
    pub fn summary_line(&self) -> String {
        let moved = if self.sticky_moved.is_empty() {
            "none".to_string()
        } else {
            self.sticky_moved
                .iter()
                .map(|(k, v)| format!("{k} {:.1}%", v * 100.0))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "listeners {}, pools {}, backends {}, sticky moved: {}",
            self.listeners.counts(),
            self.pools.counts(),
            self.backends.counts(),
            moved
        )
    }

    /// One line per sticky pool: `pool NAME: 19.8% of sticky keys move`.
    pub fn sticky_lines(&self) -> Vec<String> {
        self.sticky_moved
            .iter()
            .map(|(k, v)| format!("pool {k}: {:.1}% of sticky keys move", v * 100.0))
            .collect()
    }
}

/// The share of sticky keys of one pool that land elsewhere after the change, or `None`
/// when the pool is not sticky in both configs.
fn moved_share(old: &Pool, old_cfg: &PoolConfig, new: &Pool, new_cfg: &PoolConfig) -> Option<f64> {
    if !old_cfg.balancer.is_sticky() || !new_cfg.balancer.is_sticky() {
        return None;
    }
    if old_cfg.balancer != new_cfg.balancer || old_cfg.key != new_cfg.key {
        return Some(1.0);
    }
    if new_cfg.balancer == BalancerKind::CookieAffinity {
        return Some(cookie_moved_share(old_cfg, new_cfg));
    }
    let mut moved = 0u64;
    for i in 0..SAMPLE_KEYS {
        let key = xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes());
        let before = old
            .balancer()
            .home_of(key)
            .and_then(|ix| old.backends.get(ix));
        let after = new
            .balancer()
            .home_of(key)
            .and_then(|ix| new.backends.get(ix));
        if before.map(|b| &b.name) != after.map(|b| &b.name) {
            moved += 1;
        }
    }
    Some(moved as f64 / SAMPLE_KEYS as f64)
}

/// Cookie holders move only when their backend is gone or disabled; their share is the
/// weighted share of such backends (new clients are placed by weight). A cookie change
/// (name or secret) moves everyone.
fn cookie_moved_share(old: &PoolConfig, new: &PoolConfig) -> f64 {
    let (oa, na) = (old.affinity.as_ref(), new.affinity.as_ref());
    let same_cookie = match (oa, na) {
        (Some(o), Some(n)) => o.cookie == n.cookie && o.secret == n.secret,
        _ => false,
    };
    if !same_cookie {
        return 1.0;
    }
    let total: u32 = old
        .backends
        .iter()
        .filter(|b| b.state != AdminState::Disabled)
        .map(|b| b.weight)
        .sum();
    if total == 0 {
        return 0.0;
    }
    let lost: u32 = old
        .backends
        .iter()
        .filter(|b| b.state != AdminState::Disabled)
        .filter(|b| {
            !new.backends
                .iter()
                .any(|n| n.addr == b.addr && n.state != AdminState::Disabled)
        })
        .map(|b| b.weight)
        .sum();
    f64::from(lost) / f64::from(total)
}
