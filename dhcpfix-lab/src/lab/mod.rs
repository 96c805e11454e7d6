//! A self-contained reproduction of the vhost-net DHCP checksum problem,
//! without VMs.
//!
//! ```text
//!  host netns                                guest netns
//!  dnsmasq --interface=br0                   DHCP client on eth0
//!      br0 (10.199.N.1/24)                       |
//!       |                                       eth0 = tap, no vnet header (Legacy)
//!    vnet0 = tap with IFF_VNET_HDR                 or with vnet header + TUN_F_CSUM (Modern)
//!       |   TUNSETOFFLOAD TUN_F_CSUM (On) / 0 (Off)
//!       +--> relay thread ("vhost") holding both tap fds
//! ```
//!
//! Host -> guest frames lose their 10-byte `virtio_net_hdr` (Legacy) or keep
//! it (Modern); guest -> host frames get a zero header (Legacy) or keep
//! theirs (Modern). With offload on and a legacy guest, DHCP replies reach
//! the guest with an unfinished UDP checksum, as on a real KVM host.
//!
//! Everything lives in namespaces named `dfx-<pid>-<n>-h` / `-g` and a work
//! directory `/run/dhcpfix-lab/dfx-<pid>-<n>/`. [`Lab::destroy`] (or `Drop`)
//! removes them; [`install_interrupt_cleanup`] covers SIGINT/SIGTERM and
//! [`clean_stale`] covers labs whose process was SIGKILLed.

mod clients;
mod netns;
mod relay;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

pub use clients::ClientOutcome;
pub use netns::{command_in, one_line};
pub use relay::RelayStats;

/// Name of the host tap (in the host namespace).
pub const HOST_TAP: &str = "vnet0";
/// Name of the guest tap (in the guest namespace).
pub const GUEST_TAP: &str = "eth0";
/// Name of the bridge dnsmasq serves (in the host namespace).
pub const BRIDGE: &str = "br0";
/// Parent of the per-lab work directories.
pub const LAB_RUN_DIR: &str = "/run/dhcpfix-lab";
/// Prefix of every lab name (`dfx-<pid>-<n>`).
const NAME_PREFIX: &str = "dfx-";

/// Checksum offload of the host tap (`TUNSETOFFLOAD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Offload {
    /// `TUN_F_CSUM`: the host kernel may hand out CHECKSUM_PARTIAL frames.
    On,
    /// No offload: the host kernel finishes every checksum.
    Off,
}

/// What the guest side of the relay looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GuestKind {
    /// Guest tap without vnet header: NEEDS_CSUM is lost, like an old guest
    /// whose DHCP client verifies the (unfinished) UDP checksum.
    Legacy,
    /// Guest tap with vnet header and `TUN_F_CSUM`; the header is passed
    /// through, like a guest kernel that honours NEEDS_CSUM.
    Modern,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LabOptions {
    pub offload: Offload,
    pub guest: GuestKind,
}

/// Everything that can go wrong in the lab. Messages are one line: what
/// failed, and where useful what to do.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("the network lab needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN): re-run as root")]
    NotRoot,
    #[error("{tool} not found: install {package} (cargo xtask setup does this)")]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
    },
    #[error("ip {args}: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("open /dev/net/tun: {source}: load the tun module (modprobe tun)")]
    TunOpen { source: io::Error },
    #[error("TUNSETIFF {name}: {source}")]
    TunSetIff { name: String, source: io::Error },
    #[error("TUNSETOFFLOAD {name} (flags {flags:#x}): {source}")]
    TunSetOffload {
        name: String,
        flags: u32,
        source: io::Error,
    },
    #[error("setns(CLONE_NEWNET) into {netns}: {source}")]
    Setns { netns: String, source: io::Error },
    #[error("open network namespace {path}: {source}")]
    NetnsOpen { path: PathBuf, source: io::Error },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{op}: {source}")]
    Sys { op: &'static str, source: io::Error },
    #[error("dnsmasq in {netns} exited during startup ({status}): {log}")]
    DnsmasqExited {
        netns: String,
        status: String,
        log: String,
    },
    #[error("dnsmasq in {netns} did not bind UDP port 67 within {waited:?}: {log}")]
    DnsmasqNotReady {
        netns: String,
        waited: Duration,
        log: String,
    },
    #[error("relay for {netns}: {reason}")]
    Relay { netns: String, reason: String },
    #[error("teardown of lab {lab} incomplete: {details}; once this process exits, lab::clean_stale() (or `ip netns del`) removes the rest")]
    Teardown { lab: String, details: String },
}

