//! Reading the host for the doctor, without judging it: the kernel (BTF,
//! version, this process's capabilities, the pin directory), dhcpfix's
//! attachments, a tap's active features, the sockets on UDP port 67 and
//! the processes holding them, and what `iptables-save` and `tc` print.
//!
//! Everything is read in the caller's network namespace, through netlink,
//! ioctls and `/proc/thread-self/net` (never `/sys/class/net` or
//! `/proc/self/net`, which may show another namespace: `doctor --netns`
//! runs on a thread of its own in the namespace it examines). The tools are optional: [`find_tool`] says whether
//! one is installed.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use aya::util::KernelVersion;
use dhcpfix_common::layout::KernelLayout;

use super::Options;
use crate::{
    attach::{self, AttachError, Attachment},
    kernel_layout::{self, LayoutError},
    leases::{self, Guest},
    netdev::{
        self,
        caps::{Capabilities, CapsError},
    },
    netns::Netns,
    pins::{maps::Maps, PinDir},
    program,
};

/// What the kernel and this process offer dhcpfix.
pub struct KernelFacts {
    /// The BTF file read (the running kernel's, or `--btf`).
    pub btf: String,
    pub layout: Result<KernelLayout, LayoutError>,
    /// The running kernel's version (`uname -r`), or why it is unknown.
    pub version: Result<KernelVersion, String>,
    /// This process's effective capabilities.
    pub caps: Result<Capabilities, CapsError>,
    pub pin_dir: PinDirFacts,
}

/// The pin directory.
pub struct PinDirFacts {
    pub path: PathBuf,
    /// Something is there (a mount needs an existing directory).
    pub exists: bool,
    /// It exists, on a bpffs.
    pub on_bpffs: bool,
    /// The program is pinned there.
    pub loaded: bool,
    /// Why it may not be used (someone else's, world-writable, a symlink on
    /// the way, private to this mount namespace).
    pub refused: Option<String>,
}

/// Reads the kernel's BTF and version, this process's capabilities and the
/// pin directory.
pub fn kernel(opts: &Options) -> KernelFacts {
    let btf = opts.btf.as_ref().map_or_else(
        || kernel_layout::VMLINUX_BTF.to_owned(),
        |p| p.display().to_string(),
    );
    let pin_dir = &opts.pin_dir;
    let opened = PinDir::open(pin_dir);
    let on_bpffs = matches!(opened, Ok(Some(_)));
    let loaded = opened
        .as_ref()
        .is_ok_and(|p| p.as_ref().is_some_and(program::is_loaded));
    KernelFacts {
        btf,
        layout: kernel_layout::resolve_from(opts.btf.as_deref()),
        version: KernelVersion::current().map_err(|e| e.to_string()),
        caps: Capabilities::current(),
        pin_dir: PinDirFacts {
            path: pin_dir.clone(),
            exists: std::fs::symlink_metadata(pin_dir).is_ok(),
            on_bpffs,
            loaded,
            refused: opened.err().map(|e| e.to_string()),
        },
    }
}

/// dhcpfix's attachments in this network namespace, as the pin directory
/// records them, and the guests the classifier saw on them.
pub fn attachments(pin_dir: &Path) -> Result<(Vec<Attachment>, Vec<Guest>), AttachError> {
    let Some(pins) = PinDir::open(pin_dir)? else {
        return Ok(Default::default());
    };
    let here = Netns::current()?;
    let cookie = here.cookie();
    let attachments: Vec<Attachment> = attach::list(&pins, &[here])?
        .into_iter()
        .filter(|a| a.netns.cookie == cookie)
        .collect();
    let guests = if attachments.iter().any(|a| a.attached) {
        leases::of(&Maps::open(&pins)?, &attachments, leases::boottime_ns())
    } else {
        Vec::new()
    };
    Ok((attachments, guests))
}

/// Whether `iface` offloads tx checksums (any feature bit of `mask`);
/// `None` when its features cannot be read.
pub fn tx_checksum_offload(iface: &str, mask: u64) -> Option<bool> {
    netdev::features(iface).map(|f| f & mask != 0).ok()
}

/// A UDP socket on port 67.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSocket {
    pub address: Ipv4Addr,
    pub inode: u64,
    /// The device it is bound to (`SO_BINDTODEVICE`, as dnsmasq binds it).
    pub bound_ifindex: Option<u32>,
    /// `name[pid]` of the processes holding it (best effort).
    pub processes: Vec<String>,
}

/// The UDP sockets on port 67 (`/proc/thread-self/net/udp`), with the device each
/// is bound to (sock_diag, best effort: a kernel without udp_diag says
/// nothing) and the processes holding each. `Err` is one line for the
/// report.
pub fn dhcp_sockets() -> Result<Vec<ServerSocket>, String> {
    let text = fs::read_to_string("/proc/thread-self/net/udp")
        .map_err(|e| format!("reading /proc/thread-self/net/udp: {e}"))?;
    let sockets = parse_proc_net_udp(&text, 67);
    if sockets.is_empty() {
        return Ok(Vec::new());
    }
    let bound: BTreeMap<u64, u32> = netdev::sock_diag::udp4_sockets()
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.port == 67)
        .filter_map(|s| Some((s.inode, s.bound_ifindex?)))
        .collect();
    let inodes: BTreeSet<u64> = sockets.iter().map(|s| s.1).collect();
    let mut owners = socket_owners(&inodes);
    Ok(sockets
        .into_iter()
        .map(|(address, inode)| ServerSocket {
            address,
            inode,
            bound_ifindex: bound.get(&inode).copied(),
            processes: owners.remove(&inode).unwrap_or_default(),
        })
        .collect())
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

/// Locates an optional tool in `$PATH` or the sbin directories.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `iptables-save`: every table that exists (without `-t`, no module is
/// loaded just to look). `Err` is one line for the report.
pub fn iptables_save(program: &Path) -> Result<String, String> {
    run_tool(program, &[])
}

/// `tc filter show dev DEV egress` (or the root, without `egress`); `None`
/// when tc fails, as it does on a device without clsact or filters.
pub fn tc_filter_show(program: &Path, dev: &str, egress: bool) -> Option<String> {
    let mut args = vec!["filter", "show", "dev", dev];
    if egress {
        args.push("egress");
    }
    run_tool(program, &args).ok()
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
        assert!(parse_proc_net_udp("header\n1: zz:0043\n2:\n", 67).is_empty());
    }
}
