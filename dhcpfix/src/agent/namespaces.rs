//! Which network namespaces the agent covers, and finding them as they
//! come: those pinned under `/run/netns` (`ip netns`, and the pod sandboxes
//! CRI runtimes pin there: containerd's `cni-<uuid>`, CRI-O's `<uuid>`),
//! noticed at once through inotify, and with `--netns all` also those only a
//! process holds (`/proc/*/ns/net`), found by a periodic scan.
//!
//! Nothing here holds a namespace open: a namespace is named by a path and
//! its (device, inode) identity, and opened only for the moment something
//! runs inside it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    ffi::CString,
    fmt, fs, io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
    thread,
};

use super::{pattern::Patterns, AgentError};
use crate::netns::NETNS_RUN_DIR;

/// `--netns`: which namespaces besides the agent's own it covers.
#[derive(Clone, Debug)]
pub enum Select {
    /// Only its own (the default).
    Own,
    /// Every namespace it can find.
    All,
    /// Named namespaces (under `/run/netns`) matching these globs.
    Named(Patterns),
}

impl Select {
    /// From `--netns` values: none, `all`, or globs.
    pub fn new<S: AsRef<str>>(values: &[S]) -> Result<Self, AgentError> {
        if values.is_empty() {
            return Ok(Self::Own);
        }
        if values.iter().any(|v| v.as_ref() == "all") {
            if values.len() > 1 {
                return Err(AgentError::Settings(
                    "--netns all covers every namespace: leave out the other --netns patterns".into(),
                ));
            }
            return Ok(Self::All);
        }
        Ok(Self::Named(Patterns::new(values)?))
    }

    /// Whether a namespace with this name (`None`: unnamed) is covered.
    pub fn covers(&self, name: Option<&str>) -> bool {
        match (self, name) {
            (Self::Own, _) => false,
            (Self::All, _) => true,
            (Self::Named(p), Some(n)) => p.matches(n),
            (Self::Named(_), None) => false,
        }
    }

    /// Whether namespaces held only by processes are looked for.
    pub fn scans_processes(&self) -> bool {
        matches!(self, Self::All)
    }
}

impl fmt::Display for Select {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Own => f.write_str("its own"),
            Self::All => f.write_str("all"),
            Self::Named(p) => write!(f, "{p}"),
        }
    }
}

/// A namespace found on the host, not opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The nsfs file it is reached through.
    pub path: PathBuf,
    /// (st_dev, st_ino): its identity.
    pub id: (u64, u64),
    /// Its name under `/run/netns`, if it has one.
    pub name: Option<String>,
}

/// The namespaces `select` covers, by identity, the named ones first. The
/// agent's own (`own`) is left out. `processes`: also look through
/// `/proc` (where `select` asks for it), which costs a few hundred
/// `stat(2)`s; not needed when only `/run/netns` changed.
pub fn find(select: &Select, own: (u64, u64), processes: bool) -> BTreeMap<(u64, u64), Found> {
    let mut found = BTreeMap::new();
    if matches!(select, Select::Own) {
        return found;
    }
    for e in fs::read_dir(NETNS_RUN_DIR).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(meta) = fs::metadata(e.path()) else {
            continue;
        };
        let id = (meta.dev(), meta.ino());
        if id != own && select.covers(Some(&name)) {
            found.entry(id).or_insert(Found {
                path: e.path(),
                id,
                name: Some(name),
            });
        }
    }
    if processes && select.scans_processes() {
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let pid = e.file_name();
            if !pid.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let path = e.path().join("ns/net");
            let Ok(meta) = fs::metadata(&path) else { continue };
            let id = (meta.dev(), meta.ino());
            if id != own {
                found.entry(id).or_insert(Found { path, id, name: None });
            }
        }
    }
    found
}

/// The host name (UTS) of the processes in the namespace `id`, where it
/// differs from the agent's own: a pod's. `None` when no process there has
/// a UTS namespace of its own with another name (a pod's processes are
/// found before their runtime named them: a new UTS namespace starts with
/// the host's name), or it cannot be read.
pub fn pod_hostname(id: (u64, u64)) -> Option<String> {
    pod_hostnames(&BTreeSet::from([id])).remove(&id)
}

