//! The pin directory, and the one place that creates, changes and removes
//! what dhcpfix leaves in the kernel: the program, its maps, their entries
//! and the links that hook it to interfaces.
//!
//! ```text
//! <pin-dir>/                    root's, mode 0700, on a bpffs the host sees
//!   abi-2/                      records of this version (dhcpfix_common::PIN_ABI)
//!     prog                      the classifier (egress: fills, counts)
//!     prog-ingress              its twin for what guests send (leases)
//!     maps/DHCPFIX_CONFIG       per-interface configuration   } key: network
//!     maps/DHCPFIX_COUNTERS     per-CPU counters              } namespace cookie
//!     maps/DHCPFIX_PORTS        watched-ports bitmap              + ifindex
//!     maps/DHCPFIX_EVENTS       fill events (ring buffer, read by `dhcpfix run`)
//!     maps/DHCPFIX_SETTINGS     run-time switches
//!     maps/DHCPFIX_GUESTS       each guest's DHCP conversation (leases)
//!     links/<netns>/<ifindex>     tcx link of an interface's egress
//!     links/<netns>/<ifindex>-in  and of its ingress
//! ```
//!
//! One pin directory serves every network namespace: links are filed by
//! the namespace's cookie, which the kernel never reuses, so a namespace
//! created after another was deleted starts with nothing of the old one's.
//! A netlink (clsact) attachment has no link pin; its configuration entry
//! (flag `FLAG_NETLINK`) records it.
//!
//! Everything that changes the directory runs with its lock held
//! ([`PinDir::lock`]).

mod dir;
pub mod gc;
pub mod links;
pub mod maps;
pub mod upgrade;

use std::{io, path::PathBuf, time::Duration};

use dhcpfix_common::{key::IfaceKey, PIN_ABI};
pub use dir::{DirLock, PinDir};

/// Default pin directory: under the host's bpffs, which systemd mounts.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/dhcpfix";
/// How long one-shot commands and the agent wait for the lock.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a hook waits for the lock: a guest's start waits for it.
pub const HOOK_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the pin directory, its pins and its maps.
#[derive(Debug, thiserror::Error)]
pub enum PinsError {
    #[error("pin directory {path} is not safe to use: {reason}")]
    Unsafe { path: PathBuf, reason: String },
    #[error("{op} {path}: permission denied; the pin directory is root's: run dhcpfix as root (it needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)")]
    Denied { op: &'static str, path: PathBuf },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mount(2) of a bpffs at {path}: {}; run as root (CAP_SYS_ADMIN) or mount one there: mount -t bpf -o mode=0700 bpf {path}", .source)]
    Mount { path: PathBuf, source: io::Error },
    #[error("pin directory {0} is not on a bpffs; mount one there (mount -t bpf -o mode=0700 bpf DIR) or pass --pin-dir")]
    NotBpffs(PathBuf),
    #[error("pin directory {0} would be private to this mount namespace (`ip netns exec` remounts /sys; a container without the host's bpffs): attachments made here would vanish with the command; run dhcpfix in the host's mount namespace with `--netns NAME` instead, or mount the host's bpffs here")]
    PrivateMountNs(PathBuf),
    #[error("pin directory {path} stayed locked by another dhcpfix for {} s; giving up (is one stuck? `fuser -v {path}` shows who holds it)", .waited.as_secs())]
    Locked { path: PathBuf, waited: Duration },
    #[error("opening pinned {path}: {reason}; run `dhcpfix attach` first, or check --pin-dir")]
    Open { path: PathBuf, reason: String },
    #[error("{op} on map {map} for {key}: {source}")]
    Map {
        op: &'static str,
        map: &'static str,
        key: String,
        #[source]
        source: io::Error,
    },
    #[error("the configuration map is full ({max} interfaces) even after removing what deleted interfaces left: detach some, or run `dhcpfix clean`", max = dhcpfix_common::MAX_INTERFACES)]
    Full,
    #[error("{op} on the link of {key}: {source}")]
    Link {
        op: &'static str,
        key: String,
        #[source]
        source: io::Error,
    },
    #[error("pinning the link of {key} at {path}: {reason}")]
    PinLink {
        key: String,
        path: PathBuf,
        reason: String,
    },
}

/// How a key reads in messages: `ifindex 7 in netns 4096`.
pub fn describe(key: &IfaceKey) -> String {
    format!("ifindex {} in netns {}", key.ifindex, key.netns)
}

/// The directory of this version's records, relative to the pin directory.
pub fn abi_dir() -> String {
    format!("abi-{PIN_ABI}")
}

/// The pinned program.
pub fn program_rel() -> String {
    format!("{}/prog", abi_dir())
}

/// The pinned ingress program.
pub fn ingress_program_rel() -> String {
    format!("{}/prog-ingress", abi_dir())
}

/// The maps directory.
pub fn maps_rel() -> String {
    format!("{}/maps", abi_dir())
}

/// One pinned map.
pub fn map_rel(name: &str) -> String {
    format!("{}/{name}", maps_rel())
}

/// The links directory.
pub fn links_rel() -> String {
    format!("{}/links", abi_dir())
}

/// The links of one network namespace.
pub fn netns_links_rel(netns: u64) -> String {
    format!("{}/{netns}", links_rel())
}

/// The link pin of one interface's egress.
pub fn link_rel(key: &IfaceKey) -> String {
    format!("{}/{}", netns_links_rel(key.netns), key.ifindex)
}

/// The link pin of one interface's ingress.
pub fn ingress_link_rel(key: &IfaceKey) -> String {
    format!("{}-in", link_rel(key))
}

/// What the pin directory holds besides this version's records: the layout
/// of dhcpfix 0.1 (ABI 1: `prog`, `maps/`, `links/`, `abi-1/` at the top)
/// or another version's `abi-N/`.
pub fn other_versions(pins: &PinDir) -> Vec<String> {
    let ours = abi_dir();
    let mut found: Vec<String> = pins
        .list(".")
        .into_iter()
        .filter(|n| n.starts_with("abi-") && *n != ours)
        .collect();
    if found.is_empty() && ["prog", "maps", "links"].iter().any(|n| pins.exists(n)) {
        found.push("abi-1".into());
    }
    found
}
