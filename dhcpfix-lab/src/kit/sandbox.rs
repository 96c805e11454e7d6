//! Sandboxes: a work directory and network namespaces, named after the
//! process that made them (`<prefix>-<pid>-<n>`), so that nothing the lab,
//! a test or a benchmark builds outlives it:
//!
//! - dropping a [`Sandbox`] or a [`Netns`] removes it (every process in a
//!   namespace is killed first; every mount below a work directory is
//!   detached);
//! - on SIGINT/SIGTERM a signal thread removes every live one, then the
//!   process dies of the signal ([`install_cleanup`], which
//!   [`Sandbox::create`] calls);
//! - the leftovers of a process that was SIGKILLed are removed by the
//!   first sandbox of the same [`Place`] made afterwards ([`clean_stale`]).

use std::{
    collections::BTreeSet,
    ffi::OsStr,
    fs,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread,
    time::Duration,
};

use super::{netns, process, unmount_below, KitError};

/// Where one kind of sandbox lives: its namespaces are
/// `/run/netns/<prefix>-<pid>-<n>[-<suffix>]`, its work directories
/// `<run_dir>/<prefix>-<pid>-<n>`.
#[derive(Clone, Copy, Debug)]
pub struct Place {
    pub prefix: &'static str,
    pub run_dir: &'static str,
    /// Mode of `run_dir` and of each work directory.
    pub mode: u32,
}

/// How long the processes of a namespace being removed get to die.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// Sandboxes of this process (one counter for every place).
static NEXT: AtomicU32 = AtomicU32::new(0);

/// What the signal thread must remove.
struct Live {
    netns: BTreeSet<String>,
    dirs: BTreeSet<PathBuf>,
}

static LIVE: Mutex<Live> = Mutex::new(Live {
    netns: BTreeSet::new(),
    dirs: BTreeSet::new(),
});

fn live() -> MutexGuard<'static, Live> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Places whose stale leftovers this process has removed already.
static SWEPT: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());

/// A work directory (and the namespaces made through it); see the module.
#[derive(Debug)]
pub struct Sandbox {
    name: String,
    dir: PathBuf,
    next: AtomicU32,
    removed: bool,
}

