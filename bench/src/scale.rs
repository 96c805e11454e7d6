//! Scale: N taps in a bench-owned namespace, attached three ways: one cold
//! `dhcpfix attach` process per tap (what a libvirt hook pays at each VM
//! start), one `dhcpfix attach` naming every tap, and the agent
//! (`dhcpfix run --iface 'tap*'`) when this build has it. Plus the kernel
//! memory of the program and its maps. Each way gets fresh taps and a fresh
//! pin directory; the three ways are repeated, in a rotated order per
//! repetition.

use std::{
    fs,
    path::Path,
    process::Stdio,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use aya::programs::{links::LinkOrder, tc::TcAttachOptions, ProgramError, SchedClassifier, TcAttachType};
use dhcpfix_common::{
    layout::{KernelLayout, LAYOUT_VALID},
    LAYOUT_GLOBAL, TEST_MODE_GLOBAL,
};

use dhcpfix_lab::kit::{
    netns::{in_netns, spawn_in_netns},
    process,
};
use serde::{Deserialize, Serialize};

use crate::{
    dhcpfix_cli::Dhcpfix,
    error::{BenchError, Result},
    kernel_memory::{self, KernelMemory},
    sandbox::{Netns, Sandbox},
    stats::{quantile, Stat},
};

#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub taps: usize,
    pub repetitions: usize,
}

/// One cold `dhcpfix attach TAP` per tap, in sequence.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ColdAttach {
    /// All taps, one repetition each.
    pub total_s: Stat,
    /// The first call of each repetition, which also loads and pins the
    /// program.
    pub first_ms: Stat,
    /// Over every call of every repetition.
    pub median_ms: f64,
    pub p99_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// Every call's wall time, repetition after repetition.
    pub samples_ms: Vec<f64>,
}

/// The agent, if this build has it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Agent {
    pub available: bool,
    /// What happened, in words ("not available in this build", an error...).
    pub note: String,
    /// From the agent's start until every tap had dhcpfix on its egress.
    pub all_attached_s: Option<Stat>,
    /// VmRSS of the agent once every tap was attached, in KiB.
    pub rss_kib: Option<Stat>,
    /// From starting `ip tuntap add` for one more tap until the agent had
    /// attached to it (an upper bound: it includes the `ip` process).
    pub new_tap_ms: Option<Stat>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Scale {
    pub taps: usize,
    pub repetitions: usize,
    /// `ip -batch` creating the taps (and setting them up).
    pub tap_creation_s: Stat,
    pub cold_attach: ColdAttach,
    /// One `dhcpfix attach tap0 ... tapN-1`.
    pub one_command_s: Stat,
    /// The kernel's part alone: `BPF_LINK_CREATE` of the empty classifier on
    /// a tap's tcx egress, in-process, interleaved with the cold attaches.
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

/// How many taps the bare kernel attach is timed on, interleaved with the
/// first cold attaches.
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
            let ifindex = dhcpfix::netdev::ifindex(name)
                .ok_or_else(|| BenchError::Check(format!("{name} not found")))?;
            if dhcpfix::sys::prog_count(ifindex, dhcpfix::sys::BPF_TCX_EGRESS)
                .map_err(BenchError::sys("BPF_PROG_QUERY"))?
                > 0
            {
                n += 1;
            }
        }
        Ok(n)
    })?
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    Cold,
    OneCommand,
    Agent,
}

/// What one repetition of the cold attaches measured.
struct ColdRun {
    samples_ms: Vec<f64>,
    bare_ms: Vec<f64>,
    total_s: f64,
    kernel_memory: KernelMemory,
}

/// What one run of the agent measured.
struct AgentRun {
    all_attached_s: f64,
    rss_kib: f64,
    new_tap_ms: f64,
}

