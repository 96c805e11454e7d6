//! bpffs mounts made for tests and benchmarks, and removing every mount
//! below a work directory.

use std::{
    fs, io,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use super::{find_tool, process, KitError};

/// The mode of a bpffs root the kernel gives when none is asked for.
pub const BPFFS_DEFAULT_MODE: u32 = 0o1777;

/// Mounts a fresh bpffs at `dir` (created if missing) with root directory
/// mode `mode`, as systemd has one at /sys/fs/bpf.
pub fn mount_bpffs(dir: &Path, mode: u32) -> Result<(), KitError> {
    fs::create_dir_all(dir).map_err(KitError::io("mkdir", dir))?;
    let mount = find_tool("mount", "mount")?;
    let mut cmd = Command::new(mount);
    cmd.args(["-t", "bpf", "-o", &format!("mode={mode:o}"), "bpf"])
        .arg(dir);
    process::run(&mut cmd, None, Duration::from_secs(10)).map(drop)
}

/// Detaches every mount at or below `dir` (a bpffs pin directory, a bind
/// mount), deepest first, so the directory can be removed and its pins
/// released. Returns one line per mount that could not be detached.
pub fn unmount_below(dir: &Path) -> Vec<String> {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    let mut problems = Vec::new();
    for point in points {
        let Ok(c) = std::ffi::CString::new(point.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: `c` is a valid NUL-terminated path.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            problems.push(format!(
                "umount2 {}: {}",
                point.display(),
                io::Error::last_os_error()
            ));
        }
    }
    problems
}
