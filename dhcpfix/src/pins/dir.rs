//! Opening the pin directory without trusting what is in the way.
//!
//! A bpffs mounted without `mode=` (as hosts and older advice mount
//! `/sys/fs/bpf`) has a world-writable root, so anyone may create the pin
//! directory, or a symlink in its place, before root's first `attach`. So the
//! path is walked one component at a time with `openat(O_NOFOLLOW)`: no
//! component may be a symlink, every one must belong to root (or to us), a
//! directory others may write to must be sticky, and the pin directory itself
//! may not be writable by anyone else. From then on everything happens
//! relative to the verified directory's descriptor (`/proc/self/fd/N/...`),
//! so nothing renamed or planted later is followed.

use std::{
    ffi::{CStr, CString, OsStr},
    fs, io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Component, Path, PathBuf},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use super::PinsError;

/// `statfs(2)` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// `statfs(2)` magic of sysfs (`/sys/fs/bpf` before bpffs is mounted on it).
const SYSFS_MAGIC: i64 = 0x6265_6572;
/// Where systemd mounts the host's bpffs.
const SYS_FS_BPF: &str = "/sys/fs/bpf";

/// The pin directory of one dhcpfix installation, opened and verified.
#[derive(Clone, Debug)]
pub struct PinDir {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// As the operator named it (messages only).
    path: PathBuf,
    /// The directory, opened `O_RDONLY` (flock needs a real open).
    dir: OwnedFd,
    /// (st_dev, st_ino) of the directory: the bpffs instance and the inode.
    id: (u64, u64),
}

/// Held while the pin directory is locked; unlocks on drop (close).
#[derive(Debug)]
pub struct DirLock {
    _dir: OwnedFd,
}

fn cstring(path: &Path, bytes: &[u8]) -> Result<CString, PinsError> {
    CString::new(bytes).map_err(|_| PinsError::Unsafe {
        path: path.into(),
        reason: "it contains a NUL byte".into(),
    })
}

fn sys_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PinsError + 'a {
    move |source| {
        if source.kind() == io::ErrorKind::PermissionDenied {
            PinsError::Denied {
                op,
                path: path.into(),
            }
        } else {
            PinsError::Io {
                op,
                path: path.into(),
                source,
            }
        }
    }
}

fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated and `dir` an open descriptor; the
    // kernel returns a new descriptor or -1.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor openat(2) just returned, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: a zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` writable.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

