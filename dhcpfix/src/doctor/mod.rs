//! `dhcpfix doctor`: reads the host and says which guests are at risk.
//!
//! Everything is read in the caller's network namespace, through netlink,
//! ioctls and `/proc/self/net` (never `/sys/class/net`, which may show
//! another namespace). External tools (`iptables-save`, `tc`) are optional:
//! when absent, their part of the report says so.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde::Serialize;

use crate::{
    attach::{self, Attachment, Method, Mode},
    bpffs::{self, PinDir},
    kernel_layout,
    netdev::{
        self,
        caps::{Capabilities, Operation},
        Link, NetlinkError,
    },
};

/// How much an item needs the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Action,
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Action => "ACTION",
        })
    }
}

/// One finding about the host.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub item: String,
    pub level: Level,
    pub detail: String,
}

impl Check {
    fn new(item: impl Into<String>, level: Level, detail: impl Into<String>) -> Self {
        Self {
            item: item.into(),
            level,
            detail: detail.into(),
        }
    }
}

/// What protects (or fails to protect) one guest tap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// dhcpfix attached in fill mode.
    Covered,
    /// dhcpfix attached in audit mode: counted, not fixed.
    Audit,
    /// No tx checksum offload: the kernel completes checksums itself.
    NoOffload,
    /// An iptables `CHECKSUM --checksum-fill` rule covers its bridge.
    CoveredByIptables,
    /// A tc `csum` action on the tap or its bridge.
    CoveredByTc,
    /// Offload on, no fix, and a host DHCP server serves its bridge.
    AtRisk,
    /// Offload on, no fix, but no host DHCP server serves its bridge: only a
    /// DHCP server in another guest can send it partial checksums.
    Exposed,
    /// macvtap/ipvtap: dhcpfix cannot serve it (docs/macvtap.md).
    Unsupported,
    /// Its offload state could not be read.
    Unknown,
}

impl Verdict {
    pub fn level(self) -> Level {
        match self {
            Self::Covered | Self::NoOffload | Self::CoveredByIptables | Self::CoveredByTc => Level::Ok,
            Self::Audit | Self::Exposed | Self::Unsupported | Self::Unknown => Level::Warn,
            Self::AtRisk => Level::Action,
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Covered => "covered",
            Self::Audit => "audit",
            Self::NoOffload => "no-offload",
            Self::CoveredByIptables => "covered-by-iptables",
            Self::CoveredByTc => "covered-by-tc",
            Self::AtRisk => "at-risk",
            Self::Exposed => "exposed",
            Self::Unsupported => "unsupported",
            Self::Unknown => "unknown",
        })
    }
}

/// dhcpfix's attachment to a tap.
#[derive(Clone, Debug, Serialize)]
pub struct DhcpfixState {
    pub mode: Option<Mode>,
    pub method: Method,
    pub ports: Vec<u16>,
}

/// One guest tap (tun/tap in tap mode, or macvtap/ipvtap).
#[derive(Clone, Debug, Serialize)]
pub struct TapReport {
    pub name: String,
    pub ifindex: u32,
    pub kind: String,
    /// `None` when the features could not be read.
    pub tx_checksum_offload: Option<bool>,
    /// The bridge it is a port of.
    pub bridge: Option<String>,
    /// Host DHCP servers (process names) serving that bridge.
    pub dhcp_servers: Vec<String>,
    pub dhcpfix: Option<DhcpfixState>,
    /// Other fixes that cover it.
    pub other_fixes: Vec<String>,
    pub verdict: Verdict,
    pub level: Level,
    pub detail: String,
}

/// A UDP socket on port 67 of this namespace.
#[derive(Clone, Debug, Serialize)]
pub struct DhcpServer {
    pub address: Ipv4Addr,
    /// The device the socket is bound to (`SO_BINDTODEVICE`), if any.
    pub bound_device: Option<String>,
    /// `name[pid]` of the processes holding it (best effort).
    pub processes: Vec<String>,
    /// Interfaces it serves.
    pub serves: Vec<String>,
    pub inode: u64,
}