/// Per-process lab counter: lab names, subnets.
static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// What the signal cleanup needs to know about a live lab.
#[derive(Debug, Clone)]
struct Registered {
    host_ns: String,
    guest_ns: String,
    dir: PathBuf,
}

/// Live labs of this process, by lab number.
static REGISTRY: Mutex<BTreeMap<u32, Registered>> = Mutex::new(BTreeMap::new());

fn registry() -> std::sync::MutexGuard<'static, BTreeMap<u32, Registered>> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running lab: two namespaces, two taps, a relay thread and dnsmasq.
pub struct Lab {
    id: u32,
    name: String,
    host_ns: String,
    guest_ns: String,
    subnet: Ipv4Addr,
    opts: LabOptions,
    dir: PathBuf,
    relay: Option<relay::RelayHandle>,
    dnsmasq: Option<Child>,
    runs: AtomicU32,
    torn_down: bool,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("name", &self.name)
            .field("subnet", &self.subnet)
            .field("opts", &self.opts)
            .field("dnsmasq_pid", &self.dnsmasq_pid())
            .finish_non_exhaustive()
    }
}

impl Lab {
    /// Builds the whole topology, starts dnsmasq and the relay; ready for
    /// clients when it returns. On error, whatever was built is torn down.
    pub fn create(opts: LabOptions) -> Result<Lab, LabError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(LabError::NotRoot);
        }
        netns::find_tool("ip", "iproute2")?;
        netns::find_tool("dnsmasq", "dnsmasq-base")?;

        let id = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NAME_PREFIX}{}-{id}", std::process::id());
        let subnet = Ipv4Addr::new(10, 199, (id % 250) as u8, 0);
        let mut lab = Lab {
            id,
            host_ns: format!("{name}-h"),
            guest_ns: format!("{name}-g"),
            dir: Path::new(LAB_RUN_DIR).join(&name),
            name,
            subnet,
            opts,
            relay: None,
            dnsmasq: None,
            runs: AtomicU32::new(0),
            torn_down: false,
        };
        // Registered before anything exists, so an interrupt during create
        // still cleans up; `lab` itself tears down on any `?` below.
        registry().insert(
            id,
            Registered {
                host_ns: lab.host_ns.clone(),
                guest_ns: lab.guest_ns.clone(),
                dir: lab.dir.clone(),
            },
        );
        lab.build()?;
        log::info!(
            "lab {} up: {:?}, subnet {}/24, netns {} / {}",
            lab.name,
            opts,
            subnet,
            lab.host_ns,
            lab.guest_ns
        );
        Ok(lab)
    }

    fn build(&mut self) -> Result<(), LabError> {
        // Same pid + same counter can only be a leftover of a dead process
        // that had our pid: remove it.
        for ns in [&self.host_ns, &self.guest_ns] {
            if netns::exists(ns) {
                netns::kill_all_in(ns, Duration::from_secs(1));
                netns::delete(ns)?;
            }
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|source| LabError::Io {
                op: "mkdir",
                path: self.dir.clone(),
                source,
            })?;
        clients::write_noop_script(&self.dir)?;

        netns::add(&self.host_ns)?;
        netns::add(&self.guest_ns)?;

        self.relay = Some(relay::start(relay::RelayConfig {
            host_ns: netns::open(&self.host_ns)?,
            host_ns_name: self.host_ns.clone(),
            guest_ns: netns::open(&self.guest_ns)?,
            guest_ns_name: self.guest_ns.clone(),
            host_tap: HOST_TAP.into(),
            guest_tap: GUEST_TAP.into(),
            offload: self.opts.offload,
            guest: self.opts.guest,
        })?);

        let h = self.host_ns.as_str();
        let g = self.guest_ns.as_str();
        let cidr = format!("{}/24", self.gateway());
        netns::ip_in(h, &["link", "set", "lo", "up"])?;
        netns::ip_in(h, &["link", "add", BRIDGE, "type", "bridge", "stp_state", "0"])?;
        netns::ip_in(h, &["addr", "add", &cidr, "dev", BRIDGE])?;
        netns::ip_in(h, &["link", "set", HOST_TAP, "master", BRIDGE])?;
        netns::ip_in(h, &["link", "set", HOST_TAP, "up"])?;
        netns::ip_in(h, &["link", "set", BRIDGE, "up"])?;
        netns::ip_in(g, &["link", "set", "lo", "up"])?;
        netns::ip_in(g, &["link", "set", GUEST_TAP, "up"])?;

        self.dnsmasq = Some(clients::start_dnsmasq(self)?);
        Ok(())
    }

    /// Name of the host namespace (under `/run/netns`).
    pub fn host_netns(&self) -> &str {
        &self.host_ns
    }

    /// Name of the guest namespace (under `/run/netns`).
    pub fn guest_netns(&self) -> &str {
        &self.guest_ns
    }

    /// `/run/netns/<host_netns>`.
    pub fn host_netns_path(&self) -> PathBuf {
        netns::path(&self.host_ns)
    }

    /// `/run/netns/<guest_netns>`.
    pub fn guest_netns_path(&self) -> PathBuf {
        netns::path(&self.guest_ns)
    }

    /// The host tap (`vnet0`, in the host namespace): where a fix attaches.
    pub fn tap_name(&self) -> &str {
        HOST_TAP
    }

    /// The lab's /24, e.g. `10.199.7.0`. The bridge is `.1`, leases `.50-.150`.
    pub fn subnet(&self) -> Ipv4Addr {
        self.subnet
    }

    /// The bridge address (`.1`), which is also dnsmasq's address.
    pub fn gateway(&self) -> Ipv4Addr {
        let o = self.subnet.octets();
        Ipv4Addr::new(o[0], o[1], o[2], 1)
    }

    /// Lab name `dfx-<pid>-<n>` (the namespaces add `-h` / `-g`).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn options(&self) -> LabOptions {
        self.opts
    }

    /// Per-lab work directory (`/run/dhcpfix-lab/<name>`): dnsmasq log,
    /// leases and pid file, client config/lease files.
    pub fn work_dir(&self) -> &Path {
        &self.dir
    }

    /// Pid of the lab's dnsmasq.
    pub fn dnsmasq_pid(&self) -> Option<u32> {
        self.dnsmasq.as_ref().map(Child::id)
    }

    /// dnsmasq's log so far (`--log-dhcp` output).
    pub fn dnsmasq_log(&self) -> String {
        fs::read_to_string(self.dir.join("dnsmasq.log")).unwrap_or_default()
    }

    /// Frame counters of the relay.
    pub fn relay_stats(&self) -> RelayStats {
        self.relay
            .as_ref()
            .map(relay::RelayHandle::stats)
            .unwrap_or_default()
    }

    pub(crate) fn next_run(&self) -> u32 {
        self.runs.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs ISC dhclient once in the guest namespace (no-op script, fresh
    /// lease file) and kills it when it is bound or at `timeout`.
    /// Do not run two clients of one lab at the same time.
    pub fn run_dhclient(&self, timeout: Duration) -> Result<ClientOutcome, LabError> {
        clients::run_dhclient(self, timeout)
    }

    /// Runs `busybox udhcpc -f -q -n` once in the guest namespace (no-op
    /// script); killed at `timeout` if still running.
    pub fn run_udhcpc(&self, timeout: Duration) -> Result<ClientOutcome, LabError> {
        clients::run_udhcpc(self, timeout)
    }

    /// A command that runs in the host namespace: the child does
    /// setns(CLONE_NEWNET) before exec instead of `ip netns exec`, so it
    /// keeps the caller's mount namespace (bpffs mounts stay visible and
    /// persist). Note `/sys/class/net` in the child still shows the caller's
    /// namespace; netlink and ioctls see the lab.
    pub fn host_command(&self, program: impl AsRef<OsStr>) -> Command {
        netns::command_in(&self.host_netns_path(), program)
    }

    /// Like [`Lab::host_command`], for the guest namespace.
    pub fn guest_command(&self, program: impl AsRef<OsStr>) -> Command {
        netns::command_in(&self.guest_netns_path(), program)
    }

    /// A pin directory for dhcpfix inside the lab's work directory; the lab
    /// unmounts whatever bpffs is mounted there when it is torn down.
    pub fn pin_dir(&self) -> PathBuf {
        self.dir.join("bpf")
    }

    /// Explicit teardown; `Drop` does the same and logs errors.
    pub fn destroy(mut self) -> Result<(), LabError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), LabError> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let mut problems = Vec::new();

        if let Some(mut relay) = self.relay.take() {
            if let Err(e) = relay.stop() {
                problems.push(e);
            }
        }
        if let Some(mut child) = self.dnsmasq.take() {
            if let Err(e) = stop_child(&mut child, Duration::from_secs(2)) {
                problems.push(format!("stop dnsmasq: {e}"));
            }
        }
        for ns in [&self.host_ns, &self.guest_ns] {
            let killed = netns::kill_all_in(ns, Duration::from_secs(2));
            if killed > 0 {
                log::debug!("lab {}: killed {killed} leftover process(es) in {ns}", self.name);
            }
            if let Err(e) = netns::delete(ns) {
                problems.push(e.to_string());
            }
        }
        problems.extend(unmount_below(&self.dir));
        if self.dir.exists() {
            if let Err(e) = fs::remove_dir_all(&self.dir) {
                problems.push(format!("remove {}: {e}", self.dir.display()));
            }
        }
        registry().remove(&self.id);

        if problems.is_empty() {
            log::info!("lab {} torn down", self.name);
            Ok(())
        } else {
            Err(LabError::Teardown {
                lab: self.name.clone(),
                details: problems.join("; "),
            })
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            log::error!("{e}");
        }
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL; always reaps.
fn stop_child(child: &mut Child, grace: Duration) -> io::Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on our own, not yet reaped, child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(20));
    }
    child.kill()?;
    child.wait().map(drop)
}

