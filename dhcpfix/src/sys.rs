//! The few `bpf(2)` commands aya 0.14 does not expose: opening and pinning
//! an object, reading a link's target interface, moving a link to another
//! program (upgrades), detaching a link, counting the programs on a tcx
//! hook, and listing a program's maps (the benchmark's memory figures).

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    os::unix::ffi::OsStrExt,
    path::Path,
};

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;
/// `BPF_F_REPLACE`: update only if the link still runs `old_prog_fd`.
const BPF_F_REPLACE: u32 = 1 << 2;
/// `BPF_LINK_TYPE_TCX` (Linux 6.6).
pub const BPF_LINK_TYPE_TCX: u32 = 11;
/// `BPF_TCX_EGRESS` attach type.
pub const BPF_TCX_EGRESS: u32 = 47;

/// A zeroed `union bpf_attr` large enough for every command used here.
#[repr(C, align(8))]
struct Attr([u8; 128]);

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable, zero-initialised bpf_attr of the
    // size passed; pointers stored in it point to live buffers of the sizes
    // stored next to them, and the kernel writes only within those.
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

/// `BPF_OBJ_GET`: opens the object pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut attr = Attr([0; 128]);
    attr.0[..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `BPF_OBJ_PIN`: pins the object behind `fd` (a link, a map, a program)
/// at `path`, on a bpffs.
pub fn obj_pin(fd: &OwnedFd, path: &Path) -> io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut attr = Attr([0; 128]);
    attr.0[..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    attr.0[8..12].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// `BPF_LINK_UPDATE` (Linux 5.7): makes the link run `new_prog` instead of
/// `old_prog`, atomically for the hook (no packet sees neither).
pub fn link_update(link: &OwnedFd, new_prog: BorrowedFd<'_>, old_prog: BorrowedFd<'_>) -> io::Result<()> {
    // struct { link_fd; new_prog_fd; flags; old_prog_fd; }
    let mut attr = Attr([0; 128]);
    attr.0[0..4].copy_from_slice(&(link.as_raw_fd() as u32).to_ne_bytes());
    attr.0[4..8].copy_from_slice(&(new_prog.as_raw_fd() as u32).to_ne_bytes());
    attr.0[8..12].copy_from_slice(&BPF_F_REPLACE.to_ne_bytes());
    attr.0[12..16].copy_from_slice(&(old_prog.as_raw_fd() as u32).to_ne_bytes());
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// What `BPF_OBJ_GET_INFO_BY_FD` says of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub link_type: u32,
    pub id: u32,
    pub prog_id: u32,
    /// Target interface of a tcx link; 0 once the interface is gone.
    pub ifindex: u32,
    pub attach_type: u32,
}

/// `BPF_OBJ_GET_INFO_BY_FD` into `info`, whose first bytes may carry input
/// fields (a program's `nr_map_ids` and `map_ids`).
fn obj_info(fd: &OwnedFd, info: &mut [u64]) -> io::Result<()> {
    let mut attr = Attr([0; 128]);
    attr.0[0..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    attr.0[4..8].copy_from_slice(&(std::mem::size_of_val(info) as u32).to_ne_bytes());
    attr.0[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map(drop)
}

/// The `i`-th u32 of an info buffer (0 past its end).
fn u32_at(info: &[u64], i: usize) -> u32 {
    info.get(i / 2)
        .map(|w| w.to_ne_bytes())
        .and_then(|b| b[(i % 2) * 4..(i % 2) * 4 + 4].try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a link.
pub fn link_info(fd: &OwnedFd) -> io::Result<LinkInfo> {
    // struct bpf_link_info: type, id, prog_id, then an 8-aligned union whose
    // tcx member is { ifindex, attach_type }.
    let mut info = [0u64; 16];
    obj_info(fd, &mut info)?;
    let get = |i| u32_at(&info, i);
    Ok(LinkInfo {
        link_type: get(0),
        id: get(1),
        prog_id: get(2),
        ifindex: get(4),
        attach_type: get(5),
    })
}

/// `BPF_LINK_DETACH` (Linux 5.9): detaches a link from its hook now, even
/// while other references to it (a pin being removed) still exist.
pub fn link_detach(fd: &OwnedFd) -> io::Result<()> {
    let mut attr = Attr([0; 128]);
    attr.0[0..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}

/// `BPF_PROG_QUERY` on `ifindex` (in the calling thread's network namespace)
/// for `attach_type` (e.g. [`BPF_TCX_EGRESS`]): how many programs are
/// attached there.
pub fn prog_count(ifindex: u32, attach_type: u32) -> io::Result<u32> {
    // struct { target_ifindex; attach_type; query_flags; attach_flags;
    //          prog_ids (u64); count; ... }
    let mut attr = Attr([0; 128]);
    attr.0[0..4].copy_from_slice(&ifindex.to_ne_bytes());
    attr.0[4..8].copy_from_slice(&attach_type.to_ne_bytes());
    bpf(BPF_PROG_QUERY, &mut attr)?;
    Ok(u32::from_ne_bytes([
        attr.0[24], attr.0[25], attr.0[26], attr.0[27],
    ]))
}

/// The ids of the maps a program uses (at most 64), from
/// `BPF_OBJ_GET_INFO_BY_FD` on the program.
pub fn prog_map_ids(fd: &OwnedFd) -> io::Result<Vec<u32>> {
    // struct bpf_prog_info: nr_map_ids (u32) at byte 52, map_ids (u64) at 56.
    let mut ids = [0u32; 64];
    let mut info = [0u64; 32];
    info[6] = u64::from(ids.len() as u32) << 32;
    info[7] = ids.as_mut_ptr() as u64;
    obj_info(fd, &mut info)?;
    let nr = (u32_at(&info, 13) as usize).min(ids.len());
    Ok(ids[..nr].to_vec())
}

/// `BPF_MAP_GET_FD_BY_ID`: opens the map with this id.
pub fn map_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = Attr([0; 128]);
    attr.0[0..4].copy_from_slice(&id.to_ne_bytes());
    let fd = bpf(BPF_MAP_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// What `BPF_OBJ_GET_INFO_BY_FD` says of a map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapInfo {
    pub name: String,
    pub max_entries: u32,
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a map.
pub fn map_info(fd: &OwnedFd) -> io::Result<MapInfo> {
    // struct bpf_map_info: max_entries at byte 16, name[16] at 24.
    let mut info = [0u64; 16];
    obj_info(fd, &mut info)?;
    let name: Vec<u8> = info[3..5].iter().flat_map(|w| w.to_ne_bytes()).collect();
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(MapInfo {
        name: String::from_utf8_lossy(&name[..end]).into_owned(),
        max_entries: u32_at(&info, 4),
    })
}

/// Moved to [`crate::netdev`], the device layer; re-exported for the
/// benchmarks (bench/), which still call them here.
#[doc(hidden)]
pub use crate::netdev::{ifindex, ifname};

#[cfg(test)]
mod tests {
    use super::u32_at;

    #[test]
    fn u32_at_reads_native_halves_and_zero_past_the_end() {
        let lo = 0x1122_3344u32;
        let hi = 0x5566_7788u32;
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&lo.to_ne_bytes());
        bytes[4..].copy_from_slice(&hi.to_ne_bytes());
        let info = [u64::from_ne_bytes(bytes)];
        assert_eq!(u32_at(&info, 0), lo);
        assert_eq!(u32_at(&info, 1), hi);
        assert_eq!(u32_at(&info, 2), 0);
    }
}
