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
//!   first sandbox of the same [`Place`] made afterwards ([`clean_stale`]);
//!   namespaces that must carry a name of another form (a CRI runtime's
//!   `cni-<uuid>`, [`Sandbox::netns_named`]) are listed in the work
//!   directory for that.
//!
//! A sandbox holds a shared turn of the [`gate`](super::gate) while it
//! lives: a test that acts on every namespace of the host waits for it.

use std::{
    collections::BTreeSet,
    ffi::OsStr,
    fs,
    io::Write,
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

use super::{gate, netns, process, unmount_below, KitError};

/// In a work directory: the namespaces made under other names
/// ([`Sandbox::netns_named`]), one per line, for [`clean_stale`].
const NAMED_LIST: &str = "netns-named";

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

/// Something a sandbox made outside this process's memory. Namespaces sort
/// first: their processes go before the mounts and files they may use.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Resource {
    Netns(String),
    Dir(PathBuf),
}

impl Resource {
    /// Kills every process in a namespace and deletes it; unmounts
    /// everything below a directory and removes it.
    fn remove(&self) -> Result<(), KitError> {
        match self {
            Resource::Netns(name) => {
                netns::kill_all_in(&netns::path(name), KILL_WAIT);
                netns::delete(name)
            }
            Resource::Dir(dir) => {
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
        }
    }
}

/// What the signal thread must remove.
static LIVE: Mutex<BTreeSet<Resource>> = Mutex::new(BTreeSet::new());

fn live() -> MutexGuard<'static, BTreeSet<Resource>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A live resource, removed once: by [`Held::release`] or on drop.
#[derive(Debug)]
struct Held(Option<Resource>);

impl Held {
    fn new(resource: Resource) -> Held {
        live().insert(resource.clone());
        Held(Some(resource))
    }

    fn release(&mut self) -> Result<(), KitError> {
        match self.0.take() {
            Some(resource) => {
                live().remove(&resource);
                resource.remove()
            }
            None => Ok(()),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Places whose stale leftovers this process has removed already.
static SWEPT: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());

/// A work directory (and the namespaces made through it); see the module.
#[derive(Debug)]
pub struct Sandbox {
    name: String,
    dir: PathBuf,
    next: AtomicU32,
    held: Held,
    /// Released last, once everything is removed.
    _turn: gate::Shared,
}

impl Sandbox {
    /// Installs the signal cleanup, removes stale leftovers of `place` once
    /// per process, and makes a fresh work directory.
    pub fn create(place: &Place) -> Result<Sandbox, KitError> {
        install_cleanup()?;
        let turn = gate::shared()?;
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
        // Same pid and number: a leftover of a dead process that had our pid.
        Resource::Dir(dir.clone()).remove()?;
        // From here on, dropping `sb` removes whatever was made.
        let sb = Sandbox {
            held: Held::new(Resource::Dir(dir.clone())),
            name,
            dir,
            next: AtomicU32::new(0),
            _turn: turn,
        };
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

    /// A new network namespace named `name` exactly (a CRI runtime's
    /// `cni-<uuid>`), with loopback up; removed like [`Sandbox::netns`]'s,
    /// and listed in the work directory so that [`clean_stale`] finds it
    /// after a crash.
    pub fn netns_named(&self, name: &str) -> Result<Netns, KitError> {
        let list = self.dir.join(NAMED_LIST);
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&list)
            .map_err(KitError::io("open", &list))?;
        writeln!(file, "{name}").map_err(KitError::io("write", &list))?;
        Netns::create(name.to_owned())
    }

    /// Detaches every mount below the work directory and removes it.
    pub fn remove(mut self) -> Result<(), KitError> {
        self.held.release()
    }
}

/// A named network namespace of a [`Sandbox`]; removed, with every
/// process in it, when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
    held: Held,
}

impl Netns {
    fn create(name: String) -> Result<Netns, KitError> {
        let resource = Resource::Netns(name.clone());
        // A leftover of a dead process that had our pid.
        resource.remove()?;
        let ns = Netns {
            path: netns::path(&name),
            name,
            held: Held::new(resource),
        };
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
        self.held.release()
    }
}

/// The pid in `<prefix>-<pid>-...`, if `name` has that form.
fn owner(place: &Place, name: &str) -> Option<u32> {
    let rest = name.strip_prefix(place.prefix)?.strip_prefix('-')?;
    rest.split('-').next()?.parse().ok()
}

/// The sandbox a namespace or directory name belongs to: `<prefix>-<pid>-<n>`.
fn sandbox_of(name: &str) -> String {
    name.splitn(4, '-').take(3).collect::<Vec<_>>().join("-")
}

/// The namespaces and work directories of `place` that exist, with the pid
/// of the process that made them.
fn existing(place: &Place) -> Vec<(Resource, String, u32)> {
    let names = |dir: &str| -> Vec<(String, u32)> {
        fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter_map(|name| owner(place, &name).map(|pid| (name, pid)))
            .collect()
    };
    let spaces = names(netns::NETNS_DIR)
        .into_iter()
        .map(|(name, pid)| (Resource::Netns(name.clone()), name, pid));
    let dirs = names(place.run_dir)
        .into_iter()
        .map(|(name, pid)| (Resource::Dir(Path::new(place.run_dir).join(&name)), name, pid));
    spaces.chain(dirs).collect()
}

/// What process `pid` made of `place` and is still there: namespaces and
/// work directories, by name. For tests that nothing was left behind.
pub fn leftovers(place: &Place, pid: u32) -> Vec<String> {
    existing(place)
        .into_iter()
        .filter(|(_, _, owner)| *owner == pid)
        .map(|(_, name, _)| name)
        .collect()
}

/// Removes the namespaces and work directories of `place` whose process
/// is gone. Returns how many sandboxes that was. Those of live processes,
/// this one included, are never touched.
pub fn clean_stale(place: &Place) -> Result<usize, KitError> {
    let mut removed = BTreeSet::new();
    let mut problems = Vec::new();
    // Namespaces first (the order of Resource).
    let mut stale: Vec<_> = existing(place)
        .into_iter()
        .filter(|(_, _, pid)| !netns::pid_alive(*pid as i32))
        .collect();
    // The namespaces they made under other names, from their lists.
    let listed: Vec<_> = stale
        .iter()
        .filter_map(|(resource, name, pid)| match resource {
            Resource::Dir(dir) => Some((dir.join(NAMED_LIST), name.clone(), *pid)),
            Resource::Netns(_) => None,
        })
        .flat_map(|(list, name, pid)| {
            fs::read_to_string(list)
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.is_empty() && !l.contains('/'))
                .map(|l| (Resource::Netns(l.to_owned()), name.clone(), pid))
                .collect::<Vec<_>>()
        })
        .collect();
    stale.extend(listed);
    stale.sort();
    for (resource, name, _) in stale {
        if let Err(e) = resource.remove() {
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
    let taken = std::mem::take(&mut *live());
    for resource in &taken {
        if let Err(e) = resource.remove() {
            say(&format!("cleanup: {e}"));
        }
    }
}

/// A line on the process's stderr, even from a thread spawned by a test
/// (whose `eprintln!` output the test harness would capture and drop).
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
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
                say(&format!(
                    "signal {sig}: removing sandboxes (namespaces, mounts, work directories)"
                ));
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
