//! Named network namespaces (`ip netns`), entering one on a thread,
//! commands that run inside one without `ip netns exec`, and finding and
//! killing the processes that live in one.

use std::{
    ffi::{CString, OsStr},
    fs, io,
    os::{
        fd::AsRawFd,
        unix::{ffi::OsStrExt, fs::MetadataExt, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use super::{find_tool, one_line, process, KitError};

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// Time limit of one `ip` command.
const IP_LIMIT: Duration = Duration::from_secs(60);

/// `ip netns add` mounts `/run/netns` on first use; two concurrent first
/// uses can stack two mounts there. Every add and delete of this process
/// goes through this lock.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

/// `/run/netns/<name>`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// `ip ARGS`; a non-zero exit is an error carrying stderr.
pub fn ip(args: &[&str]) -> Result<(), KitError> {
    let ip = find_tool("ip", "iproute2")?;
    process::run(Command::new(ip).args(args), None, IP_LIMIT).map(drop)
}

/// `ip -n NS ARGS`.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<(), KitError> {
    ip(&[&["-n", ns], args].concat())
}

/// `ip ARGS` inside the namespace at `ns` (any nsfs file, such as
/// `/proc/PID/ns/net`, which `ip -n` does not take).
pub fn ip_at(ns: &Path, args: &[&str]) -> Result<(), KitError> {
    let ip = find_tool("ip", "iproute2")?;
    process::run(command_in(ns, ip).args(args), None, IP_LIMIT).map(drop)
}

/// `ip -n NS -batch -` with these lines on stdin.
pub fn ip_batch(ns: &str, lines: &str) -> Result<(), KitError> {
    let ip = find_tool("ip", "iproute2")?;
    let mut cmd = Command::new(ip);
    cmd.args(["-n", ns, "-batch", "-"]);
    process::run(&mut cmd, Some(lines.as_bytes()), IP_LIMIT).map(drop)
}

/// `ip netns add NAME`.
pub fn add(name: &str) -> Result<(), KitError> {
    let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    ip(&["netns", "add", name])
}

/// `ip netns del NAME`; a missing namespace is not an error. Runs even
/// while the process shuts down (it is part of the cleanup).
pub fn delete(name: &str) -> Result<(), KitError> {
    let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if !path(name).exists() {
        return Ok(());
    }
    let ip = find_tool("ip", "iproute2")?;
    let mut cmd = Command::new(ip);
    cmd.args(["netns", "del", name]).stdin(Stdio::null());
    let out = cmd.output().map_err(|error| KitError::Spawn {
        program: process::shown(&cmd),
        error,
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(KitError::Command {
            command: process::shown(&cmd),
            status: out.status.to_string(),
            stderr: one_line(&String::from_utf8_lossy(&out.stderr)),
        })
    }
}

/// Moves the *calling thread* into the network namespace at `ns`.
pub fn enter(ns: &Path) -> Result<(), KitError> {
    let file = fs::File::open(ns).map_err(KitError::io("open network namespace", ns))?;
    // SAFETY: `file` is an open namespace file for the duration of the
    // call; setns only changes the calling thread's network namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(KitError::io("setns(CLONE_NEWNET) into", ns)(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Runs `f` on a thread that has entered the network namespace at `ns`
/// (sockets, tap fds and ioctls made there belong to it). A panic in `f`
/// goes on in the caller.
pub fn in_netns<T: Send>(ns: &Path, f: impl FnOnce() -> T + Send) -> Result<T, KitError> {
    thread::scope(|s| {
        let inside = s.spawn(|| enter(ns).map(|()| f()));
        inside
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Starts `f` on a thread named `name` inside the network namespace at
/// `ns`; if the thread cannot enter it, `f` does not run and the thread
/// returns why.
pub fn spawn_in_netns<T, E>(
    ns: &Path,
    name: &str,
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<thread::JoinHandle<Result<T, E>>, KitError>
where
    T: Send + 'static,
    E: From<KitError> + Send + 'static,
{
    let ns = ns.to_path_buf();
    thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            enter(&ns)?;
            f()
        })
        .map_err(KitError::sys("spawn a thread"))
}

/// A command whose child joins the network namespace at `ns` right before
/// `exec` (setns in `pre_exec`), stdin closed. Unlike `ip netns exec`, the
/// child keeps the caller's mount namespace, so bpffs mounts stay visible
/// and persist; the flip side is that `/sys/class/net` still shows the
/// caller's namespace (netlink, ioctls and `/proc/self/net` are correct).
pub fn command_in(ns: &Path, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null());
    // A path with an interior NUL makes the child fail with EINVAL instead
    // of running in the wrong namespace.
    let c_path = CString::new(ns.as_os_str().as_bytes()).ok();
    // SAFETY: the closure runs in the forked child before exec and only calls
    // async-signal-safe functions (open, setns, close) on data allocated
    // before the fork; it allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(move || {
            let Some(p) = c_path.as_ref() else {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            };
            let fd = libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let rc = libc::setns(fd, libc::CLONE_NEWNET);
            let err = io::Error::last_os_error();
            libc::close(fd);
            if rc != 0 {
                return Err(err);
            }
            Ok(())
        });
    }
    cmd
}

/// (st_dev, st_ino) of a namespace file, comparable with `/proc/<pid>/ns/net`.
fn ns_id(p: &Path) -> Option<(u64, u64)> {
    fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// Pids (other than our own) whose main thread lives in the network
/// namespace at `ns`.
pub fn pids_in(ns: &Path) -> Vec<i32> {
    let Some(target) = ns_id(ns) else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    let Ok(proc_dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc_dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| ns_id(Path::new(&format!("/proc/{pid}/ns/net"))) == Some(target))
        .collect()
}

fn is_gone(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // Field 3 (after "comm)") is the state; Z = zombie, X = dead.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|st| st == "Z" || st == "X"),
    }
}

/// SIGKILLs every process in the network namespace at `ns` and waits (up
/// to `wait`) until they are gone or zombies. Returns how many were
/// signalled.
pub fn kill_all_in(ns: &Path, wait: Duration) -> usize {
    let pids = pids_in(ns);
    for &pid in &pids {
        // SAFETY: plain kill(2) on a pid just found; no memory involved.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    let deadline = Instant::now() + wait;
    while !pids.iter().all(|&p| is_gone(p)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    pids.len()
}

/// Whether a process with this pid exists (EPERM counts as alive).
pub fn pid_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}