fn fs_magic(fd: BorrowedFd<'_>) -> io::Result<i64> {
    // SAFETY: a zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open (O_PATH is enough for fstatfs) and `st` writable.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Checks one directory on the way: not a symlink (O_NOFOLLOW saw to that),
/// root's or ours, and if others may write to it, sticky (so what root made
/// there cannot be replaced). The pin directory itself (`last`) may not be
/// writable by others at all.
fn check(path: &Path, st: &libc::stat, last: bool) -> Result<(), PinsError> {
    let unsafe_because = |reason: String| {
        Err(PinsError::Unsafe {
            path: path.into(),
            reason,
        })
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return unsafe_because("it is not a directory".into());
    }
    if st.st_uid != 0 && st.st_uid != euid() {
        return unsafe_because(format!(
            "it belongs to uid {}, not root: someone else made it; remove it (it holds nothing of dhcpfix's)",
            st.st_uid
        ));
    }
    let others_write = st.st_mode & 0o022 != 0;
    if last && others_write {
        return unsafe_because(format!(
            "others may write to it (mode {:o}); a bpffs mounted without mode= is world-writable: mount it with `-o mode=0700`, or use a directory below it",
            st.st_mode & 0o7777
        ));
    }
    if others_write && st.st_mode & libc::S_ISVTX == 0 {
        return unsafe_because(format!(
            "others may write to it and it is not sticky (mode {:o})",
            st.st_mode & 0o7777
        ));
    }
    Ok(())
}

/// The process whose mount namespace stands for the host's.
fn host_reference() -> Option<u32> {
    crate::netns::host_pid()
}

/// Whether this process's mounts are not the host's (`ip netns exec`,
/// `nsenter -m`, a container): a bpffs mounted here would be private to it.
/// `false` when it cannot be told.
fn private_mounts(reference: Option<u32>) -> bool {
    let Some(pid) = reference else {
        return false;
    };
    match (
        fs::read_link("/proc/self/ns/mnt"),
        fs::read_link(format!("/proc/{pid}/ns/mnt")),
    ) {
        (Ok(me), Ok(host)) => me != host,
        _ => false,
    }
}

/// Whether the host's mount namespace has a bpffs with this device number
/// (`/proc/PID/mountinfo`, field 3 and the type after " - "). `None` when it
/// cannot be read.
fn host_has_bpffs(reference: Option<u32>, dev: u64) -> Option<bool> {
    let text = fs::read_to_string(format!("/proc/{}/mountinfo", reference?)).ok()?;
    let want = format!("{}:{}", libc::major(dev), libc::minor(dev));
    Some(text.lines().any(|line| {
        let id = line.split(' ').nth(2);
        let fstype = line.split(" - ").nth(1).and_then(|rest| rest.split(' ').next());
        id == Some(want.as_str()) && fstype == Some("bpf")
    }))
}

fn mount_bpffs(fd: BorrowedFd<'_>, shown: &Path) -> Result<(), PinsError> {
    if private_mounts(host_reference()) {
        return Err(PinsError::PrivateMountNs(shown.into()));
    }
    let target = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL in a number");
    // SAFETY: all pointers are valid NUL-terminated strings; the target is
    // the verified directory itself (through its descriptor), never a path
    // someone could swap.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(PinsError::Mount {
            path: shown.into(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The absolute, `..`-free components of `path`.
fn components(path: &Path) -> Result<(PathBuf, Vec<CString>), PinsError> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(sys_err("getcwd(2)", path))?
            .join(path)
    };
    let mut names = Vec::new();
    for c in absolute.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => names.push(cstring(&absolute, n.as_bytes())?),
            Component::ParentDir => {
                return Err(PinsError::Unsafe {
                    path: absolute,
                    reason: "it contains `..`".into(),
                })
            }
            Component::Prefix(_) => unreachable!("no prefixes on Linux"),
        }
    }
    if names.is_empty() {
        return Err(PinsError::Unsafe {
            path: absolute,
            reason: "it is the root directory".into(),
        });
    }
    Ok((absolute, names))
}

/// Opens `name` in `parent` as a directory, never following a symlink.
/// `Ok(None)` if it does not exist.
fn open_dir(
    parent: BorrowedFd<'_>,
    name: &CStr,
    shown: &Path,
    flags: libc::c_int,
) -> Result<Option<OwnedFd>, PinsError> {
    match openat(parent, name, flags | libc::O_DIRECTORY | libc::O_NOFOLLOW) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::ENOTDIR) => {
            Err(PinsError::Unsafe {
                path: shown.into(),
                reason: "it is a symlink or not a directory; dhcpfix never follows one there".into(),
            })
        }
        Err(e) => Err(sys_err("openat(2)", shown)(e)),
    }
}

fn mkdir_at(parent: BorrowedFd<'_>, name: &CStr, shown: &Path) -> Result<(), PinsError> {
    // SAFETY: `name` is NUL-terminated and `parent` an open directory.
    if unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o700) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(sys_err("mkdirat(2)", shown)(e));
        }
    }
    Ok(())
}

impl PinDir {
    /// Opens an existing pin directory to read it. `Ok(None)` when there is
    /// nothing to read: it does not exist, or is not on a bpffs.
    pub fn open(path: &Path) -> Result<Option<Self>, PinsError> {
        Self::walk(path, false)
    }

    /// Opens the pin directory to change it: creates what is missing (mode
    /// 0700) and mounts a bpffs there if there is none, unless this process
    /// runs in a mount namespace of its own, where that bpffs and every pin
    /// in it would vanish with the process.
    pub fn prepare(path: &Path) -> Result<Self, PinsError> {
        let (absolute, _) = components(path)?;
        if absolute.starts_with(SYS_FS_BPF) && absolute != Path::new(SYS_FS_BPF) {
            mount_sys_fs_bpf()?;
        }
        let dir = Self::walk(path, true)?.ok_or_else(|| PinsError::NotBpffs(absolute.clone()))?;
        // Pins the host cannot see would vanish with this mount namespace.
        let reference = host_reference();
        if private_mounts(reference) && host_has_bpffs(reference, dir.inner.id.0) == Some(false) {
            return Err(PinsError::PrivateMountNs(absolute));
        }
        Ok(dir)
    }

