//! The `bpf(2)` queries the bench needs and neither aya 0.14 nor
//! `dhcpfix::sys` offers: how many programs sit on an interface's tcx egress,
//! a program's maps, and the kernel memory (`memlock`) of each object.

use std::{
    fs, io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
};

use serde::{Deserialize, Serialize};

use crate::error::{BenchError, Result};

const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;

/// A zeroed `union bpf_attr`, large enough for every command used here.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Self([0; 128])
    }

    fn put_u32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    }

    fn put_u64(&mut self, at: usize, v: u64) {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    }

    fn u32_at(&self, at: usize) -> u32 {
        u32::from_ne_bytes([self.0[at], self.0[at + 1], self.0[at + 2], self.0[at + 3]])
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable, zero-initialised bpf_attr of the
    // size passed; pointers stored in it point to live buffers of the sizes
    // stored next to them.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr,
            std::mem::size_of::<Attr>() as u32,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `BPF_PROG_QUERY` on `ifindex` (in the calling thread's network namespace)
/// for tcx egress: how many programs are attached there.
pub fn tcx_egress_count(ifindex: u32) -> io::Result<u32> {
    let mut attr = Attr::new();
    // struct { target_ifindex; attach_type; query_flags; attach_flags;
    //          prog_ids (u64); count; ... }
    attr.put_u32(0, ifindex);
    attr.put_u32(4, dhcpfix::sys::BPF_TCX_EGRESS);
    bpf(BPF_PROG_QUERY, &mut attr)?;
    Ok(attr.u32_at(24))
}

/// `BPF_OBJ_GET_INFO_BY_FD` into `info` (whose first bytes may carry input
/// fields, e.g. a prog's `nr_map_ids` and `map_ids`).
fn obj_info(fd: &OwnedFd, info: &mut [u64]) -> io::Result<()> {
    let mut attr = Attr::new();
    attr.put_u32(0, fd.as_raw_fd() as u32);
    attr.put_u32(4, std::mem::size_of_val(info) as u32);
    attr.put_u64(8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map(drop)
}

fn map_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.put_u32(0, id);
    let fd = bpf(BPF_MAP_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

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

fn bytes_of(info: &[u64]) -> Vec<u8> {
    info.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

fn u32_in(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn name_in(bytes: &[u8], at: usize) -> String {
    let raw = &bytes[at..at + 16];
    let end = raw.iter().position(|&b| b == 0).unwrap_or(16);
    String::from_utf8_lossy(&raw[..end]).into_owned()
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

/// Reads the memory of the program pinned at `<pin_dir>/prog` and of every
/// map it uses (found through the program's map ids, so unpinned maps such
/// as the scratch buffer and the read-only globals count too).
pub fn kernel_memory(pin_dir: &Path) -> Result<KernelMemory> {
    let prog_path = pin_dir.join("prog");
    let prog = dhcpfix::sys::obj_get(&prog_path).map_err(BenchError::io("BPF_OBJ_GET", &prog_path))?;
    let prog_memlock_bytes = memlock(&prog)?;

    // struct bpf_prog_info: nr_map_ids (u32) at byte 52, map_ids (u64) at 56.
    let mut ids = [0u32; 64];
    let mut info = [0u64; 32];
    info[6] = u64::from(ids.len() as u32) << 32;
    info[7] = ids.as_mut_ptr() as u64;
    obj_info(&prog, &mut info).map_err(BenchError::sys("BPF_OBJ_GET_INFO_BY_FD on the program"))?;
    let nr = (u32_in(&bytes_of(&info), 52) as usize).min(ids.len());

    let mut maps = Vec::new();
    for &id in &ids[..nr] {
        let fd = map_fd_by_id(id).map_err(BenchError::sys("BPF_MAP_GET_FD_BY_ID"))?;
        // struct bpf_map_info: max_entries at 16, name[16] at 24.
        let mut map_info = [0u64; 16];
        obj_info(&fd, &mut map_info).map_err(BenchError::sys("BPF_OBJ_GET_INFO_BY_FD on a map"))?;
        let bytes = bytes_of(&map_info);
        maps.push(MapMemory {
            name: name_in(&bytes, 24),
            max_entries: u32_in(&bytes, 16),
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
