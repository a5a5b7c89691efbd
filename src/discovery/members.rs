//! Which backends one pool's discovery gives, from one answer to the next: the rules of
//! DESIGN §10 as plain data, with no I/O, so they are tested alone.
//!
//! - A failed answer changes nothing. An empty one changes nothing the first time, and
//!   empties the set only when the next answer agrees.
//! - Of SRV records, the lowest priority with a backend up is used; the groups before it
//!   (all down) stay, so their health checks see them come back.
//! - A backend gone from the answer drains (`removal = "drain"`) until nothing is bound
//!   to it or `drain_timeout` passes, or leaves at once (`"remove"`); one that comes
//!   back while draining is active again.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::resolve::{Answer, Found};
use crate::config::{AdminState, BackendConfig, BackendSource, Removal};

/// One discovered backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its address, which names it.
    pub addr: SocketAddr,
    /// Its weight from the last answer that had it.
    pub weight: u32,
    /// Since when it drains after leaving DNS; `None` while DNS has it.
    pub leaving_since: Option<Instant>,
}

/// What one step changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// New in the set, or back from draining.
    pub added: Vec<SocketAddr>,
    /// Gone from DNS, now draining.
    pub draining: Vec<SocketAddr>,
    /// Out of the set.
    pub removed: Vec<SocketAddr>,
    /// Removed while something was still bound to them (`drain_timeout`, or
    /// `removal = "remove"`): their tunnels are to be closed.
    pub cut: Vec<SocketAddr>,
    /// A weight changed.
    pub reweighted: bool,
}

impl Change {
    /// Whether the backend table must be rebuilt.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.draining.is_empty()
            && self.removed.is_empty()
            && !self.reweighted
    }
}

/// What the last answer said, kept to tell the next one apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Records.
    Ok,
    /// A failure: nothing changed.
    Failed,
    /// Authoritatively empty.
    Empty,
}

impl Outcome {
    /// The metrics label.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Empty => "empty",
        }
    }
}

/// The discovered backends of one pool.
#[derive(Debug, Default)]
pub struct Members {
    list: Vec<Member>,
    /// The records of the last good answer (all SRV priorities), re-read when health
    /// changes which priority is in use.
    found: Vec<Found>,
    /// The previous answer was authoritatively empty.
    empty_before: bool,
}

impl Members {
    /// The members now, draining ones included.
    pub fn list(&self) -> &[Member] {
        &self.list
    }

    /// How many backends the last good answer gave (all priorities).
    pub fn answered(&self) -> usize {
        self.found.len()
    }

    /// Takes one answer in. `is_up` says whether a backend of the current table is up
    /// (for the SRV priority choice).
    pub fn answer(
        &mut self,
        answer: &Answer,
        removal: Removal,
        now: Instant,
        is_up: impl Fn(SocketAddr) -> bool,
    ) -> (Outcome, Change) {
        match answer {
            Answer::Failed(_) => (Outcome::Failed, Change::default()),
            Answer::Empty(_) => {
                let confirmed = std::mem::replace(&mut self.empty_before, true);
                if confirmed {
                    self.found.clear();
                    (Outcome::Empty, self.follow(removal, now, is_up))
                } else {
                    (Outcome::Empty, Change::default())
                }
            }
            Answer::Records { found, .. } => {
                self.empty_before = false;
                self.found.clone_from(found);
                (Outcome::Ok, self.follow(removal, now, is_up))
            }
        }
    }

    /// Re-reads the last answer against health (which SRV priority is in use).
    pub fn follow(
        &mut self,
        removal: Removal,
        now: Instant,
        is_up: impl Fn(SocketAddr) -> bool,
    ) -> Change {
        let wanted = in_use(&self.found, &is_up);
        let mut change = Change::default();
        for m in &mut self.list {
            let Some(f) = wanted.iter().find(|f| f.addr == m.addr) else {
                continue;
            };
            if m.leaving_since.take().is_some() {
                change.added.push(m.addr);
            }
            if m.weight != f.weight {
                m.weight = f.weight;
                change.reweighted = true;
            }
        }
        for f in &wanted {
            if !self.list.iter().any(|m| m.addr == f.addr) {
                self.list.push(Member {
                    addr: f.addr,
                    weight: f.weight,
                    leaving_since: None,
                });
                change.added.push(f.addr);
            }
        }
        let gone = |m: &Member| !wanted.iter().any(|f| f.addr == m.addr);
        match removal {
            Removal::Remove => {
                for m in self.list.iter().filter(|m| gone(m)) {
                    change.removed.push(m.addr);
                    change.cut.push(m.addr);
                }
                self.list.retain(|m| !gone(m));
            }
            Removal::Drain => {
                for m in self.list.iter_mut().filter(|m| m.leaving_since.is_none()) {
                    if gone(m) {
                        m.leaving_since = Some(now);
                        change.draining.push(m.addr);
                    }
                }
            }
        }
        self.list.sort_by_key(|m| m.addr);
        change
    }

    /// Whether some member drains.
    pub fn draining(&self) -> bool {
        self.list.iter().any(|m| m.leaving_since.is_some())
    }

    /// Removes the draining members with nothing bound to them (`bound` says, for a
    /// member's address) or draining for longer than `timeout`.
    pub fn finish_drains(
        &mut self,
        now: Instant,
        timeout: Duration,
        bound: impl Fn(SocketAddr) -> bool,
    ) -> Change {
        let mut change = Change::default();
        self.list.retain(|m| {
            let Some(since) = m.leaving_since else {
                return true;
            };
            let held = bound(m.addr);
            let timed_out = now.saturating_duration_since(since) >= timeout;
            if held && !timed_out {
                return true;
            }
            change.removed.push(m.addr);
            if held {
                change.cut.push(m.addr);
            }
            false
        });
        change
    }