/// Another checksum fix found on the host.
#[derive(Clone, Debug, Serialize)]
pub struct OtherFix {
    /// "iptables-checksum" or "tc-csum".
    pub kind: &'static str,
    /// Where it applies: an out-interface pattern, a device, or "any".
    pub applies_to: String,
    pub rule: String,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The worst level of all items.
    pub verdict: Level,
    pub kernel: Vec<Check>,
    pub interfaces: Vec<TapReport>,
    pub dhcp_servers: Vec<DhcpServer>,
    pub other_fixes: Vec<OtherFix>,
    /// Findings about the other fixes, stale attachments and the like.
    pub notes: Vec<Check>,
    /// Commands that fix what needs action.
    pub actions: Vec<String>,
}

/// Errors that stop the doctor from reporting at all.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error(transparent)]
    Links(#[from] NetlinkError),
}

/// What to examine.
#[derive(Clone, Debug)]
pub struct Options {
    pub pin_dir: PathBuf,
    /// BTF file instead of the running kernel's.
    pub btf: Option<PathBuf>,
}

/// Examines the host.
pub fn examine(opts: &Options) -> Result<Report, DoctorError> {
    let links = netdev::links_with_addresses()?;
    let by_index: BTreeMap<u32, &Link> = links.iter().map(|l| (l.ifindex, l)).collect();
    let mut notes = Vec::new();

    let (mut kernel, csum_mask) = kernel_checks(opts);
    kernel.push(pin_dir_check(&opts.pin_dir));

    let pins = PinDir::new(&opts.pin_dir);
    let attachments = match attach::list(&pins) {
        Ok(a) => a,
        Err(e) => {
            notes.push(Check::new(
                "dhcpfix attachments",
                Level::Warn,
                format!("cannot read {}: {e}", opts.pin_dir.display()),
            ));
            Vec::new()
        }
    };
    for a in attachments.iter().filter(|a| !a.attached) {
        notes.push(Check::new(
            format!("attachment {}", a.name),
            Level::Warn,
            format!(
                "pinned but its interface is gone; remove it with: dhcpfix detach {}",
                a.name
            ),
        ));
    }

    let dhcp_servers = dhcp_servers(&links, &mut notes);
    let mut other_fixes = iptables_fixes(&mut notes);

    let taps: Vec<&Link> = links
        .iter()
        .filter(|l| l.is_tap() || l.is_rx_handler_tap())
        .collect();
    // tc is asked only about the taps and bridges that matter.
    let mut tc_devices: BTreeSet<String> = BTreeSet::new();
    for tap in &taps {
        tc_devices.insert(tap.name.clone());
        if let Some(br) = tap.master.and_then(|m| by_index.get(&m)) {
            tc_devices.insert(br.name.clone());
        }
    }
    other_fixes.extend(tc_fixes(&tc_devices, &mut notes));

    let mut interfaces = Vec::new();
    for tap in taps {
        let bridge = tap
            .master
            .and_then(|m| by_index.get(&m))
            .filter(|l| l.is_bridge())
            .map(|l| l.name.clone());
        let served_by: Vec<String> = dhcp_servers
            .iter()
            .filter(|s| {
                s.serves
                    .iter()
                    .any(|i| Some(i) == bridge.as_ref() || *i == tap.name)
            })
            .map(|s| {
                if s.processes.is_empty() {
                    format!("UDP {}:67", s.address)
                } else {
                    s.processes.join(",")
                }
            })
            .collect();
        let attachment = attachments
            .iter()
            .find(|a| a.name == tap.name && a.attached && a.ifindex == tap.ifindex);
        let fixes: Vec<&OtherFix> = other_fixes
            .iter()
            .filter(|f| fix_applies(f, &tap.name, bridge.as_deref()))
            .collect();
        let offload = if tap.is_rx_handler_tap() {
            None
        } else {
            netdev::features(&tap.name).map(|f| f & csum_mask != 0).ok()
        };
        let (verdict, detail) = judge(tap, offload, attachment, &fixes, bridge.as_deref(), &served_by);
        if verdict == Verdict::Covered && !fixes.is_empty() {
            notes.push(Check::new(
                format!("overlap on {}", tap.name),
                Level::Ok,
                format!(
                    "dhcpfix and {} both cover it: harmless (the other fix completes the checksum \
                     first, dhcpfix then counts it as valid); one of them is enough",
                    fixes.iter().map(|f| f.kind).collect::<Vec<_>>().join(" and ")
                ),
            ));
        }
        interfaces.push(TapReport {
            name: tap.name.clone(),
            ifindex: tap.ifindex,
            kind: tap.kind.clone().unwrap_or_default(),
            tx_checksum_offload: offload,
            bridge,
            dhcp_servers: served_by,
            dhcpfix: attachment.map(|a| DhcpfixState {
                mode: a.mode,
                method: a.method,
                ports: a.ports.clone(),
            }),
            other_fixes: fixes.iter().map(|f| f.rule.clone()).collect(),
            level: verdict.level(),
            verdict,
            detail,
        });
    }
    if interfaces.is_empty() {
        notes.push(Check::new(
            "guest taps",
            Level::Ok,
            "no tun/tap or macvtap devices in this network namespace",
        ));
    }
    if dhcp_servers.is_empty() {
        notes.push(Check::new(
            "DHCP servers",
            Level::Ok,
            "nothing on this host listens on UDP port 67 (in this network namespace)",
        ));
    }

    let at_risk: Vec<&str> = interfaces
        .iter()
        .filter(|t| t.verdict == Verdict::AtRisk)
        .map(|t| t.name.as_str())
        .collect();
    let mut actions = Vec::new();
    if !at_risk.is_empty() {
        actions.push(format!("dhcpfix attach {}", at_risk.join(" ")));
    }
    let verdict = kernel
        .iter()
        .chain(&notes)
        .map(|c| c.level)
        .chain(interfaces.iter().map(|t| t.level))
        .max()
        .unwrap_or(Level::Ok);
    Ok(Report {
        verdict,
        kernel,
        interfaces,
        dhcp_servers,
        other_fixes,
        notes,
        actions,
    })
}

