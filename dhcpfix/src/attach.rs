//! Attaching the classifier to an interface's egress, and detaching it.
//!
//! On Linux >= 6.6 each attachment is a tcx link pinned as
//! `<pin-dir>/links/<ifname>`; the link records the ifindex it was made for,
//! so an interface deleted and re-created under the same name is recognised
//! as new. Older kernels get a netlink clsact filter, recorded in the
//! configuration map.

use std::{fmt, io};

use aya::{
    programs::{
        links::{FdLink, LinkOrder},
        tc::{self, NlOptions, TcAttachOptions},
        ProgramError, TcAttachType,
    },
    util::KernelVersion,
};
use dhcpfix_common::{
    config::{IfaceConfig, DEFAULT_PORTS, FLAG_NETLINK, MAX_PORTS, MODE_AUDIT, MODE_FILL},
    PROGRAM_NAME,
};
use serde::Serialize;

use crate::{
    bpffs::{self, BpffsError, PinDir},
    netdev,
    program::{self, LayoutSource, LoadError},
    sys,
};

/// Errors while attaching or detaching.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("interface {0:?} not found in this network namespace")]
    NoInterface(String),
    #[error("{0:?} is not a valid interface name")]
    BadName(String),
    #[error("{iface} is a {kind} device: frames towards its guest pass its receive path, not its egress hook, and it does not show the guest's checksum offload; dhcpfix cannot fix them there (see docs/macvtap.md)")]
    ReceivePathTap { iface: String, kind: String },
    #[error("{0} was deleted and re-created while dhcpfix attached to it; run the command again")]
    Recreated(String),
    #[error("at most {MAX_PORTS} ports per interface, got {0}")]
    TooManyPorts(usize),
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("attaching to {iface} egress ({how}) failed: {}", describe(.source))]
    Attach {
        iface: String,
        how: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("pinning the link of {iface} at {path}: {source}")]
    PinLink {
        iface: String,
        path: String,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("{op} on the pinned link of {iface}: {source}")]
    Link {
        op: &'static str,
        iface: String,
        #[source]
        source: io::Error,
    },
    #[error("updating the {map} map for {iface}: {source}")]
    Map {
        map: &'static str,
        iface: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("counting possible CPUs (/sys/devices/system/cpu/possible): {0}")]
    Cpus(#[source] io::Error),
    #[error("removing the netlink filter from {iface}: {source}")]
    Netlink {
        iface: String,
        #[source]
        source: tc::TcError,
    },
}

/// aya's syscall errors name the call but keep the errno in their source;
/// an operator needs both on the one line.
fn describe(e: &ProgramError) -> String {
    match e {
        ProgramError::SyscallError(s) => format!("{}: {}", s.call, s.io_error),
        other => other.to_string(),
    }
}

/// What the classifier does on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Complete partial checksums on offloading devices.
    Fill,
    /// Only count what would be filled (counter `would_fill`).
    Audit,
}

impl Mode {
    fn raw(self) -> u32 {
        match self {
            Self::Fill => MODE_FILL,
            Self::Audit => MODE_AUDIT,
        }
    }

    fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            MODE_FILL => Some(Self::Fill),
            MODE_AUDIT => Some(Self::Audit),
            _ => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fill => "fill",
            Self::Audit => "audit",
        })
    }
}

/// How the program is hooked to the interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// tcx on Linux >= 6.6, netlink otherwise.
    #[default]
    Auto,
    /// A pinned tcx link (Linux >= 6.6).
    Tcx,
    /// A netlink clsact filter (any kernel with clsact).
    Netlink,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Tcx => "tcx",
            Self::Netlink => "netlink",
        })
    }
}

/// Options of `attach`.
#[derive(Clone, Debug)]
pub struct AttachOptions {
    pub mode: Mode,
    /// UDP destination ports to act on.
    pub ports: Vec<u16>,
    pub method: Method,
    pub layout: LayoutSource,
}

impl Default for AttachOptions {
    fn default() -> Self {
        Self {
            mode: Mode::Fill,
            ports: DEFAULT_PORTS.to_vec(),
            method: Method::Auto,
            layout: LayoutSource::Kernel,
        }
    }
}

