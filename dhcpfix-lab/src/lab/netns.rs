//! Network-namespace helpers: `ip` invocations, namespace fds, per-thread
//! `setns`, commands that run inside a namespace without `ip netns exec`, and
//! finding/killing the processes that live in a namespace.

use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use super::LabError;

/// Where `ip netns` keeps its named namespaces.
pub(crate) const NETNS_DIR: &str = "/run/netns";

/// `ip netns add` mounts `/run/netns` on first use; two concurrent first
/// uses can stack two mounts there. Serialise add/del inside this process.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

pub(crate) fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

pub(crate) fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Locates a program in `$PATH`, falling back to the sbin directories that a
/// non-login root shell may lack.
pub(crate) fn find_tool(tool: &'static str, package: &'static str) -> Result<PathBuf, LabError> {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path_var).chain(
        ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .map(PathBuf::from),
    );
    for dir in dirs {
        let candidate = dir.join(tool);
        if let Ok(meta) = fs::metadata(&candidate) {
            if meta.is_file() && meta.mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    Err(LabError::ToolMissing { tool, package })
}

/// Runs `ip <args>`; a non-zero exit becomes [`LabError::Ip`] with stderr.
pub(crate) fn ip(args: &[&str]) -> Result<(), LabError> {
    let ip = find_tool("ip", "iproute2")?;
    let out = Command::new(ip)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            program: "ip".into(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LabError::Ip {
            args: args.join(" "),
            stderr: one_line(&String::from_utf8_lossy(&out.stderr)),
        })
    }
}

/// `ip -n <ns> <args>`.
pub(crate) fn ip_in(ns: &str, args: &[&str]) -> Result<(), LabError> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    ip(&full)
}

pub(crate) fn add(name: &str) -> Result<(), LabError> {
    let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    ip(&["netns", "add", name])
}

/// Deletes a named namespace; a missing one is not an error.
pub(crate) fn delete(name: &str) -> Result<(), LabError> {
    let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if !exists(name) {
        return Ok(());
    }
    ip(&["netns", "del", name])
}

pub(crate) fn open(name: &str) -> Result<OwnedFd, LabError> {
    let p = path(name);
    fs::File::open(&p)
        .map(OwnedFd::from)
        .map_err(|source| LabError::NetnsOpen { path: p, source })
}

/// Moves the *calling thread* into the network namespace behind `fd`.
pub(crate) fn enter(fd: BorrowedFd<'_>, name: &str) -> Result<(), LabError> {
    // SAFETY: `fd` is a valid open descriptor for the borrow's lifetime;
    // setns only changes the calling thread's network namespace.
    let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(LabError::Setns {
            netns: name.to_owned(),
            source: io::Error::last_os_error(),
        })
    }
}

/// A command whose child joins the named network namespace right before
/// `exec` (setns in `pre_exec`). Unlike `ip netns exec`, the child keeps the
/// caller's mount namespace, so bpffs mounts stay visible and persist; the
/// flip side is that `/sys/class/net` still shows the caller's namespace
/// (netlink, ioctls and `/proc/self/net` are correct).
pub fn command_in(ns_path: &Path, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    // Interior NULs cannot occur in a path built by this module; if they do,
    // the child fails with EINVAL instead of running in the wrong namespace.
    let c_path = CString::new(ns_path.as_os_str().as_bytes()).ok();
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

/// Pids (other than our own) whose main thread lives in the named namespace.
pub(crate) fn pids_in(name: &str) -> Vec<i32> {
    let Some(target) = ns_id(&path(name)) else {
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

/// SIGKILLs every process in the namespace and waits (up to `wait`) until
/// they are gone or zombies. Returns how many were signalled.
pub(crate) fn kill_all_in(name: &str, wait: Duration) -> usize {
    let pids = pids_in(name);
    for &pid in &pids {
        // SAFETY: plain kill(2) on a pid we just found; no memory involved.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    let deadline = Instant::now() + wait;
    while !pids.iter().all(|&p| is_gone(p)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    pids.len()
}

/// True if a process with this pid exists (EPERM counts as alive).
pub(crate) fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence/permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// An eventfd (CLOEXEC), used to stop the relay thread.
pub(crate) fn eventfd() -> Result<OwnedFd, LabError> {
    // SAFETY: eventfd has no pointer arguments.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(LabError::Sys {
            op: "eventfd",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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
