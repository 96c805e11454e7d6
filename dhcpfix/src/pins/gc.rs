//! Removing what is no longer attached: dead links with their entries,
//! entries without an attachment, and (for `clean --all`) everything.
//!
//! Callers hold the pin directory's lock, like `attach`, so nothing here ever
//! sees an attachment half made (attach writes the configuration first, then
//! the link).

use dhcpfix_common::{
    config::{IfaceConfig, FLAG_NETLINK},
    key::IfaceKey,
};

use super::{
    links::{self, LinkState},
    maps::Maps,
    PinDir, PinsError,
};
use crate::sys;

/// An attachment whose remains were removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forgotten {
    pub key: IfaceKey,
    /// Its recorded name ("" if it had no configuration entry).
    pub name: String,
    /// Whether it had a link pin (a tcx attachment).
    pub had_link: bool,
}

/// Removes the link pin (if any), the configuration and the counters of
/// `key`.
pub fn forget(pins: &PinDir, maps: &mut Maps, key: &IfaceKey) -> Result<Forgotten, PinsError> {
    let name = maps
        .config(key)
        .map(|c| String::from_utf8_lossy(c.name_bytes()).into_owned())
        .unwrap_or_default();
    let had_link = links::remove(pins, key)?;
    maps.forget(key);
    Ok(Forgotten {
        key: *key,
        name,
        had_link,
    })
}

/// [`forget`] for an interface of a namespace the kernel is dismantling:
/// its links are unpinned, not detached ([`links::unpin`]).
pub fn forget_dismantled(pins: &PinDir, maps: &mut Maps, key: &IfaceKey) -> Result<Forgotten, PinsError> {
    let name = maps
        .config(key)
        .map(|c| String::from_utf8_lossy(c.name_bytes()).into_owned())
        .unwrap_or_default();
    let had_link = links::unpin(pins, key)?;
    maps.forget(key);
    Ok(Forgotten {
        key: *key,
        name,
        had_link,
    })
}

/// Whether the interface of a netlink attachment still exists: `None` when
/// it cannot be told (its namespace is not reachable from here).
pub trait NetlinkProbe {
    fn alive(&self, key: &IfaceKey, cfg: &IfaceConfig) -> Option<bool>;
}

impl<F: Fn(&IfaceKey, &IfaceConfig) -> Option<bool>> NetlinkProbe for F {
    fn alive(&self, key: &IfaceKey, cfg: &IfaceConfig) -> Option<bool> {
        self(key, cfg)
    }
}

/// Removes every dead attachment that `select` picks, in the namespace
/// with cookie `within` (in every one with `None`): dead link pins with
/// their entries, netlink entries whose interface is gone, configuration
/// entries that have neither a link nor a netlink filter (left by a crash),
/// and counters without configuration. Links of other namespaces are not
/// even looked at: a pass over one namespace does not cost every link of
/// the host.
pub fn dead_where(
    pins: &PinDir,
    maps: &mut Maps,
    probe: &dyn NetlinkProbe,
    within: Option<u64>,
    select: impl Fn(&IfaceKey, Option<&IfaceConfig>) -> bool,
) -> Result<Vec<Forgotten>, PinsError> {
    let mut gone = Vec::new();
    let in_scope = |key: &IfaceKey| within.is_none_or(|c| key.netns == c);
    let linked = match within {
        Some(cookie) => links::list_in(pins, cookie),
        None => links::list(pins),
    };
    for key in linked {
        if links::state(pins, &key)? == Some(LinkState::Dead) && select(&key, maps.config(&key).as_ref()) {
            gone.push(forget(pins, maps, &key)?);
        }
    }
    for (key, cfg) in maps.configs() {
        if !in_scope(&key) || !select(&key, Some(&cfg)) {
            continue;
        }
        let stale = match links::state(pins, &key)? {
            Some(LinkState::Live) => false,
            Some(LinkState::Dead) => true,
            None if cfg.flags & FLAG_NETLINK != 0 => probe.alive(&key, &cfg) == Some(false),
            None => true,
        };
        if stale {
            gone.push(forget(pins, maps, &key)?);
        }
    }
    for key in maps.counter_keys() {
        if in_scope(&key) && maps.config(&key).is_none() && select(&key, None) {
            maps.forget(&key);
        }
    }
    Ok(gone)
}

/// [`dead_where`] for every attachment.
pub fn dead(pins: &PinDir, maps: &mut Maps, probe: &dyn NetlinkProbe) -> Result<Vec<Forgotten>, PinsError> {
    dead_where(pins, maps, probe, None, |_, _| true)
}

/// Removes every pin below the pin directory, of this version and of any
/// other (dhcpfix 0.1's layout included), detaching each pinned link first.
/// Netlink filters are not pins: detach those before. The pin directory
/// itself stays (and a bpffs mounted there stays mounted; so do bpffs's own
/// `maps.debug`/`progs.debug`). Returns the removed paths, relative.
pub fn everything(pins: &PinDir) -> Result<Vec<String>, PinsError> {
    let mut removed = Vec::new();
    for name in pins.list(".") {
        if name == "maps.debug" || name == "progs.debug" {
            continue;
        }
        remove_tree(pins, &name, &mut removed)?;
    }
    Ok(removed)
}

fn remove_tree(pins: &PinDir, rel: &str, removed: &mut Vec<String>) -> Result<(), PinsError> {
    let is_dir = std::fs::symlink_metadata(pins.fd_path(rel)).is_ok_and(|m| m.is_dir());
    if is_dir {
        for child in pins.list(rel) {
            remove_tree(pins, &format!("{rel}/{child}"), removed)?;
        }
    } else if rel.starts_with("links/") || rel.contains("/links/") {
        // A link is detached now rather than when its last reference goes.
        if let Ok(fd) = sys::obj_get(&pins.fd_path(rel)) {
            let _ = sys::link_detach(&fd);
        }
    }
    if pins.remove(rel)? && !is_dir {
        removed.push(rel.to_owned());
    }
    Ok(())
}
