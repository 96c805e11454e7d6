//! Checking the capabilities the agent needs before it starts, so that a
//! unit with one capability too few says which one, instead of a verifier
//! or errno message later.

use super::AgentError;

const CAP_NET_BROADCAST: u32 = 11;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// What the agent needs: loading a sched_cls program (CAP_BPF), one that
/// reads kernel memory (`bpf_probe_read_kernel`: CAP_PERFMON), and
/// attaching it (CAP_NET_ADMIN). CAP_SYS_ADMIN stands in for the first two,
/// as on kernels before 5.8.
const NEEDED: [(&str, u32, Option<u32>); 3] = [
    ("CAP_BPF", CAP_BPF, Some(CAP_SYS_ADMIN)),
    ("CAP_NET_ADMIN", CAP_NET_ADMIN, None),
    ("CAP_PERFMON", CAP_PERFMON, Some(CAP_SYS_ADMIN)),
];

/// What covering other network namespaces adds: entering them (setns:
/// CAP_SYS_ADMIN), hearing their link events (`NETLINK_LISTEN_ALL_NSID`:
/// CAP_NET_BROADCAST), finding the ones only a process holds
/// (`/proc/PID/ns/net` of other users' processes: CAP_SYS_PTRACE).
const NEEDED_FOR_NAMESPACES: [(&str, u32, Option<u32>); 3] = [
    ("CAP_SYS_ADMIN", CAP_SYS_ADMIN, None),
    ("CAP_NET_BROADCAST", CAP_NET_BROADCAST, None),
    ("CAP_SYS_PTRACE", CAP_SYS_PTRACE, None),
];

/// The capabilities of `effective` (a `CapEff` mask) that are missing.
fn missing(effective: u64, namespaces: bool) -> Vec<&'static str> {
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    let extra: &[_] = if namespaces { &NEEDED_FOR_NAMESPACES } else { &[] };
    NEEDED
        .iter()
        .chain(extra)
        .filter(|(_, cap, alt)| !has(*cap) && !alt.is_some_and(has))
        .map(|(name, _, _)| *name)
        .collect()
}

/// Raises the soft limit on open files to the hard one (the HTTP endpoint
/// bounds its own connections; the rest of the agent needs few).
pub fn raise_nofile_limit() {
    // SAFETY: a zeroed rlimit is a valid out-parameter.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is writable.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 && lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` holds the limits to set.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}

fn effective_caps(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Fails with one line naming every missing capability (`namespaces`:
/// with what covering other network namespaces needs).
pub fn check(namespaces: bool) -> Result<(), AgentError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|source| AgentError::Capabilities {
        reason: format!("reading /proc/self/status: {source}"),
    })?;
    let Some(effective) = effective_caps(&status) else {
        return Err(AgentError::Capabilities {
            reason: "no CapEff line in /proc/self/status".into(),
        });
    };
    let missing = missing(effective, namespaces);
    if missing.is_empty() {
        return Ok(());
    }
    Err(AgentError::MissingCapabilities(missing.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_missing() {
        let all = (1u64 << CAP_BPF) | (1 << CAP_NET_ADMIN) | (1 << CAP_PERFMON);
        assert!(missing(all, false).is_empty());
        assert!(missing(u64::MAX >> 23, false).is_empty());
        assert_eq!(missing(all & !(1 << CAP_PERFMON), false), ["CAP_PERFMON"]);
        assert_eq!(missing(0, false), ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]);
        // CAP_SYS_ADMIN covers BPF and PERFMON, not NET_ADMIN.
        assert_eq!(missing(1 << CAP_SYS_ADMIN, false), ["CAP_NET_ADMIN"]);
        assert_eq!(
            missing(all, true),
            ["CAP_SYS_ADMIN", "CAP_NET_BROADCAST", "CAP_SYS_PTRACE"]
        );
    }

    #[test]
    fn parses_status() {
        let status = "Name:\tdhcpfix\nCapInh:\t0000000000000000\nCapEff:\t000000c000001000\n";
        assert_eq!(effective_caps(status), Some(0xc0_0000_1000));
        assert!(missing(0xc0_0000_1000, false).is_empty());
    }
}