/// The verdict for one tap, and a sentence that explains it.
fn judge(
    tap: &Link,
    offload: Option<bool>,
    attachment: Option<&Attachment>,
    fixes: &[&OtherFix],
    bridge: Option<&str>,
    served_by: &[String],
) -> (Verdict, String) {
    if tap.is_rx_handler_tap() {
        return (
            Verdict::Unsupported,
            format!(
                "{} device: frames towards the guest bypass the egress hook, dhcpfix cannot \
                 serve it (docs/macvtap.md)",
                tap.kind.as_deref().unwrap_or("macvtap")
            ),
        );
    }
    if let Some(a) = attachment {
        match a.mode {
            Some(Mode::Fill) if a.ports.contains(&68) => {
                return (Verdict::Covered, format!("dhcpfix attached ({}, fill)", a.method))
            }
            Some(Mode::Audit) => {
                return (
                    Verdict::Audit,
                    "dhcpfix attached in audit mode: counts, fixes nothing".into(),
                )
            }
            _ => {}
        }
    }
    let Some(offload) = offload else {
        return (
            Verdict::Unknown,
            "its checksum offload could not be read (ETHTOOL_GFEATURES failed)".into(),
        );
    };
    if !offload {
        return (
            Verdict::NoOffload,
            "tx checksum offload off: the kernel completes checksums before the guest".into(),
        );
    }
    if let Some(f) = fixes.iter().find(|f| f.kind == "iptables-checksum") {
        return (
            Verdict::CoveredByIptables,
            format!("iptables CHECKSUM rule for {}", f.applies_to),
        );
    }
    if let Some(f) = fixes.iter().find(|f| f.kind == "tc-csum") {
        return (
            Verdict::CoveredByTc,
            format!("tc csum action on {}", f.applies_to),
        );
    }
    let port_of = bridge.map_or_else(|| "not a bridge port".to_owned(), |b| format!("port of {b}"));
    if served_by.is_empty() {
        (
            Verdict::Exposed,
            format!(
                "tx checksum offload on, no fix, {port_of}; no host DHCP server serves it, so only \
                 a DHCP server in another guest can send it partial checksums"
            ),
        )
    } else {
        (
            Verdict::AtRisk,
            format!(
                "tx checksum offload on and no fix; {port_of}, served by {}",
                served_by.join(", ")
            ),
        )
    }
}

