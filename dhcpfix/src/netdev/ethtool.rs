//! A device's active features (`dev->features`), from the ethtool ioctl
//! (`SIOCETHTOOL`, `ETHTOOL_GFEATURES`): works in any network namespace,
//! needs no capability.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// Errors of the ethtool ioctl. One line each, cause included.
#[derive(Debug, thiserror::Error)]
pub enum EthtoolError {
    #[error("{0:?} is not a valid interface name")]
    BadName(String),
    #[error("socket(AF_INET, SOCK_DGRAM) for ioctl(SIOCETHTOOL): {error}")]
    Socket { error: io::Error },
    #[error("ioctl(SIOCETHTOOL, ETHTOOL_GFEATURES) on {iface}: {error}")]
    Ioctl { iface: String, error: io::Error },
}

/// `ETHTOOL_GFEATURES`.
const ETHTOOL_GFEATURES: u32 = 0x3a;
/// Feature words asked for: 64 features, enough for the checksum bits.
const FEATURE_WORDS: usize = 2;

/// `struct ethtool_gfeatures` with room for [`FEATURE_WORDS`] blocks of
/// `{available, requested, active, never_changed}`.
#[repr(C)]
struct GFeatures {
    cmd: u32,
    size: u32,
    blocks: [[u32; 4]; FEATURE_WORDS],
}

/// `struct ifreq` with the `ifr_data` member.
#[repr(C)]
struct IfreqData {
    name: [u8; libc::IF_NAMESIZE],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// The device's active features (`dev->features`), low 64 bits.
pub fn features(iface: &str) -> Result<u64, EthtoolError> {
    // The name must fit `ifr_name` with its NUL.
    if iface.is_empty() || iface.len() >= libc::IF_NAMESIZE || iface.contains('\0') {
        return Err(EthtoolError::BadName(iface.into()));
    }
    // SAFETY: socket(2) has no memory preconditions.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(EthtoolError::Socket {
            error: io::Error::last_os_error(),
        });
    }
    // SAFETY: socket(2) just returned this descriptor; nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut gf = GFeatures {
        cmd: ETHTOOL_GFEATURES,
        size: FEATURE_WORDS as u32,
        blocks: [[0; 4]; FEATURE_WORDS],
    };
    let mut ifr = IfreqData {
        name: [0; libc::IF_NAMESIZE],
        data: (&mut gf as *mut GFeatures).cast(),
        _pad: [0; 16],
    };
    ifr.name[..iface.len()].copy_from_slice(iface.as_bytes());
    // SAFETY: `ifr` is a valid ifreq whose name is NUL-terminated (checked
    // length < IF_NAMESIZE) and whose data points at a live ethtool_gfeatures
    // with `size` blocks; the kernel writes only within those. (The
    // request's type is the C library's: c_ulong for glibc, c_int for musl.)
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL as libc::Ioctl, &mut ifr) };
    if rc != 0 {
        return Err(EthtoolError::Ioctl {
            iface: iface.into(),
            error: io::Error::last_os_error(),
        });
    }
    Ok(u64::from(gf.blocks[0][2]) | (u64::from(gf.blocks[1][2]) << 32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_before_the_ioctl() {
        for name in ["", "a-name-of-16-chr", "nul\0"] {
            assert!(
                matches!(features(name), Err(EthtoolError::BadName(_))),
                "{name:?}"
            );
        }
        let err = features("nosuchdev0").unwrap_err();
        assert_eq!(
            err.to_string(),
            "ioctl(SIOCETHTOOL, ETHTOOL_GFEATURES) on nosuchdev0: No such device (os error 19)"
        );
    }
}