/// Force-removes a lab known only by names: kills every process in its
/// namespaces, deletes them, removes the work directory.
fn force_remove(host_ns: &str, guest_ns: &str, dir: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for ns in [host_ns, guest_ns] {
        netns::kill_all_in(ns, Duration::from_secs(2));
        if let Err(e) = netns::delete(ns) {
            problems.push(e.to_string());
        }
    }
    problems.extend(unmount_below(dir));
    if dir.exists() {
        if let Err(e) = fs::remove_dir_all(dir) {
            problems.push(format!("remove {}: {e}", dir.display()));
        }
    }
    problems
}

/// Detaches every mount at or below `dir` (a lab's or the bench's bpffs pin
/// directory), deepest first, so the directory can be removed and its pins
/// released. Returns one line per mount that could not be detached.
pub fn unmount_below(dir: &Path) -> Vec<String> {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    let mut problems = Vec::new();
    for point in points {
        let Ok(c) = std::ffi::CString::new(point.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: `c` is a valid NUL-terminated path.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            problems.push(format!(
                "umount2 {}: {}",
                point.display(),
                io::Error::last_os_error()
            ));
        }
    }
    problems
}

/// Parses `dfx-<pid>-<n>` into (pid, n).
fn parse_lab_name(name: &str) -> Option<(i32, u32)> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let (pid, n) = rest.split_once('-')?;
    Some((pid.parse().ok()?, n.parse().ok()?))
}

