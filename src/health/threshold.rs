//! The rise/fall state machine of one backend's active checks: pure, so it is tested
//! without a network.
//!
//! A backend not yet checked takes its first result as its state (so start-up does not
//! wait `rise` intervals); after that it goes down after `fall` failures in a row and
//! up after `rise` passes in a row.

use crate::backend::Health;

/// One backend's check history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Threshold {
    rise: u32,
    fall: u32,
    state: Health,
    streak: u32,
}

impl Threshold {
    /// A machine starting from a published state.
    pub fn new(rise: u32, fall: u32, state: Health) -> Threshold {
        Threshold {
            rise: rise.max(1),
            fall: fall.max(1),
            state,
            streak: 0,
        }
    }

    /// The machine's state.
    pub fn state(&self) -> Health {
        self.state
    }

    /// Forces the state (passive ejection marked the backend down): the streak restarts.
    pub fn force(&mut self, state: Health) {
        if self.state != state {
            self.state = state;
            self.streak = 0;
        }
    }

    /// Feeds one check result; returns the new state when it changed.
    pub fn observe(&mut self, passed: bool) -> Option<Health> {
        let next = match (self.state, passed) {
            (Health::Unknown, true) => Some(Health::Up),
            (Health::Unknown, false) => Some(Health::Down),
            (Health::Up, true) | (Health::Down, false) => {
                self.streak = 0;
                None
            }
            (Health::Up, false) => self.count(self.fall, Health::Down),
            (Health::Down, true) => self.count(self.rise, Health::Up),
        };
        if let Some(s) = next {
            self.state = s;
            self.streak = 0;
        }
        next
    }

    fn count(&mut self, needed: u32, to: Health) -> Option<Health> {
        self.streak += 1;
        (self.streak >= needed).then_some(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_result_decides_unknown() {
        let mut t = Threshold::new(2, 3, Health::Unknown);
        assert_eq!(t.observe(true), Some(Health::Up));
        let mut t = Threshold::new(2, 3, Health::Unknown);
        assert_eq!(t.observe(false), Some(Health::Down));
    }

    #[test]
    fn fall_then_rise_need_streaks() {
        let mut t = Threshold::new(2, 3, Health::Up);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(true), None, "a pass breaks the failure streak");
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), Some(Health::Down));
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), Some(Health::Up));
    }

    #[test]
    fn forced_down_needs_rise_passes() {
        let mut t = Threshold::new(2, 3, Health::Up);
        t.force(Health::Down);
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), Some(Health::Up));
    }
}