/// BTF, hook and privileges; also the checksum feature mask to test taps
/// with (the classifier's own, from BTF, when it resolves).
fn kernel_checks(opts: &Options) -> (Vec<Check>, u64) {
    let mut checks = Vec::new();
    let btf_name = opts.btf.as_ref().map_or_else(
        || kernel_layout::VMLINUX_BTF.to_owned(),
        |p| p.display().to_string(),
    );
    let mask = match kernel_layout::resolve_from(opts.btf.as_deref()) {
        Ok(l) => {
            checks.push(Check::new(
                "kernel BTF",
                Level::Ok,
                format!(
                    "{btf_name}: sk_buff.dev at byte {}, sk_buff.ip_summed at byte {} bit {}, \
                     net_device.features at byte {}",
                    l.skb_dev, l.skb_ip_summed, l.ip_summed_shift, l.dev_features
                ),
            ));
            l.csum_features
        }
        Err(e) => {
            checks.push(Check::new("kernel BTF", Level::Action, e.to_string()));
            kernel_layout::FALLBACK_CSUM_FEATURES
        }
    };
    let hook = match aya::util::KernelVersion::current() {
        Ok(v) if v >= aya::util::KernelVersion::new(6, 6, 0) => {
            Check::new("TC hook", Level::Ok, format!("tcx links (Linux {v})"))
        }
        Ok(v) => Check::new(
            "TC hook",
            Level::Ok,
            format!("netlink clsact filters (Linux {v} has no tcx; needs sch_ingress)"),
        ),
        Err(e) => Check::new(
            "TC hook",
            Level::Warn,
            format!("kernel version unknown ({e}); attach tries tcx, then use --method netlink"),
        ),
    };
    checks.push(hook);
    checks.push(match Capabilities::current() {
        Ok(caps) => match caps.check(&[Operation::Load, Operation::attach(false)]) {
            Ok(()) => Check::new("privileges", Level::Ok, "enough to load and attach dhcpfix"),
            Err(missing) => Check::new("privileges", Level::Warn, missing.to_string()),
        },
        Err(e) => Check::new("privileges", Level::Warn, e.to_string()),
    });
    (checks, mask)
}

fn pin_dir_check(pin_dir: &Path) -> Check {
    let item = "pin directory";
    let shown = pin_dir.display();
    if pin_dir.exists() && bpffs::is_bpffs(pin_dir).unwrap_or(false) {
        let loaded = PinDir::new(pin_dir).program().exists();
        return Check::new(
            item,
            Level::Ok,
            format!(
                "{shown} is on a bpffs{}",
                if loaded { "; dhcpfix is loaded" } else { "" }
            ),
        );
    }
    let can_mount = Capabilities::current().is_ok_and(|c| c.missing(&[Operation::MountBpffs]).is_empty());
    if can_mount {
        Check::new(
            item,
            Level::Ok,
            format!("{shown} has no bpffs yet; attach creates and mounts it"),
        )
    } else {
        Check::new(
            item,
            Level::Action,
            format!(
                "{shown} has no bpffs and this user cannot mount one: run as root, or mount one \
                 there (mount -t bpf bpf {shown})"
            ),
        )
    }
}

