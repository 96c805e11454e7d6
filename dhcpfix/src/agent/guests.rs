//! Telling the operator when a guest's DHCP goes wrong, before its users
//! do: one log line when a guest enters `rejecting`, `rebinding` or
//! `expired`, and one when it is bound again after that.

use std::collections::HashMap;

use dhcpfix_common::guest::State;

use crate::leases::{self, Guest};

/// A guest: namespace, interface, family, MAC.
type GuestId = (u64, u32, u8, [u8; 6]);

/// The state each guest was last seen in.
#[derive(Default)]
pub struct GuestWatch {
    last: HashMap<GuestId, State>,
}

impl GuestWatch {
    /// Compares `guests` (all of them, as read now) with what was seen
    /// before; returns the lines to log, in the guests' order: a warning
    /// for each that entered trouble, a line for each bound again after it.
    pub fn check(&mut self, guests: &[Guest], host: Option<u64>) -> Vec<(log::Level, String)> {
        let mut lines = Vec::new();
        let mut seen = HashMap::with_capacity(guests.len());
        for g in guests {
            let id = (g.netns.cookie, g.ifindex, g.family, g.mac);
            let before = self.last.get(&id).copied();
            if before != Some(g.state) {
                if leases::alarming(g.state) {
                    lines.push((log::Level::Warn, leases::describe(g, host)));
                } else if g.state == State::Bound && before.is_some_and(leases::alarming) {
                    lines.push((log::Level::Info, leases::describe(g, host)));
                }
            }
            seen.insert(id, g.state);
        }
        self.last = seen;
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::leases::example as guest;

    #[test]
    fn one_line_per_change_into_trouble_and_one_out() {
        let mut w = GuestWatch::default();
        assert!(w.check(&[guest(State::Requesting)], Some(1)).is_empty());
        let lines = w.check(&[guest(State::Rejecting)], Some(1));
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].0, log::Level::Warn);
        assert!(
            lines[0].1.starts_with(
                "vnet5 52:54:00:00:00:05: rejecting: the guest threw away 5 DHCP replies in 40 s"
            ),
            "{}",
            lines[0].1
        );
        assert!(
            w.check(&[guest(State::Rejecting)], Some(1)).is_empty(),
            "said once"
        );
        let lines = w.check(&[guest(State::Bound)], Some(1));
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].0, log::Level::Info);
        assert!(w.check(&[guest(State::Renewing)], Some(1)).is_empty());
        assert_eq!(w.check(&[guest(State::Expired)], Some(1)).len(), 1);
        // A guest already in trouble when first seen is reported too.
        let mut fresh = GuestWatch::default();
        assert_eq!(fresh.check(&[guest(State::Rebinding)], Some(1)).len(), 1);
    }
}
