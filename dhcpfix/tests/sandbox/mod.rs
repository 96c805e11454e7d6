//! A bare network namespace and a work directory for the robustness tests
//! (`datapath_kernel.rs`, `faults.rs`, `security.rs`): no DHCP server, no
//! relay, just what each test builds in it. Everything is removed on drop,
//! and leftovers of a test process that was killed are removed by the next
//! one.
#![allow(dead_code)]

use std::{
    ffi::OsStr,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex, Once,
    },
    thread,
    time::{Duration, Instant},
};

use crate::support::{self, ip_output};

pub use crate::support::BIN;
pub use dhcpfix_lab::lab::unmount_below;

/// Parent of the sandboxes' work directories.
const RUN_DIR: &str = "/run/dhcpfix-robust";
const PREFIX: &str = "dfxr-";

static NEXT: AtomicU32 = AtomicU32::new(0);
/// `ip netns add` mounts /run/netns on first use: serialise add/del.
static NETNS_LOCK: Mutex<()> = Mutex::new(());
static STALE: Once = Once::new();

/// One test's network namespace (`dfxr-<pid>-<n>`) and work directory
/// (`/run/dhcpfix-robust/dfxr-<pid>-<n>`, mode 0755).
pub struct Sandbox {
    pub name: String,
    pub dir: PathBuf,
}

/// SIGKILLs every process whose network namespace is `ns`, then waits a
/// moment for them to go.
fn kill_all_in(ns: &Path) {
    let Ok(target) = fs::metadata(ns) else { return };
    let me = std::process::id();
    use std::os::unix::fs::MetadataExt;
    let pids: Vec<i32> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid as u32 != me)
        .filter(|pid| {
            fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| (m.dev(), m.ino()) == (target.dev(), target.ino()))
        })
        .collect();
    for pid in &pids {
        // SAFETY: kill(2) on a process inside a namespace this test made.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    if !pids.is_empty() {
        thread::sleep(Duration::from_millis(100));
    }
}

fn remove(name: &str, dir: &Path) {
    let ns = Path::new("/run/netns").join(name);
    kill_all_in(&ns);
    {
        let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        if ns.exists() {
            ip_output(&["netns", "del", name]);
        }
    }
    unmount_below(dir);
    let _ = fs::remove_dir_all(dir);
}

/// Removes sandboxes of test processes that are gone.
fn clean_stale() {
    for parent in ["/run/netns", RUN_DIR] {
        for entry in fs::read_dir(parent).into_iter().flatten().flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = file.strip_prefix(PREFIX) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                remove(&file, &Path::new(RUN_DIR).join(&file));
            }
        }
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        STALE.call_once(clean_stale);
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = Path::new(RUN_DIR).join(&name);
        fs::create_dir_all(&dir).expect("create sandbox directory");
        for d in [Path::new(RUN_DIR), &dir] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        }
        {
            let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            let out = ip_output(&["netns", "add", &name]);
            assert!(
                out.status.success(),
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let sb = Sandbox { name, dir };
        sb.ip(&["link", "set", "lo", "up"]);
        sb
    }

    pub fn ns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// A pin directory for dhcpfix (bpffs is mounted there by dhcpfix).
    pub fn pin_dir(&self) -> PathBuf {
        self.dir.join("bpf")
    }

    /// `ip -n <sandbox> ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        support::ip_in(&self.name, args);
    }

    pub fn try_ip(&self, args: &[&str]) -> Output {
        ip_output(&[&["-n", self.name.as_str()], args].concat())
    }

    /// A persistent tap (no process holds it; enough to attach to).
    pub fn add_tap(&self, name: &str) {
        self.ip(&["tuntap", "add", "dev", name, "mode", "tap"]);
    }

    pub fn del_link(&self, name: &str) {
        self.ip(&["link", "del", name]);
    }

    /// A command whose child enters the sandbox's network namespace right
    /// before exec, keeping this process's mount namespace (so bpffs
    /// mounts it makes stay visible to the test).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        command_in(&self.ns_path(), program)
    }

    /// `dhcpfix --pin-dir PINS ARGS` in the sandbox.
    pub fn dhcpfix_cmd(&self, pins: &Path, args: &[&str]) -> Command {
        let mut cmd = self.command(BIN);
        cmd.arg("--pin-dir").arg(pins).args(args);
        cmd
    }

    /// Runs `dhcpfix --pin-dir PINS ARGS`, echoing its output.
    pub fn dhcpfix(&self, pins: &Path, args: &[&str]) -> Output {
        support::run_dhcpfix(self.command(BIN), pins, args)
    }

    pub fn dhcpfix_ok(&self, pins: &Path, args: &[&str]) -> String {
        support::run_dhcpfix_ok(self.command(BIN), pins, args)
    }

    /// Runs `f` on a thread that has entered the sandbox's network
    /// namespace (sockets, tap fds and ioctls made there belong to it).
    pub fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        support::in_netns(&self.ns_path(), f)
    }

    /// The ifindex of `iface` in the sandbox.
    pub fn ifindex(&self, iface: &str) -> Option<u32> {
        let iface = iface.to_owned();
        self.in_netns(move || dhcpfix::sys::ifindex(&iface))
    }

    /// Names of the tcx programs at the egress of `iface`, as the kernel
    /// lists them; `None` if the interface does not exist.
    pub fn tcx_programs(&self, iface: &str) -> Option<Vec<String>> {
        support::tcx_programs(&self.ns_path(), iface)
    }

    /// Waits (up to `timeout`) until `iface` has exactly the programs
    /// `want` (a pin removal releases a link a moment later).
    pub fn wait_programs(&self, iface: &str, want: &[&str], timeout: Duration) -> Vec<String> {
        let start = Instant::now();
        loop {
            let now = self.tcx_programs(iface).unwrap_or_default();
            if now == want || start.elapsed() > timeout {
                return now;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// See [`Sandbox::command`]: a command run in the network namespace `ns`.
pub fn command_in(ns: &Path, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = dhcpfix_lab::lab::command_in(ns, program);
    cmd.stdin(Stdio::null());
    cmd
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        remove(&self.name, &self.dir);
    }
}

/// The interface a pinned tcx link is attached to (0: its interface is
/// gone); `None` if there is no such pin.
pub fn pinned_link_ifindex(pins: &Path, iface: &str) -> Option<u32> {
    let fd = dhcpfix::sys::obj_get(&pins.join("links").join(iface)).ok()?;
    dhcpfix::sys::link_info(&fd).ok().map(|i| i.ifindex)
}

/// Polls `done` every 5 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, done: impl FnMut() -> bool) -> bool {
    support::poll(timeout, Duration::from_millis(5), done).is_some()
}

/// Asserts `stderr` is one line, with no panic in it.
pub fn assert_one_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr).into_owned();
    assert!(!text.contains("panicked"), "dhcpfix panicked: {text}");
    assert_eq!(text.trim_end().lines().count(), 1, "not one line: {text:?}");
    text.trim_end().to_owned()
}

