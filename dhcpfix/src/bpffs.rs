//! The pin directory: a bpffs holding the program, its maps and one link per
//! interface, so that attachments outlive the command that made them.
//!
//! ```text
//! <pin-dir>/            mode 0700
//!   prog                the loaded classifier
//!   maps/DHCPFIX_CONFIG      per-interface configuration (key: ifindex)
//!   maps/DHCPFIX_COUNTERS    per-CPU counters (key: ifindex)
//!   maps/DHCPFIX_EVENTS      fill events (ring buffer, read by `dhcpfix run`)
//!   links/<ifname>      one tcx link per interface
//! ```

use std::{
    ffi::CString,
    fs, io,
    os::{fd::AsRawFd, unix::ffi::OsStrExt, unix::fs::DirBuilderExt},
    path::{Path, PathBuf},
};

/// Default pin directory.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/dhcpfix";
/// `statfs(2)` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Errors while preparing or locking the pin directory.
#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error("creating pin directory {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mount(2) of bpffs at {path}: {source}; run as root (CAP_SYS_ADMIN) or mount one there: mount -t bpf bpf {path}")]
    Mount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("statfs(2) of {path}: {source}")]
    Statfs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pin directory {0} is not on a bpffs; mount one there (mount -t bpf bpf DIR) or pass --pin-dir")]
    NotBpffs(PathBuf),
    #[error("locking pin directory {path} (flock(2)): {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pin directory {0} exists and is not a directory; remove it or pass another --pin-dir")]
    NotDirectory(PathBuf),
    #[error("{op} {path}: permission denied; the pin directory is root's: run dhcpfix as root (it needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)")]
    Denied { op: &'static str, path: PathBuf },
}

/// An EACCES/EPERM on the pin directory says "not root": say that, rather
/// than the bare errno.
fn denied_or(
    op: &'static str,
    path: &Path,
    source: io::Error,
    other: impl FnOnce(io::Error) -> BpffsError,
) -> BpffsError {
    if source.kind() == io::ErrorKind::PermissionDenied {
        BpffsError::Denied {
            op,
            path: path.into(),
        }
    } else {
        other(source)
    }
}

/// Whether `path` lives on a bpffs.
pub fn is_bpffs(path: &Path) -> Result<bool, BpffsError> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| BpffsError::Statfs {
        path: path.into(),
        source: io::ErrorKind::InvalidInput.into(),
    })?;
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is writable.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(BpffsError::Statfs {
            path: path.into(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

fn mount_bpffs(path: &Path) -> Result<(), BpffsError> {
    let err = |source| BpffsError::Mount {
        path: path.into(),
        source,
    };
    let target =
        CString::new(path.as_os_str().as_bytes()).map_err(|_| err(io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: all pointers are valid NUL-terminated strings.
    let ret = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if ret != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(())
}

pub(crate) fn mkdir_private(path: &Path) -> Result<(), BpffsError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| {
            denied_or("creating pin directory", path, source, |source| {
                BpffsError::Create {
                    path: path.into(),
                    source,
                }
            })
        })
}

/// The pin directory of one dhcpfix instance.
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    /// Refers to `root` without touching the file system (for readers).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Makes sure `root` exists on a bpffs (mounting one if needed), with its
    /// `maps/` and `links/` subdirectories, all mode 0700.
    pub fn prepare(root: impl Into<PathBuf>) -> Result<Self, BpffsError> {
        let root = root.into();
        if root.exists() && !root.is_dir() {
            // mount(2) would say ENOTDIR, and the advice to be root would
            // be wrong.
            return Err(BpffsError::NotDirectory(root));
        }
        if !root.exists() {
            // /sys/fs/bpf is a sysfs directory until bpffs is mounted on it,
            // and nothing can be created inside sysfs: mount it first, the
            // way systemd does.
            let nearest = root.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/"));
            if nearest == Path::new("/sys/fs/bpf") && !is_bpffs(nearest)? {
                mount_bpffs(nearest)?;
            }
            mkdir_private(&root)?;
        }
        if !is_bpffs(&root)? {
            mount_bpffs(&root)?;
        }
        let dir = Self { root };
        mkdir_private(&dir.maps_dir())?;
        mkdir_private(&dir.links_dir())?;
        Ok(dir)
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the directory exists on a bpffs (something may be pinned).
    pub fn is_ready(&self) -> bool {
        self.root.exists() && is_bpffs(&self.root).unwrap_or(false)
    }

    /// Fails if the directory exists but this process may not look inside
    /// (not root): to a reader, that would look like "nothing attached".
    pub fn check_access(&self) -> Result<(), BpffsError> {
        match fs::read_dir(&self.root) {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(BpffsError::Denied {
                op: "reading pin directory",
                path: self.root.clone(),
            }),
            _ => Ok(()),
        }
    }

    pub fn program(&self) -> PathBuf {
        self.root.join("prog")
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Directory whose presence says which [`PIN_ABI`] pinned the program
    /// (bpffs holds directories and pinned objects, no plain files).
    ///
    /// [`PIN_ABI`]: dhcpfix_common::PIN_ABI
    pub fn abi_marker(&self) -> PathBuf {
        self.root.join(format!("abi-{}", dhcpfix_common::PIN_ABI))
    }

    /// Every ABI marker present (normally one), sorted.
    pub fn abi_markers(&self) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("abi-")))
            .map(|e| e.path())
            .collect();
        found.sort();
        found
    }

    /// Pin of the link of interface `ifname`.
    pub fn link(&self, ifname: &str) -> PathBuf {
        self.links_dir().join(ifname)
    }

    /// Names of interfaces with a pinned link, sorted.
    pub fn linked_interfaces(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.links_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect();
        names.sort();
        names
    }

    /// Takes an exclusive lock on the directory for the life of the guard,
    /// so concurrent `attach`/`detach` (hooks, agent) serialise.
    pub fn lock(&self) -> Result<DirLock, BpffsError> {
        let err = |source| BpffsError::Lock {
            path: self.root.clone(),
            source,
        };
        let dir =
            fs::File::open(&self.root).map_err(|e| denied_or("locking pin directory", &self.root, e, err))?;
        // SAFETY: `dir` is an open file descriptor for the call's duration.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(err(io::Error::last_os_error()));
        }
        Ok(DirLock { _dir: dir })
    }
}

/// Held while the pin directory is locked; unlocks on drop (close).
pub struct DirLock {
    _dir: fs::File,
}

/// Whether `path` is a valid interface name for the kernel (and safe to use
/// as a file name in the pin directory).
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IF_NAMESIZE
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}