pub fn run(sb: &Sandbox, dhcpfix: &Dhcpfix, cfg: Config) -> Result<Scale> {
    let n = cfg.taps;
    let mut ways = vec![Way::Cold, Way::OneCommand];
    let mut agent_note = "not available in this build (dhcpfix run --help fails)".to_owned();
    let has_agent = dhcpfix.has_agent();
    if has_agent {
        ways.push(Way::Agent);
        agent_note = format!("dhcpfix run --iface 'tap*': all {n} taps attached");
    }
    let mut tap_creation_s = Vec::new();
    let mut cold: Vec<ColdRun> = Vec::new();
    let mut one_command_s = Vec::new();
    let mut agent_runs: Vec<AgentRun> = Vec::new();
    let mut agent_failed = false;
    for rep in 0..cfg.repetitions {
        for k in 0..ways.len() {
            let way = ways[(k + rep) % ways.len()];
            match way {
                Way::Cold => {
                    let (ns, created) = with_taps(sb, n)?;
                    tap_creation_s.push(created);
                    let r = cold_attaches(sb, dhcpfix, &ns, n)?;
                    eprintln!(
                        "  scale rep {}/{}: {n} cold attaches in {:.1} s",
                        rep + 1,
                        cfg.repetitions,
                        r.total_s
                    );
                    cold.push(r);
                }
                Way::OneCommand => {
                    let (ns, _) = with_taps(sb, n)?;
                    let pin_dir = sb.pin_dir("batch");
                    let took = dhcpfix.attach(&ns, &pin_dir, &tap_names(n))?.as_secs_f64();
                    check_all_attached(&ns, n, "one dhcpfix attach naming every tap")?;
                    drop(ns);
                    remove_pins(&pin_dir)?;
                    eprintln!(
                        "  scale rep {}/{}: one attach of {n} taps in {took:.2} s",
                        rep + 1,
                        cfg.repetitions
                    );
                    one_command_s.push(took);
                }
                Way::Agent if !agent_failed => match agent(sb, dhcpfix, n) {
                    Ok(r) => {
                        eprintln!(
                            "  scale rep {}/{}: agent attached {n} taps in {:.2} s",
                            rep + 1,
                            cfg.repetitions,
                            r.all_attached_s
                        );
                        agent_runs.push(r);
                    }
                    Err(e) => {
                        agent_failed = true;
                        agent_note = format!("failed: {e}");
                        eprintln!("  scale: agent {agent_note}");
                    }
                },
                Way::Agent => {}
            }
        }
    }

    let samples_ms: Vec<f64> = cold.iter().flat_map(|r| r.samples_ms.iter().copied()).collect();
    let bare_ms: Vec<f64> = cold.iter().flat_map(|r| r.bare_ms.iter().copied()).collect();
    let mut sorted = samples_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let kernel_memory = cold
        .last()
        .map(|r| r.kernel_memory.clone())
        .ok_or_else(|| BenchError::Check("no cold-attach repetition ran".into()))?;
    let cold_attach = ColdAttach {
        total_s: Stat::of(&cold.iter().map(|r| r.total_s).collect::<Vec<_>>()),
        first_ms: Stat::of(
            &cold
                .iter()
                .filter_map(|r| r.samples_ms.first().copied())
                .collect::<Vec<_>>(),
        ),
        median_ms: quantile(&sorted, 0.5),
        p99_ms: quantile(&sorted, 0.99),
        min_ms: sorted.first().copied().unwrap_or(f64::NAN),
        max_ms: sorted.last().copied().unwrap_or(f64::NAN),
        samples_ms,
    };
    let agent = if agent_failed || !has_agent {
        Agent {
            available: has_agent,
            note: agent_note,
            ..Default::default()
        }
    } else {
        let stat = |f: fn(&AgentRun) -> f64| Some(Stat::of(&agent_runs.iter().map(f).collect::<Vec<_>>()));
        Agent {
            available: true,
            note: agent_note,
            all_attached_s: stat(|r| r.all_attached_s),
            rss_kib: stat(|r| r.rss_kib),
            new_tap_ms: stat(|r| r.new_tap_ms),
        }
    };
    Ok(Scale {
        taps: n,
        repetitions: cfg.repetitions,
        tap_creation_s: Stat::of(&tap_creation_s),
        cold_attach,
        one_command_s: Stat::of(&one_command_s),
        kernel_attach: KernelAttach::of(bare_ms),
        agent,
        kernel_memory,
    })
}

/// One cold `dhcpfix attach` process per tap of `ns`, in sequence; with the
/// first of them, the bare kernel attach on as many taps of a second
/// namespace, interleaved.
fn cold_attaches(sb: &Sandbox, dhcpfix: &Dhcpfix, ns: &Netns, n: usize) -> Result<ColdRun> {
    let bare_taps = n.min(KERNEL_ATTACH_TAPS);
    let (bare_ns, _) = with_taps(sb, bare_taps)?;
    let bare = BareAttacher::start(&bare_ns)?;
    let pin_dir = sb.pin_dir("cold");
    let mut samples_ms = Vec::with_capacity(n);
    let mut bare_ms = Vec::with_capacity(bare_taps);
    let mut total = Duration::ZERO;
    for (i, name) in tap_names(n).into_iter().enumerate() {
        let took = dhcpfix.attach(ns, &pin_dir, std::slice::from_ref(&name))?;
        total += took;
        samples_ms.push(took.as_secs_f64() * 1e3);
        if i < bare_taps {
            bare_ms.push(bare.attach(name)?);
        }
    }
    bare.finish()?;
    drop(bare_ns);
    check_all_attached(ns, n, "one dhcpfix attach per tap")?;
    let kernel_memory = kernel_memory::read(&pin_dir)?;
    remove_pins(&pin_dir)?;
    Ok(ColdRun {
        samples_ms,
        bare_ms,
        total_s: total.as_secs_f64(),
        kernel_memory,
    })
}

