//! The agent in its container image, as deploy/kubernetes/daemonset.yaml
//! runs it: run by the every-namespace section ([`crate::namespaces`])
//! after its own agent stopped, over the same namespaces and attachments,
//! as a DaemonSet pod that replaces a host agent (or an older pod) finds
//! them.
//!
//! Measured: the image's size; from `podman run` until the agent in the
//! container is running with every attachment adopted; its CPU and RSS
//! at idle (the agent's own process, read in the host's `/proc`: the
//! container shares the host's PID namespace).
//!
//! Needs podman and the image (`cargo xtask image`, which `cargo xtask
//! bench` runs first); without them the section says so and goes on.

use std::{
    fs,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use dhcpfix_lab::kit::{podman, process, PODMAN_ULIMITS};
use serde::{Deserialize, Serialize};

use crate::{
    error::{BenchError, Result},
    namespaces::AgentUse,
};

/// The image `cargo xtask image` builds.
pub const IMAGE: &str = "localhost/dhcpfix:dev";

/// The manifest whose capabilities the container gets.
const DAEMONSET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes/daemonset.yaml");

/// How long the container gets until its agent is running.
const LIMIT: Duration = Duration::from_secs(120);

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerUse {
    pub image: String,
    pub image_bytes: u64,
    /// The capabilities it ran with (the DaemonSet's).
    pub capabilities: Vec<String>,
    /// From `podman run` until the agent logged that it runs, every
    /// attachment adopted.
    pub ready_s: f64,
    pub attachments: usize,
    pub idle: AgentUse,
}

/// How long a podman command (not the container) may take.
const PODMAN_LIMIT: Duration = Duration::from_secs(60);

/// `cmd`'s standard output, trimmed; an error names the command.
fn output(cmd: &mut Command) -> Result<String> {
    let out = process::run(cmd, None, PODMAN_LIMIT)?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Whether podman and the image are here; says why not otherwise.
pub fn available() -> bool {
    let ok = Command::new("podman")
        .args(["image", "exists", IMAGE])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "  (no podman or no {IMAGE}: `cargo xtask image` builds it; the container figures are left out)"
        );
    }
    ok
}

/// The `capabilities: add:` list of the DaemonSet, read as lines.
fn daemonset_capabilities() -> Result<Vec<String>> {
    let text = fs::read_to_string(DAEMONSET).map_err(BenchError::io("read", DAEMONSET))?;
    let mut lines = text.lines().skip_while(|l| l.trim() != "add:").skip(1);
    let mut caps = Vec::new();
    for l in lines.by_ref() {
        let l = l.trim();
        if l.starts_with('#') {
            continue;
        }
        match l.strip_prefix("- ") {
            Some(cap) => caps.push(cap.trim().to_owned()),
            None => break,
        }
    }
    if caps.is_empty() {
        return Err(BenchError::Check(format!("{DAEMONSET}: no capabilities to add")));
    }
    Ok(caps)
}

/// Removes the container when dropped.
struct Running(String);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "5", &self.0])
            .output();
    }
}

/// Runs the image's agent over `pin_dir` (on a bpffs) with `agent_args`,
/// and measures it; `attachments` is how many it should find.
pub fn run(pin_dir: &Path, agent_args: &[&str], attachments: usize, idle_s: f64) -> Result<ContainerUse> {
    let (Some(bpffs), Some(name)) = (pin_dir.parent(), pin_dir.file_name()) else {
        return Err(BenchError::Check(format!(
            "{}: not a pin directory",
            pin_dir.display()
        )));
    };
    let image_bytes: u64 = output(podman().args(["image", "inspect", "--format", "{{.Size}}", IMAGE]))?
        .parse()
        .map_err(|_| BenchError::Check("podman image inspect: no size".into()))?;
    let caps = daemonset_capabilities()?;
    let container = format!("dfb-agent-{}", std::process::id());
    let _ = Command::new("podman").args(["rm", "-f", &container]).output();
    let cap_add: Vec<String> = caps.iter().map(|c| format!("CAP_{c}")).collect();
    let started = Instant::now();
    output(
        podman()
            .args(["run", "-d", "--pull=never", "--name", &container])
            .args(["--pid=host", "--network=host", "--read-only", "--cap-drop=all"])
            .arg(format!("--cap-add={}", cap_add.join(",")))
            .arg("-v")
            .arg(format!("{}:/sys/fs/bpf:rslave", bpffs.display()))
            .args(["-v", "/run/netns:/run/netns:ro,rslave"])
            .args(["-e", "RUST_LOG=info"])
            .args(PODMAN_ULIMITS)
            .arg(IMAGE)
            .arg("--pin-dir")
            .arg(Path::new("/sys/fs/bpf").join(name))
            .args(agent_args),
    )?;
    let running = Running(container);
    let log = || {
        Command::new("podman")
            .args(["logs", &running.0])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_default()
    };
    loop {
        if log().contains(" running: ") {
            break;
        }
        if started.elapsed() > LIMIT {
            let text = log();
            let tail: Vec<&str> = text.lines().rev().take(3).collect();
            return Err(BenchError::Check(format!(
                "the agent in the container was not running after {LIMIT:?}: {}",
                tail.join("; ")
            )));
        }
        thread::sleep(Duration::from_millis(20));
    }
    let ready_s = started.elapsed().as_secs_f64();
    let pid: u32 = output(podman().args(["inspect", "--format", "{{.State.Pid}}", &running.0]))?
        .parse()
        .map_err(|_| BenchError::Check("podman inspect: no pid".into()))?;
    thread::sleep(Duration::from_secs(1));
    let idle = crate::namespaces::idle(pid, idle_s)?;
    output(podman().args(["stop", "-t", "10", &running.0]))?;
    eprintln!(
        "  in the container ({:.1} MB image): running in {ready_s:.1} s over {attachments} attachments; idle {:.2}% CPU, {:.1} MiB",
        image_bytes as f64 / 1e6,
        idle.cpu_percent,
        idle.rss_kib as f64 / 1024.0
    );
    Ok(ContainerUse {
        image: IMAGE.to_owned(),
        image_bytes,
        capabilities: caps,
        ready_s,
        attachments,
        idle,
    })
}