/// Locates an optional tool in `$PATH` or the sbin directories.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs a read-only tool; `Err` is one line for the report.
fn run_tool(program: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", program.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{} {}: {}",
            program.display(),
            args.join(" "),
            stderr.lines().next().unwrap_or("failed")
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// iptables `CHECKSUM --checksum-fill` rules in the mangle table.
fn iptables_fixes(notes: &mut Vec<Check>) -> Vec<OtherFix> {
    let Some(save) = find_program("iptables-save") else {
        notes.push(Check::new(
            "iptables",
            Level::Ok,
            "iptables-save not installed: no CHECKSUM rules to look at",
        ));
        return Vec::new();
    };
    // Without -t, iptables-save lists only tables that exist (no module
    // is loaded just to look).
    match run_tool(&save, &[]) {
        Ok(text) => parse_iptables_checksum(&text),
        Err(e) => {
            notes.push(Check::new("iptables", Level::Warn, e));
            Vec::new()
        }
    }
}

/// The CHECKSUM --checksum-fill rules of an `iptables-save` dump that can
/// reach DHCP replies (UDP to port 68, or no port restriction).
pub fn parse_iptables_checksum(dump: &str) -> Vec<OtherFix> {
    let mut table = "";
    let mut out = Vec::new();
    for line in dump.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim();
            continue;
        }
        if table != "mangle" || !line.starts_with("-A ") {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let has = |w: &str| words.contains(&w);
        if !(has("CHECKSUM") && has("--checksum-fill")) {
            continue;
        }
        let value_of = |flag: &str| {
            words
                .iter()
                .position(|w| *w == flag)
                .and_then(|i| words.get(i + 1).map(|v| (*v, i > 0 && words[i - 1] == "!")))
        };
        let proto_ok = match value_of("-p") {
            Some((p, negated)) => (p == "udp" || p == "17") != negated,
            None => true,
        };
        let port_ok = match value_of("--dport") {
            Some((p, negated)) => port_matches(p, 68) != negated,
            None => true,
        };
        if !(proto_ok && port_ok) {
            continue;
        }
        let applies_to = match value_of("-o") {
            Some((iface, true)) => format!("!{iface}"),
            Some((iface, false)) => iface.to_owned(),
            None => "any".to_owned(),
        };
        out.push(OtherFix {
            kind: "iptables-checksum",
            applies_to,
            rule: line.to_owned(),
        });
    }
    out
}

fn port_matches(spec: &str, port: u16) -> bool {
    match spec.split_once(':') {
        Some((lo, hi)) => {
            let lo = lo.parse().unwrap_or(0);
            let hi = hi.parse().unwrap_or(u16::MAX);
            (lo..=hi).contains(&port)
        }
        None => spec.parse() == Ok(port),
    }
}

/// Whether an iptables interface pattern (`virbr0`, `virbr+`) matches.
fn iface_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('+') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Whether `fix` covers DHCP replies towards `tap`. An iptables rule sees
/// host-originated packets leaving through the bridge (`-o <bridge>`); a tc
/// csum action works on the device it is attached to.
pub fn fix_applies(fix: &OtherFix, tap: &str, bridge: Option<&str>) -> bool {
    let names = [Some(tap), bridge];
    let matches = |p: &str| names.iter().flatten().any(|n| iface_matches(p, n));
    match fix.applies_to.as_str() {
        "any" => true,
        negated if negated.starts_with('!') => !matches(&negated[1..]),
        pattern => matches(pattern),
    }
}

