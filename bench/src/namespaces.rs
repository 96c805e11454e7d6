//! Every namespace: one `dhcpfix run --netns all` in the host's namespace
//! over N bench namespaces with T taps each (a KubeVirt node with N pods,
//! or N libvirt hosts in containers), as they come and go.
//!
//! 1. The namespaces and their persistent taps are made first (no agent),
//!    and `/proc/meminfo` is read before and after.
//! 2. The agent starts and attaches to every tap: the time until the last
//!    is attached, `/proc/meminfo` again (what dhcpfix added: its program,
//!    maps, entries and two tcx links per tap), and `memlock` of the
//!    program and of each map.
//! 3. Idle: the agent's CPU and RSS over a quiet window.
//! 4. Churn: namespaces are replaced at a steady rate (the oldest deleted,
//!    a new one made with its taps); each new tap is timed from the moment
//!    it exists (`TUNSETIFF` returned) until its link is pinned (the agent
//!    pins a link right after the kernel attached it); the agent's CPU and
//!    peak RSS over the churn; nothing of a deleted namespace may be left.
//! 5. The agent stops (attachments stay) and the container image's agent,
//!    run as the DaemonSet runs it, adopts them ([`crate::container`]).
//!
//! The agent sees every namespace of the machine: the section runs with the
//! kit's exclusive turn, and its taps have a name no one else uses.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use dhcpfix_common::key::IfaceKey;
use dhcpfix_lab::kit::{dev, gate, netns::in_netns, process};
use serde::{Deserialize, Serialize};

use crate::{
    container::{self, ContainerUse},
    dhcpfix_cli::Dhcpfix,
    error::{BenchError, Result},
    kernel_memory::{self, KernelMemory},
    sandbox::{Netns, Sandbox},
    stats::quantile,
};

#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub namespaces: usize,
    pub taps_per_namespace: usize,
    /// Namespaces replaced during the churn...
    pub churn: usize,
    /// ...at this rate.
    pub churn_per_s: f64,
    /// The quiet window the idle figures are taken over.
    pub idle_s: f64,
}

/// The taps' names: `dfbn0`, `dfbn1`...
const TAP_PREFIX: &str = "dfbn";
/// How long the agent gets to attach everything.
const LIMIT: Duration = Duration::from_secs(300);

/// What the agent used over a window.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentUse {
    pub window_s: f64,
    /// User + system CPU time over the window, in percent of one CPU.
    pub cpu_percent: f64,
    /// VmRSS at the end of the window, and the highest seen during it.
    pub rss_kib: u64,
    pub rss_max_kib: u64,
}

/// Times from a tap's creation until it was attached.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Latency {
    pub taps: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub samples_ms: Vec<f64>,
}

impl Latency {
    fn of(samples_ms: Vec<f64>) -> Latency {
        let mut sorted = samples_ms.clone();
        sorted.sort_by(f64::total_cmp);
        Latency {
            taps: sorted.len(),
            p50_ms: quantile(&sorted, 0.5),
            p99_ms: quantile(&sorted, 0.99),
            max_ms: sorted.last().copied().unwrap_or(f64::NAN),
            samples_ms,
        }
    }
}

/// One `/proc/meminfo` field: how it changed with the topology, then with
/// dhcpfix attached to it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MeminfoDelta {
    pub field: String,
    pub topology_kib: i64,
    pub dhcpfix_kib: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Churn {
    /// Namespaces replaced, and the rate asked for.
    pub namespaces: usize,
    pub per_s: f64,
    /// From the first replacement until the last new tap was attached.
    pub wall_s: f64,
    /// Every new tap, from its creation until attached.
    pub attach: Latency,
    pub agent: AgentUse,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Namespaces {
    pub namespaces: usize,
    pub taps_per_namespace: usize,
    /// Making the namespaces and their taps (before the agent).
    pub topology_s: f64,
    /// From the agent's start until every tap was attached.
    pub all_attached_s: f64,
    /// Processes on the machine at idle: the agent looks through each one's
    /// `/proc/PID/ns/net` every 2 s (namespaces only a process holds).
    pub processes: usize,
    pub idle: AgentUse,
    pub churn: Churn,
    /// The program and its maps after attaching every tap.
    pub kernel_memory: KernelMemory,
    pub meminfo: Vec<MeminfoDelta>,
    /// The agent in its container image, adopting the same attachments
    /// (None: no podman or no image).
    #[serde(default)]
    pub container: Option<ContainerUse>,
}

/// The `/proc/meminfo` fields the kernel's own memory shows in.
const MEMINFO_FIELDS: [&str; 7] = [
    "MemAvailable",
    "Slab",
    "SUnreclaim",
    "Percpu",
    "VmallocUsed",
    "KernelStack",
    "PageTables",
];

fn meminfo() -> BTreeMap<String, i64> {
    fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let kib = rest.split_whitespace().next()?.parse().ok()?;
            MEMINFO_FIELDS.contains(&name).then(|| (name.to_owned(), kib))
        })
        .collect()
}

