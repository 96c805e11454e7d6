//! Scale: N taps in a bench-owned namespace, attached three ways: one cold
//! `dhcpfix attach` process per tap (what a libvirt hook pays at each VM
//! start), one `dhcpfix attach` naming every tap, and the agent
//! (`dhcpfix run --iface 'tap*'`) when this build has it. Plus the kernel
//! memory of the program and its maps. Each way gets fresh taps and a fresh
//! pin directory.

use std::{
    fs,
    path::Path,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{
    bpfsys::{self, KernelMemory},
    dhcpfix_cli::Dhcpfix,
    error::{BenchError, Result},
    process::{self, in_netns},
    sandbox::{Netns, Sandbox},
    stats::{quantile, Stat},
};

#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub taps: usize,
}

/// One cold `dhcpfix attach TAP` per tap, in sequence.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ColdAttach {
    pub total_s: f64,
    /// The first call, which also loads and pins the program.
    pub first_ms: f64,
    pub median_ms: f64,
    pub p99_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// Every call's wall time, in order.
    pub samples_ms: Vec<f64>,
}

/// The agent, if this build has it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Agent {
    pub available: bool,
    /// What happened, in words ("not available in this build", an error...).
    pub note: String,
    /// From the agent's start until every tap had dhcpfix on its egress.
    pub all_attached_s: Option<f64>,
    /// VmRSS of the agent once every tap was attached.
    pub rss_kib: Option<u64>,
    /// From starting `ip tuntap add` for one more tap until the agent had
    /// attached to it (an upper bound: it includes the `ip` process).
    pub new_tap_ms: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Scale {
    pub taps: usize,
    /// `ip -batch` creating the taps (and setting them up).
    pub tap_creation_s: f64,
    pub cold_attach: ColdAttach,
    /// One `dhcpfix attach tap0 ... tapN-1`.
    pub one_command_s: f64,
    /// The kernel's part alone: `BPF_LINK_CREATE` of the empty classifier on
    /// a tap's tcx egress, in-process, on `kernel_attach_taps` fresh taps.
    pub kernel_attach: KernelAttach,
    pub agent: Agent,
    /// Program and maps after attaching every tap.
    pub kernel_memory: KernelMemory,
}

/// Time of the bare tcx attach system call.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KernelAttach {
    pub taps: usize,
    pub median_ms: f64,
    pub p99_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

/// How many taps the bare kernel attach is timed on (each costs an RCU
/// grace period to attach and another to release).
const KERNEL_ATTACH_TAPS: usize = 200;

fn tap_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("tap{i}")).collect()
}

/// A namespace with `n` persistent taps, up; returns it and the time taken.
fn with_taps(sb: &Sandbox, n: usize) -> Result<(Netns, f64)> {
    let ns = sb.netns("s")?;
    let mut lines = String::new();
    for name in tap_names(n) {
        lines.push_str(&format!("tuntap add dev {name} mode tap\nlink set {name} up\n"));
    }
    let t0 = Instant::now();
    ns.ip_batch(&lines)?;
    Ok((ns, t0.elapsed().as_secs_f64()))
}

/// How many of `names` have a program on their tcx egress.
fn attached_count(ns: &Netns, names: Vec<String>) -> Result<usize> {
    in_netns(ns.path(), move || {
        let mut n = 0;
        for name in &names {
            let ifindex =
                dhcpfix::sys::ifindex(name).ok_or_else(|| BenchError::Check(format!("{name} not found")))?;
            if bpfsys::tcx_egress_count(ifindex).map_err(BenchError::sys("BPF_PROG_QUERY"))? > 0 {
                n += 1;
            }
        }
        Ok(n)
    })
}

fn check_all_attached(ns: &Netns, n: usize, how: &str) -> Result<()> {
    let attached = attached_count(ns, tap_names(n))?;
    if attached != n {
        return Err(BenchError::Check(format!(
            "{how}: {attached} of {n} taps attached"
        )));
    }
    Ok(())
}

