//! Tap creation and the userspace "vhost" relay.
//!
//! One thread per lab: it joins the host namespace and creates the host tap
//! (`IFF_VNET_HDR`, `TUNSETOFFLOAD` as requested), joins the guest namespace
//! and creates the guest tap, reports back, then shuttles frames between the
//! two fds until told to stop. The only byte change it ever makes is adding
//! or removing the 10-byte `virtio_net_hdr`.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{GuestKind, LabError, Offload};
use crate::kit::{
    dev, netns,
    reference::{ref_addresses, ref_verifies},
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
}

/// One DHCP message that crossed the relay, as the guest got it or sent
/// it: the lab's own record of the conversation, independent of dhcpfix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DhcpFrame {
    /// When the relay passed it on, since the lab started.
    pub at: Duration,
    /// Host to guest (a server's reply), or guest to host.
    pub to_guest: bool,
    /// 4 or 6.
    pub family: u8,
    /// DHCPv4 option 53 (0 without one), or the DHCPv6 message type.
    pub msg_type: u8,
    /// The transaction id (DHCPv6: 24 bits).
    pub xid: u32,
    /// The guest's MAC: DHCPv4 `chaddr`; DHCPv6 the frame's source (from
    /// the guest) or destination (to it).
    pub mac: [u8; 6],
    /// A DHCPv4 reply's `yiaddr`.
    pub yiaddr: Ipv4Addr,
    /// The vnet header had `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
    pub needs_csum: bool,
    /// Whether the UDP checksum is good as the guest's kernel and client
    /// see it: the bytes verify, or (a modern guest) the header tells it
    /// to complete the checksum itself.
    pub checksum_ok: bool,
}

impl DhcpFrame {
    /// DHCPv4 message types (option 53).
    pub const DISCOVER: u8 = 1;
    pub const OFFER: u8 = 2;
    pub const REQUEST: u8 = 3;
    pub const ACK: u8 = 5;
    /// DHCPv6 message types.
    pub const SOLICIT: u8 = 1;
    pub const ADVERTISE: u8 = 2;
    pub const REQUEST6: u8 = 3;
    pub const RENEW6: u8 = 5;
    pub const REPLY6: u8 = 7;

    /// Reads a DHCP message (UDP 67/68 over IPv4, 546/547 right after an
    /// IPv6 header) in an untagged Ethernet frame; `None` for anything else.
    pub fn read(
        frame: &[u8],
        to_guest: bool,
        at: Duration,
        needs_csum: bool,
        modern: bool,
    ) -> Option<DhcpFrame> {
        let be16 =
            |at: usize| -> Option<u16> { Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?])) };
        let (family, l3, l4, udp_len, ports) = match be16(12)? {
            0x0800 => {
                let ihl = usize::from(frame.get(14)? & 0x0f) * 4;
                if *frame.get(23)? != 17 || be16(20)? & 0x3fff != 0 || ihl < 20 {
                    return None;
                }
                let total = usize::from(be16(16)?);
                (4, 14, 14 + ihl, total.checked_sub(ihl)?, [67, 68])
            }
            0x86dd => {
                if *frame.get(20)? != 17 {
                    return None;
                }
                (6, 14, 54, usize::from(be16(18)?), [546, 547])
            }
            _ => return None,
        };
        let dport = be16(l4 + 2)?;
        if !ports.contains(&dport) || udp_len < 8 {
            return None;
        }
        let udp = frame.get(l4..l4 + udp_len)?;
        let (src, dst) = ref_addresses(frame, l3);
        let checksum_ok = (modern && needs_csum) || ref_verifies(src, dst, udp);
        let dhcp = &udp[8..];
        let mut out = DhcpFrame {
            at,
            to_guest,
            family,
            msg_type: 0,
            xid: 0,
            mac: [0; 6],
            yiaddr: Ipv4Addr::UNSPECIFIED,
            needs_csum,
            checksum_ok,
        };
        if family == 6 {
            let head = dhcp.get(..4)?;
            out.msg_type = head[0];
            out.xid = u32::from_be_bytes([0, head[1], head[2], head[3]]);
            let mac = if to_guest { &frame[..6] } else { &frame[6..12] };
            out.mac.copy_from_slice(mac);
            return Some(out);
        }
        if dhcp.get(236..240)? != [99, 130, 83, 99] {
            return None;
        }
        out.xid = u32::from_be_bytes(dhcp[4..8].try_into().ok()?);
        out.yiaddr = Ipv4Addr::new(dhcp[16], dhcp[17], dhcp[18], dhcp[19]);
        out.mac.copy_from_slice(&dhcp[28..34]);
        let mut at = 240;
        while let Some(&code) = dhcp.get(at) {
            match code {
                0 => at += 1,
                255 => break,
                _ => {
                    let len = usize::from(*dhcp.get(at + 1)?);
                    if code == 53 && len >= 1 {
                        out.msg_type = *dhcp.get(at + 2)?;
                        break;
                    }
                    at += 2 + len;
                }
            }
        }
        Some(out)
    }
}

/// DHCP messages kept per lab (a flood keeps only its first ones).
const TRANSCRIPT_MAX: usize = 200_000;

#[derive(Default)]
struct Counters {
    h2g: AtomicU64,
    h2g_csum: AtomicU64,
    g2h: AtomicU64,
    errors: AtomicU64,
    dhcp: Mutex<Vec<DhcpFrame>>,
}

impl Counters {
    /// Records `frame` if it is a DHCP message.
    fn record(&self, frame: &[u8], to_guest: bool, needs_csum: bool, kind: GuestKind, start: Instant) {
        let modern = kind == GuestKind::Modern;
        if let Some(m) = DhcpFrame::read(frame, to_guest, start.elapsed(), needs_csum, modern) {
            let mut dhcp = self.dhcp.lock().unwrap_or_else(|p| p.into_inner());
            if dhcp.len() < TRANSCRIPT_MAX {
                dhcp.push(m);
            }
        }
    }
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
    /// When the lab started: the transcript's times count from it.
    pub start: Instant,
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
        }
    }

    /// The DHCP messages that crossed the relay so far, in order.
    pub(crate) fn dhcp_frames(&self) -> Vec<DhcpFrame> {
        self.counters
            .dhcp
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
    let start = cfg.start;
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
            run(
                &host,
                &guest,
                &stop_for_thread,
                guest_kind,
                &counters_thread,
                start,
            );
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
fn run(host: &OwnedFd, guest: &OwnedFd, stop: &OwnedFd, kind: GuestKind, c: &Counters, start: Instant) {
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
                        c.record(&buf[VNET_HDR_LEN..n], true, needs_csum, kind, start);
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
                Ok(n) => {
                    let written = write_fd(h, &buf[..n]);
                    if written.is_ok() && n >= VNET_HDR_LEN {
                        let needs_csum = buf[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0;
                        c.record(&buf[VNET_HDR_LEN..n], false, needs_csum, kind, start);
                    }
                    count(written, &c.g2h, c, "write host tap")
                }
                Err(e) if is_transient(&e) => {}
                Err(e) => {
                    log::debug!("lab relay: read guest tap: {e}");
                    c.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
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
