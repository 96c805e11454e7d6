//! The capabilities dhcpfix needs, as one model: the agent checks it before
//! it starts (so that a unit with one capability too few says which one,
//! instead of a verifier or errno message later), and `dhcpfix doctor`
//! reports it ("privileges", and whether attach could mount bpffs).
//!
//! # Measured
//!
//! Linux 6.18.44, `kernel.unprivileged_bpf_disabled = 2` (Debian's
//! default). `dhcpfix attach vnet0` run as root with only the listed
//! capabilities (`setpriv --bounding-set=-all,+CAPS --inh-caps=-all
//! --ambient-caps=-all`, so the effective set is exactly CAPS), in a fresh
//! network namespace with one tap, each time from nothing loaded, with a
//! bpffs mounted at the pin directory beforehand:
//!
//! | capabilities                          | cold `attach` (tcx)                                           |
//! |---------------------------------------|---------------------------------------------------------------|
//! | none                                  | fails: `BPF_MAP_CREATE` EPERM                                 |
//! | CAP_BPF                               | fails: `BPF_PROG_LOAD` EPERM                                  |
//! | CAP_NET_ADMIN                         | fails: `BPF_MAP_CREATE` EPERM                                 |
//! | CAP_PERFMON                           | fails: `BPF_MAP_CREATE` EPERM                                 |
//! | CAP_BPF, CAP_NET_ADMIN                | fails: the verifier refuses the kernel reads (EACCES)         |
//! | CAP_BPF, CAP_PERFMON                  | fails: `BPF_PROG_LOAD` EPERM (a sched_cls program)            |
//! | CAP_NET_ADMIN, CAP_PERFMON            | fails: `BPF_MAP_CREATE` EPERM                                 |
//! | CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON   | attached                                                      |
//! | CAP_SYS_ADMIN                         | attached                                                      |
//! | CAP_SYS_ADMIN, CAP_BPF                | attached                                                      |
//! | CAP_SYS_ADMIN, CAP_NET_ADMIN          | attached                                                      |
//!
//! - With the program already loaded and pinned (by root), `attach` (the
//!   tcx link and the map updates) succeeded with *no* capability, and with
//!   each single one; so did `status`, `stats` and `detach`. Only the
//!   pins' file modes (root's, 0600 in a 0700 directory) guard them.
//! - `attach --method netlink` (tc's rtnetlink requests) needs
//!   CAP_NET_ADMIN itself: CAP_SYS_ADMIN alone fails, with CAP_NET_ADMIN
//!   added it works, as does CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON.
//! - Mounting bpffs (no bpffs at the pin directory yet): CAP_SYS_ADMIN
//!   attached, CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON failed (`mount(2)`
//!   EPERM).
//!
//! So CAP_SYS_ADMIN alone *is* enough on this kernel, for everything but a
//! netlink attachment: the kernel accepts it in place of CAP_BPF and
//! CAP_PERFMON (`bpf_capable()`, `perfmon_capable()`) and of CAP_NET_ADMIN
//! for loading a sched_cls program (`bpf_token_capable()`), and a tcx link
//! asks for nothing more. tests/security.rs
//! (`capability_sets_match_the_model`) repeats the measurement and checks
//! [`Capabilities::missing`] against it.

use std::{fmt, io};

/// The table in the module docs, as data: whether a cold `attach` (tcx)
/// attached with exactly each set. The unit tests hold the model to it;
/// tests/integration/security.rs measures every row again.
pub const MEASURED_COLD_TCX: &[(&[Capability], bool)] = {
    use Capability::*;
    &[
        (&[], false),
        (&[Bpf], false),
        (&[NetAdmin], false),
        (&[Perfmon], false),
        (&[Bpf, NetAdmin], false),
        (&[Bpf, Perfmon], false),
        (&[NetAdmin, Perfmon], false),
        (&[Bpf, NetAdmin, Perfmon], true),
        (&[SysAdmin], true),
        (&[SysAdmin, Bpf], true),
        (&[SysAdmin, NetAdmin], true),
    ]
};

