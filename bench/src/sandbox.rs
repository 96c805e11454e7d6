//! Everything the bench creates outside its own memory, and its teardown:
//! network namespaces named `dfb-<pid>-<tag><n>` and a bpffs mounted at
//! `/run/dhcpfix-bench/<pid>/bpf` that holds every pin directory.
//!
//! All of it goes away when its owner is dropped, on SIGINT/SIGTERM
//! (a signal thread tears down whatever is registered, then exits), and for
//! a run that was SIGKILLed, at the start of the next run ([`clean_stale`]).

use std::{
    collections::BTreeSet,
    ffi::CString,
    fs, io,
    os::unix::fs::{DirBuilderExt, MetadataExt},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex, MutexGuard, Once,
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    error::{BenchError, Result},
    process::{self, find_tool},
};

/// Parent of the per-run directories (one per bench process).
pub const RUN_DIR: &str = "/run/dhcpfix-bench";
const NETNS_DIR: &str = "/run/netns";
const PREFIX: &str = "dfb-";
const IP_LIMIT: Duration = Duration::from_secs(60);

/// What the signal thread must tear down.
#[derive(Default)]
struct Registry {
    netns: BTreeSet<String>,
    dirs: BTreeSet<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    netns: BTreeSet::new(),
    dirs: BTreeSet::new(),
});
static SIGNALS: Once = Once::new();

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// The bench's own corner of the machine.
pub struct Sandbox {
    dir: PathBuf,
    bpf: PathBuf,
    next: AtomicU32,
}

impl Sandbox {
    /// Checks privileges and tools, removes leftovers of dead runs, installs
    /// the signal cleanup and mounts the bench's bpffs.
    pub fn create() -> Result<Sandbox> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(BenchError::NotRoot);
        }
        find_tool("ip", "iproute2")?;
        clean_stale();
        install_signal_cleanup()?;
        let dir = Path::new(RUN_DIR).join(std::process::id().to_string());
        // A run of ours that died without cleanup and had our pid.
        teardown_dir(&dir);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(BenchError::io("mkdir", &dir))?;
        registry().dirs.insert(dir.clone());
        let bpf = dir.join("bpf");
        fs::create_dir(&bpf).map_err(BenchError::io("mkdir", &bpf))?;
        mount_bpffs(&bpf)?;
        Ok(Sandbox {
            dir,
            bpf,
            next: AtomicU32::new(0),
        })
    }

    fn next(&self) -> u32 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// A new, empty network namespace with loopback up.
    pub fn netns(&self, tag: &str) -> Result<Netns> {
        let name = format!("{PREFIX}{}-{tag}{}", std::process::id(), self.next());
        registry().netns.insert(name.clone());
        let ns = Netns {
            path: Path::new(NETNS_DIR).join(&name),
            name,
        };
        ip(&["netns", "add", &ns.name])?;
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A file in the bench's run directory (logs of children).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A fresh pin directory path on the bench's bpffs (dhcpfix creates it).
    pub fn pin_dir(&self, tag: &str) -> PathBuf {
        self.bpf.join(format!("{tag}{}", self.next()))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        teardown_dir(&self.dir);
        registry().dirs.remove(&self.dir);
    }
}

/// A network namespace owned by the bench; deleted (with every process in
/// it) on drop.
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, for setns.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// `ip -n <ns> -batch -` with these lines on stdin.
    pub fn ip_batch(&self, lines: &str) -> Result<()> {
        let ip = find_tool("ip", "iproute2")?;
        let mut cmd = Command::new(ip);
        cmd.args(["-n", &self.name, "-batch", "-"]);
        process::run(&mut cmd, Some(lines.as_bytes()), IP_LIMIT).map(drop)
    }

    /// A command that runs inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        dhcpfix_lab::kit::netns::command_in(&self.path, program)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove_netns(&self.name);
        registry().netns.remove(&self.name);
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let ip = find_tool("ip", "iproute2")?;
    process::run(Command::new(ip).args(args), None, IP_LIMIT).map(drop)
}

