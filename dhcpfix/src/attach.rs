//! Attaching the classifier to an interface's egress, and detaching it:
//! what to check first, which hook to use, and what to record. The pins,
//! links and entries themselves are made and removed by [`crate::pins`].
//!
//! An interface is named by its network namespace and its name there; the
//! work happens on a thread inside that namespace (tcx attaches by ifindex
//! in the caller's namespace; netlink talks to the caller's namespace).
//!
//! On Linux >= 6.6 each attachment is a pinned tcx link; older kernels get a
//! netlink clsact filter, recorded in the configuration map.

use std::{fmt, io, time::Duration};

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
    key::IfaceKey,
    PROGRAM_NAME,
};
use serde::Serialize;

use crate::{
    integrations::libvirt,
    netdev,
    netns::{Netns, NetnsError, NetnsInfo},
    pins::{
        self,
        gc::{self, Forgotten},
        links::{self, Hook, LinkState},
        maps::Maps,
        PinDir, PinsError,
    },
    program::{self, LayoutSource, LoadError},
};

/// Errors while attaching or detaching.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("interface {iface:?} not found in {netns}")]
    NoInterface { iface: String, netns: String },
    #[error("{0:?} is not a valid interface name")]
    BadName(String),
    #[error("{iface} is a {kind} device: frames towards its guest pass its receive path, not its egress hook, and it does not show the guest's checksum offload; dhcpfix cannot fix them there (see docs/macvtap.md)")]
    ReceivePathTap { iface: String, kind: String },
    #[error("{0} was deleted and re-created while dhcpfix attached to it; run the command again")]
    Recreated(String),
    #[error("at most {MAX_PORTS} ports per interface, got {0}")]
    TooManyPorts(usize),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Pins(#[from] PinsError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("attaching to {iface} egress ({how}) failed: {}", describe(.source))]
    Attach {
        iface: String,
        how: &'static str,
        source: ProgramError,
    },
    #[error("removing the netlink filter from {iface}: {source}")]
    Netlink { iface: String, source: tc::TcError },
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
    /// How long to wait for the pin directory's lock.
    pub lock_timeout: Duration,
}

impl Default for AttachOptions {
    fn default() -> Self {
        Self {
            mode: Mode::Fill,
            ports: DEFAULT_PORTS.to_vec(),
            method: Method::Auto,
            layout: LayoutSource::Kernel,
            lock_timeout: pins::LOCK_TIMEOUT,
        }
    }
}

/// What `attach` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A new attachment (its counters start from zero).
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

/// Whether the interface of a netlink attachment in the namespace `here`
/// (the caller's) still exists under its recorded name; other namespaces
/// cannot be told from here.
fn netlink_probe(here: u64) -> impl Fn(&IfaceKey, &IfaceConfig) -> Option<bool> {
    move |key, cfg| {
        (key.netns == here)
            .then(|| netdev::ifname(key.ifindex).is_some_and(|n| n.as_bytes() == cfg.name_bytes()))
    }
}

/// Attaches dhcpfix to the egress of `iface` in `netns`. Idempotent:
/// attaching again keeps the existing link and counters and applies the new
/// mode and ports. On failure nothing is left behind for this interface.
pub fn attach(
    pins: &PinDir,
    netns: &Netns,
    iface: &str,
    opts: &AttachOptions,
) -> Result<Attached, AttachError> {
    if !valid_ifname(iface) {
        return Err(AttachError::BadName(iface.into()));
    }
    if opts.ports.len() > MAX_PORTS {
        return Err(AttachError::TooManyPorts(opts.ports.len()));
    }
    let cookie = netns.cookie();
    netns.run(|| attach_here(pins, cookie, &netns.to_string(), iface, opts))?
}

