//! Tap devices (`/dev/net/tun`, macvtap's `/dev/tapN`) and `AF_PACKET`
//! sockets, made in the calling thread's network namespace.

use std::{
    fs::{File, OpenOptions},
    io, mem,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::OpenOptionsExt,
    },
    path::Path,
    time::Duration,
};

/// `struct ifreq` as TUNSETIFF uses it: name and flags, padded to 40 bytes.
#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens a tun/tap character device (`/dev/net/tun`, `/dev/tapN`) for
/// reading and writing, non-blocking, close-on-exec.
pub fn open_tun_device(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

/// TUNSETIFF: attaches `fd` to the tap `name` (created if missing; empty
/// for a macvtap's own device) as `IFF_TAP | IFF_NO_PI`, plus
/// `IFF_VNET_HDR` with `vnet_hdr`.
pub fn set_tap(fd: &impl AsRawFd, name: &str, vnet_hdr: bool) -> io::Result<()> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
    if vnet_hdr {
        flags |= libc::IFF_VNET_HDR;
    }
    req.flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` has its
    // layout and size (40 bytes) and lives across the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReqFlags) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A tap `name` in the calling thread's network namespace (the device lands
/// in the namespace of the opener), non-blocking; it goes away with the fd.
pub fn open_tap(name: &str, vnet_hdr: bool) -> io::Result<OwnedFd> {
    if name.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let fd = OwnedFd::from(open_tun_device(Path::new("/dev/net/tun"))?);
    set_tap(&fd, name, vnet_hdr)?;
    Ok(fd)
}

/// A persistent tap `name` in the calling thread's network namespace: it
/// stays when its fd closes, until it is deleted or its namespace goes
/// (`ip tuntap add`, without a process per tap).
pub fn add_persistent_tap(name: &str) -> io::Result<()> {
    let fd = open_tap(name, false)?;
    // SAFETY: TUNSETPERSIST takes its argument by value; no memory is passed.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// TUNSETOFFLOAD: the offloads (`TUN_F_CSUM`, ...) the reader of the tap
/// accepts.
pub fn set_tap_offload(fd: &impl AsRawFd, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETOFFLOAD, libc::c_ulong::from(flags)) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An `AF_PACKET` raw socket (close-on-exec) for `protocol` (an `ETH_P_*`
/// in host order; 0 receives nothing), not bound yet.
pub fn packet_socket(protocol: u16) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) has no memory preconditions.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(protocol.to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket(2) just returned this descriptor; nothing else owns it.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

/// Binds an `AF_PACKET` socket to the interface `ifindex` for `protocol`
/// (host order).
pub fn bind_packet(fd: &OwnedFd, ifindex: u32, protocol: u16) -> io::Result<()> {
    // SAFETY: an all-zero sockaddr_ll is valid; the fields set below complete it.
    let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol.to_be();
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: bind(2) reads `addr`, a live sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// setsockopt(2) with a value of type `T`.
pub fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live T of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// SO_RCVTIMEO: a blocking read gives up after `timeout`.
pub fn set_recv_timeout(fd: &OwnedFd, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)
}

/// `sizeof(struct virtio_net_hdr)`: what a tap with `IFF_VNET_HDR`, and an
/// `AF_PACKET` socket with `PACKET_VNET_HDR`, put before each frame.
pub const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the frame's checksum is partial.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `PACKET_VNET_HDR` (linux/if_packet.h).
const PACKET_VNET_HDR: libc::c_int = 15;

/// A virtio-net header: with `partial` = `(csum_start, csum_offset)` the
/// frame is `CHECKSUM_PARTIAL` (`NEEDS_CSUM`); without, flags 0.
pub fn vnet_header(partial: Option<(u16, u16)>) -> [u8; VNET_HDR_LEN] {
    let mut h = [0u8; VNET_HDR_LEN];
    if let Some((start, offset)) = partial {
        h[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        // hdr_len stays 0: the kernel raises it to start + offset + 2.
        h[6..8].copy_from_slice(&start.to_le_bytes());
        h[8..10].copy_from_slice(&offset.to_le_bytes());
    }
    h
}

/// An `AF_PACKET` socket that sends only (protocol 0), with
/// `PACKET_VNET_HDR`, bound to `ifindex`: each frame written to it starts
/// with a [`vnet_header`], so the kernel builds the skb a guest's or a
/// host's checksum offload would (`CHECKSUM_PARTIAL`), and it leaves
/// through the interface's egress (its tc/tcx hooks). Call it in the
/// interface's network namespace.
pub fn vnet_packet_socket(ifindex: u32) -> io::Result<OwnedFd> {
    let fd = packet_socket(0)?;
    let one: libc::c_int = 1;
    setsockopt(&fd, libc::SOL_PACKET, PACKET_VNET_HDR, &one)?;
    bind_packet(&fd, ifindex, 0)?;
    Ok(fd)
}

/// Writes `header` and `frame` as one datagram or one tap frame (an
/// `AF_PACKET` socket from [`vnet_packet_socket`], a tap fd with
/// `IFF_VNET_HDR`).
pub fn write_with_header(fd: &impl AsRawFd, header: &[u8; VNET_HDR_LEN], frame: &[u8]) -> io::Result<()> {
    let iov = [
        libc::iovec {
            iov_base: header.as_ptr() as *mut libc::c_void,
            iov_len: header.len(),
        },
        libc::iovec {
            iov_base: frame.as_ptr() as *mut libc::c_void,
            iov_len: frame.len(),
        },
    ];
    // SAFETY: both iovecs point at live buffers of the lengths given, which
    // writev(2) only reads.
    let n = unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), 2) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != header.len() + frame.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
    }
    Ok(())
}