/// What `attach` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A new attachment.
    New(Method),
    /// It was attached already; its configuration is now the one asked for.
    Existing(Method),
}

/// What `detach` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detached {
    Removed,
    NotAttached,
}

fn resolve_method(method: Method) -> Method {
    match method {
        Method::Auto => match KernelVersion::current() {
            Ok(v) if v >= KernelVersion::new(6, 6, 0) => Method::Tcx,
            _ => Method::Netlink,
        },
        other => other,
    }
}

/// The state of a pinned tcx link.
pub(crate) enum PinnedLinkState {
    None,
    /// Attached to `ifindex`.
    Live(u32),
    /// Its interface is gone (or it is not a tcx link).
    Dead,
}

pub(crate) fn pinned_link_state(pins: &PinDir, iface: &str) -> Result<PinnedLinkState, AttachError> {
    let path = pins.link(iface);
    if !path.exists() {
        return Ok(PinnedLinkState::None);
    }
    let fd = sys::obj_get(&path).map_err(|source| AttachError::Link {
        op: "BPF_OBJ_GET",
        iface: iface.into(),
        source,
    })?;
    let info = sys::link_info(&fd).map_err(|source| AttachError::Link {
        op: "BPF_OBJ_GET_INFO_BY_FD",
        iface: iface.into(),
        source,
    })?;
    Ok(if info.link_type == sys::BPF_LINK_TYPE_TCX && info.ifindex != 0 {
        PinnedLinkState::Live(info.ifindex)
    } else {
        PinnedLinkState::Dead
    })
}

