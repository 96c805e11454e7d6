//! Running code as an unprivileged user (`nobody`) on a thread of its own,
//! for tests of what any local user can do to a root service: connections,
//! files and locks made there are that user's.
//!
//! Linux keeps credentials per thread; the C library's `setuid` changes
//! every thread of the process, the raw system calls only the caller. So
//! the thread drops its privileges with the raw calls and ends afterwards;
//! the rest of the process stays root.

use std::{io, path::Path, thread};

use super::{netns, KitError};

/// `nobody` on Debian.
pub const NOBODY: u32 = 65534;

/// Drops the calling thread (only it) to uid and gid `id`, no
/// supplementary groups, no capabilities.
fn drop_to(id: u32) -> io::Result<()> {
    let check = |rc: libc::c_long| {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    // SAFETY: raw credential system calls with plain integer arguments (a
    // null list for setgroups); they change the calling thread only.
    unsafe {
        check(libc::syscall(
            libc::SYS_setgroups,
            0 as libc::c_long,
            std::ptr::null::<libc::gid_t>(),
        ))?;
        check(libc::syscall(libc::SYS_setresgid, id, id, id))?;
        check(libc::syscall(libc::SYS_setresuid, id, id, id))?;
    }
    Ok(())
}

/// Runs `f` on a new thread that first enters the network namespace at
/// `ns` (if given), then becomes uid and gid [`NOBODY`]. Descriptors it
/// opens stay open after it ends (they belong to the process). A panic in
/// `f` goes on in the caller.
pub fn as_nobody<T: Send>(ns: Option<&Path>, f: impl FnOnce() -> T + Send) -> Result<T, KitError> {
    thread::scope(|s| {
        let inside = s.spawn(|| {
            if let Some(ns) = ns {
                netns::enter(ns)?;
            }
            drop_to(NOBODY).map_err(KitError::sys("dropping a thread to uid 65534"))?;
            Ok(f())
        });
        inside
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