/// A bench namespace with its taps, and where their links get pinned.
struct Space {
    ns: Netns,
    cookie: u64,
    /// (link pin, when the tap was created)
    taps: Vec<(PathBuf, Instant)>,
}

/// A new namespace with `taps` persistent taps, made one after another.
fn make_space(sb: &Sandbox, pin_dir: &Path, taps: usize) -> Result<Space> {
    let ns = sb.netns("n")?;
    let (cookie, made) = in_netns(ns.path(), move || -> Result<(u64, Vec<(u32, Instant)>)> {
        let cookie = dhcpfix::netns::current_cookie().map_err(BenchError::sys("SO_NETNS_COOKIE"))?;
        let mut made = Vec::with_capacity(taps);
        for t in 0..taps {
            let name = format!("{TAP_PREFIX}{t}");
            dev::add_persistent_tap(&name).map_err(BenchError::sys("TUNSETIFF/TUNSETPERSIST"))?;
            let at = Instant::now();
            let ifindex = dhcpfix::sys::ifindex(&name)
                .ok_or_else(|| BenchError::Check(format!("{name} vanished right after it was made")))?;
            made.push((ifindex, at));
        }
        Ok((cookie, made))
    })??;
    let taps = made
        .into_iter()
        .map(|(ifindex, at)| {
            (
                pin_dir.join(dhcpfix::pins::link_rel(&IfaceKey::new(cookie, ifindex))),
                at,
            )
        })
        .collect();
    Ok(Space { ns, cookie, taps })
}

/// The agent's CPU time so far (user + system), in seconds.
fn cpu_s(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).map_err(BenchError::io("read", &path))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // Fields 14 and 15 (utime, stime), counted from 1; `rest` starts at 3.
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    let (Some(user), Some(system)) = (ticks(14), ticks(15)) else {
        return Err(BenchError::Parse {
            what: path,
            detail: "no utime/stime".into(),
        });
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((user + system) as f64 / hz)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    fs::read_to_string(&path)
        .map_err(BenchError::io("read", &path))?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| BenchError::Parse {
            what: path,
            detail: "no VmRSS".into(),
        })
}

/// The agent, stopped (SIGTERM) when dropped.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the agent has exited, with the end of its log.
    fn alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            _ => {
                let text = fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(3).collect();
                Err(BenchError::Check(format!(
                    "the agent exited: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("; ")
                )))
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = process::stop(&mut self.child, Duration::from_secs(2));
    }
}

/// Waits (polling every millisecond) until every pin of `taps` exists;
/// returns each one's time from creation until it was seen.
fn wait_attached(agent: &mut Agent, taps: &[(PathBuf, Instant)]) -> Result<Vec<f64>> {
    let mut times = vec![None; taps.len()];
    let start = Instant::now();
    loop {
        for ((pin, made), time) in taps.iter().zip(times.iter_mut()) {
            if time.is_none() && pin.exists() {
                *time = Some(made.elapsed().as_secs_f64() * 1e3);
            }
        }
        if times.iter().all(Option::is_some) {
            return Ok(times.into_iter().flatten().collect());
        }
        agent.alive()?;
        if start.elapsed() > LIMIT {
            let left = times.iter().filter(|t| t.is_none()).count();
            return Err(BenchError::Check(format!(
                "{left} of {} taps not attached within {LIMIT:?}",
                taps.len()
            )));
        }
        thread::sleep(Duration::from_millis(1));
    }
}