/// A capability dhcpfix may need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    NetBroadcast,
    NetAdmin,
    SysPtrace,
    SysAdmin,
    Perfmon,
    Bpf,
}

impl Capability {
    /// Its number (`linux/capability.h`).
    pub const fn number(self) -> u32 {
        match self {
            Self::NetBroadcast => 11,
            Self::NetAdmin => 12,
            Self::SysPtrace => 19,
            Self::SysAdmin => 21,
            Self::Perfmon => 38,
            Self::Bpf => 39,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::NetBroadcast => "CAP_NET_BROADCAST",
            Self::NetAdmin => "CAP_NET_ADMIN",
            Self::SysPtrace => "CAP_SYS_PTRACE",
            Self::SysAdmin => "CAP_SYS_ADMIN",
            Self::Perfmon => "CAP_PERFMON",
            Self::Bpf => "CAP_BPF",
        }
    }

    const fn bit(self) -> u64 {
        1 << self.number()
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What dhcpfix does that may need a capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Creating the maps and loading the classifier (`BPF_MAP_CREATE`,
    /// `BPF_PROG_LOAD` of a sched_cls program that reads kernel memory).
    Load,
    /// Attaching a loaded program through a tcx link (Linux >= 6.6).
    AttachTcx,
    /// Attaching through a netlink clsact filter (`RTM_NEWQDISC`,
    /// `RTM_NEWTFILTER`).
    AttachNetlink,
    /// `mount(2)` of a bpffs at the pin directory.
    MountBpffs,
    /// Covering other network namespaces (`dhcpfix run --netns`): entering
    /// them (`setns(2)`), hearing their link events on one socket
    /// (`NETLINK_LISTEN_ALL_NSID`), and opening the ones only a process
    /// holds (`/proc/PID/ns/net` of other users' processes).
    OtherNamespaces,
}

/// One check the kernel makes: `cap`, or CAP_SYS_ADMIN where the kernel
/// accepts it instead.
struct Requirement {
    cap: Capability,
    or_sys_admin: bool,
}

const LOAD: &[Requirement] = &[
    // BPF_MAP_CREATE, BPF_PROG_LOAD (unprivileged_bpf_disabled): bpf_capable().
    Requirement {
        cap: Capability::Bpf,
        or_sys_admin: true,
    },
    // BPF_PROG_LOAD of a sched_cls program: bpf_token_capable(CAP_NET_ADMIN).
    Requirement {
        cap: Capability::NetAdmin,
        or_sys_admin: true,
    },
    // bpf_probe_read_kernel and pointer arithmetic: perfmon_capable().
    Requirement {
        cap: Capability::Perfmon,
        or_sys_admin: true,
    },
];
const ATTACH_NETLINK: &[Requirement] = &[Requirement {
    cap: Capability::NetAdmin,
    or_sys_admin: false,
}];
const MOUNT_BPFFS: &[Requirement] = &[Requirement {
    cap: Capability::SysAdmin,
    or_sys_admin: true,
}];
// Measured (tests/integration/deploy.rs, "kernel facts"): setns(2) fails
// without CAP_SYS_ADMIN; giving a namespace an id (RTM_NEWNSID, which its
// link events are told apart by) needs CAP_NET_ADMIN, and
// NETLINK_LISTEN_ALL_NSID CAP_NET_BROADCAST, which CAP_SYS_ADMIN does not
// stand in for; /proc/PID/ns/net of another process needs CAP_SYS_PTRACE.
const OTHER_NAMESPACES: &[Requirement] = &[
    Requirement {
        cap: Capability::SysAdmin,
        or_sys_admin: true,
    },
    Requirement {
        cap: Capability::NetAdmin,
        or_sys_admin: false,
    },
    Requirement {
        cap: Capability::NetBroadcast,
        or_sys_admin: false,
    },
    Requirement {
        cap: Capability::SysPtrace,
        or_sys_admin: false,
    },
];

impl Operation {
    /// Attaching by the hook the running kernel has (tcx from Linux 6.6,
    /// as `attach --method auto` chooses), or by netlink when `netlink`.
    pub fn attach(netlink: bool) -> Self {
        let tcx =
            aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
        if netlink || !tcx {
            Self::AttachNetlink
        } else {
            Self::AttachTcx
        }
    }

    fn requirements(self) -> &'static [Requirement] {
        match self {
            Self::Load => LOAD,
            Self::AttachTcx => &[],
            Self::AttachNetlink => ATTACH_NETLINK,
            Self::MountBpffs => MOUNT_BPFFS,
            Self::OtherNamespaces => OTHER_NAMESPACES,
        }
    }

    /// What it needs, in the operator's words.
    fn needs(self) -> &'static str {
        match self {
            Self::Load => "loading dhcpfix needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, or CAP_SYS_ADMIN",
            Self::AttachTcx => "a tcx attachment needs nothing more",
            Self::AttachNetlink => "a netlink attachment needs CAP_NET_ADMIN",
            Self::MountBpffs => "mounting bpffs needs CAP_SYS_ADMIN",
            Self::OtherNamespaces => {
                "other network namespaces need CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_NET_BROADCAST and CAP_SYS_PTRACE"
            }
        }
    }
}

