//! Moving what an older dhcpfix pinned (older records) to this version, in
//! place, so that a fleet can replace its agents without a moment in which
//! a guest is not covered:
//!
//! 1. this version's program and maps are loaded beside the old ones;
//! 2. every configuration entry and its counters are written in the new
//!    records;
//! 3. every tcx link switches to the new program with `BPF_LINK_UPDATE`
//!    (atomic for its hook: each packet runs either program) and is pinned
//!    under the new records; every netlink filter is replaced where it
//!    stands (same priority and handle);
//! 4. what the old program counted meanwhile is added, and the old pins
//!    are removed.
//!
//! The record layouts of earlier versions are frozen here, as they were
//! released, so that their entries can still be read.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd, OwnedFd},
    thread,
    time::Duration,
};

use aya::{
    maps::{HashMap, Map, MapData, PerCpuHashMap, PerCpuValues},
    programs::{
        tc::{SchedClassifierLink, TcHandle},
        SchedClassifier, TcAttachType,
    },
};
#[cfg(feature = "next-abi")]
use dhcpfix_common::CONFIG_MAP;
use dhcpfix_common::{
    config::{IfaceConfig, FLAG_NETLINK, IFNAMSIZ, MAX_PORTS},
    counters::Counters,
    key::IfaceKey,
    COUNTERS_MAP,
};

use super::{describe, link_rel, links_rel, maps::Maps, netns_links_rel, PinDir, PinsError};
use crate::{netns::Netns, sys};

/// dhcpfix 0.1's records (ABI 1): one namespace per pin directory, keyed by
/// ifindex; links pinned as `links/<ifname>`; no version directory.
mod v1 {
    use super::MAX_PORTS;

    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct IfaceConfig {
        pub mode: u32,
        pub flags: u32,
        pub ports: [u16; MAX_PORTS],
    }

    // SAFETY: #[repr(C)] integers, 16 bytes without padding; every bit
    // pattern is valid.
    unsafe impl aya::Pod for IfaceConfig {}
}

/// ABI 2's records, as released (`abi-2/`).
#[cfg_attr(not(feature = "next-abi"), allow(dead_code))]
mod v2 {
    use super::{IFNAMSIZ, MAX_PORTS};

    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct IfaceConfig {
        pub mode: u32,
        pub flags: u32,
        pub ports: [u16; MAX_PORTS],
        pub mac: [u8; 6],
        pub netlink_prio: u16,
        pub netlink_handle: u32,
        pub reserved: u32,
        pub name: [u8; IFNAMSIZ],
    }

    // SAFETY: #[repr(C)] integers and byte arrays, 48 bytes without
    // padding; every bit pattern is valid.
    unsafe impl aya::Pod for IfaceConfig {}
}

/// The versions this build can upgrade from, oldest first.
pub fn known_older() -> &'static [u32] {
    if cfg!(feature = "next-abi") {
        &[1, 2]
    } else {
        &[1]
    }
}

/// One attachment as the old version recorded it.
struct Old {
    config: IfaceConfig,
    /// The old link pin (relative), for a tcx attachment.
    link: Option<String>,
}

/// An old version's attachments and their per-CPU counters.
type Records = (BTreeMap<IfaceKey, Old>, BTreeMap<IfaceKey, Vec<Counters>>);

/// What an upgrade moved.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Upgraded {
    /// The version moved from (`abi-1`, ...).
    pub from: String,
    /// tcx links now running this version's program.
    pub links: usize,
    /// netlink filters replaced.
    pub filters: usize,
    /// Attachments whose interface was gone (their remains were dropped).
    pub dropped: usize,
}

fn io_err<'a>(op: &'static str, what: &'a str) -> impl FnOnce(std::io::Error) -> PinsError + 'a {
    move |source| PinsError::Link {
        op,
        key: what.to_owned(),
        source,
    }
}

fn open_old_map(pins: &PinDir, rel: &str) -> Result<MapData, PinsError> {
    MapData::from_pin(pins.fd_path(rel)).map_err(|e| PinsError::Open {
        path: pins.shown(rel),
        reason: e.to_string(),
    })
}

