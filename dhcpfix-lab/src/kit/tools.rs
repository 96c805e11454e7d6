//! Finding programs, privileges, waiting, and tool output in one line.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use super::KitError;

/// Locates a program in `$PATH`, falling back to the sbin directories that a
/// non-login root shell may lack.
pub fn find_tool(tool: &'static str, package: &'static str) -> Result<PathBuf, KitError> {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
        .ok_or(KitError::ToolMissing { tool, package })
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether privileged tests should run. Not root: skip with a message,
/// unless CI=true, where skipping is a failure.
pub fn privileged(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: needs root, and CI=true forbids skipping");
    }
    eprintln!("skipped {test}: needs root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON)");
    false
}

/// Polls `done` every `every` until it holds or `timeout` passes; returns
/// how long it took.
pub fn poll(timeout: Duration, every: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if done() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        thread::sleep(every);
    }
}

/// `iptables` arguments that install the classic workaround, the rule
/// libvirt's iptables backend adds: complete the checksum of UDP to port 68
/// leaving through `out` (through any interface with `None`).
pub fn checksum_fill_rule(out: Option<&str>) -> Vec<&str> {
    let mut rule = vec!["-t", "mangle", "-A", "POSTROUTING"];
    if let Some(dev) = out {
        rule.extend(["-o", dev]);
    }
    rule.extend([
        "-p",
        "udp",
        "-m",
        "udp",
        "--dport",
        "68",
        "-j",
        "CHECKSUM",
        "--checksum-fill",
    ]);
    rule
}

/// Collapses multi-line tool output into one line for error messages.
pub fn one_line(s: &str) -> String {
    let joined = s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if joined.is_empty() {
        "(no output)".to_owned()
    } else {
        joined
    }
}

/// `podman` as this VM needs it: runc (crun refuses its cgroup layout) and
/// the cgroupfs manager (no systemd). Add [`PODMAN_ULIMITS`] to `run`.
pub fn podman() -> std::process::Command {
    let mut c = std::process::Command::new("podman");
    c.args(["--runtime", "runc", "--cgroup-manager=cgroupfs"]);
    c
}

/// Explicit limits for `podman run`, within the VM's hard limits (podman
/// otherwise asks for more than it may have).
pub const PODMAN_ULIMITS: [&str; 4] = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=1024:1024"];