/// Detaches the pinned link of `iface` and removes its pin. The explicit
/// `BPF_LINK_DETACH` makes the detach synchronous: a removed pin alone drops
/// its reference only after an RCU grace period and a workqueue pass, and an
/// attach right after would meanwhile fail with EEXIST. (A dead link has
/// nothing to detach; that error is only logged.)
fn remove_pin(pins: &PinDir, iface: &str) -> Result<(), AttachError> {
    if let Ok(fd) = sys::obj_get(&pins.link(iface)) {
        if let Err(e) = sys::link_detach(&fd) {
            log::debug!("BPF_LINK_DETACH of {iface}: {e}");
        }
    }
    match std::fs::remove_file(pins.link(iface)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(AttachError::Link {
            op: "unlink",
            iface: iface.into(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn write_config(pins: &PinDir, iface: &str, ifindex: u32, cfg: IfaceConfig) -> Result<(), AttachError> {
    let map_err = |map, source| AttachError::Map {
        map,
        iface: iface.into(),
        source,
    };
    let mut counters = program::counters_map(pins)?;
    if counters.get(&ifindex, 0).is_err() {
        let zeros = program::zero_counters().map_err(AttachError::Cpus)?;
        counters
            .insert(ifindex, zeros, 0)
            .map_err(|e| map_err("counters", e))?;
    }
    // Ports first: the classifier's fast path drops out on unwatched ports
    // before it looks at the configuration.
    let mut ports = program::ports_map(pins)?;
    program::watch_ports(&mut ports, &cfg.ports).map_err(|e| map_err("ports", e))?;
    let mut config = program::config_map(pins)?;
    config.insert(ifindex, cfg, 0).map_err(|e| map_err("config", e))
}

fn forget_interface(pins: &PinDir, ifindex: u32) {
    if let Ok(mut config) = program::config_map(pins) {
        let _ = config.remove(&ifindex);
    }
    if let Ok(mut counters) = program::counters_map(pins) {
        let _ = counters.remove(&ifindex);
    }
}

/// Attaches dhcpfix to the egress of `iface`. Idempotent: attaching again
/// keeps the existing link and applies the new mode and ports. On failure
/// nothing is left behind for this interface.
pub fn attach(pins: &PinDir, iface: &str, opts: &AttachOptions) -> Result<Attached, AttachError> {
    if !bpffs::valid_ifname(iface) {
        return Err(AttachError::BadName(iface.into()));
    }
    if opts.ports.len() > MAX_PORTS {
        return Err(AttachError::TooManyPorts(opts.ports.len()));
    }
    let ifindex = netdev::ifindex(iface).ok_or_else(|| AttachError::NoInterface(iface.into()))?;
    // macvtap/ipvtap: measured in docs/macvtap.md.
    if let Ok(Some(link)) = netdev::link(ifindex) {
        if link.is_rx_handler_tap() {
            return Err(AttachError::ReceivePathTap {
                iface: iface.into(),
                kind: link.kind.unwrap_or_default(),
            });
        }
    }
    let _lock = pins.lock()?;
    program::check_abi(pins)?;
    let method = resolve_method(opts.method);
    let mut cfg = IfaceConfig::new(opts.mode.raw(), &opts.ports);

    match pinned_link_state(pins, iface)? {
        PinnedLinkState::Live(index) if index == ifindex => {
            write_config(pins, iface, ifindex, cfg)?;
            return Ok(Attached::Existing(Method::Tcx));
        }
        // The interface was deleted, or re-created under the same name.
        PinnedLinkState::Live(_) | PinnedLinkState::Dead => remove_pin(pins, iface)?,
        PinnedLinkState::None => {}
    }
    if method == Method::Netlink && netlink_attached(pins, ifindex) {
        cfg.flags |= FLAG_NETLINK;
        write_config(pins, iface, ifindex, cfg)?;
        return Ok(Attached::Existing(Method::Netlink));
    }

    let mut prog = program::load_or_open(pins, &opts.layout)?;
    // Configure first: the classifier ignores interfaces it has no
    // configuration for, so a link that appears before it is harmless.
    if method == Method::Netlink {
        cfg.flags |= FLAG_NETLINK;
    }
    write_config(pins, iface, ifindex, cfg)?;
    let result = match method {
        Method::Netlink => attach_netlink(&mut prog, iface),
        _ => attach_tcx(&mut prog, pins, iface, ifindex),
    };
    if let Err(e) = result {
        forget_interface(pins, ifindex);
        return Err(e);
    }
    Ok(Attached::New(method))
}

fn attach_tcx(
    prog: &mut aya::programs::SchedClassifier,
    pins: &PinDir,
    iface: &str,
    ifindex: u32,
) -> Result<(), AttachError> {
    let attach_err = |source| AttachError::Attach {
        iface: iface.into(),
        how: "tcx",
        source,
    };
    let id = prog
        .attach_with_options(
            iface,
            TcAttachType::Egress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(attach_err)?;
    let link = prog.take_link(id).map_err(attach_err)?;
    let link: FdLink = link.try_into().map_err(|e: aya::programs::links::LinkError| {
        attach_err(ProgramError::IOError(io::Error::other(e.to_string())))
    })?;
    let path = pins.link(iface);
    // Dropping the unpinned link on error detaches it again.
    link.pin(&path).map_err(|source| AttachError::PinLink {
        iface: iface.into(),
        path: path.display().to_string(),
        source,
    })?;
    // aya resolves the name again: if the interface was re-created in
    // between, the link sits on an ifindex we did not configure, and the
    // classifier would ignore that interface. Undo and say so.
    if let PinnedLinkState::Live(linked) = pinned_link_state(pins, iface)? {
        if linked != ifindex {
            remove_pin(pins, iface)?;
            return Err(AttachError::Recreated(iface.into()));
        }
    }
    Ok(())
}

fn attach_netlink(prog: &mut aya::programs::SchedClassifier, iface: &str) -> Result<(), AttachError> {
    let attach_err = |source| AttachError::Attach {
        iface: iface.into(),
        how: "netlink clsact",
        source,
    };
    // EEXIST: a clsact qdisc is there already.
    if let Err(e) = tc::qdisc_add_clsact(iface) {
        let exists = matches!(&e, tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST));
        if !exists {
            return Err(attach_err(ProgramError::TcError(e)));
        }
    }
    let id = prog
        .attach_with_options(
            iface,
            TcAttachType::Egress,
            TcAttachOptions::Netlink(NlOptions::default()),
        )
        .map_err(attach_err)?;
    let link = prog.take_link(id).map_err(attach_err)?;
    // A netlink filter stays until removed; dropping the link would remove it.
    std::mem::forget(link);
    Ok(())
}

/// Whether a netlink attachment is recorded for `ifindex`. A netlink filter
/// cannot be pinned and aya 0.14 cannot list filters by name, so the record
/// in the configuration map (made when the filter was added, removed with
/// it) is what identifies it; the ifindex changes if the interface is
/// re-created.
fn netlink_attached(pins: &PinDir, ifindex: u32) -> bool {
    program::config_map(pins)
        .ok()
        .and_then(|m| m.get(&ifindex, 0).ok())
        .is_some_and(|c| c.flags & FLAG_NETLINK != 0)
}

/// Detaches dhcpfix from `iface`. Works for an interface that no longer
/// exists too (removes its dead link).
pub fn detach(pins: &PinDir, iface: &str) -> Result<Detached, AttachError> {
    if !bpffs::valid_ifname(iface) {
        return Err(AttachError::BadName(iface.into()));
    }
    if !pins.is_ready() {
        return Ok(Detached::NotAttached);
    }
    let _lock = pins.lock()?;
    let mut removed = false;
    if let PinnedLinkState::Live(index) = pinned_link_state(pins, iface)? {
        forget_interface(pins, index);
    }
    if pins.link(iface).exists() {
        remove_pin(pins, iface)?;
        removed = true;
    }
    if let Some(ifindex) = netdev::ifindex(iface) {
        let netlink = program::config_map(pins)
            .ok()
            .and_then(|m| m.get(&ifindex, 0).ok())
            .is_some_and(|c| c.flags & FLAG_NETLINK != 0);
        if netlink {
            match tc::qdisc_detach_program(iface, TcAttachType::Egress, PROGRAM_NAME) {
                Err(tc::TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(AttachError::Netlink {
                        iface: iface.into(),
                        source,
                    })
                }
                Ok(()) => removed = true,
            }
            forget_interface(pins, ifindex);
        }
    }
    collect_garbage(pins);
    Ok(if removed {
        Detached::Removed
    } else {
        Detached::NotAttached
    })
}

/// Drops configuration and counters of interfaces that no longer exist.
fn collect_garbage(pins: &PinDir) {
    let Ok(config) = program::config_map(pins) else {
        return;
    };
    let gone: Vec<u32> = config
        .keys()
        .flatten()
        .filter(|ifindex| netdev::ifname(*ifindex).is_none())
        .collect();
    for ifindex in gone {
        forget_interface(pins, ifindex);
    }
}

/// One attachment, as `status` and `stats` report it.
#[derive(Clone, Debug, Serialize)]
pub struct Attachment {
    pub name: String,
    /// 0 when the interface is gone.
    pub ifindex: u32,
    /// Whether the program is hooked to a live interface.
    pub attached: bool,
    pub mode: Option<Mode>,
    pub method: Method,
    pub ports: Vec<u16>,
}

/// Every attachment recorded in the pin directory, sorted by name.
pub fn list(pins: &PinDir) -> Result<Vec<Attachment>, AttachError> {
    let mut out = Vec::new();
    pins.check_access()?;
    if !pins.is_ready() {
        return Ok(out);
    }
    let config = program::config_map(pins).ok();
    let cfg_of = |ifindex: u32| config.as_ref().and_then(|m| m.get(&ifindex, 0).ok());
    for name in pins.linked_interfaces() {
        let (ifindex, attached) = match pinned_link_state(pins, &name) {
            Ok(PinnedLinkState::Live(index)) => (index, true),
            _ => (0, false),
        };
        let cfg = (ifindex != 0).then(|| cfg_of(ifindex)).flatten();
        out.push(Attachment {
            name,
            ifindex,
            attached,
            mode: cfg.and_then(|c| Mode::from_raw(c.mode)),
            method: Method::Tcx,
            ports: cfg
                .map(|c| c.ports.iter().copied().filter(|p| *p != 0).collect())
                .unwrap_or_default(),
        });
    }
    if let Some(config) = &config {
        for ifindex in config.keys().flatten() {
            let Some(cfg) = cfg_of(ifindex) else { continue };
            if cfg.flags & FLAG_NETLINK == 0 {
                continue;
            }
            let name = netdev::ifname(ifindex);
            out.push(Attachment {
                attached: name.is_some(),
                name: name.unwrap_or_else(|| format!("if{ifindex}")),
                ifindex,
                mode: Mode::from_raw(cfg.mode),
                method: Method::Netlink,
                ports: cfg.ports.iter().copied().filter(|p| *p != 0).collect(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