/// [`pod_hostname`] of each namespace in `ids`, in one pass over `/proc`;
/// those without such a process are left out.
pub fn pod_hostnames(ids: &BTreeSet<(u64, u64)>) -> HashMap<(u64, u64), String> {
    let Some(own_uts) = fs::metadata("/proc/self/ns/uts").ok().map(|m| m.ino()) else {
        return HashMap::new();
    };
    let mut pids: HashMap<(u64, u64), String> = HashMap::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        if pids.len() == ids.len() {
            break;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(net) = fs::metadata(e.path().join("ns/net")) else {
            continue;
        };
        let id = (net.dev(), net.ino());
        if !ids.contains(&id) || pids.contains_key(&id) {
            continue;
        }
        if fs::metadata(e.path().join("ns/uts")).is_ok_and(|uts| uts.ino() != own_uts) {
            pids.insert(id, name);
        }
    }
    let own = hostname_of("self");
    pids.into_iter()
        .filter_map(|(id, pid)| {
            hostname_of(&pid)
                .filter(|h| Some(h) != own.as_ref())
                .map(|h| (id, h))
        })
        .collect()
}

/// The host name in the UTS namespace of process `pid`.
fn hostname_of(pid: &str) -> Option<String> {
    let uts = fs::File::open(format!("/proc/{pid}/ns/uts")).ok()?;
    thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on an open UTS namespace file changes only this
            // thread, which ends right after.
            if unsafe { libc::setns(uts.as_raw_fd(), libc::CLONE_NEWUTS) } != 0 {
                return None;
            }
            let mut buf = [0u8; 256];
            // SAFETY: `buf` is writable for its length.
            if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
                return None;
            }
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            Some(String::from_utf8_lossy(&buf[..end]).into_owned())
        })
        .join()
        .ok()
        .flatten()
    })
    .filter(|h| !h.is_empty())
}

/// Notices entries appearing in and leaving `/run/netns` (inotify).
pub struct Watcher {
    fd: OwnedFd,
    watching: bool,
}

impl Watcher {
    pub fn new() -> Result<Self, AgentError> {
        // SAFETY: inotify_init1 has no pointer arguments.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(AgentError::Sys {
                op: "inotify_init1(2)",
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: a descriptor inotify_init1 just returned, owned by nothing else.
        let mut w = Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            watching: false,
        };
        w.watch();
        Ok(w)
    }

    /// Starts watching `/run/netns` once it exists (`ip netns` makes it on
    /// first use); idempotent.
    pub fn watch(&mut self) {
        if self.watching || !Path::new(NETNS_RUN_DIR).is_dir() {
            return;
        }
        let path = CString::new(NETNS_RUN_DIR).expect("no NUL");
        let mask = libc::IN_CREATE | libc::IN_DELETE | libc::IN_MOVED_TO | libc::IN_MOVED_FROM;
        // SAFETY: `path` is NUL-terminated; the descriptor is ours.
        if unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), path.as_ptr(), mask) } >= 0 {
            self.watching = true;
        }
    }

    /// Consumes what is queued; true if anything was.
    pub fn drain(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        let mut any = false;
        loop {
            // SAFETY: `buf` is writable for its length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return any;
            }
            any = true;
        }
    }
}

impl AsRawFd for Watcher {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections() {
        assert!(matches!(Select::new::<&str>(&[]).unwrap(), Select::Own));
        assert!(matches!(Select::new(&["all"]).unwrap(), Select::All));
        assert!(Select::new(&["all", "cni-*"]).is_err());
        let named = Select::new(&["cni-*", "qdhcp-*"]).unwrap();
        assert!(named.covers(Some("cni-4b2f")) && named.covers(Some("qdhcp-1")));
        assert!(!named.covers(Some("lab")) && !named.covers(None));
        assert!(!named.scans_processes() && Select::All.scans_processes());
        assert!(Select::All.covers(None));
    }

    #[test]
    fn own_namespace_is_left_out() {
        let me = fs::metadata("/proc/self/ns/net").unwrap();
        let found = find(&Select::All, (me.dev(), me.ino()), true);
        assert!(!found.contains_key(&(me.dev(), me.ino())));
    }
}
