//! Network namespaces: naming one (`--netns NAME|PATH|pid:PID`), its cookie
//! (what the classifier keys its maps by), running code inside it, and
//! finding the namespaces of the host.
//!
//! Code runs inside another namespace on a thread of its own that enters it
//! with `setns(2)` and ends afterwards: a thread never returns to the rest of
//! the program in a foreign namespace. Sockets made there (netlink, ioctl)
//! keep belonging to that namespace after the thread ends.

use std::{
    collections::BTreeMap,
    fmt, fs, io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
    str::FromStr,
    thread,
};

use serde::Serialize;

/// Where `ip netns` (and CRI runtimes: `cni-*`, CRI-O's UUIDs) pin named
/// namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";
/// `SO_NETNS_COOKIE` (Linux 5.14).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Errors naming or entering a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {0:?} not found (no {NETNS_RUN_DIR}/{0}); `ip netns list` shows the names")]
    NoName(String),
    #[error("opening network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} is not a network namespace (expected an nsfs file such as {NETNS_RUN_DIR}/NAME or /proc/PID/ns/net)")]
    NotNetns(PathBuf),
    #[error(
        "setns(2) into network namespace {netns}: {source}; entering another namespace needs CAP_SYS_ADMIN"
    )]
    Enter {
        netns: String,
        #[source]
        source: io::Error,
    },
    #[error("reading the cookie of network namespace {netns} (getsockopt SO_NETNS_COOKIE, Linux >= 5.14): {source}")]
    Cookie {
        netns: String,
        #[source]
        source: io::Error,
    },
    #[error("starting a thread for network namespace {netns}: {source}")]
    Thread {
        netns: String,
        #[source]
        source: io::Error,
    },
    #[error("a thread inside network namespace {0} panicked")]
    Panicked(String),
    #[error("network namespace {0} is gone")]
    Gone(String),
    #[error(
        "{0:?} is not a network namespace: use NAME (under {NETNS_RUN_DIR}), an absolute PATH, or pid:PID"
    )]
    BadSpec(String),
}

/// How an operator names a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetnsSpec {
    /// A file under [`NETNS_RUN_DIR`].
    Name(String),
    /// Any nsfs file (a bind mount, `/proc/PID/ns/net`).
    Path(PathBuf),
    /// That process's namespace.
    Pid(u32),
}

impl FromStr for NetnsSpec {
    type Err = NetnsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NetnsError::BadSpec(s.to_owned());
        if let Some(pid) = s.strip_prefix("pid:") {
            return pid.parse().map(Self::Pid).map_err(|_| bad());
        }
        if s.starts_with('/') {
            return Ok(Self::Path(PathBuf::from(s)));
        }
        if s.is_empty() || s == "." || s == ".." || s.contains('/') || s.contains('\0') {
            return Err(bad());
        }
        Ok(Self::Name(s.to_owned()))
    }
}

impl fmt::Display for NetnsSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(n) => f.write_str(n),
            Self::Path(p) => write!(f, "{}", p.display()),
            Self::Pid(p) => write!(f, "pid:{p}"),
        }
    }
}

/// What `status`, `stats` and the metrics say about a namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct NetnsInfo {
    /// Its name under [`NETNS_RUN_DIR`], if it has one.
    pub name: Option<String>,
    /// The kernel's cookie (`SO_NETNS_COOKIE`).
    pub cookie: u64,
}

impl NetnsInfo {
    /// The short form for tables: the name, `host` for the initial
    /// namespace, or the cookie.
    pub fn label(&self, host_cookie: Option<u64>) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None if host_cookie == Some(self.cookie) => "host".into(),
            None => format!("#{}", self.cookie),
        }
    }
}

/// A network namespace: the caller's own, or one reached through an nsfs
/// file (`/run/netns/NAME`, `/proc/PID/ns/net`). The file is opened anew
/// each time code runs there and checked to be the same namespace: holding
/// it open would keep a namespace alive after everyone else let it go.
#[derive(Clone, Debug)]
pub struct Netns {
    /// `None`: the caller's own namespace (no thread needed to enter it).
    path: Option<PathBuf>,
    cookie: u64,
    /// (st_dev, st_ino) of its nsfs file: the identity `/proc/*/ns/net` share.
    id: (u64, u64),
    name: Option<String>,
    shown: String,
}