/// tc `csum` actions on the egress (or root) of the given devices.
fn tc_fixes(devices: &BTreeSet<String>, notes: &mut Vec<Check>) -> Vec<OtherFix> {
    if devices.is_empty() {
        return Vec::new();
    }
    let Some(tc) = find_program("tc") else {
        notes.push(Check::new(
            "tc",
            Level::Ok,
            "tc not installed: no csum actions to look at",
        ));
        return Vec::new();
    };
    let mut out = Vec::new();
    for dev in devices {
        for parent in [&["egress"][..], &[][..]] {
            let mut args = vec!["filter", "show", "dev", dev.as_str()];
            args.extend_from_slice(parent);
            // A device without clsact or filters answers with an error or
            // nothing: no csum action there.
            let Ok(text) = run_tool(&tc, &args) else { continue };
            if let Some(line) = text.lines().find(|l| l.contains(": csum (")) {
                out.push(OtherFix {
                    kind: "tc-csum",
                    applies_to: dev.clone(),
                    rule: format!("tc filter on {dev}: {}", line.trim()),
                });
                break;
            }
        }
    }
    out
}

/// UDP sockets on port 67, with the interfaces they serve.
fn dhcp_servers(links: &[Link], notes: &mut Vec<Check>) -> Vec<DhcpServer> {
    let sockets = match fs::read_to_string("/proc/self/net/udp") {
        Ok(text) => parse_proc_net_udp(&text, 67),
        Err(e) => {
            notes.push(Check::new(
                "DHCP servers",
                Level::Warn,
                format!("reading /proc/self/net/udp: {e}"),
            ));
            return Vec::new();
        }
    };
    if sockets.is_empty() {
        return Vec::new();
    }
    // The device a socket is bound to (as dnsmasq binds it), by inode; best
    // effort (a kernel without udp_diag has none to say).
    let bound: BTreeMap<u64, u32> = netdev::sock_diag::udp4_sockets()
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.port == 67)
        .filter_map(|s| Some((s.inode, s.bound_ifindex?)))
        .collect();
    let inodes: BTreeSet<u64> = sockets.iter().map(|s| s.1).collect();
    let owners = socket_owners(&inodes);
    let name_of = |index: u32| links.iter().find(|l| l.ifindex == index).map(|l| l.name.clone());
    sockets
        .into_iter()
        .map(|(address, inode)| {
            let bound_device = bound.get(&inode).and_then(|i| name_of(*i));
            let serves = if let Some(dev) = &bound_device {
                vec![dev.clone()]
            } else if !address.is_unspecified() {
                links
                    .iter()
                    .filter(|l| l.ipv4.contains(&address))
                    .map(|l| l.name.clone())
                    .collect()
            } else {
                // Bound to every address: assume it serves every bridge
                // with an IPv4 address (dnsmasq, dhcpd without interfaces).
                links
                    .iter()
                    .filter(|l| l.is_bridge() && !l.ipv4.is_empty())
                    .map(|l| l.name.clone())
                    .collect()
            };
            DhcpServer {
                address,
                bound_device,
                processes: owners.get(&inode).cloned().unwrap_or_default(),
                serves,
                inode,
            }
        })
        .collect()
}

/// `(local address, inode)` of the sockets bound to `port` in a
/// `/proc/net/udp` table.
pub fn parse_proc_net_udp(text: &str, port: u16) -> Vec<(Ipv4Addr, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (addr, p) = fields.get(1)?.split_once(':')?;
            if u16::from_str_radix(p, 16).ok()? != port {
                return None;
            }
            // The kernel prints the address as the native-endian u32 of
            // its network-order bytes.
            let raw = u32::from_str_radix(addr, 16).ok()?;
            let inode = fields.get(9)?.parse().ok()?;
            Some((Ipv4Addr::from(raw.to_ne_bytes()), inode))
        })
        .collect()
}

