//! Running programs with a time limit, in the background, and stopping
//! them. Once the sandboxes' signal cleanup has started, no new child is
//! started (see [`refuse_new_children`]).

use std::{
    ffi::OsStr,
    io::{self, Read, Write},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use super::{one_line, KitError};

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

/// Makes every later [`spawn`] (and what calls it) fail.
pub fn refuse_new_children() {
    SHUTTING_DOWN.store(true, Ordering::SeqCst);
}

/// Starts `cmd`, unless the process is shutting down.
pub fn spawn(cmd: &mut Command) -> Result<Child, KitError> {
    if SHUTTING_DOWN.load(Ordering::SeqCst) {
        return Err(KitError::Spawn {
            program: shown(cmd),
            error: io::Error::new(io::ErrorKind::Interrupted, "shutting down after a signal"),
        });
    }
    cmd.spawn().map_err(|error| KitError::Spawn {
        program: shown(cmd),
        error,
    })
}

/// Runs `cmd` with stdin `input` (if any), collecting its output; killed at
/// `limit`. A non-zero exit is an error carrying stderr.
pub fn run(cmd: &mut Command, input: Option<&[u8]>, limit: Duration) -> Result<Output, KitError> {
    let out = run_unchecked(cmd, input, limit)?;
    if !out.status.success() {
        return Err(KitError::Command {
            command: shown(cmd),
            status: out.status.to_string(),
            stderr: one_line(&String::from_utf8_lossy(&out.stderr)),
        });
    }
    Ok(out)
}

/// Like [`run`], but any exit status is returned.
pub fn run_unchecked(cmd: &mut Command, input: Option<&[u8]>, limit: Duration) -> Result<Output, KitError> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = spawn(cmd)?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(data)
            .map_err(KitError::sys("write to a child's stdin"))?;
    }
    let readers = [
        child.stdout.take().map(|s| reader(Box::new(s))),
        child.stderr.take().map(|s| reader(Box::new(s))),
    ];
    let status = wait_until(&mut child, Instant::now() + limit).map_err(KitError::sys("wait(2)"))?;
    let [stdout, stderr] = readers.map(|r| r.and_then(|h| h.join().ok()).unwrap_or_default());
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => Err(KitError::Timeout {
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
pub fn wait_until(child: &mut Child, deadline: Instant) -> io::Result<Option<ExitStatus>> {
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
pub fn start(cmd: &mut Command) -> Result<Child, KitError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    spawn(cmd)
}

/// SIGTERM, up to `grace` to exit, then SIGKILL; always reaps.
pub fn stop(child: &mut Child, grace: Duration) -> io::Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    // Past the grace period wait_until kills and reaps it.
    wait_until(child, Instant::now() + grace).map(drop)
}