    fn walk(path: &Path, create: bool) -> Result<Option<Self>, PinsError> {
        let (absolute, names) = components(path)?;
        let root = fs::File::open("/").map_err(sys_err("open(2) of /", Path::new("/")))?;
        let mut parent: OwnedFd = root.into();
        let mut shown = PathBuf::from("/");
        let last_index = names.len() - 1;
        for (i, name) in names.iter().enumerate() {
            shown.push(OsStr::from_bytes(name.as_bytes()));
            let last = i == last_index;
            // flock needs a real open; the way there needs only O_PATH.
            let flags = if last { libc::O_RDONLY } else { libc::O_PATH };
            let mut fd = open_dir(parent.as_fd(), name, &shown, flags)?;
            if fd.is_none() && create {
                mkdir_at(parent.as_fd(), name, &shown)?;
                fd = open_dir(parent.as_fd(), name, &shown, flags)?;
            }
            let Some(mut fd) = fd else {
                return Ok(None);
            };
            check(
                &shown,
                &fstat(fd.as_fd()).map_err(sys_err("fstat(2)", &shown))?,
                last,
            )?;
            if !last {
                parent = fd;
                continue;
            }
            if fs_magic(fd.as_fd()).map_err(sys_err("fstatfs(2)", &shown))? != BPF_FS_MAGIC {
                if !create {
                    return Ok(None);
                }
                mount_bpffs(fd.as_fd(), &shown)?;
                // The old descriptor still names the directory under the
                // mount: open the name again to get the bpffs on top.
                fd = open_dir(parent.as_fd(), name, &shown, libc::O_RDONLY)?
                    .ok_or_else(|| PinsError::NotBpffs(shown.clone()))?;
                check(
                    &shown,
                    &fstat(fd.as_fd()).map_err(sys_err("fstat(2)", &shown))?,
                    true,
                )?;
                if fs_magic(fd.as_fd()).map_err(sys_err("fstatfs(2)", &shown))? != BPF_FS_MAGIC {
                    return Err(PinsError::NotBpffs(shown));
                }
            }
            let st = fstat(fd.as_fd()).map_err(sys_err("fstat(2)", &shown))?;
            return Ok(Some(Self {
                inner: Arc::new(Inner {
                    path: absolute,
                    dir: fd,
                    id: (st.st_dev, st.st_ino),
                }),
            }));
        }
        unreachable!("the loop returns at the last component")
    }