    /// The members as the pool's backends: draining ones in `drain`.
    pub fn backends(&self) -> impl Iterator<Item = BackendConfig> + '_ {
        self.list.iter().map(|m| BackendConfig {
            addr: m.addr.to_string(),
            socket: m.addr,
            weight: m.weight,
            state: if m.leaving_since.is_some() {
                AdminState::Drain
            } else {
                AdminState::Active
            },
            source: BackendSource::Dns,
        })
    }
}

/// The records in use: all of them for A/AAAA (one priority); for SRV, the priority
/// groups in ascending order up to and including the first with a backend up, or all
/// of them when none is up (so that every one is checked and one can come up).
fn in_use(found: &[Found], is_up: &impl Fn(SocketAddr) -> bool) -> Vec<Found> {
    let mut priorities: Vec<u16> = found.iter().map(|f| f.priority).collect();
    priorities.sort_unstable();
    priorities.dedup();
    let last = priorities
        .iter()
        .copied()
        .find(|p| found.iter().any(|f| f.priority == *p && is_up(f.addr)))
        .unwrap_or(u16::MAX);
    found
        .iter()
        .filter(|f| f.priority <= last)
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, i], 80))
    }

    fn records(ids: &[u8]) -> Answer {
        Answer::Records {
            found: ids
                .iter()
                .map(|i| Found {
                    addr: addr(*i),
                    weight: 1,
                    priority: 0,
                })
                .collect(),
            ttl: Duration::from_secs(1),
        }
    }

    fn addrs(m: &Members) -> Vec<SocketAddr> {
        m.list().iter().map(|m| m.addr).collect()
    }

    #[test]
    fn a_failure_changes_nothing_and_one_empty_answer_is_not_enough() {
        let now = Instant::now();
        let mut m = Members::default();
        m.answer(&records(&[1, 2]), Removal::Remove, now, |_| true);
        let (o, c) = m.answer(
            &Answer::Failed("timeout".into()),
            Removal::Remove,
            now,
            |_| true,
        );
        assert_eq!((o, c.is_empty()), (Outcome::Failed, true));
        let (o, c) = m.answer(&Answer::Empty("nx".into()), Removal::Remove, now, |_| true);
        assert_eq!((o, c.is_empty()), (Outcome::Empty, true));
        assert_eq!(addrs(&m).len(), 2);
        let (_, c) = m.answer(&Answer::Empty("nx".into()), Removal::Remove, now, |_| true);
        assert_eq!(c.removed.len(), 2);
        assert!(m.list().is_empty());
    }

    #[test]
    fn records_between_two_empty_answers_reset_the_count() {
        let now = Instant::now();
        let mut m = Members::default();
        m.answer(&records(&[1]), Removal::Remove, now, |_| true);
        m.answer(&Answer::Empty("nx".into()), Removal::Remove, now, |_| true);
        m.answer(&records(&[1]), Removal::Remove, now, |_| true);
        m.answer(&Answer::Empty("nx".into()), Removal::Remove, now, |_| true);
        assert_eq!(addrs(&m), vec![addr(1)]);
    }

    #[test]
    fn a_leaving_backend_drains_until_free_or_timed_out_and_may_come_back() {
        let t0 = Instant::now();
        let mut m = Members::default();
        m.answer(&records(&[1, 2, 3]), Removal::Drain, t0, |_| true);
        let (_, c) = m.answer(&records(&[1]), Removal::Drain, t0, |_| true);
        assert_eq!(c.draining, vec![addr(2), addr(3)]);
        assert_eq!(
            m.backends()
                .filter(|b| b.state == AdminState::Drain)
                .count(),
            2
        );
        let (_, c) = m.answer(&records(&[1, 2]), Removal::Drain, t0, |_| true);
        assert_eq!(c.added, vec![addr(2)], "back before its drain ended");
        let timeout = Duration::from_secs(60);
        let c = m.finish_drains(t0, timeout, |a| a == addr(3));
        assert!(c.removed.is_empty(), "3 still has something bound");
        let c = m.finish_drains(t0 + timeout, timeout, |a| a == addr(3));
        assert_eq!((c.removed.clone(), c.cut), (vec![addr(3)], vec![addr(3)]));
        assert_eq!(addrs(&m), vec![addr(1), addr(2)]);
    }

    #[test]
    fn srv_uses_the_lowest_priority_with_a_backend_up() {
        let now = Instant::now();
        let found = |p: u16, i: u8| Found {
            addr: addr(i),
            weight: 1,
            priority: p,
        };
        let answer = Answer::Records {
            found: vec![found(10, 1), found(10, 2), found(20, 3)],
            ttl: Duration::from_secs(5),
        };
        let mut m = Members::default();
        m.answer(&answer, Removal::Remove, now, |_| false);
        assert_eq!(addrs(&m).len(), 3, "none up yet: all are checked");
        m.follow(Removal::Remove, now, |a| a == addr(2));
        assert_eq!(addrs(&m), vec![addr(1), addr(2)]);
        m.follow(Removal::Remove, now, |a| a == addr(3));
        assert_eq!(addrs(&m).len(), 3, "priority 10 all down: 20 joins");
    }
}