/// `name[pid]` of the processes holding each socket inode (scans
/// `/proc/*/fd`; processes that vanish or are not readable are skipped).
fn socket_owners(inodes: &BTreeSet<u64>) -> BTreeMap<u64, Vec<String>> {
    let mut owners: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return owners;
    };
    for proc in procs.flatten() {
        let pid = proc.file_name();
        let Some(pid) = pid.to_str().filter(|p| p.bytes().all(|b| b.is_ascii_digit())) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(proc.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            if inodes.contains(&inode) {
                let comm = fs::read_to_string(proc.path().join("comm")).unwrap_or_default();
                let who = format!("{}[{pid}]", comm.trim());
                let list = owners.entry(inode).or_default();
                if !list.contains(&who) {
                    list.push(who);
                }
            }
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_udp() {
        let text = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
            11384: 00000000:0043 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 51835 2 000000001a675bf2 0\n\
            11385: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 51836 2 000000001a675bf2 0\n";
        let got = parse_proc_net_udp(text, 67);
        assert_eq!(got, vec![(Ipv4Addr::UNSPECIFIED, 51835)]);
        let dns = parse_proc_net_udp(text, 53);
        if cfg!(target_endian = "little") {
            assert_eq!(dns, vec![(Ipv4Addr::LOCALHOST, 51836)]);
        }
    }

    #[test]
    fn verdicts() {
        let tap = Link {
            ifindex: 5,
            name: "vnet5".into(),
            kind: Some("tun".into()),
            ethernet: true,
            ..Default::default()
        };
        let server = ["dnsmasq[1]".to_owned()];
        let verdict = |link: &Link, offload, fixes: &[&OtherFix], served: &[String]| {
            judge(link, offload, None, fixes, Some("br0"), served).0
        };
        assert_eq!(verdict(&tap, Some(true), &[], &server), Verdict::AtRisk);
        assert_eq!(verdict(&tap, Some(true), &[], &[]), Verdict::Exposed);
        assert_eq!(verdict(&tap, Some(false), &[], &server), Verdict::NoOffload);
        assert_eq!(verdict(&tap, None, &[], &server), Verdict::Unknown);
        let tc = OtherFix {
            kind: "tc-csum",
            applies_to: "br0".into(),
            rule: String::new(),
        };
        assert_eq!(verdict(&tap, Some(true), &[&tc], &server), Verdict::CoveredByTc);
        let macvtap = Link {
            kind: Some("macvtap".into()),
            ..tap.clone()
        };
        assert_eq!(verdict(&macvtap, Some(true), &[], &server), Verdict::Unsupported);
        assert_eq!(Verdict::AtRisk.level(), Level::Action);
        assert_eq!(Verdict::Exposed.level(), Level::Warn);
    }

    #[test]
    fn iptables_rules() {
        let dump =
            "*filter\n-A FORWARD -j CHECKSUM --checksum-fill\nCOMMIT\n*mangle\n:POSTROUTING ACCEPT [0:0]\n\
            -A LIBVIRT_PRT -o virbr0 -p udp -m udp --dport 68 -j CHECKSUM --checksum-fill\n\
            -A POSTROUTING -p tcp -j CHECKSUM --checksum-fill\n\
            -A POSTROUTING -p udp --dport 53 -j CHECKSUM --checksum-fill\n\
            -A POSTROUTING -o br+ -p udp -m udp --dport 67:68 -j CHECKSUM --checksum-fill\n\
            -A POSTROUTING ! -o lan0 -j CHECKSUM --checksum-fill\nCOMMIT\n";
        let fixes = parse_iptables_checksum(dump);
        let targets: Vec<&str> = fixes.iter().map(|f| f.applies_to.as_str()).collect();
        assert_eq!(targets, ["virbr0", "br+", "!lan0"]);
        assert!(fix_applies(&fixes[0], "vnet0", Some("virbr0")));
        assert!(!fix_applies(&fixes[0], "vnet0", Some("br0")));
        assert!(fix_applies(&fixes[1], "vnet0", Some("br0")));
        assert!(!fix_applies(&fixes[1], "vnet0", None));
        assert!(fix_applies(&fixes[2], "vnet0", Some("br0")));
        assert!(!fix_applies(&fixes[2], "vnet0", Some("lan0")));
    }
}
