//! The kernel memory (`memlock`) of the loaded classifier and of each of its
//! maps, found through `dhcpfix::sys`.

use std::{
    fs,
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
};

use dhcpfix::sys;
use serde::{Deserialize, Serialize};

use crate::error::{BenchError, Result};

/// The `memlock:` line of `/proc/self/fdinfo/<fd>`: the kernel memory the
/// object is charged for.
fn memlock(fd: &OwnedFd) -> Result<u64> {
    let path = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    let text = fs::read_to_string(&path).map_err(BenchError::io("read", &path))?;
    text.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| BenchError::Parse {
            what: path,
            detail: "no memlock line".into(),
        })
}

/// One map of the program and its kernel memory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MapMemory {
    pub name: String,
    pub max_entries: u32,
    pub memlock_bytes: u64,
}

/// Kernel memory charged to the loaded classifier and its maps.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KernelMemory {
    pub prog_memlock_bytes: u64,
    pub maps: Vec<MapMemory>,
    pub total_bytes: u64,
}

/// Reads the memory of the program pinned in `pin_dir` and of every
/// map it uses (found through the program's map ids, so unpinned maps such
/// as the scratch buffer and the read-only globals count too).
pub fn read(pin_dir: &Path) -> Result<KernelMemory> {
    let prog_path = pin_dir.join(dhcpfix::pins::program_rel());
    let prog = sys::obj_get(&prog_path).map_err(BenchError::io("BPF_OBJ_GET", &prog_path))?;
    let prog_memlock_bytes = memlock(&prog)?;
    let ids = sys::prog_map_ids(&prog).map_err(BenchError::sys("BPF_OBJ_GET_INFO_BY_FD on the program"))?;

    let mut maps = Vec::new();
    for id in ids {
        let fd = sys::map_fd_by_id(id).map_err(BenchError::sys("BPF_MAP_GET_FD_BY_ID"))?;
        let info = sys::map_info(&fd).map_err(BenchError::sys("BPF_OBJ_GET_INFO_BY_FD on a map"))?;
        maps.push(MapMemory {
            name: info.name,
            max_entries: info.max_entries,
            memlock_bytes: memlock(&fd)?,
        });
    }
    let total_bytes = prog_memlock_bytes + maps.iter().map(|m| m.memlock_bytes).sum::<u64>();
    Ok(KernelMemory {
        prog_memlock_bytes,
        maps,
        total_bytes,
    })
}