impl Netns {
    /// The caller's own network namespace.
    pub fn current() -> Result<Self, NetnsError> {
        let meta = fs::metadata("/proc/thread-self/ns/net").map_err(|source| NetnsError::Open {
            path: "/proc/thread-self/ns/net".into(),
            source,
        })?;
        let shown = "this namespace".to_owned();
        let cookie = current_cookie().map_err(|source| NetnsError::Cookie {
            netns: shown.clone(),
            source,
        })?;
        let name = named_as((meta.dev(), meta.ino()));
        Ok(Self {
            path: None,
            cookie,
            id: (meta.dev(), meta.ino()),
            name,
            shown,
        })
    }

    /// The namespace an operator named.
    pub fn open(spec: &NetnsSpec) -> Result<Self, NetnsError> {
        let path = match spec {
            NetnsSpec::Name(n) => {
                let p = Path::new(NETNS_RUN_DIR).join(n);
                if !p.exists() {
                    return Err(NetnsError::NoName(n.clone()));
                }
                p
            }
            NetnsSpec::Path(p) => p.clone(),
            NetnsSpec::Pid(pid) => PathBuf::from(format!("/proc/{pid}/ns/net")),
        };
        let mut ns = Self::open_path(&path, spec.to_string())?;
        if let NetnsSpec::Name(n) = spec {
            ns.name = Some(n.clone());
        }
        Ok(ns)
    }

    /// The namespace behind the nsfs file at `path`, shown as `shown` in
    /// messages.
    pub fn open_path(path: &Path, shown: String) -> Result<Self, NetnsError> {
        let (_, id) = open_nsfs(path)?;
        let mut ns = Self {
            path: Some(path.to_path_buf()),
            cookie: 0,
            id,
            name: named_as(id),
            shown,
        };
        ns.cookie = ns.run(current_cookie)?.map_err(|source| NetnsError::Cookie {
            netns: ns.shown.clone(),
            source,
        })?;
        Ok(ns)
    }

    /// Opens its nsfs file, checked to still be this namespace.
    pub fn open_file(&self) -> Result<Option<OwnedFd>, NetnsError> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        let (file, id) = open_nsfs(path)?;
        if id != self.id {
            return Err(NetnsError::Gone(self.shown.clone()));
        }
        Ok(Some(file))
    }

    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    /// Its name under [`NETNS_RUN_DIR`], if it has one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// (st_dev, st_ino) of its nsfs file.
    pub fn id(&self) -> (u64, u64) {
        self.id
    }

    pub fn info(&self) -> NetnsInfo {
        NetnsInfo {
            name: self.name.clone(),
            cookie: self.cookie,
        }
    }

    /// Whether this is the caller's own namespace (code runs inline).
    pub fn is_current(&self) -> bool {
        self.path.is_none()
    }

    /// The nsfs file it is reached through (`None`: the caller's own).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Runs `f` inside this namespace: inline for the caller's own, else on
    /// a thread that enters it and then ends.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        let Some(file) = self.open_file()? else {
            return Ok(f());
        };
        let fd = file.as_raw_fd();
        thread::scope(|scope| {
            let handle = thread::Builder::new()
                .name("netns".into())
                .spawn_scoped(scope, move || {
                    // SAFETY: `fd` is an open nsfs file kept alive by `self`
                    // for the scope; setns changes only this thread, which
                    // ends when `f` returns.
                    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(f())
                })
                .map_err(|source| NetnsError::Thread {
                    netns: self.shown.clone(),
                    source,
                })?;
            match handle.join() {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(source)) => Err(NetnsError::Enter {
                    netns: self.shown.clone(),
                    source,
                }),
                Err(_) => Err(NetnsError::Panicked(self.shown.clone())),
            }
        })
    }
}

/// "this network namespace", "network namespace NAME" or "network
/// namespace pid:PID": how messages name it.
impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.path, &self.name) {
            (None, _) => f.write_str("this network namespace"),
            (Some(_), Some(n)) => write!(f, "network namespace {n}"),
            (Some(_), None) => write!(f, "network namespace {}", self.shown),
        }
    }
}

/// Opens an nsfs file and checks that it is a network namespace; returns it
/// with its (st_dev, st_ino).
fn open_nsfs(path: &Path) -> Result<(OwnedFd, (u64, u64)), NetnsError> {
    let file = fs::File::open(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => NetnsError::Gone(path.display().to_string()),
        _ => NetnsError::Open {
            path: path.into(),
            source,
        },
    })?;
    // SAFETY: NS_GET_NSTYPE takes no argument and only returns a value.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if kind != libc::CLONE_NEWNET {
        return Err(NetnsError::NotNetns(path.into()));
    }
    let meta = file.metadata().map_err(|source| NetnsError::Open {
        path: path.into(),
        source,
    })?;
    Ok((file.into(), (meta.dev(), meta.ino())))
}