/// Reads ABI 1's attachments. Its pin directory served one network
/// namespace, the one its commands ran in: taken to be `here`'s.
fn read_v1(pins: &PinDir, here: u64) -> Result<Records, PinsError> {
    let config: HashMap<MapData, u32, v1::IfaceConfig> =
        HashMap::try_from(Map::HashMap(open_old_map(pins, "maps/DHCPFIX_CONFIG")?)).map_err(|e| {
            PinsError::Open {
                path: pins.shown("maps/DHCPFIX_CONFIG"),
                reason: e.to_string(),
            }
        })?;
    let counters: PerCpuHashMap<MapData, u32, Counters> = PerCpuHashMap::try_from(Map::PerCpuHashMap(
        open_old_map(pins, "maps/DHCPFIX_COUNTERS")?,
    ))
    .map_err(|e| PinsError::Open {
        path: pins.shown("maps/DHCPFIX_COUNTERS"),
        reason: e.to_string(),
    })?;
    let mut old = BTreeMap::new();
    let configs: BTreeMap<u32, v1::IfaceConfig> = config.iter().flatten().collect();
    // Links: `links/<ifname>`, the ifindex from the link itself.
    for name in pins.list("links") {
        let rel = format!("links/{name}");
        let Ok(fd) = sys::obj_get(&pins.fd_path(&rel)) else {
            continue;
        };
        let Ok(info) = sys::link_info(&fd) else { continue };
        let key = IfaceKey::new(here, info.ifindex);
        let Some(c) = configs.get(&info.ifindex).filter(|_| info.ifindex != 0) else {
            continue;
        };
        let config = IfaceConfig {
            flags: 0,
            ..IfaceConfig::new(c.mode, &c.ports)
        }
        .with_identity(&name, [0; 6]);
        old.insert(
            key,
            Old {
                config,
                link: Some(rel),
            },
        );
    }
    for (ifindex, c) in &configs {
        if c.flags & FLAG_NETLINK != 0 {
            let name = crate::netdev::ifname(*ifindex).unwrap_or_default();
            let mut config = IfaceConfig::new(c.mode, &c.ports).with_identity(&name, [0; 6]);
            config.flags = FLAG_NETLINK;
            old.insert(IfaceKey::new(here, *ifindex), Old { config, link: None });
        }
    }
    let mut counts = BTreeMap::new();
    for key in old.keys() {
        if let Ok(values) = counters.get(&key.ifindex, 0) {
            counts.insert(*key, values.iter().copied().collect());
        }
    }
    Ok((old, counts))
}

/// Reads ABI 2's attachments (`abi-2/`).
#[cfg(feature = "next-abi")]
fn read_v2(pins: &PinDir) -> Result<Records, PinsError> {
    let map = |name: &str| format!("abi-2/maps/{name}");
    let config: HashMap<MapData, IfaceKey, v2::IfaceConfig> =
        HashMap::try_from(Map::HashMap(open_old_map(pins, &map(CONFIG_MAP))?)).map_err(|e| {
            PinsError::Open {
                path: pins.shown(&map(CONFIG_MAP)),
                reason: e.to_string(),
            }
        })?;
    let counters: PerCpuHashMap<MapData, IfaceKey, Counters> = PerCpuHashMap::try_from(Map::PerCpuHashMap(
        open_old_map(pins, &map(COUNTERS_MAP))?,
    ))
    .map_err(|e| PinsError::Open {
        path: pins.shown(&map(COUNTERS_MAP)),
        reason: e.to_string(),
    })?;
    let mut old = BTreeMap::new();
    for (key, c) in config.iter().flatten() {
        let link = format!("abi-2/links/{}/{}", key.netns, key.ifindex);
        let link = pins.exists(&link).then_some(link);
        if link.is_none() && c.flags & FLAG_NETLINK == 0 {
            continue;
        }
        let mut config = IfaceConfig::new(c.mode, &c.ports);
        config.flags = c.flags;
        config.mac = c.mac;
        config.name = c.name;
        config.netlink_prio = c.netlink_prio;
        config.netlink_handle = c.netlink_handle;
        old.insert(key, Old { config, link });
    }
    let mut counts = BTreeMap::new();
    for key in old.keys() {
        if let Ok(values) = counters.get(key, 0) {
            counts.insert(*key, values.iter().copied().collect());
        }
    }
    Ok((old, counts))
}

#[cfg(not(feature = "next-abi"))]
fn read_v2(_: &PinDir) -> Result<Records, PinsError> {
    unreachable!("ABI 2 is this build's own")
}

