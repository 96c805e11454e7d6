//! Reading the per-CPU counters of attachments, summed.

use dhcpfix_common::counters::Counters;
use serde::Serialize;

use crate::{
    attach::{self, AttachError, Attachment},
    netns::Netns,
    pins::{maps::Maps, PinDir},
};

/// The counters of one interface, summed over CPUs (the kernel's record,
/// serialised as the `counters` object of `stats --json`).
pub type Totals = Counters;

/// An attachment with its counters.
#[derive(Clone, Debug, Serialize)]
pub struct InterfaceStats {
    #[serde(flatten)]
    pub attachment: Attachment,
    pub counters: Totals,
}

/// Every attachment (or those named in `only`) with its counters; an
/// attachment whose interface is gone reads zero.
pub fn collect(
    pins: &PinDir,
    namespaces: &[Netns],
    only: &[String],
) -> Result<Vec<InterfaceStats>, AttachError> {
    let attachments = attach::list_named(pins, namespaces, only)?;
    if attachments.is_empty() {
        return Ok(Vec::new());
    }
    let maps = Maps::open(pins)?;
    Ok(attachments
        .into_iter()
        .map(|attachment| InterfaceStats {
            counters: if attachment.attached {
                maps.counters(&attachment.key())
            } else {
                Totals::default()
            },
            attachment,
        })
        .collect())
}
