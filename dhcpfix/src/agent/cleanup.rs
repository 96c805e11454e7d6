//! Removing what deleted interfaces leave behind (dead link pins, their
//! configuration and counters), following renamed ones, and removing
//! everything (`clean --all`).
//!
//! Everything here runs with the pin directory locked, like `attach`, so it
//! never sees an attachment half made (attach writes the configuration
//! first, then the link).

use std::{collections::BTreeSet, fs, io, path::Path};

use dhcpfix_common::config::FLAG_NETLINK;

use super::AgentError;
use crate::{
    attach::{self, PinnedLinkState},
    bpffs::PinDir,
    netdev, program,
};

/// What [`remove_dead`] removed.
#[derive(Debug, Default)]
pub struct Cleaned {
    /// Interfaces whose dead link pin was removed.
    pub dead_pins: Vec<String>,
    /// Configuration and counters entries of interfaces without attachment.
    pub stale_entries: usize,
}

/// Whether the pinned link of `name` belongs to an interface that is gone.
fn is_dead(pins: &PinDir, name: &str) -> Result<bool, AgentError> {
    Ok(match attach::pinned_link_state(pins, name)? {
        PinnedLinkState::None => false,
        PinnedLinkState::Dead => true,
        // Its device can be unregistering right now: trust the name table.
        PinnedLinkState::Live(ifindex) => netdev::ifname(ifindex).is_none(),
    })
}

fn unlink(path: &Path) -> Result<(), AgentError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(AgentError::Remove {
            path: path.into(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Moves the pin of `old` to `new` if it is the live link of `ifindex`
/// (the interface was renamed): the attachment, its link and its counters
/// stay as they are. False if there is no such pin (nothing was done).
///
/// Moving the pin, rather than detaching and attaching again, keeps the
/// guest covered throughout and keeps the link and its counters.
pub fn rename_pin(pins: &PinDir, old: &str, new: &str, ifindex: u32) -> Result<bool, AgentError> {
    let _lock = pins.lock()?;
    let live = matches!(attach::pinned_link_state(pins, old)?, PinnedLinkState::Live(i) if i == ifindex);
    if !live {
        return Ok(false);
    }
    if pins.link(new).exists() {
        // A dead pin of an earlier interface of that name is in the way.
        if !is_dead(pins, new)? {
            return Ok(false);
        }
        unlink(&pins.link(new))?;
    }
    fs::rename(pins.link(old), pins.link(new)).map_err(|source| AgentError::Rename {
        path: pins.link(old),
        source,
    })?;
    Ok(true)
}

/// Forgets the deleted interface `name` (`ifindex`): its pin if dead, and
/// its configuration and counters. Touches nothing else, so that deleting
/// many interfaces at once costs each only its own entries.
pub fn forget_deleted(pins: &PinDir, name: &str, ifindex: u32) -> Result<bool, AgentError> {
    if !pins.is_ready() {
        return Ok(false);
    }
    let _lock = pins.lock()?;
    let dead = is_dead(pins, name)?;
    if dead {
        unlink(&pins.link(name))?;
    }
    if netdev::ifname(ifindex).is_none() {
        if let Ok(mut config) = program::config_map(pins) {
            let _ = config.remove(&ifindex);
        }
        if let Ok(mut counters) = program::counters_map(pins) {
            let _ = counters.remove(&ifindex);
        }
    }
    Ok(dead)
}

/// Removes every dead link pin, then the configuration and counters of
/// interfaces that have no attachment any more.
pub fn remove_dead(pins: &PinDir) -> Result<Cleaned, AgentError> {
    let mut cleaned = Cleaned::default();
    if !pins.is_ready() {
        return Ok(cleaned);
    }
    let _lock = pins.lock()?;
    for name in pins.linked_interfaces() {
        if is_dead(pins, &name)? {
            unlink(&pins.link(&name))?;
            cleaned.dead_pins.push(name);
        }
    }
    cleaned.stale_entries = remove_stale_entries_locked(pins)?;
    Ok(cleaned)
}

/// Configuration entries are kept for interfaces that exist and have a live
/// tcx link or a netlink filter; counters only where configuration is kept.
fn remove_stale_entries_locked(pins: &PinDir) -> Result<usize, AgentError> {
    let (Ok(mut config), Ok(mut counters)) = (program::config_map(pins), program::counters_map(pins)) else {
        // Nothing loaded yet: nothing to clean.
        return Ok(0);
    };
    let mut linked = BTreeSet::new();
    for name in pins.linked_interfaces() {
        if let PinnedLinkState::Live(ifindex) = attach::pinned_link_state(pins, &name)? {
            linked.insert(ifindex);
        }
    }
    let mut kept = BTreeSet::new();
    let mut stale = Vec::new();
    for ifindex in config.keys().flatten() {
        let netlink = config.get(&ifindex, 0).is_ok_and(|c| c.flags & FLAG_NETLINK != 0);
        if netdev::ifname(ifindex).is_some() && (netlink || linked.contains(&ifindex)) {
            kept.insert(ifindex);
        } else {
            stale.push(ifindex);
        }
    }
    let mut removed = 0;
    for ifindex in stale {
        removed += usize::from(config.remove(&ifindex).is_ok());
    }
    let orphans: Vec<u32> = counters.keys().flatten().filter(|i| !kept.contains(i)).collect();
    for ifindex in orphans {
        removed += usize::from(counters.remove(&ifindex).is_ok());
    }
    Ok(removed)
}

/// What [`remove_everything`] removed.
#[derive(Debug, Default)]
pub struct Removed {
    /// Interfaces dhcpfix was detached from.
    pub detached: Vec<String>,
    /// Pins removed afterwards (program, maps, leftover links).
    pub pins: Vec<String>,
}

/// Detaches from every interface and removes every pin: the links, the
/// maps and the program. The pin directory itself stays, empty (a bpffs
/// mounted there stays mounted: other tools may use it).
pub fn remove_everything(pins: &PinDir) -> Result<Removed, AgentError> {
    let mut removed = Removed::default();
    if !pins.is_ready() {
        return Ok(removed);
    }
    for a in attach::list(pins)? {
        if let attach::Detached::Removed = attach::detach(pins, &a.name)? {
            removed.detached.push(a.name);
        }
    }
    let _lock = pins.lock()?;
    for dir in [pins.links_dir(), pins.maps_dir()] {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            unlink(&entry.path())?;
            removed.pins.push(display(pins, &entry.path()));
        }
        match fs::remove_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(AgentError::Remove { path: dir, source: e })
            }
            _ => {}
        }
    }
    if pins.program().exists() {
        unlink(&pins.program())?;
        removed.pins.push(display(pins, &pins.program()));
    }
    for marker in pins.abi_markers() {
        match fs::remove_dir(&marker) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(AgentError::Remove {
                    path: marker,
                    source: e,
                })
            }
            _ => {}
        }
    }
    Ok(removed)
}

fn display(pins: &PinDir, path: &Path) -> String {
    path.strip_prefix(pins.root())
        .unwrap_or(path)
        .display()
        .to_string()
}