    /// The directory, as the operator named it.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Whether the path still leads to this very directory on its bpffs (it
    /// was not unmounted or replaced since it was opened).
    pub fn is_current(&self) -> bool {
        fs::metadata(&self.inner.path).is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino()) == self.inner.id
        })
    }

    /// A path that reaches `rel` (relative to the pin directory) through the
    /// verified descriptor: for aya and bpf(2), which take paths.
    pub(crate) fn fd_path(&self, rel: &str) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/{rel}", self.inner.dir.as_raw_fd()))
    }

    /// `rel` as the operator sees it, for messages.
    pub fn shown(&self, rel: &str) -> PathBuf {
        self.inner.path.join(rel)
    }

    /// Makes the directory `rel` (mode 0700) if it does not exist.
    pub(crate) fn mkdir(&self, rel: &str) -> Result<(), PinsError> {
        let name = cstring(&self.shown(rel), rel.as_bytes())?;
        mkdir_at(self.inner.dir.as_fd(), &name, &self.shown(rel))
    }

    /// Whether `rel` exists (without following a symlink at its end).
    pub(crate) fn exists(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.fd_path(rel)).is_ok()
    }

    /// The names in directory `rel`, sorted; empty if it does not exist.
    pub(crate) fn list(&self, rel: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.fd_path(rel))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect();
        names.sort();
        names
    }

    /// Removes the pin (or empty directory) `rel`, if it is on this very
    /// bpffs: a mount or anything else found there is left alone.
    pub(crate) fn remove(&self, rel: &str) -> Result<bool, PinsError> {
        use std::os::unix::fs::MetadataExt;
        let path = self.fd_path(rel);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(sys_err("lstat(2)", &self.shown(rel))(e)),
        };
        if meta.dev() != self.inner.id.0 {
            return Err(PinsError::Unsafe {
                path: self.shown(rel),
                reason: "it is not on the pin directory's bpffs; left alone".into(),
            });
        }
        let result = if meta.is_dir() {
            fs::remove_dir(&path)
        } else {
            fs::remove_file(&path)
        };
        match result {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(sys_err("unlink(2)", &self.shown(rel))(e)),
        }
    }

    /// Takes the directory's lock (flock) for the life of the guard, so that
    /// hooks, the agent and commands serialise. Gives up after `timeout`:
    /// a hook must not hold up a guest's start indefinitely.
    pub fn lock(&self, timeout: Duration) -> Result<DirLock, PinsError> {
        let shown = self.path();
        // A new open file description of the directory, not a dup: flock
        // belongs to the description, and one shared with this PinDir's own
        // descriptor would stay locked for as long as the PinDir lives (the
        // agent's: its whole run) after the guard is dropped.
        let dup = openat(self.inner.dir.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY)
            .map_err(sys_err("openat(2) of the pin directory", shown))?;
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            // SAFETY: `dup` is an open descriptor for the call's duration.
            if unsafe { libc::flock(dup.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(DirLock { _dir: dup });
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(sys_err("flock(2)", shown)(e));
            }
            if Instant::now() >= deadline {
                return Err(PinsError::Locked {
                    path: shown.into(),
                    waited: timeout,
                });
            }
            thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

/// `/sys/fs/bpf` is a sysfs directory until a bpffs is mounted on it, and
/// nothing can be created inside sysfs: mount one there first, the way
/// systemd does.
fn mount_sys_fs_bpf() -> Result<(), PinsError> {
    let path = Path::new(SYS_FS_BPF);
    let mut dir: OwnedFd = fs::File::open("/").map_err(sys_err("open(2) of /", path))?.into();
    for name in [c"sys", c"fs", c"bpf"] {
        dir = open_dir(dir.as_fd(), name, path, libc::O_PATH)?
            .ok_or_else(|| PinsError::NotBpffs(path.into()))?;
    }
    match fs_magic(dir.as_fd()).map_err(sys_err("fstatfs(2)", path))? {
        SYSFS_MAGIC => mount_bpffs(dir.as_fd(), path),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_refuse_dotdot_and_root() {
        assert!(components(Path::new("/sys/fs/bpf/../x")).is_err());
        assert!(components(Path::new("/")).is_err());
        let (abs, names) = components(Path::new("/sys/./fs/bpf/dhcpfix")).unwrap();
        assert_eq!(abs, Path::new("/sys/./fs/bpf/dhcpfix"));
        assert_eq!(names.len(), 4);
    }

    fn stat(mode: u32, uid: u32) -> libc::stat {
        // SAFETY: a zeroed stat is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        st.st_mode = libc::S_IFDIR | mode;
        st.st_uid = uid;
        st
    }

    #[test]
    fn ownership_and_mode_rules() {
        let p = Path::new("/x");
        let me = euid();
        assert!(check(p, &stat(0o755, 0), false).is_ok());
        assert!(
            check(p, &stat(0o1777, 0), false).is_ok(),
            "sticky /tmp-like parent"
        );
        assert!(
            check(p, &stat(0o777, 0), false).is_err(),
            "world-writable, not sticky"
        );
        assert!(check(p, &stat(0o700, me), true).is_ok());
        assert!(
            check(p, &stat(0o1777, 0), true).is_err(),
            "a 1777 bpffs root as pin dir"
        );
        assert!(check(p, &stat(0o700, 65534), true).is_err() || me == 65534);
        let mut file = stat(0o600, 0);
        file.st_mode = libc::S_IFREG | 0o600;
        assert!(check(p, &file, true).is_err());
    }
}