/// Removes leftovers of labs whose creating process is dead (the pid is in
/// the names): processes in their namespaces (dnsmasq, clients), the
/// namespaces, and work directories. Returns the number of labs removed.
/// Labs of live processes, including this one, are never touched.
pub fn clean_stale() -> Result<usize, LabError> {
    let mut stale: BTreeSet<String> = BTreeSet::new();
    for dir in [netns::NETNS_DIR, LAB_RUN_DIR] {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(LabError::Io {
                    op: "read directory",
                    path: dir.into(),
                    source,
                })
            }
        };
        for entry in entries.flatten() {
            let file = entry.file_name();
            let Some(file) = file.to_str() else { continue };
            let lab = file
                .strip_suffix("-h")
                .or_else(|| file.strip_suffix("-g"))
                .unwrap_or(file);
            if let Some((pid, _)) = parse_lab_name(lab) {
                if !netns::pid_alive(pid) {
                    stale.insert(lab.to_owned());
                }
            }
        }
    }

    let mut problems = Vec::new();
    for lab in &stale {
        let dir = Path::new(LAB_RUN_DIR).join(lab);
        problems.extend(force_remove(&format!("{lab}-h"), &format!("{lab}-g"), &dir));
        log::info!("removed stale lab {lab}");
    }
    if problems.is_empty() {
        Ok(stale.len())
    } else {
        Err(LabError::Teardown {
            lab: stale.into_iter().collect::<Vec<_>>().join(","),
            details: problems.join("; "),
        })
    }
}

