//! Reading the per-CPU counters and summing them.

use dhcpfix_common::counters::Counters;
use serde::Serialize;

use crate::{
    attach::{self, AttachError, Attachment},
    bpffs::PinDir,
    program,
};

/// The counters of one interface, summed over CPUs (the kernel's record,
/// serialised as the `counters` object of `stats --json`).
pub type Totals = Counters;

/// Sums the per-CPU records of interface `ifindex`; zero if it has none.
pub fn read(pins: &PinDir, ifindex: u32) -> Totals {
    let Ok(map) = program::counters_map(pins) else {
        return Totals::default();
    };
    let Ok(per_cpu) = map.get(&ifindex, 0) else {
        return Totals::default();
    };
    let mut sum = Counters::default();
    for c in per_cpu.iter() {
        sum.add(c);
    }
    sum
}

/// An attachment with its counters.
#[derive(Clone, Debug, Serialize)]
pub struct InterfaceStats {
    #[serde(flatten)]
    pub attachment: Attachment,
    pub counters: Totals,
}

/// Every attachment (or those named in `only`) with its counters.
pub fn collect(pins: &PinDir, only: &[String]) -> Result<Vec<InterfaceStats>, AttachError> {
    Ok(attach::list(pins)?
        .into_iter()
        .filter(|a| only.is_empty() || only.contains(&a.name))
        .map(|attachment| InterfaceStats {
            counters: if attachment.ifindex != 0 {
                read(pins, attachment.ifindex)
            } else {
                Totals::default()
            },
            attachment,
        })
        .collect())
}