/// The cookie of the calling thread's network namespace.
pub fn current_cookie() -> io::Result<u64> {
    // SAFETY: socket(2) has no memory preconditions.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor socket(2) just returned, owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` is a writable u64 and `len` says so.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The name under [`NETNS_RUN_DIR`] of the namespace with this identity.
fn named_as(id: (u64, u64)) -> Option<String> {
    fs::read_dir(NETNS_RUN_DIR)
        .ok()?
        .flatten()
        .find(|e| fs::metadata(e.path()).is_ok_and(|m| (m.dev(), m.ino()) == id))
        .and_then(|e| e.file_name().to_str().map(str::to_owned))
}

/// The namespaces this process can see: its own, every one pinned under
/// [`NETNS_RUN_DIR`], and (with `processes`) every one a process holds
/// (`/proc/*/ns/net`), each once. Unreadable ones are skipped.
pub fn scan(processes: bool) -> Vec<Netns> {
    let mut found: BTreeMap<(u64, u64), Netns> = BTreeMap::new();
    if let Ok(me) = Netns::current() {
        found.insert(me.id(), me);
    }
    let mut candidates: Vec<(PathBuf, String)> = Vec::new();
    if let Ok(entries) = fs::read_dir(NETNS_RUN_DIR) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            candidates.push((e.path(), name));
        }
    }
    if processes {
        if let Ok(entries) = fs::read_dir("/proc") {
            for e in entries.flatten() {
                let pid = e.file_name().to_string_lossy().into_owned();
                if pid.bytes().all(|b| b.is_ascii_digit()) {
                    candidates.push((e.path().join("ns/net"), format!("pid:{pid}")));
                }
            }
        }
    }
    for (path, shown) in candidates {
        let Ok(meta) = fs::metadata(&path) else { continue };
        if found.contains_key(&(meta.dev(), meta.ino())) {
            continue;
        }
        if let Ok(ns) = Netns::open_path(&path, shown) {
            found.insert(ns.id(), ns);
        }
    }
    found.into_values().collect()
}

/// The process that stands for the host: PID 1 if its namespaces can be
/// read, else the outermost ancestor of this process whose can (some
/// sandboxes hide PID 1's). `None` when none can.
pub fn host_pid() -> Option<u32> {
    let readable = |pid: u32| fs::read_link(format!("/proc/{pid}/ns/net")).is_ok();
    if readable(1) {
        return Some(1);
    }
    let mut found = None;
    let mut pid = std::process::id();
    for _ in 0..64 {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Field 4, after "(comm)": the parent's pid.
        let parent: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
        if parent <= 1 {
            break;
        }
        if readable(parent) {
            found = Some(parent);
        }
        pid = parent;
    }
    found
}

/// The cookie of the host's network namespace ([`host_pid`]'s), if this
/// process can tell.
pub fn host_cookie() -> Option<u64> {
    let path = PathBuf::from(format!("/proc/{}/ns/net", host_pid()?));
    let meta = fs::metadata(&path).ok()?;
    let me = fs::metadata("/proc/thread-self/ns/net").ok()?;
    if (meta.dev(), meta.ino()) == (me.dev(), me.ino()) {
        return current_cookie().ok();
    }
    Netns::open_path(&path, "host".into()).ok().map(|n| n.cookie())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(
            "cni-1234".parse::<NetnsSpec>().unwrap(),
            NetnsSpec::Name("cni-1234".into())
        );
        assert_eq!("pid:42".parse::<NetnsSpec>().unwrap(), NetnsSpec::Pid(42));
        assert_eq!(
            "/proc/1/ns/net".parse::<NetnsSpec>().unwrap(),
            NetnsSpec::Path("/proc/1/ns/net".into())
        );
        for bad in ["", "a/b", "..", "pid:x", "pid:"] {
            assert!(bad.parse::<NetnsSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn own_namespace_has_a_cookie_and_runs_inline() {
        let me = Netns::current().unwrap();
        assert!(me.cookie() != 0);
        assert!(me.is_current());
        assert_eq!(me.run(|| current_cookie().unwrap()).unwrap(), me.cookie());
        // Opened by path, the same namespace has the same cookie.
        let again = Netns::open_path(Path::new("/proc/self/ns/net"), "self".into()).unwrap();
        assert_eq!(again.cookie(), me.cookie());
        assert_eq!(again.id(), me.id());
    }
}