/// The relative paths of an old version's pins, links last (so that a
/// crash part-way leaves the links, which guests need, for the next try).
fn old_pins(pins: &PinDir, version: u32) -> (Vec<String>, Vec<String>) {
    let (root, links_dir) = match version {
        1 => (String::new(), "links".to_owned()),
        v => (format!("abi-{v}/"), format!("abi-{v}/links")),
    };
    let mut files = vec![format!("{root}prog"), format!("{root}prog-ingress")];
    for m in pins.list(&format!("{root}maps")) {
        files.push(format!("{root}maps/{m}"));
    }
    let mut dirs = vec![format!("{root}maps")];
    let mut links = Vec::new();
    for entry in pins.list(&links_dir) {
        let rel = format!("{links_dir}/{entry}");
        let inner = pins.list(&rel);
        if inner.is_empty() && version == 1 {
            links.push(rel);
        } else {
            for i in inner {
                links.push(format!("{rel}/{i}"));
            }
            dirs.push(rel);
        }
    }
    dirs.push(links_dir);
    if version == 1 {
        dirs.push("abi-1".into());
    } else {
        dirs.push(format!("abi-{version}"));
    }
    files.extend(links);
    (files, dirs)
}

fn per_cpu(values: Vec<Counters>) -> Result<PerCpuValues<Counters>, PinsError> {
    PerCpuValues::try_from(values).map_err(|source| PinsError::Map {
        op: "building per-CPU values",
        map: COUNTERS_MAP,
        key: String::new(),
        source,
    })
}

/// Moves an interface's ingress link (best effort: it only feeds the lease
/// view; a failure leaves it to the next attach).
fn move_ingress(pins: &PinDir, old_rel: &str, key: &IfaceKey, old: &SchedClassifier, new: &SchedClassifier) {
    let (Ok(old_fd), Ok(new_fd)) = (old.fd(), new.fd()) else {
        return;
    };
    let Ok(link) = sys::obj_get(&pins.fd_path(old_rel)) else {
        return;
    };
    if sys::link_update(&link, new_fd.as_fd(), old_fd.as_fd()).is_ok() {
        if let Err(e) = sys::obj_pin(&link, &pins.fd_path(&super::ingress_link_rel(key))) {
            log::warn!(
                "upgrading the ingress link of {}: BPF_OBJ_PIN: {e}",
                describe(key)
            );
        }
    }
}