/// Tears down every live lab of this process right now (for callers that do
/// their own signal handling). Later `destroy`/`Drop` of those labs then
/// only release what is left in memory.
pub fn cleanup_registered_labs() {
    let labs: Vec<Registered> = std::mem::take(&mut *registry()).into_values().collect();
    for r in labs {
        for p in force_remove(&r.host_ns, &r.guest_ns, &r.dir) {
            log::error!("lab cleanup: {p}");
        }
    }
}

/// Write end of the self-pipe the signal handler writes the signal number to.
static SIGNAL_PIPE_WR: AtomicI32 = AtomicI32::new(-1);
/// Set by the first SIGINT/SIGTERM; a second one kills the process at once.
static SIGNAL_SEEN: AtomicBool = AtomicBool::new(false);
static SIGNAL_INSTALLED: Mutex<bool> = Mutex::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    if SIGNAL_SEEN.swap(true, Ordering::SeqCst) {
        // Second signal while cleaning up: default action now.
        // SAFETY: signal(2) and raise(3) are async-signal-safe.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
        return;
    }
    let fd = SIGNAL_PIPE_WR.load(Ordering::SeqCst);
    if fd >= 0 {
        let byte = sig as u8;
        // SAFETY: errno access and write(2) are async-signal-safe; `byte`
        // lives across the call; the fd is non-blocking.
        unsafe {
            let errno = libc::__errno_location();
            let saved = *errno;
            libc::write(fd, (&byte as *const u8).cast(), 1);
            *errno = saved;
        }
    }
}

/// Installs SIGINT/SIGTERM handling that tears down all live labs of this
/// process, then re-raises the signal with its default action (so the exit
/// status still says "killed by SIGINT"). Idempotent. A second signal during
/// cleanup terminates immediately. This replaces existing handlers for those
/// two signals, so programs with their own signal handling should instead
/// call [`cleanup_registered_labs`] themselves.
pub fn install_interrupt_cleanup() -> Result<(), LabError> {
    let mut installed = SIGNAL_INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if *installed {
        return Ok(());
    }
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid 2-element array for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(LabError::Sys {
            op: "pipe2",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: pipe2 just returned these two fresh descriptors; each gets
    // exactly one owner.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let wr_raw = std::os::fd::AsRawFd::as_raw_fd(&wr);
    // SAFETY: fcntl on a descriptor we own; no pointers.
    if unsafe { libc::fcntl(wr_raw, libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
        return Err(LabError::Sys {
            op: "fcntl(O_NONBLOCK) on signal pipe",
            source: io::Error::last_os_error(),
        });
    }

    thread::Builder::new()
        .name("lab-signals".into())
        .spawn(move || signal_thread(rd))
        .map_err(|source| LabError::Sys {
            op: "spawn signal thread",
            source,
        })?;
    // The write end lives for the rest of the process.
    SIGNAL_PIPE_WR.store(std::os::fd::IntoRawFd::into_raw_fd(wr), Ordering::SeqCst);

    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is a valid starting point; we set a
        // handler that only performs async-signal-safe operations.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(LabError::Sys {
                op: "sigaction",
                source: io::Error::last_os_error(),
            });
        }
    }
    *installed = true;
    Ok(())
}

fn signal_thread(rd: OwnedFd) {
    let raw = std::os::fd::AsRawFd::as_raw_fd(&rd);
    loop {
        let mut byte = 0u8;
        // SAFETY: reads one byte into a live local.
        let n = unsafe { libc::read(raw, (&mut byte as *mut u8).cast(), 1) };
        if n == 1 {
            let sig = libc::c_int::from(byte);
            eprintln!("dhcpfix lab: signal {sig}, tearing down labs");
            cleanup_registered_labs();
            // SAFETY: restore the default action and re-raise so the process
            // dies the way the sender intended.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
                libc::raise(sig);
            }
            std::process::exit(128 + sig);
        }
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_lab_name;

    #[test]
    fn lab_names() {
        assert_eq!(parse_lab_name("dfx-1234-7"), Some((1234, 7)));
        assert_eq!(parse_lab_name("dfx-1234"), None);
        assert_eq!(parse_lab_name("other-1-2"), None);
    }
}
