//! Turns for what every sandbox can see: a test that acts on every network
//! namespace of the host (`dhcpfix run --netns all`, started in the host's
//! own namespace, as it runs in production) would attach to the taps of
//! every other lab and sandbox alive at the time, and change what those
//! tests measure. Such a test runs alone:
//!
//! - every [`Sandbox`](super::Sandbox) holds a [`Shared`] turn while it
//!   lives (so does anything else that builds interfaces the host's
//!   namespaces can see: [`shared`]);
//! - [`exclusive`] waits until no other thread holds a shared turn, and
//!   holds off new ones (of other threads) until it is dropped; the thread
//!   holding it makes its own sandboxes freely.
//!
//! Between processes (two test runs on one machine) the same holds through
//! an flock(2) on [`LOCK_FILE`]: shared while this process has a turn,
//! exclusive while one of its threads has the exclusive one.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io,
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    sync::{Condvar, Mutex, MutexGuard},
    thread::{self, ThreadId},
    time::{Duration, Instant},
};

use super::KitError;

/// The file the turns of all processes lock.
pub const LOCK_FILE: &str = "/run/dhcpfix-sandboxes.lock";
/// How long a turn is waited for before giving up: the longest test that
/// holds one (a real libvirt guest) takes a few minutes.
pub const WAIT: Duration = Duration::from_secs(1200);

#[derive(Default)]
struct State {
    /// Shared turns held, by thread.
    shared: HashMap<ThreadId, usize>,
    /// The thread holding the exclusive turn.
    exclusive: Option<ThreadId>,
    /// Threads waiting for it (new shared turns of other threads wait).
    waiting: usize,
    /// The lock file, locked shared or exclusive while any turn is held.
    file: Option<File>,
}

impl State {
    fn others_share(&self, me: ThreadId) -> bool {
        self.shared.iter().any(|(t, n)| *t != me && *n > 0)
    }

    fn held(&self) -> usize {
        self.shared.values().sum::<usize>() + usize::from(self.exclusive.is_some())
    }

    /// Brings the flock in line with the turns held: exclusive, shared, or
    /// none. Blocks (up to `deadline`) while another process holds the file
    /// in a conflicting mode.
    fn relock(&mut self, deadline: Instant) -> Result<(), KitError> {
        let mode = if self.exclusive.is_some() {
            libc::LOCK_EX
        } else if self.held() > 0 {
            libc::LOCK_SH
        } else {
            self.file = None;
            return Ok(());
        };
        if self.file.is_none() {
            self.file = Some(
                OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .mode(0o600)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(LOCK_FILE)
                    .map_err(KitError::io("open", LOCK_FILE))?,
            );
        }
        let fd = self.file.as_ref().map_or(-1, AsRawFd::as_raw_fd);
        loop {
            // SAFETY: flock on a descriptor this state owns.
            if unsafe { libc::flock(fd, mode | libc::LOCK_NB) } == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(KitError::io("flock", LOCK_FILE)(e));
            }
            if Instant::now() >= deadline {
                return Err(KitError::Io {
                    op: "flock (another process's tests hold the sandboxes' turn)",
                    path: LOCK_FILE.into(),
                    error: io::ErrorKind::TimedOut.into(),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

static STATE: Mutex<Option<State>> = Mutex::new(None);
static CHANGED: Condvar = Condvar::new();

fn state() -> MutexGuard<'static, Option<State>> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits on the condition variable until `ready` holds or `deadline`
/// passes (then `what` times out).
fn wait_for(
    mut guard: MutexGuard<'static, Option<State>>,
    deadline: Instant,
    what: &'static str,
    ready: impl Fn(&State) -> bool,
) -> Result<MutexGuard<'static, Option<State>>, KitError> {
    loop {
        if ready(guard.get_or_insert_with(State::default)) {
            return Ok(guard);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(KitError::Sys {
                op: what,
                error: io::ErrorKind::TimedOut.into(),
            });
        }
        guard = CHANGED
            .wait_timeout(guard, deadline - now)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// A shared turn; released on drop.
#[derive(Debug)]
pub struct Shared {
    thread: ThreadId,
}

/// Takes a shared turn: waits while another thread holds (or waits for)
/// the exclusive one, unless this thread already holds a turn.
pub fn shared() -> Result<Shared, KitError> {
    let me = thread::current().id();
    let deadline = Instant::now() + WAIT;
    let guard = wait_for(
        state(),
        deadline,
        "waiting for a shared turn (a test acting on every namespace runs)",
        |s| match s.exclusive {
            Some(owner) => owner == me,
            None => s.waiting == 0 || s.shared.get(&me).is_some_and(|n| *n > 0),
        },
    )?;
    let mut guard = guard;
    let s = guard.get_or_insert_with(State::default);
    *s.shared.entry(me).or_default() += 1;
    if let Err(e) = s.relock(deadline) {
        release_shared(s, me);
        return Err(e);
    }
    Ok(Shared { thread: me })
}

fn release_shared(s: &mut State, thread: ThreadId) {
    if let Some(n) = s.shared.get_mut(&thread) {
        *n -= 1;
        if *n == 0 {
            s.shared.remove(&thread);
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let mut guard = state();
        let s = guard.get_or_insert_with(State::default);
        release_shared(s, self.thread);
        // Dropping a turn never waits: a shared lock is downgraded or
        // released at once.
        let _ = s.relock(Instant::now());
        CHANGED.notify_all();
    }
}

/// The exclusive turn; released on drop.
#[derive(Debug)]
pub struct Exclusive {
    _private: (),
}

/// Takes the exclusive turn for a test that acts on every namespace of the
/// host: waits until no other thread (and no other process) holds a turn.
/// Call it before making the test's own sandboxes.
pub fn exclusive() -> Result<Exclusive, KitError> {
    let me = thread::current().id();
    let deadline = Instant::now() + WAIT;
    let mut guard = state();
    guard.get_or_insert_with(State::default).waiting += 1;
    let waited = wait_for(
        guard,
        deadline,
        "waiting for the exclusive turn (other tests' sandboxes stayed)",
        |s| s.exclusive.is_none() && !s.others_share(me),
    );
    guard = match waited {
        Ok(g) => g,
        Err(e) => {
            let mut g = state();
            g.get_or_insert_with(State::default).waiting -= 1;
            CHANGED.notify_all();
            return Err(e);
        }
    };
    let s = guard.get_or_insert_with(State::default);
    s.waiting -= 1;
    s.exclusive = Some(me);
    if let Err(e) = s.relock(deadline) {
        s.exclusive = None;
        let _ = s.relock(Instant::now());
        CHANGED.notify_all();
        return Err(e);
    }
    Ok(Exclusive { _private: () })
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        let mut guard = state();
        let s = guard.get_or_insert_with(State::default);
        s.exclusive = None;
        let _ = s.relock(Instant::now());
        CHANGED.notify_all();
    }
}
