//! Checking the capabilities the agent needs before it starts, so that a
//! unit with one capability too few says which one, instead of a verifier
//! or errno message later.

use crate::agent::AgentError;

const CAP_NET_ADMIN: u32 = 12;
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

/// The capabilities of `effective` (a `CapEff` mask) that are missing.
fn missing(effective: u64) -> Vec<&'static str> {
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    NEEDED
        .iter()
        .filter(|(_, cap, alt)| !has(*cap) && !alt.is_some_and(has))
        .map(|(name, _, _)| *name)
        .collect()
}

fn effective_caps(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Fails with one line naming every missing capability.
pub fn check() -> Result<(), AgentError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|source| AgentError::Capabilities {
        reason: format!("reading /proc/self/status: {source}"),
    })?;
    let Some(effective) = effective_caps(&status) else {
        return Err(AgentError::Capabilities {
            reason: "no CapEff line in /proc/self/status".into(),
        });
    };
    let missing = missing(effective);
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
        assert!(missing(all).is_empty());
        assert!(missing(u64::MAX >> 23).is_empty());
        assert_eq!(missing(all & !(1 << CAP_PERFMON)), ["CAP_PERFMON"]);
        assert_eq!(missing(0), ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]);
        // CAP_SYS_ADMIN covers BPF and PERFMON, not NET_ADMIN.
        assert_eq!(missing(1 << CAP_SYS_ADMIN), ["CAP_NET_ADMIN"]);
    }

    #[test]
    fn parses_status() {
        let status = "Name:\tdhcpfix\nCapInh:\t0000000000000000\nCapEff:\t000000c000001000\n";
        assert_eq!(effective_caps(status), Some(0xc0_0000_1000));
        assert!(missing(0xc0_0000_1000).is_empty());
    }
}