fn remove_pins(pin_dir: &Path) -> Result<()> {
    if pin_dir.exists() {
        fs::remove_dir_all(pin_dir).map_err(BenchError::io("remove", pin_dir))?;
    }
    Ok(())
}

pub fn run(sb: &Sandbox, dhcpfix: &Dhcpfix, cfg: Config) -> Result<Scale> {
    let n = cfg.taps;

    // One cold process per tap.
    let (ns, tap_creation_s) = with_taps(sb, n)?;
    let pin_dir = sb.pin_dir("cold");
    let mut samples_ms = Vec::with_capacity(n);
    let t0 = Instant::now();
    for name in tap_names(n) {
        let took = dhcpfix.attach(&ns, &pin_dir, &[name])?;
        samples_ms.push(took.as_secs_f64() * 1e3);
    }
    let total_s = t0.elapsed().as_secs_f64();
    check_all_attached(&ns, n, "one dhcpfix attach per tap")?;
    let kernel_memory = bpfsys::kernel_memory(&pin_dir)?;
    drop(ns);
    remove_pins(&pin_dir)?;
    let stat = Stat::of(&samples_ms);
    let mut sorted = samples_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let cold_attach = ColdAttach {
        total_s,
        first_ms: samples_ms.first().copied().unwrap_or(f64::NAN),
        median_ms: stat.median,
        p99_ms: quantile(&sorted, 0.99),
        min_ms: stat.min,
        max_ms: stat.max,
        samples_ms,
    };
    eprintln!(
        "  scale: {n} cold attaches in {total_s:.1} s (median {:.1} ms, p99 {:.1} ms)",
        cold_attach.median_ms, cold_attach.p99_ms
    );

    // One command naming every tap.
    let (ns, _) = with_taps(sb, n)?;
    let pin_dir = sb.pin_dir("batch");
    let one_command_s = dhcpfix.attach(&ns, &pin_dir, &tap_names(n))?.as_secs_f64();
    check_all_attached(&ns, n, "one dhcpfix attach naming every tap")?;
    drop(ns);
    remove_pins(&pin_dir)?;
    eprintln!("  scale: one attach of {n} taps in {one_command_s:.2} s");

    let kernel_attach = kernel_attach(sb, n.min(KERNEL_ATTACH_TAPS))?;
    eprintln!(
        "  scale: bare tcx attach (BPF_LINK_CREATE): median {:.1} ms, p99 {:.1} ms",
        kernel_attach.median_ms, kernel_attach.p99_ms
    );

    let agent = if dhcpfix.has_agent() {
        match agent(sb, dhcpfix, n) {
            Ok(a) => a,
            Err(e) => Agent {
                available: true,
                note: format!("failed: {e}"),
                ..Default::default()
            },
        }
    } else {
        Agent {
            available: false,
            note: "not available in this build (dhcpfix run --help fails)".into(),
            ..Default::default()
        }
    };
    eprintln!("  scale: agent: {}", agent.note);

    Ok(Scale {
        taps: n,
        tap_creation_s,
        cold_attach,
        one_command_s,
        kernel_attach,
        agent,
        kernel_memory,
    })
}