/// Kills every process in the namespace, then deletes it.
fn remove_netns(name: &str) {
    let path = Path::new(NETNS_DIR).join(name);
    if !path.exists() {
        return;
    }
    kill_all_in(&path);
    // Not through process::run, which refuses to start anything once the
    // signal cleanup runs.
    let deleted = find_tool("ip", "iproute2").and_then(|ip| {
        Command::new(ip)
            .args(["netns", "del", name])
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|source| BenchError::Spawn {
                program: "ip netns del".into(),
                source,
            })
    });
    match deleted {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "dhcpfix-bench: cleanup: ip netns del {name}: {}",
            dhcpfix_lab::kit::one_line(&String::from_utf8_lossy(&out.stderr))
        ),
        Err(e) => eprintln!("dhcpfix-bench: cleanup: {e}"),
    }
}

fn ns_id(p: &Path) -> Option<(u64, u64)> {
    fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// SIGKILLs every process (but us) whose network namespace is `ns_path`,
/// and waits up to 2 s for them to go.
fn kill_all_in(ns_path: &Path) {
    let Some(target) = ns_id(ns_path) else { return };
    let me = std::process::id() as i32;
    let Ok(proc_dir) = fs::read_dir("/proc") else {
        return;
    };
    let pids: Vec<i32> = proc_dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| ns_id(Path::new(&format!("/proc/{pid}/ns/net"))) == Some(target))
        .collect();
    for &pid in &pids {
        // SAFETY: plain kill(2) on a pid just found; no memory involved.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline
        && pids
            .iter()
            .any(|p| ns_id(Path::new(&format!("/proc/{p}/ns/net"))) == Some(target))
    {
        thread::sleep(Duration::from_millis(10));
    }
}

fn mount_bpffs(path: &Path) -> Result<()> {
    let target = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| BenchError::io("mount bpffs at", path)(io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: all pointers are valid NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(BenchError::io("mount(2) bpffs at", path)(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Detaches every mount at or below `dir`, deepest first, then removes it.
fn teardown_dir(dir: &Path) {
    for problem in dhcpfix_lab::kit::unmount_below(dir) {
        eprintln!("dhcpfix-bench: cleanup: {problem}");
    }
    if dir.exists() {
        if let Err(e) = fs::remove_dir_all(dir) {
            eprintln!("dhcpfix-bench: cleanup: remove {}: {e}", dir.display());
        }
    }
}

/// Tears down everything registered (signal path), while the main thread
/// may still be running: no new children first, then the namespaces with
/// every process in them, then the mounts.
fn teardown_registered() {
    process::refuse_new_children();
    // A child being spawned right now gets into its namespace before the
    // kill below finds it.
    thread::sleep(Duration::from_millis(100));
    let taken = std::mem::take(&mut *registry());
    for ns in &taken.netns {
        remove_netns(ns);
    }
    for dir in &taken.dirs {
        teardown_dir(dir);
    }
}

fn install_signal_cleanup() -> Result<()> {
    let mut result = Ok(());
    SIGNALS.call_once(|| {
        let signals = match signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM]) {
            Ok(s) => s,
            Err(e) => {
                result = Err(BenchError::sys("installing SIGINT/SIGTERM handlers")(e));
                return;
            }
        };
        let mut signals = signals;
        let spawned = thread::Builder::new()
            .name("bench-signals".into())
            .spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    eprintln!("dhcpfix-bench: signal {sig}: tearing down namespaces and mounts");
                    teardown_registered();
                    std::process::exit(128 + sig);
                }
            });
        if let Err(e) = spawned {
            result = Err(BenchError::sys("spawn signal thread")(e));
        }
    });
    result
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// The pid in a name `dfb-<pid>-...` or a directory name `<pid>`.
fn owner_pid(name: &str) -> Option<i32> {
    match name.strip_prefix(PREFIX) {
        Some(rest) => rest.split('-').next()?.parse().ok(),
        None => name.parse().ok(),
    }
}

/// Removes namespaces and run directories of bench processes that are gone.
pub fn clean_stale() {
    if let Ok(entries) = fs::read_dir(NETNS_DIR) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(PREFIX) && owner_pid(&name).is_some_and(|p| !pid_alive(p)) {
                eprintln!("dhcpfix-bench: removing stale namespace {name}");
                remove_netns(&name);
            }
        }
    }
    if let Ok(entries) = fs::read_dir(RUN_DIR) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if owner_pid(&name).is_some_and(|p| !pid_alive(p)) {
                eprintln!("dhcpfix-bench: removing stale {}", e.path().display());
                teardown_dir(&e.path());
            }
        }
    }
}
