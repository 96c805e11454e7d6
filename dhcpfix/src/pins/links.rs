//! Pinned tcx links: `links/<netns>/<ifindex>`.
//!
//! A link pin outlives its interface: once the interface is deleted the link
//! is dead (its target ifindex reads 0) until its pin is removed. The pin's
//! path names the key, so a dead link's configuration and counters can
//! always be found and removed with it.

use aya::programs::links::FdLink;
use dhcpfix_common::key::IfaceKey;

use super::{describe, ingress_link_rel, link_rel, links_rel, netns_links_rel, PinDir, PinsError};
use crate::sys;

/// What a link pin holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Hooked to its interface.
    Live,
    /// Its interface is gone (or it is not a tcx link).
    Dead,
}

/// The state of the link pinned for `key`; `None` if there is no pin.
pub fn state(pins: &PinDir, key: &IfaceKey) -> Result<Option<LinkState>, PinsError> {
    let rel = link_rel(key);
    if !pins.exists(&rel) {
        return Ok(None);
    }
    let err = |op| {
        move |source| PinsError::Link {
            op,
            key: describe(key),
            source,
        }
    };
    let fd = sys::obj_get(&pins.fd_path(&rel)).map_err(err("BPF_OBJ_GET"))?;
    let info = sys::link_info(&fd).map_err(err("BPF_OBJ_GET_INFO_BY_FD"))?;
    Ok(Some(
        if info.link_type == sys::BPF_LINK_TYPE_TCX && info.ifindex == key.ifindex {
            LinkState::Live
        } else {
            LinkState::Dead
        },
    ))
}

/// The ifindex the link pinned for `key` is hooked to (0: none), for the
/// check that a link landed where it was meant to.
pub fn target(pins: &PinDir, key: &IfaceKey) -> Option<u32> {
    let fd = sys::obj_get(&pins.fd_path(&link_rel(key))).ok()?;
    sys::link_info(&fd).ok().map(|i| i.ifindex)
}

/// Which hook of an interface a link is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Egress,
    Ingress,
}

fn rel_of(key: &IfaceKey, hook: Hook) -> String {
    match hook {
        Hook::Egress => link_rel(key),
        Hook::Ingress => ingress_link_rel(key),
    }
}

/// Whether `key` has a link pinned on `hook`.
pub fn exists(pins: &PinDir, key: &IfaceKey, hook: Hook) -> bool {
    pins.exists(&rel_of(key, hook))
}

/// Pins `link` as the link of `key` on `hook`.
pub fn pin(pins: &PinDir, key: &IfaceKey, hook: Hook, link: FdLink) -> Result<(), PinsError> {
    pins.mkdir(&links_rel())?;
    pins.mkdir(&netns_links_rel(key.netns))?;
    let rel = rel_of(key, hook);
    // Dropping the unpinned link on error detaches it again.
    link.pin(pins.fd_path(&rel)).map_err(|e| PinsError::PinLink {
        key: describe(key),
        path: pins.shown(&rel),
        reason: e.to_string(),
    })?;
    Ok(())
}

/// Detaches the links of `key` (egress and ingress) and removes their pins;
/// false if there was no egress link.
/// The explicit `BPF_LINK_DETACH` makes the detach synchronous: a removed pin
/// alone drops its reference only after an RCU grace period and a workqueue
/// pass, and an attach right after would meanwhile fail with EEXIST. (A dead
/// link has nothing to detach.)
pub fn remove(pins: &PinDir, key: &IfaceKey) -> Result<bool, PinsError> {
    let mut removed = false;
    for hook in [Hook::Ingress, Hook::Egress] {
        let rel = rel_of(key, hook);
        if let Ok(fd) = sys::obj_get(&pins.fd_path(&rel)) {
            if let Err(e) = sys::link_detach(&fd) {
                log::debug!("BPF_LINK_DETACH of {}: {e}", describe(key));
            }
        }
        removed = pins.remove(&rel)?;
    }
    // The namespace's directory goes with its last link.
    if pins.list(&netns_links_rel(key.netns)).is_empty() {
        let _ = pins.remove(&netns_links_rel(key.netns));
    }
    Ok(removed)
}

/// Removes the link pins of `key` (egress and ingress) without detaching
/// the links first: for a namespace the kernel is dismantling, whose
/// devices (and with them the links' hooks) go anyway. The explicit detach
/// of [`remove`] waits for an RCU grace period per link; a node deleting
/// many pods at once would hold up the agent for that. False if there was
/// no egress link.
pub fn unpin(pins: &PinDir, key: &IfaceKey) -> Result<bool, PinsError> {
    pins.remove(&rel_of(key, Hook::Ingress))?;
    let removed = pins.remove(&rel_of(key, Hook::Egress))?;
    if pins.list(&netns_links_rel(key.netns)).is_empty() {
        let _ = pins.remove(&netns_links_rel(key.netns));
    }
    Ok(removed)
}

/// The keys with a link pin in the namespace with cookie `netns`, sorted.
pub fn list_in(pins: &PinDir, netns: u64) -> Vec<IfaceKey> {
    let mut keys: Vec<IfaceKey> = pins
        .list(&netns_links_rel(netns))
        .into_iter()
        .filter_map(|ifindex| ifindex.parse::<u32>().ok())
        .map(|ifindex| IfaceKey::new(netns, ifindex))
        .collect();
    keys.sort();
    keys
}

/// Every key with a link pin, sorted.
pub fn list(pins: &PinDir) -> Vec<IfaceKey> {
    let mut keys = Vec::new();
    for netns in pins.list(&links_rel()) {
        let Ok(cookie) = netns.parse::<u64>() else {
            continue;
        };
        for ifindex in pins.list(&netns_links_rel(cookie)) {
            if let Ok(ifindex) = ifindex.parse::<u32>() {
                keys.push(IfaceKey::new(cookie, ifindex));
            }
        }
    }
    keys.sort();
    keys
}