/// Attaches the empty classifier to `n` fresh taps from a thread inside
/// their namespace, timing each `BPF_LINK_CREATE` (through aya); the links
/// close with the program at the end.
fn kernel_attach(sb: &Sandbox, n: usize) -> Result<KernelAttach> {
    use aya::programs::{links::LinkOrder, tc::TcAttachOptions, SchedClassifier, TcAttachType};
    use dhcpfix_common::{
        layout::{KernelLayout, LAYOUT_VALID},
        LAYOUT_GLOBAL, TEST_MODE_GLOBAL,
    };

    let (ns, _) = with_taps(sb, n)?;
    let samples_ms = in_netns(ns.path(), move || {
        let fail = |what: String| BenchError::Check(format!("loading the empty classifier: {what}"));
        let layout = KernelLayout {
            flags: LAYOUT_VALID,
            ..Default::default()
        };
        let mut ebpf = aya::EbpfLoader::new()
            .override_global(LAYOUT_GLOBAL, &layout, true)
            .override_global(TEST_MODE_GLOBAL, &1u32, true)
            .load(dhcpfix::program::CLASSIFIER_OBJECT)
            .map_err(|e| fail(e.to_string()))?;
        let prog: &mut SchedClassifier = ebpf
            .program_mut(dhcpfix::testrun::EMPTY_PROGRAM)
            .ok_or_else(|| fail("no such program".into()))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| fail(e.to_string()))?;
        prog.load().map_err(|e| fail(e.to_string()))?;
        let mut samples = Vec::with_capacity(n);
        for name in tap_names(n) {
            let t0 = Instant::now();
            prog.attach_with_options(
                &name,
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(|e| BenchError::Check(format!("tcx attach to {name}: {e}")))?;
            samples.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        Ok(samples)
    })?;
    drop(ns);
    let stat = Stat::of(&samples_ms);
    let mut sorted = samples_ms;
    sorted.sort_by(f64::total_cmp);
    Ok(KernelAttach {
        taps: n,
        median_ms: stat.median,
        p99_ms: quantile(&sorted, 0.99),
        min_ms: stat.min,
        max_ms: stat.max,
    })
}

const AGENT_LIMIT: Duration = Duration::from_secs(120);

fn agent(sb: &Sandbox, dhcpfix: &Dhcpfix, n: usize) -> Result<Agent> {
    let (ns, _) = with_taps(sb, n)?;
    let pin_dir = sb.pin_dir("agent");
    let log = sb.file("agent.log");
    let log_file = fs::File::create(&log).map_err(BenchError::io("create", &log))?;
    let mut cmd = dhcpfix.command(&ns, &pin_dir, &["run", "--iface", "tap*"]);
    cmd.stdin(Stdio::null())
        .stdout(log_file.try_clone().map_err(BenchError::io("dup", &log))?)
        .stderr(log_file);
    let t0 = Instant::now();
    let mut child = process::spawn(&mut cmd)?;
    let result = (|| {
        let died = |child: &mut std::process::Child| -> Option<String> {
            let status = child.try_wait().ok().flatten()?;
            let text = fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(3).collect();
            Some(format!(
                "the agent exited ({status}): {}",
                tail.into_iter().rev().collect::<Vec<_>>().join("; ")
            ))
        };
        let mut names = tap_names(n);
        loop {
            let done = attached_count(&ns, names.clone())?;
            if done == n {
                break;
            }
            if let Some(why) = died(&mut child) {
                return Err(BenchError::Check(why));
            }
            if t0.elapsed() > AGENT_LIMIT {
                return Err(BenchError::Check(format!(
                    "the agent attached {done} of {n} taps within {AGENT_LIMIT:?}"
                )));
            }
            thread::sleep(Duration::from_millis(10));
        }
        let all_attached_s = t0.elapsed().as_secs_f64();
        let rss_kib = vm_rss_kib(child.id());

        // One more tap while it runs: how fast it follows link events.
        let extra = format!("tap{n}");
        let t1 = Instant::now();
        ns.ip(&["tuntap", "add", "dev", &extra, "mode", "tap"])?;
        names = vec![extra];
        while attached_count(&ns, names.clone())? != 1 {
            if let Some(why) = died(&mut child) {
                return Err(BenchError::Check(why));
            }
            if t1.elapsed() > Duration::from_secs(30) {
                return Err(BenchError::Check(
                    "the agent did not attach to a new tap within 30 s".into(),
                ));
            }
            thread::sleep(Duration::from_millis(1));
        }
        let new_tap_ms = t1.elapsed().as_secs_f64() * 1e3;
        Ok(Agent {
            available: true,
            note: format!("dhcpfix run --iface 'tap*': all {n} taps attached"),
            all_attached_s: Some(all_attached_s),
            rss_kib,
            new_tap_ms: Some(new_tap_ms),
        })
    })();
    process::stop(&mut child);
    drop(ns);
    remove_pins(&pin_dir)?;
    result
}

/// `VmRSS` of a process, in KiB.
fn vm_rss_kib(pid: u32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}