pub fn run(sb: &Sandbox, dhcpfix: &Dhcpfix, cfg: Config) -> Result<Namespaces> {
    // Nothing else may build taps meanwhile: the agent would see them.
    let _alone = gate::exclusive()?;
    let pin_dir = sb.pin_dir("everyns");
    let (n, t) = (cfg.namespaces, cfg.taps_per_namespace);

    // 1. The topology, without the agent.
    let before = meminfo();
    let t0 = Instant::now();
    let mut spaces = (0..n)
        .map(|_| make_space(sb, &pin_dir, t))
        .collect::<Result<Vec<_>>>()?;
    let topology_s = t0.elapsed().as_secs_f64();
    thread::sleep(Duration::from_millis(500));
    let with_topology = meminfo();

    // 2. The agent attaches to all of it.
    let log = sb.file("everyns-agent.log");
    let log_file = fs::File::create(&log).map_err(BenchError::io("create", &log))?;
    let mut cmd = Command::new(dhcpfix.path());
    cmd.arg("--pin-dir")
        .arg(&pin_dir)
        .args(["run", "--netns", "all", "--iface", &format!("{TAP_PREFIX}*")])
        .args(["--metrics-addr", "none"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    let t1 = Instant::now();
    let mut agent = Agent {
        child: process::spawn(&mut cmd)?,
        log,
    };
    let every: Vec<(PathBuf, Instant)> = spaces
        .iter()
        .flat_map(|s| s.taps.iter().map(|(pin, _)| (pin.clone(), t1)))
        .collect();
    wait_attached(&mut agent, &every)?;
    let all_attached_s = t1.elapsed().as_secs_f64();
    thread::sleep(Duration::from_millis(500));
    let with_dhcpfix = meminfo();
    let kernel_memory = kernel_memory::read(&pin_dir)?;
    let meminfo = MEMINFO_FIELDS
        .iter()
        .map(|f| {
            let get = |m: &BTreeMap<String, i64>| m.get(*f).copied().unwrap_or(0);
            MeminfoDelta {
                field: (*f).to_owned(),
                topology_kib: get(&with_topology) - get(&before),
                dhcpfix_kib: get(&with_dhcpfix) - get(&with_topology),
            }
        })
        .collect();
    eprintln!("  {n} namespaces x {t} taps: made in {topology_s:.1} s, all attached {all_attached_s:.1} s after the agent's start");

    // 3. Idle.
    let pid = agent.pid();
    thread::sleep(Duration::from_secs(1));
    let idle = idle(pid, cfg.idle_s)?;
    agent.alive()?;
    let processes = fs::read_dir("/proc")
        .map_err(BenchError::io("read", "/proc"))?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .count();

    // 4. Churn: the oldest namespace goes, a new one comes, at a steady
    // rate; a poller times each new tap.
    let pending: Arc<Mutex<Vec<(PathBuf, Instant)>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let (pending, done) = (Arc::clone(&pending), Arc::clone(&done));
        thread::spawn(move || {
            let mut times = Vec::new();
            while !done.load(Ordering::Relaxed) {
                pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|(pin, made)| {
                        let attached = pin.exists();
                        if attached {
                            times.push(made.elapsed().as_secs_f64() * 1e3);
                        }
                        !attached
                    });
                thread::sleep(Duration::from_millis(1));
            }
            times
        })
    };
    let left = || pending.lock().unwrap_or_else(|e| e.into_inner()).len();
    let every = Duration::from_secs_f64(1.0 / cfg.churn_per_s);
    let mut gone: Vec<u64> = Vec::new();
    let mut rss_max = 0;
    let cpu0 = cpu_s(pid)?;
    let churn_start = Instant::now();
    let churned = (|| -> Result<()> {
        for c in 0..cfg.churn {
            if let Some(wait) = (churn_start + every * c as u32).checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            let old = spaces.remove(0);
            gone.push(old.cookie);
            old.ns.remove()?;
            let new = make_space(sb, &pin_dir, t)?;
            pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(new.taps.iter().cloned());
            spaces.push(new);
            rss_max = rss_max.max(rss_kib(pid)?);
            agent.alive()?;
        }
        while left() > 0 {
            agent.alive()?;
            if churn_start.elapsed() > LIMIT {
                return Err(BenchError::Check(format!(
                    "churn: {} new taps not attached within {LIMIT:?}",
                    left()
                )));
            }
            rss_max = rss_max.max(rss_kib(pid)?);
            thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    })();
    let wall_s = churn_start.elapsed().as_secs_f64();
    let cpu = cpu_s(pid)? - cpu0;
    done.store(true, Ordering::Relaxed);
    let times = poller
        .join()
        .map_err(|_| BenchError::Check("the churn's poller panicked".into()))?;
    churned?;
    let rss = rss_kib(pid)?;
    let churn = Churn {
        namespaces: cfg.churn,
        per_s: cfg.churn_per_s,
        wall_s,
        attach: Latency::of(times),
        agent: AgentUse {
            window_s: wall_s,
            cpu_percent: cpu / wall_s * 100.0,
            rss_kib: rss,
            rss_max_kib: rss_max.max(rss),
        },
    };
    // Nothing of the deleted namespaces may stay.
    let waited = Instant::now();
    loop {
        let left = remains(&pin_dir, &gone)?;
        if left.is_empty() {
            break;
        }
        if waited.elapsed() > Duration::from_secs(30) {
            return Err(BenchError::Check(format!(
                "deleted namespaces left pins or entries: {left:?}"
            )));
        }
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "  churn: {} namespaces replaced in {wall_s:.1} s; new taps attached p50 {:.1} ms, p99 {:.1} ms",
        cfg.churn, churn.attach.p50_ms, churn.attach.p99_ms
    );

    // 5. The same, adopted by the agent in its container image.
    drop(agent);
    let container = if container::available() {
        let pattern = format!("{TAP_PREFIX}*");
        let args = [
            "run",
            "--netns",
            "all",
            "--iface",
            &pattern,
            "--metrics-addr",
            "none",
        ];
        Some(container::run(&pin_dir, &args, n * t, cfg.idle_s)?)
    } else {
        None
    };
    drop(spaces);
    if pin_dir.exists() {
        fs::remove_dir_all(&pin_dir).map_err(BenchError::io("remove", &pin_dir))?;
    }
    Ok(Namespaces {
        namespaces: n,
        taps_per_namespace: t,
        topology_s,
        all_attached_s,
        processes,
        idle,
        churn,
        kernel_memory,
        meminfo,
        container,
    })
}

/// The CPU and RSS of process `pid` over a quiet window of `secs`.
pub(crate) fn idle(pid: u32, secs: f64) -> Result<AgentUse> {
    let cpu0 = cpu_s(pid)?;
    let w0 = Instant::now();
    thread::sleep(Duration::from_secs_f64(secs));
    let rss = rss_kib(pid)?;
    let window_s = w0.elapsed().as_secs_f64();
    Ok(AgentUse {
        window_s,
        cpu_percent: (cpu_s(pid)? - cpu0) / window_s * 100.0,
        rss_kib: rss,
        rss_max_kib: rss,
    })
}

/// The namespaces of `cookies` that still have a link pin or a map entry.
fn remains(pin_dir: &Path, cookies: &[u64]) -> Result<Vec<u64>> {
    let mut left: Vec<u64> = cookies
        .iter()
        .copied()
        .filter(|c| pin_dir.join(dhcpfix::pins::netns_links_rel(*c)).exists())
        .collect();
    let pins = dhcpfix::pins::PinDir::open(pin_dir)
        .map_err(|e| BenchError::Check(e.to_string()))?
        .ok_or_else(|| BenchError::Check(format!("{} is gone", pin_dir.display())))?;
    let maps = dhcpfix::pins::maps::Maps::open(&pins).map_err(|e| BenchError::Check(e.to_string()))?;
    left.extend(
        maps.configs()
            .iter()
            .map(|(k, _)| k.netns)
            .chain(maps.counter_keys().iter().map(|k| k.netns))
            .filter(|c| cookies.contains(c)),
    );
    left.sort();
    left.dedup();
    Ok(left)
}