fn attach_here(
    pins: &PinDir,
    cookie: u64,
    netns_shown: &str,
    iface: &str,
    opts: &AttachOptions,
) -> Result<Attached, AttachError> {
    let no_interface = || AttachError::NoInterface {
        iface: iface.into(),
        netns: netns_shown.into(),
    };
    let ifindex = netdev::ifindex(iface).ok_or_else(no_interface)?;
    let link = netdev::link(ifindex).ok().flatten();
    // macvtap/ipvtap: measured in docs/macvtap.md.
    if let Some(l) = link.as_ref().filter(|l| l.is_rx_handler_tap()) {
        return Err(AttachError::ReceivePathTap {
            iface: iface.into(),
            kind: l.kind.clone().unwrap_or_default(),
        });
    }
    let mac: [u8; 6] = link
        .as_ref()
        .and_then(|l| l.mac.as_slice().try_into().ok())
        .unwrap_or_default();
    let key = IfaceKey::new(cookie, ifindex);
    let _lock = pins.lock(opts.lock_timeout)?;
    // An older version's attachments move to this one first (in place), so
    // that what follows sees them.
    if !program::check_abi(pins)?.is_empty() {
        program::load_or_open(pins, &opts.layout)?;
    }
    let method = resolve_method(opts.method);
    let mut cfg = IfaceConfig::new(opts.mode.raw(), &opts.ports).with_identity(iface, mac);
    if method == Method::Netlink {
        cfg.flags |= FLAG_NETLINK;
    }

    let loaded = program::is_loaded(pins);
    if loaded {
        // A re-created interface replaces what its predecessor of the same
        // name left (a hook attaching the tap of a restarted guest).
        forget_earlier(pins, &mut Maps::open(pins)?, &key, iface)?;
    }
    match links::state(pins, &key)? {
        Some(LinkState::Live) => {
            Maps::open(pins)?.configure(&key, IfaceConfig { flags: 0, ..cfg })?;
            // Attached by a version without it (or its attach failed).
            watch_requests(pins, &key, iface);
            return Ok(Attached::Existing(Method::Tcx));
        }
        // An interface re-created with the same ifindex: its old link is
        // dead, and what it recorded goes with it.
        Some(LinkState::Dead) => {
            gc::forget(pins, &mut Maps::open(pins)?, &key)?;
        }
        None => {}
    }
    if loaded && method == Method::Netlink {
        let mut maps = Maps::open(pins)?;
        if maps.config(&key).is_some_and(|c| c.flags & FLAG_NETLINK != 0) {
            maps.configure(&key, cfg)?;
            return Ok(Attached::Existing(Method::Netlink));
        }
    }

    let mut prog = program::load_or_open(pins, &opts.layout)?;
    let mut maps = Maps::open(pins)?;
    // Configure first: the classifier ignores interfaces it has no
    // configuration for, so a link that appears before it is harmless.
    configure_new(pins, &mut maps, &key, cfg)?;
    let result = match method {
        Method::Netlink => attach_netlink(&mut prog, iface).and_then(|(prio, handle)| {
            // Recorded, so that an upgrade can replace this very filter.
            cfg.netlink_prio = prio;
            cfg.netlink_handle = handle;
            maps.configure(&key, cfg).map_err(AttachError::from)
        }),
        _ => attach_tcx(&mut prog, pins, &key, iface),
    };
    if let Err(e) = result {
        maps.forget(&key);
        return Err(e);
    }
    if method != Method::Netlink {
        watch_requests(pins, &key, iface);
    }
    Ok(Attached::New(method))
}