/// A set of capabilities (a `CapEff` mask).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities(u64);

impl Capabilities {
    pub const fn from_mask(mask: u64) -> Self {
        Self(mask)
    }

    /// The set holding exactly `caps`.
    pub fn of(caps: &[Capability]) -> Self {
        Self(caps.iter().fold(0, |m, c| m | c.bit()))
    }

    /// This process's effective set (`CapEff` in `/proc/self/status`).
    pub fn current() -> Result<Self, CapsError> {
        let status =
            std::fs::read_to_string("/proc/self/status").map_err(|error| CapsError::Status { error })?;
        effective(&status).ok_or(CapsError::NoCapEff)
    }

    pub fn has(self, cap: Capability) -> bool {
        self.0 & cap.bit() != 0
    }

    /// What this set lacks for `ops`, each capability once, in the order of
    /// the requirements (the capability to add, not CAP_SYS_ADMIN).
    pub fn missing(self, ops: &[Operation]) -> Vec<Capability> {
        let mut out = Vec::new();
        for req in ops.iter().flat_map(|op| op.requirements()) {
            let met = self.has(req.cap) || (req.or_sys_admin && self.has(Capability::SysAdmin));
            if !met && !out.contains(&req.cap) {
                out.push(req.cap);
            }
        }
        out
    }

    /// `Ok` if this set is enough for `ops`, else the one-line error that
    /// names what is missing and what needs it.
    pub fn check(self, ops: &[Operation]) -> Result<(), CapsError> {
        let missing = self.missing(ops);
        if missing.is_empty() {
            return Ok(());
        }
        let wanting = ops
            .iter()
            .copied()
            .filter(|op| !self.missing(&[*op]).is_empty())
            .collect();
        Err(CapsError::Missing {
            missing,
            ops: wanting,
        })
    }
}

/// Fails with one line naming every capability this process lacks for `ops`.
pub fn require(ops: &[Operation]) -> Result<(), CapsError> {
    Capabilities::current()?.check(ops)
}

/// The `CapEff` mask of a `/proc/<pid>/status` text.
fn effective(status: &str) -> Option<Capabilities> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok().map(Capabilities)
}

/// Errors of the capability check. One line each, cause included.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("checking capabilities: reading /proc/self/status: {error}")]
    Status { error: io::Error },
    #[error("checking capabilities: no readable CapEff line in /proc/self/status")]
    NoCapEff,
    // "missing capability A, B": the words scripts and tests look for.
    #[error(
        "missing capability {}: {} (run as root, or see contrib/systemd/dhcpfix.service)",
        join(missing),
        ops.iter().map(|op| op.needs()).collect::<Vec<_>>().join("; ")
    )]
    Missing {
        missing: Vec<Capability>,
        ops: Vec<Operation>,
    },
}