/// A running `dhcpfix run`, its stderr (the log) going to a file.
pub struct Agent {
    pub child: std::process::Child,
    pub log: PathBuf,
}

static AGENTS: AtomicU32 = AtomicU32::new(0);

impl Agent {
    /// Starts `dhcpfix --pin-dir PINS run ARGS` in the sandbox, behind
    /// `wrapper` (e.g. setpriv or strace) if given.
    pub fn start(sb: &Sandbox, pins: &Path, args: &[&str], wrapper: &[&str]) -> Agent {
        let n = AGENTS.fetch_add(1, Ordering::Relaxed);
        let log = sb.dir.join(format!("agent-{n}.log"));
        let child = support::spawn_agent(|p| sb.command(p), wrapper, pins, args, &log);
        Agent { child, log }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("wait for the agent")
    }

    /// Waits for the end of start-up (the first full pass).
    pub fn wait_running(&mut self) {
        let up = wait_until(Duration::from_secs(15), || {
            self.log().contains("running: ") || self.child.try_wait().ok().flatten().is_some()
        });
        assert!(
            up && self.exited().is_none(),
            "the agent did not start:\n{}",
            self.log()
        );
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Sends `sig`, waits (up to 5 s) for the exit; returns the status and
    /// the log, which must not show a panic.
    pub fn stop(self, sig: libc::c_int) -> (std::process::ExitStatus, String) {
        self.signal(sig);
        self.wait_exit(sig)
    }

    /// Like [`Agent::stop`] for an agent started behind a wrapper (strace):
    /// signals the wrapper's child, the agent itself.
    pub fn stop_wrapped(self, sig: libc::c_int) -> (std::process::ExitStatus, String) {
        let pid = self.child.id();
        let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let inner: i32 = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the wrapper has no child");
        // SAFETY: kill(2) on a process this test started (through the wrapper).
        assert_eq!(unsafe { libc::kill(inner, sig) }, 0);
        self.wait_exit(sig)
    }

    fn wait_exit(mut self, sig: libc::c_int) -> (std::process::ExitStatus, String) {
        let mut status = None;
        wait_until(Duration::from_secs(5), || {
            status = self.exited();
            status.is_some()
        });
        let log = self.log();
        let Some(status) = status else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!("the agent did not exit within 5 s of signal {sig}:\n{log}");
        };
        assert!(!log.contains("panicked"), "the agent panicked:\n{log}");
        (status, log)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
