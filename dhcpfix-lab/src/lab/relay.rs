//! Tap creation and the userspace "vhost" relay.
//!
//! One thread per lab: it joins the host namespace and creates the host tap
//! (`IFF_VNET_HDR`, `TUNSETOFFLOAD` as requested), joins the guest namespace
//! and creates the guest tap, reports back, then shuttles frames between the
//! two fds until told to stop. The only byte change it ever makes is adding
//! or removing the 10-byte `virtio_net_hdr`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};

use super::{GuestKind, LabError, Offload};
use crate::kit::{
    dev, netns,
    reference::{ref_addresses, ref_classify, ref_verifies, RefVerdict},
    KitError,
};

/// `sizeof(struct virtio_net_hdr)`, the tun default `TUNSETVNETHDRSZ`.
pub(crate) const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM` in `virtio_net_hdr.flags` (byte 0).
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// Big enough for any frame a tap hands out without GSO, plus the header.
const BUF_LEN: usize = 64 * 1024 + VNET_HDR_LEN;

/// Frame counters of a lab's relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RelayStats {
    /// Frames read from the host tap and written to the guest tap.
    pub host_to_guest: u64,
    /// Of those, frames whose vnet header had `VIRTIO_NET_HDR_F_NEEDS_CSUM`
    /// (i.e. the UDP/TCP checksum in the frame is unfinished).
    pub host_to_guest_needs_csum: u64,
    /// Frames read from the guest tap and written to the host tap.
    pub guest_to_host: u64,
    /// Reads or writes that failed (frame dropped).
    pub errors: u64,
    /// Of the frames written to the guest tap, DHCP messages (IPv4 or IPv6
    /// UDP to port 68 or 67, IPv4 not fragmented): what dhcpfix watches.
    pub dhcp_to_guest: u64,
    /// Of those, the ones whose vnet header had `NEEDS_CSUM`.
    pub dhcp_to_guest_needs_csum: u64,
    /// Of those, the ones whose UDP checksum does not verify as written to
    /// the guest tap: what a DHCP client that checks it drops.
    pub dhcp_to_guest_bad_checksum: u64,
}

#[derive(Default)]
struct Counters {
    h2g: AtomicU64,
    h2g_csum: AtomicU64,
    g2h: AtomicU64,
    errors: AtomicU64,
    dhcp: AtomicU64,
    dhcp_csum: AtomicU64,
    dhcp_bad: AtomicU64,
}

pub(crate) struct RelayConfig {
    /// `/run/netns/<host namespace>`.
    pub host_ns: PathBuf,
    /// `/run/netns/<guest namespace>`.
    pub guest_ns: PathBuf,
    pub host_tap: String,
    pub guest_tap: String,
    pub offload: Offload,
    pub guest: GuestKind,
}

pub(crate) struct RelayHandle {
    stop: OwnedFd,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl RelayHandle {
    pub(crate) fn stats(&self) -> RelayStats {
        let c = &self.counters;
        RelayStats {
            host_to_guest: c.h2g.load(Ordering::Relaxed),
            host_to_guest_needs_csum: c.h2g_csum.load(Ordering::Relaxed),
            guest_to_host: c.g2h.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            dhcp_to_guest: c.dhcp.load(Ordering::Relaxed),
            dhcp_to_guest_needs_csum: c.dhcp_csum.load(Ordering::Relaxed),
            dhcp_to_guest_bad_checksum: c.dhcp_bad.load(Ordering::Relaxed),
        }
    }

    /// Signals the thread and joins it; its tap fds close, so both
    /// (non-persistent) taps disappear.
    pub(crate) fn stop(&mut self) -> Result<(), String> {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd.
        let rc = unsafe {
            libc::write(
                self.stop.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        if rc < 0 {
            return Err(format!(
                "write relay stop eventfd: {}",
                io::Error::last_os_error()
            ));
        }
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| "relay thread panicked".to_owned()),
            None => Ok(()),
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            if let Err(e) = self.stop() {
                log::warn!("lab relay: {e}");
            }
        }
    }
}

/// Creates both taps (in their namespaces) and starts the relay; returns
/// once the taps exist or the setup failed.
pub(crate) fn start(cfg: RelayConfig) -> Result<RelayHandle, LabError> {
    let stop = eventfd()?;
    let stop_for_thread = stop.try_clone().map_err(KitError::sys("dup eventfd"))?;
    let counters = Arc::new(Counters::default());
    let counters_thread = Arc::clone(&counters);
    let (tx, rx) = mpsc::sync_channel::<Result<(), LabError>>(1);
    let relay_ns = ns_name(&cfg.guest_ns);
    let thread_name = format!("relay-{relay_ns}");

    let thread = thread::Builder::new()
        .name(thread_name)
        .spawn(move || {
            let (host, guest, guest_kind) = match setup(cfg) {
                Ok(v) => v,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            if tx.send(Ok(())).is_err() {
                return;
            }
            drop(tx);
            run(&host, &guest, &stop_for_thread, guest_kind, &counters_thread);
        })
        .map_err(KitError::sys("spawn relay thread"))?;

    let mut handle = RelayHandle {
        stop,
        thread: Some(thread),
        counters,
    };
    match rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => {
            let _ = handle.thread.take().map(JoinHandle::join);
            Err(e)
        }
        Err(_) => {
            let _ = handle.thread.take().map(JoinHandle::join);
            Err(LabError::Relay {
                netns: relay_ns,
                reason: "thread exited during tap setup".into(),
            })
        }
    }
}

/// Runs on the relay thread: creates the taps in their namespaces.
fn setup(cfg: RelayConfig) -> Result<(OwnedFd, OwnedFd, GuestKind), LabError> {
    netns::enter(&cfg.host_ns)?;
    let host = open_tap(&cfg.host_tap, true)?;
    let host_offload = match cfg.offload {
        Offload::On => libc::TUN_F_CSUM,
        Offload::Off => 0,
    };
    set_offload(&host, &cfg.host_tap, host_offload)?;

    netns::enter(&cfg.guest_ns)?;
    let guest = match cfg.guest {
        GuestKind::Legacy => open_tap(&cfg.guest_tap, false)?,
        GuestKind::Modern => {
            let fd = open_tap(&cfg.guest_tap, true)?;
            set_offload(&fd, &cfg.guest_tap, libc::TUN_F_CSUM)?;
            fd
        }
    };
    Ok((host, guest, cfg.guest))
}

/// Opens /dev/net/tun in the calling thread's network namespace (the tun
/// device lands in the namespace of the opener) and attaches a tap.
fn open_tap(name: &str, vnet_hdr: bool) -> Result<OwnedFd, LabError> {
    let file =
        dev::open_tun_device(Path::new("/dev/net/tun")).map_err(|error| LabError::TunOpen { error })?;
    let fd = OwnedFd::from(file);
    let set = if name.is_empty() {
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    } else {
        dev::set_tap(&fd, name, vnet_hdr)
    };
    set.map_err(|error| LabError::TunSetIff {
        name: name.to_owned(),
        error,
    })?;
    Ok(fd)
}

fn set_offload(fd: &OwnedFd, name: &str, flags: libc::c_uint) -> Result<(), LabError> {
    dev::set_tap_offload(fd, flags).map_err(|error| LabError::TunSetOffload {
        name: name.to_owned(),
        flags,
        error,
    })
}

/// An eventfd (CLOEXEC), used to stop the relay thread.
fn eventfd() -> Result<OwnedFd, LabError> {
    // SAFETY: eventfd has no pointer arguments.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(KitError::sys("eventfd")(io::Error::last_os_error()).into());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The name of a namespace from its path under /run/netns.
fn ns_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid writable slice of `buf.len()` bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn write_fd(fd: RawFd, buf: &[u8]) -> io::Result<()> {
    // SAFETY: `buf` is a valid readable slice of `buf.len()` bytes.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else if n as usize != buf.len() {
        Err(io::Error::new(io::ErrorKind::WriteZero, "short tap write"))
    } else {
        Ok(())
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR))
}

/// The relay loop. `host` carries vnet headers; `guest` does too only for
/// [`GuestKind::Modern`].
fn run(host: &OwnedFd, guest: &OwnedFd, stop: &OwnedFd, kind: GuestKind, c: &Counters) {
    let (h, g, s) = (host.as_raw_fd(), guest.as_raw_fd(), stop.as_raw_fd());
    let mut buf = vec![0u8; BUF_LEN];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: h,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: g,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: s,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of 3 pollfd for the call's duration.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if is_transient(&e) {
                continue;
            }
            log::error!("lab relay: poll: {e}");
            return;
        }
        if fds[2].revents != 0 {
            return;
        }
        let bad = libc::POLLERR | libc::POLLHUP | libc::POLLNVAL;
        if fds[0].revents & bad != 0 || fds[1].revents & bad != 0 {
            log::error!("lab relay: tap fd error/hangup, stopping");
            return;
        }

        if fds[0].revents & libc::POLLIN != 0 {
            // host -> guest
            match read_fd(h, &mut buf) {
                Ok(n) if n >= VNET_HDR_LEN => {
                    let needs_csum = buf[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0;
                    if needs_csum {
                        c.h2g_csum.fetch_add(1, Ordering::Relaxed);
                    }
                    let out = match kind {
                        GuestKind::Legacy => &buf[VNET_HDR_LEN..n],
                        GuestKind::Modern => &buf[..n],
                    };
                    let written = write_fd(g, out);
                    if written.is_ok() {
                        count_dhcp(&buf[VNET_HDR_LEN..n], needs_csum, c);
                    }
                    count(written, &c.h2g, c, "write guest tap");
                }
                Ok(n) => {
                    log::debug!("lab relay: short host frame ({n} bytes) dropped");
                    c.errors.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if is_transient(&e) => {}
                Err(e) => {
                    log::debug!("lab relay: read host tap: {e}");
                    c.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }

        if fds[1].revents & libc::POLLIN != 0 {
            // guest -> host
            let res = match kind {
                GuestKind::Legacy => {
                    buf[..VNET_HDR_LEN].fill(0);
                    read_fd(g, &mut buf[VNET_HDR_LEN..]).map(|n| n + VNET_HDR_LEN)
                }
                GuestKind::Modern => read_fd(g, &mut buf),
            };
            match res {
                Ok(n) => count(write_fd(h, &buf[..n]), &c.g2h, c, "write host tap"),
                Err(e) if is_transient(&e) => {}
                Err(e) => {
                    log::debug!("lab relay: read guest tap: {e}");
                    c.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Counts a frame written to the guest if it is a DHCP message, and checks
/// its UDP checksum as the guest's client would.
fn count_dhcp(frame: &[u8], needs_csum: bool, c: &Counters) {
    let RefVerdict::Dhcp { l3, l4, udp_len } = ref_classify(frame, &[68, 67], usize::MAX) else {
        return;
    };
    c.dhcp.fetch_add(1, Ordering::Relaxed);
    if needs_csum {
        c.dhcp_csum.fetch_add(1, Ordering::Relaxed);
    }
    let (src, dst) = ref_addresses(frame, l3);
    if !ref_verifies(src, dst, &frame[l4..l4 + udp_len]) {
        c.dhcp_bad.fetch_add(1, Ordering::Relaxed);
    }
}

fn count(res: io::Result<()>, ok: &AtomicU64, c: &Counters, what: &str) {
    match res {
        Ok(()) => {
            ok.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            // EIO while the peer interface is still down is expected early on.
            log::debug!("lab relay: {what}: {e}");
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}