fn join(caps: &[Capability]) -> String {
    caps.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::{Capability::*, Operation::*, *};

    #[test]
    fn the_model_says_what_was_measured() {
        for (caps, attached) in MEASURED_COLD_TCX {
            let set = Capabilities::of(caps);
            assert_eq!(set.missing(&[Load, AttachTcx]).is_empty(), *attached, "{caps:?}");
        }
        // A loaded program: a tcx attachment needs nothing.
        assert!(Capabilities::default().missing(&[AttachTcx]).is_empty());
        // netlink: CAP_NET_ADMIN itself.
        assert_eq!(
            Capabilities::of(&[SysAdmin]).missing(&[AttachNetlink]),
            [NetAdmin]
        );
        assert!(Capabilities::of(&[SysAdmin, NetAdmin])
            .missing(&[Load, AttachNetlink])
            .is_empty());
        assert!(Capabilities::of(&[Bpf, NetAdmin, Perfmon])
            .missing(&[Load, AttachNetlink])
            .is_empty());
        // bpffs: CAP_SYS_ADMIN.
        assert_eq!(
            Capabilities::of(&[Bpf, NetAdmin, Perfmon]).missing(&[MountBpffs]),
            [SysAdmin]
        );
        assert!(Capabilities::of(&[SysAdmin])
            .missing(&[Load, AttachTcx, MountBpffs])
            .is_empty());
    }

    #[test]
    fn names_what_is_missing() {
        let unit = Capabilities::of(&[Bpf, NetAdmin, Perfmon]);
        assert!(unit.missing(&[Load]).is_empty());
        assert!(Capabilities::from_mask(u64::MAX >> 23)
            .missing(&[Load])
            .is_empty());
        assert_eq!(Capabilities::of(&[Bpf, NetAdmin]).missing(&[Load]), [Perfmon]);
        assert_eq!(Capabilities::default().missing(&[Load]), [Bpf, NetAdmin, Perfmon]);
        assert_eq!(
            Capabilities::default().missing(&[Load, AttachNetlink, MountBpffs]),
            [Bpf, NetAdmin, Perfmon, SysAdmin]
        );
        // Other namespaces: CAP_SYS_ADMIN does not stand in for the others
        // (CAP_NET_ADMIN for RTM_NEWNSID, although it does for loading).
        assert_eq!(
            Capabilities::of(&[SysAdmin]).missing(&[Load, AttachTcx, OtherNamespaces]),
            [NetAdmin, NetBroadcast, SysPtrace]
        );
        assert_eq!(
            Capabilities::of(&[SysAdmin, NetBroadcast, SysPtrace]).missing(&[
                Load,
                AttachTcx,
                OtherNamespaces
            ]),
            [NetAdmin]
        );
        assert!(Capabilities::of(&[SysAdmin, NetAdmin, NetBroadcast, SysPtrace])
            .missing(&[Load, AttachTcx, OtherNamespaces])
            .is_empty());
    }

    #[test]
    fn one_line_errors() {
        let err = Capabilities::of(&[Bpf, NetAdmin])
            .check(&[Load, AttachTcx])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing capability CAP_PERFMON: loading dhcpfix needs CAP_BPF, CAP_NET_ADMIN and \
             CAP_PERFMON, or CAP_SYS_ADMIN (run as root, or see contrib/systemd/dhcpfix.service)"
        );
        let err = Capabilities::of(&[SysAdmin])
            .check(&[Load, AttachNetlink])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing capability CAP_NET_ADMIN: a netlink attachment needs CAP_NET_ADMIN (run as \
             root, or see contrib/systemd/dhcpfix.service)"
        );
        let err = Capabilities::default().check(&[Load]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("missing capability CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON: loading"),
            "{err}"
        );
    }

    #[test]
    fn parses_status() {
        let status = "Name:\tdhcpfix\nCapInh:\t0000000000000000\nCapEff:\t000000c000001000\n";
        let set = effective(status).unwrap();
        assert_eq!(set, Capabilities::of(&[Bpf, NetAdmin, Perfmon]));
        assert_eq!(effective("CapEff:\tzz\n"), None);
        assert_eq!(effective(""), None);
    }
}