impl KernelAttach {
    fn of(samples_ms: Vec<f64>) -> KernelAttach {
        let stat = Stat::of(&samples_ms);
        let mut sorted = samples_ms;
        sorted.sort_by(f64::total_cmp);
        KernelAttach {
            taps: sorted.len(),
            median_ms: stat.median,
            p99_ms: quantile(&sorted, 0.99),
            min_ms: stat.min,
            max_ms: stat.max,
        }
    }
}

/// A thread inside a namespace of taps that attaches the empty classifier
/// (through aya: one `BPF_LINK_CREATE` each) to the taps it is sent, and
/// times each call. The links close with the program when it finishes.
struct BareAttacher {
    requests: mpsc::Sender<String>,
    results: mpsc::Receiver<Result<f64>>,
    thread: thread::JoinHandle<Result<()>>,
}

impl BareAttacher {
    fn start(ns: &Netns) -> Result<BareAttacher> {
        let (requests, inbox) = mpsc::channel::<String>();
        let (outbox, results) = mpsc::channel();
        let thread = spawn_in_netns(ns.path(), "bare-attach", move || {
            let mut ebpf = load_empty_classifier()?;
            let prog: &mut SchedClassifier = ebpf
                .program_mut(dhcpfix::testrun::EMPTY_PROGRAM)
                .ok_or_else(|| BenchError::Check("the object has no empty classifier".into()))?
                .try_into()
                .map_err(|e: ProgramError| BenchError::Check(format!("the empty classifier: {e}")))?;
            prog.load()
                .map_err(|e| BenchError::Check(format!("loading the empty classifier: {e}")))?;
            // Ready.
            let _ = outbox.send(Ok(0.0));
            for name in inbox {
                let t0 = Instant::now();
                let result = prog
                    .attach_with_options(
                        &name,
                        TcAttachType::Egress,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map(|_| t0.elapsed().as_secs_f64() * 1e3)
                    .map_err(|e| BenchError::Check(format!("tcx attach to {name}: {e}")));
                if outbox.send(result).is_err() {
                    break;
                }
            }
            Ok(())
        })?;
        let attacher = BareAttacher {
            requests,
            results,
            thread,
        };
        match attacher.results.recv() {
            Ok(ready) => ready.map(|_| attacher),
            // The thread ended before it was ready: its result says why.
            Err(_) => attacher.finish().and(Err(BenchError::Check(
                "the bare-attach thread ended early".into(),
            ))),
        }
    }

    /// Attaches to `tap`; returns the milliseconds the call took.
    fn attach(&self, tap: String) -> Result<f64> {
        let gone = || BenchError::Check("the bare-attach thread is gone".into());
        self.requests.send(tap).map_err(|_| gone())?;
        self.results.recv().map_err(|_| gone())?
    }

    fn finish(self) -> Result<()> {
        drop(self.requests);
        self.thread
            .join()
            .map_err(|_| BenchError::Check("the bare-attach thread panicked".into()))?
    }
}

/// The classifier object loaded as the test harness loads it (the layout is
/// irrelevant to the empty classifier but must look valid).
fn load_empty_classifier() -> Result<aya::Ebpf> {
    let layout = KernelLayout {
        flags: LAYOUT_VALID,
        ..Default::default()
    };
    aya::EbpfLoader::new()
        .override_global(LAYOUT_GLOBAL, &layout, true)
        .override_global(TEST_MODE_GLOBAL, &1u32, true)
        .load(dhcpfix::program::CLASSIFIER_OBJECT)
        .map_err(|e| BenchError::Check(format!("loading the classifier object: {e}")))
}

const AGENT_LIMIT: Duration = Duration::from_secs(120);
/// How long the agent gets to exit on SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(2);

fn agent(sb: &Sandbox, dhcpfix: &Dhcpfix, n: usize) -> Result<AgentRun> {
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
        let rss_kib = vm_rss_kib(child.id())
            .ok_or_else(|| BenchError::Check("no VmRSS in the agent's /proc status".into()))?;

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
        Ok(AgentRun {
            all_attached_s,
            rss_kib: rss_kib as f64,
            new_tap_ms: t1.elapsed().as_secs_f64() * 1e3,
        })
    })();
    // What the agent's exit status would add is in its log.
    let _ = process::stop(&mut child, STOP_GRACE);
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
