//! Running programs and threads inside a network namespace, with a time
//! limit, without `ip netns exec` (which would remount /sys); the commands
//! themselves come from `dhcpfix_lab::kit::netns::command_in`.

use std::{
    ffi::OsStr,
    fs,
    io::{self, Read},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::error::{BenchError, Result};

/// Locates a program in `$PATH` or the sbin directories a non-login root
/// shell may lack.
pub fn find_tool(tool: &'static str, package: &'static str) -> Result<PathBuf> {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
        .ok_or(BenchError::ToolMissing { tool, package })
}

/// Moves the calling thread into the network namespace at `ns_path`.
pub fn enter_netns(ns_path: &Path) -> Result<()> {
    let fd: OwnedFd = fs::File::open(ns_path)
        .map_err(BenchError::io("open network namespace", ns_path))?
        .into();
    // SAFETY: `fd` is an open namespace file; setns only changes the calling
    // thread's network namespace.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(BenchError::sys("setns(CLONE_NEWNET)")(io::Error::last_os_error()));
    }
    Ok(())
}

/// Runs `f` on a fresh thread inside the network namespace at `ns_path`
/// (sockets it creates belong to that namespace).
pub fn in_netns<T: Send + 'static>(
    ns_path: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = ns_path.to_path_buf();
    spawn_in_netns(&path, "netns", f)?
        .join()
        .map_err(|_| BenchError::Check("a thread inside a network namespace panicked".into()))?
}

/// Starts `f` on a named thread inside the network namespace at `ns_path`.
pub fn spawn_in_netns<T: Send + 'static>(
    ns_path: &Path,
    name: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<thread::JoinHandle<Result<T>>> {
    let path = ns_path.to_path_buf();
    thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            enter_netns(&path)?;
            f()
        })
        .map_err(BenchError::sys("spawn thread"))
}

/// How a command line is shown in errors.
pub fn shown(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Set by the signal cleanup: from then on no child is started, so none
/// can recreate what the cleanup removes (a dhcpfix mounting a bpffs on a
/// pin directory whose parent mount just went away).
static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

pub fn refuse_new_children() {
    SHUTTING_DOWN.store(true, Ordering::SeqCst);
}

/// Starts `cmd`, unless the bench is shutting down.
pub fn spawn(cmd: &mut Command) -> Result<Child> {
    if SHUTTING_DOWN.load(Ordering::SeqCst) {
        return Err(BenchError::Spawn {
            program: shown(cmd),
            source: io::Error::new(io::ErrorKind::Interrupted, "the bench is shutting down"),
        });
    }
    cmd.spawn().map_err(|source| BenchError::Spawn {
        program: shown(cmd),
        source,
    })
}

/// Runs `cmd` with stdin `input` (if any), collecting its output; killed at
/// `limit`. A non-zero exit is an error carrying stderr.
pub fn run(cmd: &mut Command, input: Option<&[u8]>, limit: Duration) -> Result<Output> {
    let out = run_unchecked(cmd, input, limit)?;
    if !out.status.success() {
        return Err(BenchError::Command {
            command: shown(cmd),
            status: out.status.to_string(),
            stderr: dhcpfix_lab::kit::one_line(&String::from_utf8_lossy(&out.stderr)),
        });
    }
    Ok(out)
}

/// Like [`run`], but any exit status is returned.
pub fn run_unchecked(cmd: &mut Command, input: Option<&[u8]>, limit: Duration) -> Result<Output> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = spawn(cmd)?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write;
        stdin
            .write_all(data)
            .map_err(BenchError::sys("write to child's stdin"))?;
    }
    let readers = [
        child.stdout.take().map(|s| reader(Box::new(s))),
        child.stderr.take().map(|s| reader(Box::new(s))),
    ];
    let status = wait_until(&mut child, Instant::now() + limit).map_err(BenchError::sys("wait(2)"))?;
    let [stdout, stderr] = readers.map(|r| r.and_then(|h| h.join().ok()).unwrap_or_default());
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => Err(BenchError::Timeout {
            command: shown(cmd),
            limit,
        }),
    }
}

fn reader(mut r: Box<dyn Read + Send>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// Waits for `child` until `deadline`; past it, kills and reaps it and
/// returns `None`.
pub fn wait_until(child: &mut Child, deadline: Instant) -> io::Result<Option<std::process::ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            child.wait()?;
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// Starts `cmd` in the background (stdin and stdout closed, stderr piped).
pub fn start(cmd: &mut Command) -> Result<Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    spawn(cmd)
}

/// SIGTERM, a short grace period, then SIGKILL; always reaps.
pub fn stop(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    // Past the grace period wait_until kills and reaps it.
    let _ = wait_until(child, Instant::now() + Duration::from_secs(2));
}