impl Sandbox {
    /// Installs the signal cleanup, removes stale leftovers of `place` once
    /// per process, and makes a fresh work directory.
    pub fn create(place: &Place) -> Result<Sandbox, KitError> {
        install_cleanup()?;
        let first = SWEPT
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(place.prefix);
        if first {
            clean_stale(place)?;
        }
        let name = format!(
            "{}-{}-{}",
            place.prefix,
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = Path::new(place.run_dir).join(&name);
        live().dirs.insert(dir.clone());
        // From here on, dropping `sb` removes whatever was made.
        let sb = Sandbox {
            name,
            dir,
            next: AtomicU32::new(0),
            removed: false,
        };
        // Same pid and number: a leftover of a dead process that had our pid.
        remove_dir(&sb.dir)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(place.mode)
            .create(&sb.dir)
            .map_err(KitError::io("mkdir", &sb.dir))?;
        for d in [Path::new(place.run_dir), &sb.dir] {
            fs::set_permissions(d, fs::Permissions::from_mode(place.mode))
                .map_err(KitError::io("chmod", d))?;
        }
        Ok(sb)
    }

    /// `<prefix>-<pid>-<n>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The work directory, `<run_dir>/<name>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `TAG<n>`, different at each call: names of pin directories, log
    /// files and namespaces made through this sandbox.
    pub fn unique(&self, tag: &str) -> String {
        format!("{tag}{}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// A new network namespace `<name>-<suffix>` with loopback up; removed
    /// (with every process in it) when dropped.
    pub fn netns(&self, suffix: &str) -> Result<Netns, KitError> {
        Netns::create(format!("{}-{suffix}", self.name))
    }

    /// Detaches every mount below the work directory and removes it.
    pub fn remove(mut self) -> Result<(), KitError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), KitError> {
        if std::mem::replace(&mut self.removed, true) {
            return Ok(());
        }
        let result = remove_dir(&self.dir);
        live().dirs.remove(&self.dir);
        result
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("sandbox {}: {e}", self.name);
        }
    }
}

/// Unmounts everything below `dir`, then removes it.
fn remove_dir(dir: &Path) -> Result<(), KitError> {
    let mut problems = unmount_below(dir);
    if dir.exists() {
        if let Err(e) = fs::remove_dir_all(dir) {
            problems.push(format!("remove {}: {e}", dir.display()));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(KitError::Teardown {
            what: dir.display().to_string(),
            details: problems.join("; "),
        })
    }
}

/// A named network namespace of a [`Sandbox`]; removed, with every
/// process in it, when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
    removed: bool,
}

impl Netns {
    fn create(name: String) -> Result<Netns, KitError> {
        live().netns.insert(name.clone());
        let ns = Netns {
            path: netns::path(&name),
            name,
            removed: false,
        };
        if ns.path.exists() {
            // A leftover of a dead process that had our pid.
            netns::kill_all_in(&ns.path, KILL_WAIT);
            netns::delete(&ns.name)?;
        }
        netns::add(&ns.name)?;
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The name `ip netns` knows it by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, for setns.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `ip -n <ns> ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<(), KitError> {
        netns::ip_in(&self.name, args)
    }

    /// `ip -n <ns> -batch -` with these lines on stdin.
    pub fn ip_batch(&self, lines: &str) -> Result<(), KitError> {
        netns::ip_batch(&self.name, lines)
    }

    /// A command that runs inside this namespace (see [`netns::command_in`]).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        netns::command_in(&self.path, program)
    }

    /// Runs `f` on a thread inside this namespace (see [`netns::in_netns`]).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, KitError> {
        netns::in_netns(&self.path, f)
    }

    /// Kills every process in the namespace and deletes it.
    pub fn remove(mut self) -> Result<(), KitError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), KitError> {
        if std::mem::replace(&mut self.removed, true) {
            return Ok(());
        }
        netns::kill_all_in(&self.path, KILL_WAIT);
        let result = netns::delete(&self.name);
        live().netns.remove(&self.name);
        result
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("network namespace {}: {e}", self.name);
        }
    }
}

/// The pid in `<prefix>-<pid>-...`, if `name` has that form.
fn owner(place: &Place, name: &str) -> Option<i32> {
    let rest = name.strip_prefix(place.prefix)?.strip_prefix('-')?;
    rest.split('-').next()?.parse().ok()
}

/// The sandbox a namespace or directory name belongs to: `<prefix>-<pid>-<n>`.
fn sandbox_of(name: &str) -> String {
    name.splitn(4, '-').take(3).collect::<Vec<_>>().join("-")
}

/// Removes the namespaces and work directories of `place` whose process
/// is gone. Returns how many sandboxes that was. Those of live processes,
/// this one included, are never touched.
pub fn clean_stale(place: &Place) -> Result<usize, KitError> {
    let stale = |dir: &str| -> Vec<String> {
        fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| owner(place, name).is_some_and(|pid| !netns::pid_alive(pid)))
            .collect()
    };
    let mut removed = BTreeSet::new();
    let mut problems = Vec::new();
    for name in stale(netns::NETNS_DIR) {
        netns::kill_all_in(&netns::path(&name), KILL_WAIT);
        if let Err(e) = netns::delete(&name) {
            problems.push(e.to_string());
        }
        removed.insert(sandbox_of(&name));
    }
    for name in stale(place.run_dir) {
        if let Err(e) = remove_dir(&Path::new(place.run_dir).join(&name)) {
            problems.push(e.to_string());
        }
        removed.insert(sandbox_of(&name));
    }
    if problems.is_empty() {
        Ok(removed.len())
    } else {
        Err(KitError::Teardown {
            what: format!(
                "stale sandboxes {}",
                removed.into_iter().collect::<Vec<_>>().join(", ")
            ),
            details: problems.join("; "),
        })
    }
}

/// Removes every live sandbox and namespace of this process right now, and
/// starts no child from then on: the signal cleanup, for callers that
/// handle signals themselves. Later drops of those sandboxes find nothing
/// left to do.
pub fn remove_all() {
    process::refuse_new_children();
    // A child being spawned right now gets into its namespace before the
    // kill below finds it.
    thread::sleep(Duration::from_millis(100));
    let taken = std::mem::replace(
        &mut *live(),
        Live {
            netns: BTreeSet::new(),
            dirs: BTreeSet::new(),
        },
    );
    for name in &taken.netns {
        netns::kill_all_in(&netns::path(name), KILL_WAIT);
        if let Err(e) = netns::delete(name) {
            eprintln!("cleanup: {e}");
        }
    }
    for dir in &taken.dirs {
        if let Err(e) = remove_dir(dir) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Installs SIGINT/SIGTERM handling (once per process): a thread removes
/// every live sandbox ([`remove_all`]), then the process dies of the
/// signal, as it would have without the handler. A second signal during
/// the cleanup ends the process at once. Other handlers of these signals
/// (signal-hook's or sigaction's) still run.
pub fn install_cleanup() -> Result<(), KitError> {
    static INSTALLED: Mutex<bool> = Mutex::new(false);
    let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if *installed {
        return Ok(());
    }
    let signals = [libc::SIGINT, libc::SIGTERM];
    let cleaning = Arc::new(AtomicBool::new(false));
    // Registered before the iterator: its action runs first (signal-hook's
    // documented order for a second-signal shutdown).
    for sig in signals {
        signal_hook::flag::register_conditional_default(sig, Arc::clone(&cleaning))
            .map_err(KitError::sys("installing a SIGINT/SIGTERM handler"))?;
    }
    let mut pending = signal_hook::iterator::Signals::new(signals)
        .map_err(KitError::sys("installing a SIGINT/SIGTERM handler"))?;
    thread::Builder::new()
        .name("sandbox-signals".into())
        .spawn(move || {
            if let Some(sig) = pending.forever().next() {
                cleaning.store(true, Ordering::SeqCst);
                eprintln!("signal {sig}: removing sandboxes (namespaces, mounts, work directories)");
                remove_all();
                let _ = signal_hook::low_level::emulate_default_handler(sig);
                std::process::exit(128 + sig);
            }
        })
        .map_err(KitError::sys("spawn the signal thread"))?;
    *installed = true;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_belong_to_their_process() {
        let place = Place {
            prefix: "dfx",
            run_dir: "/nonexistent",
            mode: 0o700,
        };
        assert_eq!(owner(&place, "dfx-1234-7"), Some(1234));
        assert_eq!(owner(&place, "dfx-1234-7-h"), Some(1234));
        assert_eq!(owner(&place, "dfxr-1234-7"), None);
        assert_eq!(owner(&place, "other-1-2"), None);
        assert_eq!(sandbox_of("dfx-1234-7-h"), "dfx-1234-7");
        assert_eq!(sandbox_of("dfb-9-0-s12"), "dfb-9-0");
        assert_eq!(sandbox_of("dfx-1234-7"), "dfx-1234-7");
    }
}