/// Moves the attachments of the older version `version` to `new_prog`
/// (this version's, loaded and pinned) and removes the old pins. Call with
/// the pin directory locked. `here` is the namespace ABI 1's attachments
/// are taken to be in; `namespaces` are where netlink filters are found.
pub fn run(
    pins: &PinDir,
    version: u32,
    new_prog: &SchedClassifier,
    here: &Netns,
    namespaces: &[Netns],
) -> Result<Upgraded, PinsError> {
    let from = format!("abi-{version}");
    let (old, counts) = match version {
        1 => read_v1(pins, here.cookie())?,
        2 => read_v2(pins)?,
        _ => unreachable!("only known versions are upgraded"),
    };
    let old_prog_rel = if version == 1 {
        "prog".to_owned()
    } else {
        format!("{from}/prog")
    };
    let old_prog = SchedClassifier::from_pin(pins.fd_path(&old_prog_rel)).map_err(|e| PinsError::Open {
        path: pins.shown(&old_prog_rel),
        reason: e.to_string(),
    })?;
    let old_fd = old_prog.fd().map_err(|e| PinsError::Open {
        path: pins.shown(&old_prog_rel),
        reason: e.to_string(),
    })?;
    let new_fd = new_prog.fd().map_err(|e| PinsError::Open {
        path: pins.shown(&super::program_rel()),
        reason: e.to_string(),
    })?;
    // The ingress twin (what guests send), where the old version had one.
    let old_ingress_rel = format!("{}-ingress", old_prog_rel);
    let ingress = if version >= 2 && pins.exists(&old_ingress_rel) {
        let old = SchedClassifier::from_pin(pins.fd_path(&old_ingress_rel)).ok();
        let new = SchedClassifier::from_pin(pins.fd_path(&super::ingress_program_rel())).ok();
        old.zip(new)
    } else {
        None
    };
    let mut maps = Maps::open(pins)?;
    let mut done = Upgraded {
        from,
        ..Default::default()
    };
    // 2. Records first: the new program ignores interfaces it has no
    // configuration for.
    for (key, o) in &old {
        maps.configure(key, o.config)?;
        match counts.get(key) {
            Some(c) => maps
                .counters
                .insert(key, per_cpu(c.clone())?, 0)
                .map_err(|e| PinsError::Map {
                    op: "BPF_MAP_UPDATE_ELEM",
                    map: COUNTERS_MAP,
                    key: describe(key),
                    source: std::io::Error::other(e.to_string()),
                })?,
            None => maps.reset_counters(key)?,
        }
    }
    // 3. Then the hooks.
    let mut moved: Vec<IfaceKey> = Vec::new();
    for (key, o) in &old {
        if let Some(rel) = &o.link {
            let what = describe(key);
            let link: OwnedFd = sys::obj_get(&pins.fd_path(rel)).map_err(io_err("BPF_OBJ_GET", &what))?;
            match sys::link_update(&link, new_fd.as_fd(), old_fd.as_fd()) {
                Ok(()) => {
                    pins.mkdir(&links_rel())?;
                    pins.mkdir(&netns_links_rel(key.netns))?;
                    sys::obj_pin(&link, &pins.fd_path(&link_rel(key)))
                        .map_err(io_err("BPF_OBJ_PIN", &what))?;
                    done.links += 1;
                    moved.push(*key);
                    if let Some((old_in, new_in)) = &ingress {
                        move_ingress(pins, &format!("{rel}-in"), key, old_in, new_in);
                    }
                }
                // Its interface is gone: nothing to keep.
                Err(_) => {
                    maps.forget(key);
                    done.dropped += 1;
                }
            }
        } else if o.config.flags & FLAG_NETLINK != 0 {
            let name = String::from_utf8_lossy(o.config.name_bytes()).into_owned();
            let Some(ns) = namespaces.iter().find(|n| n.cookie() == key.netns) else {
                done.dropped += 1;
                continue;
            };
            let (prio, handle) = (o.config.netlink_prio, o.config.netlink_handle);
            let replaced = ns
                .run(|| -> Result<(), String> {
                    let mut prog = SchedClassifier::from_pin(pins.fd_path(&super::program_rel()))
                        .map_err(|e| e.to_string())?;
                    match prio {
                        // Recorded: replace exactly that filter, in place.
                        p if p != 0 => {
                            let link = SchedClassifierLink::attached(
                                &name,
                                TcAttachType::Egress,
                                p,
                                TcHandle::from(handle),
                                None,
                            )
                            .map_err(|e| e.to_string())?;
                            let id = prog.attach_to_link(link).map_err(|e| e.to_string())?;
                            std::mem::forget(prog.take_link(id).map_err(|e| e.to_string())?);
                        }
                        // dhcpfix 0.1 did not record it: remove, then add
                        // (a gap of a few microseconds).
                        _ => {
                            aya::programs::tc::qdisc_detach_program(
                                &name,
                                TcAttachType::Egress,
                                dhcpfix_common::PROGRAM_NAME,
                            )
                            .map_err(|e| e.to_string())?;
                            let id = prog
                                .attach(&name, TcAttachType::Egress)
                                .map_err(|e| e.to_string())?;
                            std::mem::forget(prog.take_link(id).map_err(|e| e.to_string())?);
                        }
                    }
                    Ok(())
                })
                .map_err(|e| e.to_string())
                .and_then(|r| r);
            match replaced {
                Ok(()) => {
                    done.filters += 1;
                    // What the old program counted until its filter was
                    // replaced is added below, as for a link.
                    moved.push(*key);
                }
                Err(reason) => {
                    log::warn!("upgrading the netlink filter of {name}: {reason}");
                    done.dropped += 1;
                }
            }
        }
    }
    // 4. What the old program counted between the copy and the switch: an
    // RCU grace period lets the packets it was running finish first.
    thread::sleep(Duration::from_millis(20));
    let (_, after) = match version {
        1 => read_v1(pins, here.cookie())?,
        _ => read_v2(pins)?,
    };
    for key in &moved {
        let (Some(before), Some(now)) = (counts.get(key), after.get(key)) else {
            continue;
        };
        let Ok(current) = maps.counters.get(key, 0) else {
            continue;
        };
        let mut sum: Vec<Counters> = current.iter().copied().collect();
        let mut changed = false;
        for ((s, b), n) in sum.iter_mut().zip(before).zip(now) {
            if n != b {
                changed = true;
                let delta = Counters {
                    seen: n.seen.saturating_sub(b.seen),
                    filled: n.filled.saturating_sub(b.filled),
                    would_fill: n.would_fill.saturating_sub(b.would_fill),
                    valid: n.valid.saturating_sub(b.valid),
                    deferred: n.deferred.saturating_sub(b.deferred),
                    skipped: n.skipped.saturating_sub(b.skipped),
                    errors: n.errors.saturating_sub(b.errors),
                };
                s.add(&delta);
            }
        }
        if changed {
            let _ = maps.counters.insert(key, per_cpu(sum)?, 0);
        }
    }
    // The old pins go; the moved links stay alive through their new pins.
    let (files, dirs) = old_pins(pins, version);
    for rel in files.iter().chain(&dirs) {
        let _ = pins.remove(rel);
    }
    Ok(done)
}