/// Hooks the ingress program, which follows what the guest sends (its
/// DHCP requests: `dhcpfix leases`). Not needed for the fill, so a failure
/// is only logged. (Netlink attachments, for kernels before 6.6, go without.)
fn watch_requests(pins: &PinDir, key: &IfaceKey, iface: &str) {
    if links::exists(pins, key, Hook::Ingress) {
        return;
    }
    let attached = program::open_ingress(pins)
        .map_err(|e| e.to_string())
        .and_then(|mut prog| {
            let id = prog
                .attach_with_options(
                    iface,
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(|e| describe(&e))?;
            let link: FdLink = prog
                .take_link(id)
                .map_err(|e| describe(&e))?
                .try_into()
                .map_err(|e: aya::programs::links::LinkError| e.to_string())?;
            links::pin(pins, key, Hook::Ingress, link).map_err(|e| e.to_string())
        });
    if let Err(e) = attached {
        log::warn!("{iface}: not following what its guest sends (no lease view): {e}");
    }
}

/// Writes the entries of a new attachment, its counters from zero. When the
/// map is full, what deleted interfaces left behind is removed first (a
/// host that attaches through hooks alone never runs the agent's clean-up).
fn configure_new(pins: &PinDir, maps: &mut Maps, key: &IfaceKey, cfg: IfaceConfig) -> Result<(), PinsError> {
    let write = |maps: &mut Maps| {
        maps.configure(key, cfg)?;
        maps.reset_counters(key)
    };
    match write(maps) {
        Err(PinsError::Full) => {
            let removed = gc::dead(pins, maps, &netlink_probe(key.netns))?;
            log::info!(
                "the configuration map was full: removed {} attachment(s) of deleted interfaces",
                removed.len()
            );
            write(maps)
        }
        other => other,
    }
}

fn attach_tcx(
    prog: &mut aya::programs::SchedClassifier,
    pins: &PinDir,
    key: &IfaceKey,
    iface: &str,
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
    links::pin(pins, key, Hook::Egress, link)?;
    // aya resolves the name again: if the interface was re-created in
    // between, the link sits on an ifindex we did not configure, and the
    // classifier would ignore that interface. Undo and say so.
    if links::target(pins, key) != Some(key.ifindex) {
        links::remove(pins, key)?;
        return Err(AttachError::Recreated(iface.into()));
    }
    Ok(())
}

/// Returns the filter's priority and handle.
fn attach_netlink(prog: &mut aya::programs::SchedClassifier, iface: &str) -> Result<(u16, u32), AttachError> {
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
    let prio = link.priority().map_err(attach_err)?;
    let handle = link.handle().map_err(attach_err)?;
    // A netlink filter stays until removed; dropping the link would remove it.
    std::mem::forget(link);
    Ok((prio, handle.into()))
}

/// Detaches dhcpfix from `iface` in `netns`. Works for an interface that no
/// longer exists too (removes what it left, found by its recorded name).
pub fn detach(
    pins: &PinDir,
    netns: &Netns,
    iface: &str,
    lock_timeout: Duration,
) -> Result<Detached, AttachError> {
    if !valid_ifname(iface) {
        return Err(AttachError::BadName(iface.into()));
    }
    let cookie = netns.cookie();
    netns.run(|| detach_here(pins, cookie, iface, lock_timeout))?
}

fn detach_here(
    pins: &PinDir,
    cookie: u64,
    iface: &str,
    lock_timeout: Duration,
) -> Result<Detached, AttachError> {
    if !program::is_loaded(pins) && links::list(pins).is_empty() {
        return Ok(Detached::NotAttached);
    }
    let _lock = pins.lock(lock_timeout)?;
    let mut maps = Maps::open(pins)?;
    let now = netdev::ifindex(iface).map(|i| IfaceKey::new(cookie, i));
    let mut removed = false;
    if let Some(key) = now {
        if maps.config(&key).is_some_and(|c| c.flags & FLAG_NETLINK != 0) {
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
        }
        let gone = gc::forget(pins, &mut maps, &key)?;
        removed |= gone.had_link;
    }
    // Earlier interfaces of that name in this namespace, deleted since.
    let earlier = forget_earlier(pins, &mut maps, &now.unwrap_or(IfaceKey::new(cookie, 0)), iface)?;
    removed |= !earlier.is_empty();
    Ok(if removed {
        Detached::Removed
    } else {
        Detached::NotAttached
    })
}

/// Removes what earlier interfaces named `iface` in the namespace of `now`
/// (the caller's), deleted since, left behind: their dead links and
/// entries. `now` (the interface of that name today, or ifindex 0) is left
/// alone.
fn forget_earlier(
    pins: &PinDir,
    maps: &mut Maps,
    now: &IfaceKey,
    iface: &str,
) -> Result<Vec<Forgotten>, PinsError> {
    gc::dead_where(
        pins,
        maps,
        &netlink_probe(now.netns),
        Some(now.netns),
        |key, cfg| {
            key.netns == now.netns && key != now && cfg.is_some_and(|c| c.name_bytes() == iface.as_bytes())
        },
    )
}

/// After a libvirt guest stopped: removes the remains of the attachments in
/// `netns` whose interface is gone and whose recorded MAC is a tap MAC of
/// one of the guest's NICs (`macs`, as in the domain XML). libvirt clears
/// generated tap names from the XML before its `stopped` hook runs, so the
/// MAC is what identifies them.
pub fn forget_stopped_guest(
    pins: &PinDir,
    netns: &Netns,
    macs: &[String],
    lock_timeout: Duration,
) -> Result<Vec<Forgotten>, AttachError> {
    if macs.is_empty() || !program::is_loaded(pins) {
        return Ok(Vec::new());
    }
    let cookie = netns.cookie();
    netns.run(|| {
        let _lock = pins.lock(lock_timeout)?;
        let mut maps = Maps::open(pins)?;
        Ok(gc::dead_where(
            pins,
            &mut maps,
            &netlink_probe(cookie),
            Some(cookie),
            |key, cfg| {
                key.netns == cookie
                    && cfg.is_some_and(|c| macs.iter().any(|m| libvirt::tap_mac_matches(&c.mac, m)))
            },
        )?)
    })?
}

/// The network namespace with cookie `netns` is being dismantled (the
/// kernel reported it deleted, which it does before it unregisters the
/// namespace's devices): detaches and removes everything its interfaces
/// have, live links included.
pub fn forget_namespace(
    pins: &PinDir,
    netns: u64,
    lock_timeout: Duration,
) -> Result<Vec<Forgotten>, AttachError> {
    if !program::is_loaded(pins) {
        return Ok(Vec::new());
    }
    let _lock = pins.lock(lock_timeout)?;
    let mut maps = Maps::open(pins)?;
    let mut keys: Vec<IfaceKey> = links::list_in(pins, netns)
        .into_iter()
        .chain(maps.configs().into_iter().map(|(k, _)| k))
        .chain(maps.counter_keys())
        .filter(|k| k.netns == netns)
        .collect();
    keys.sort();
    keys.dedup();
    let mut gone = Vec::new();
    for key in keys {
        gone.push(gc::forget_dismantled(pins, &mut maps, &key)?);
    }
    Ok(gone)
}

/// Whether anything of the network namespace with cookie `netns` is left
/// in the pin directory: a link pin or a configuration entry.
pub fn has_remains(pins: &PinDir, netns: u64) -> Result<bool, AttachError> {
    if !links::list_in(pins, netns).is_empty() {
        return Ok(true);
    }
    if !program::is_loaded(pins) {
        return Ok(false);
    }
    Ok(Maps::open(pins)?.configs().iter().any(|(k, _)| k.netns == netns))
}

/// Removes what deleted interfaces left behind, in every namespace (or only
/// in the one with cookie `only`): dead link pins and their entries; netlink
/// entries whose interface is gone (in the namespaces this process can
/// reach).
pub fn remove_dead(
    pins: &PinDir,
    namespaces: &[Netns],
    only: Option<u64>,
    lock_timeout: Duration,
) -> Result<Vec<Forgotten>, AttachError> {
    if !program::is_loaded(pins) {
        return Ok(Vec::new());
    }
    let _lock = pins.lock(lock_timeout)?;
    let mut maps = Maps::open(pins)?;
    let probe = |key: &IfaceKey, cfg: &IfaceConfig| {
        let ns = namespaces.iter().find(|n| n.cookie() == key.netns)?;
        ns.run(|| netdev::ifname(key.ifindex).is_some_and(|n| n.as_bytes() == cfg.name_bytes()))
            .ok()
    };
    Ok(gc::dead_where(pins, &mut maps, &probe, only, |_, _| true)?)
}

/// Detaches from every interface (netlink filters in the namespaces this
/// process can reach, then every pinned link) and removes every pin.
/// Returns the detached interfaces and the removed pins.
pub fn remove_everything(
    pins: &PinDir,
    namespaces: &[Netns],
    lock_timeout: Duration,
) -> Result<(Vec<Attachment>, Vec<String>), AttachError> {
    let attachments = list(pins, namespaces)?;
    let _lock = pins.lock(lock_timeout)?;
    let mut detached = Vec::new();
    for a in attachments {
        if a.method == Method::Netlink && a.attached {
            if let Some(ns) = namespaces.iter().find(|n| n.cookie() == a.netns.cookie) {
                let name = a.name.clone();
                ns.run(|| tc::qdisc_detach_program(&name, TcAttachType::Egress, PROGRAM_NAME))?
                    .or_else(|e| match e {
                        tc::TcError::IoError(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                        source => Err(AttachError::Netlink {
                            iface: a.name.clone(),
                            source,
                        }),
                    })?;
            }
        }
        if a.attached {
            detached.push(a);
        }
    }
    let removed = gc::everything(pins)?;
    Ok((detached, removed))
}

/// One attachment, as `status` and `stats` report it.
#[derive(Clone, Debug, Serialize)]
pub struct Attachment {
    /// The interface's name (as recorded, for one that is gone).
    pub name: String,
    pub ifindex: u32,
    pub netns: NetnsInfo,
    /// Whether the program is hooked to a live interface.
    pub attached: bool,
    pub mode: Option<Mode>,
    pub method: Method,
    pub ports: Vec<u16>,
}

impl Attachment {
    pub fn key(&self) -> IfaceKey {
        IfaceKey::new(self.netns.cookie, self.ifindex)
    }
}

/// Every attachment recorded in the pin directory, sorted by namespace and
/// name. `namespaces` name the namespaces (and let netlink attachments be
/// checked); attachments in others show their cookie only.
pub fn list(pins: &PinDir, namespaces: &[Netns]) -> Result<Vec<Attachment>, AttachError> {
    list_where(pins, namespaces, None)
}

/// [`list`], only the interfaces named in `names` (all when it is empty).
pub fn list_named(
    pins: &PinDir,
    namespaces: &[Netns],
    names: &[String],
) -> Result<Vec<Attachment>, AttachError> {
    let mut all = list(pins, namespaces)?;
    all.retain(|a| names.is_empty() || names.contains(&a.name));
    Ok(all)
}

/// The attachments in `netns` alone ([`list`] without looking at the
/// others').
pub fn list_in(pins: &PinDir, netns: &Netns) -> Result<Vec<Attachment>, AttachError> {
    list_where(pins, std::slice::from_ref(netns), Some(netns.cookie()))
}

fn list_where(
    pins: &PinDir,
    namespaces: &[Netns],
    only: Option<u64>,
) -> Result<Vec<Attachment>, AttachError> {
    if !program::is_loaded(pins) {
        return Ok(Vec::new());
    }
    let maps = Maps::open(pins)?;
    let mut keys = match only {
        Some(cookie) => links::list_in(pins, cookie),
        None => links::list(pins),
    };
    keys.extend(
        maps.configs()
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| only.is_none_or(|c| k.netns == c)),
    );
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    for key in keys {
        let cfg = maps.config(&key);
        let link = links::state(pins, &key)?;
        let netlink = link.is_none() && cfg.is_some_and(|c| c.flags & FLAG_NETLINK != 0);
        if link.is_none() && !netlink {
            // A configuration entry being written, or left by a crash.
            continue;
        }
        let name = cfg
            .map(|c| String::from_utf8_lossy(c.name_bytes()).into_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("if{}", key.ifindex));
        let ns = namespaces.iter().find(|n| n.cookie() == key.netns);
        let attached = match link {
            Some(state) => state == LinkState::Live,
            None => ns
                .and_then(|ns| ns.run(|| netdev::ifname(key.ifindex) == Some(name.clone())).ok())
                .unwrap_or(true),
        };
        out.push(Attachment {
            ifindex: key.ifindex,
            netns: NetnsInfo {
                name: ns.and_then(|n| n.name().map(str::to_owned)),
                cookie: key.netns,
            },
            attached,
            mode: cfg.and_then(|c| Mode::from_raw(c.mode)),
            method: if netlink { Method::Netlink } else { Method::Tcx },
            ports: cfg
                .map(|c| c.ports.iter().copied().filter(|p| *p != 0).collect())
                .unwrap_or_default(),
            name,
        });
    }
    out.sort_by(|a, b| (&a.netns, &a.name).cmp(&(&b.netns, &b.name)));
    Ok(out)
}

/// Whether `name` is a valid interface name for the kernel.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IF_NAMESIZE
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

/// An attached interface was renamed: its record follows. The link is filed
/// by ifindex and stays as it is, and so do the counters. False if `key`
/// has no live attachment.
pub fn rename(
    pins: &PinDir,
    key: &IfaceKey,
    new_name: &str,
    lock_timeout: Duration,
) -> Result<bool, AttachError> {
    let _lock = pins.lock(lock_timeout)?;
    let mut maps = Maps::open(pins)?;
    let Some(mut cfg) = maps.config(key) else {
        return Ok(false);
    };
    if cfg.flags & FLAG_NETLINK == 0 && links::state(pins, key)? != Some(LinkState::Live) {
        return Ok(false);
    }
    cfg.set_name(new_name);
    maps.configure(key, cfg)?;
    Ok(true)
}

/// The interface of `key` was deleted: removes its dead link pin and its
/// entries (touching nothing else, so that deleting many interfaces at once
/// costs each only its own). `None` if it had nothing.
pub fn forget_deleted(
    pins: &PinDir,
    key: &IfaceKey,
    lock_timeout: Duration,
) -> Result<Option<Forgotten>, AttachError> {
    if !program::is_loaded(pins) {
        return Ok(None);
    }
    let _lock = pins.lock(lock_timeout)?;
    let mut maps = Maps::open(pins)?;
    match links::state(pins, key)? {
        // Re-created with the same ifindex meanwhile, and attached again.
        Some(LinkState::Live) => return Ok(None),
        None if maps.config(key).is_none() => return Ok(None),
        _ => {}
    }
    Ok(Some(gc::forget(pins, &mut maps, key)?))
}
