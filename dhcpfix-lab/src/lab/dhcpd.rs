//! A DHCPv4 server on an ordinary UDP socket, as KubeVirt's virt-launcher
//! runs one inside the pod (`pkg/network/dhcp/server`, docs/kubevirt.md):
//! bound to `0.0.0.0:67`, it answers DISCOVER with OFFER and REQUEST with
//! ACK, broadcast to `255.255.255.255:68` out of the bridge (chosen per
//! datagram with `IP_PKTINFO`, as KubeVirt's does), one address per client.
//!
//! Its replies leave through the bridge, whose tx checksum offload is on
//! (KubeVirt >= 1.8 no longer turns it off): the kernel hands them to the
//! guest's tap `CHECKSUM_PARTIAL`, as dnsmasq's.

use std::{
    collections::HashMap,
    io, mem,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use super::LabError;
use crate::kit::{netns, KitError};

const BOOTREQUEST: u8 = 1;
const BOOTREPLY: u8 = 2;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// Option 53, DHCP message type.
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
/// Where the options start: the fixed BOOTP part and the magic cookie.
const OPTIONS_AT: usize = 240;
/// The smallest BOOTP message (RFC 1542): replies are padded to it.
const MIN_LEN: usize = 300;
const LEASE_SECS: u32 = 3600;

/// What the server answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DhcpdStats {
    pub offers: u64,
    pub acks: u64,
    /// Datagrams that were not a DISCOVER or REQUEST.
    pub ignored: u64,
}

#[derive(Default)]
struct Counters {
    offers: AtomicU64,
    acks: AtomicU64,
    ignored: AtomicU64,
}

/// The running server: a thread inside the pod's network namespace.
pub(crate) struct Dhcpd {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), LabError>>>,
    counters: Arc<Counters>,
}

/// The addresses the server hands out.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pool {
    /// The server's own address (the bridge's), also the router.
    pub server: Ipv4Addr,
    /// The first address given to a client; the next client gets the next.
    pub first: Ipv4Addr,
}

impl Dhcpd {
    /// Starts the server in the namespace at `ns`, answering out of
    /// `bridge`; returns once its socket is bound.
    pub(crate) fn start(ns: &Path, bridge: &str, pool: Pool) -> Result<Dhcpd, LabError> {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), String>>(1);
        let (stop_t, counters_t, bridge_t) = (Arc::clone(&stop), Arc::clone(&counters), bridge.to_owned());
        let thread = netns::spawn_in_netns(ns, "lab-dhcpd", move || {
            let setup = bind(&bridge_t);
            let (socket, ifindex) = match setup {
                Ok(v) => {
                    let _ = ready_tx.send(Ok(()));
                    v
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return Err(LabError::Kit(e));
                }
            };
            serve(&socket, ifindex, pool, &stop_t, &counters_t);
            Ok(())
        })?;
        let mut server = Dhcpd {
            stop,
            thread: Some(thread),
            counters,
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(server),
            Ok(Err(reason)) => {
                server.join();
                Err(LabError::Dhcpd { reason })
            }
            Err(_) => {
                server.join();
                Err(LabError::Dhcpd {
                    reason: "its thread ended during set-up".into(),
                })
            }
        }
    }

    pub(crate) fn stats(&self) -> DhcpdStats {
        let c = &self.counters;
        DhcpdStats {
            offers: c.offers.load(Ordering::Relaxed),
            acks: c.acks.load(Ordering::Relaxed),
            ignored: c.ignored.load(Ordering::Relaxed),
        }
    }

    /// Stops the thread (within its 100 ms receive timeout); its socket
    /// closes.
    pub(crate) fn stop(&mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(Ok(()))) | None => Ok(()),
            Some(Ok(Err(e))) => Err(e.to_string()),
            Some(Err(_)) => Err("the DHCP server's thread panicked".into()),
        }
    }

    fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Dhcpd {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            log::warn!("lab DHCP server: {e}");
        }
    }
}

/// The socket, and the bridge's ifindex (in the calling thread's namespace).
fn bind(bridge: &str) -> Result<(UdpSocket, u32), KitError> {
    let c_bridge = std::ffi::CString::new(bridge).map_err(|_| KitError::Sys {
        op: "if_nametoindex",
        error: io::ErrorKind::InvalidInput.into(),
    })?;
    // SAFETY: a NUL-terminated name; if_nametoindex only reads it.
    let ifindex = unsafe { libc::if_nametoindex(c_bridge.as_ptr()) };
    if ifindex == 0 {
        return Err(KitError::sys("if_nametoindex of the pod's bridge")(
            io::Error::last_os_error(),
        ));
    }
    let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 67))
        .map_err(KitError::sys("bind 0.0.0.0:67"))?;
    socket
        .set_broadcast(true)
        .map_err(KitError::sys("SO_BROADCAST"))?;
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(KitError::sys("SO_RCVTIMEO"))?;
    Ok((socket, ifindex))
}

fn serve(socket: &UdpSocket, ifindex: u32, pool: Pool, stop: &AtomicBool, c: &Counters) {
    let mut leases: HashMap<[u8; 16], Ipv4Addr> = HashMap::new();
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        let n = match socket.recv_from(&mut buf) {
            Ok((n, _)) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("lab DHCP server: recv: {e}");
                continue;
            }
        };
        let Some(req) = Request::parse(&buf[..n]) else {
            c.ignored.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (kind, counter) = match req.kind {
            DISCOVER => (OFFER, &c.offers),
            REQUEST => (ACK, &c.acks),
            _ => {
                c.ignored.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let next = leases.len() as u32;
        let yiaddr = *leases
            .entry(req.chaddr)
            .or_insert_with(|| Ipv4Addr::from(u32::from(pool.first) + next));
        let reply = req.reply(kind, yiaddr, pool.server);
        match send_broadcast(socket, &reply, ifindex, pool.server) {
            Ok(()) => {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => log::warn!("lab DHCP server: sendmsg: {e}"),
        }
    }
}

/// Sends `payload` to 255.255.255.255:68 out of interface `ifindex`, from
/// `source` (`IP_PKTINFO`, as Go's `ipv4.PacketConn` with a control message).
fn send_broadcast(socket: &UdpSocket, payload: &[u8], ifindex: u32, source: Ipv4Addr) -> io::Result<()> {
    // SAFETY: an all-zero sockaddr_in is valid; the fields are set below.
    let mut to: libc::sockaddr_in = unsafe { mem::zeroed() };
    to.sin_family = libc::AF_INET as libc::sa_family_t;
    to.sin_port = 68u16.to_be();
    to.sin_addr.s_addr = u32::from(Ipv4Addr::BROADCAST).to_be();
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    let info = libc::in_pktinfo {
        ipi_ifindex: ifindex as libc::c_int,
        ipi_spec_dst: libc::in_addr {
            s_addr: u32::from(source).to_be(),
        },
        ipi_addr: libc::in_addr { s_addr: 0 },
    };
    // u64 elements: the control buffer is aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(mem::size_of::<libc::in_pktinfo>() as u32) } as usize;
    assert!(space <= mem::size_of_val(&control));
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive
    // the sendmsg call.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&mut to as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points to `space` writable, aligned bytes, so
    // CMSG_FIRSTHDR is non-null and its data has room for an in_pktinfo.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::IPPROTO_IP;
        (*cmsg).cmsg_type = libc::IP_PKTINFO;
        (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<libc::in_pktinfo>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in_pktinfo>(), info);
    }
    // SAFETY: `msg` and everything it points to are valid for the call.
    let n = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The parts of a client's message a reply needs.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Request {
    kind: u8,
    htype: u8,
    hlen: u8,
    xid: [u8; 4],
    flags: [u8; 2],
    chaddr: [u8; 16],
}

impl Request {
    fn parse(m: &[u8]) -> Option<Request> {
        if m.len() < OPTIONS_AT || m[0] != BOOTREQUEST || m[236..240] != MAGIC {
            return None;
        }
        let mut kind = None;
        let mut at = OPTIONS_AT;
        while at < m.len() {
            match m[at] {
                0 => at += 1,
                255 => break,
                code => {
                    let len = usize::from(*m.get(at + 1)?);
                    let value = m.get(at + 2..at + 2 + len)?;
                    if code == 53 && len == 1 {
                        kind = Some(value[0]);
                    }
                    at += 2 + len;
                }
            }
        }
        Some(Request {
            kind: kind?,
            htype: m[1],
            hlen: m[2],
            xid: m[4..8].try_into().ok()?,
            flags: m[10..12].try_into().ok()?,
            chaddr: m[28..44].try_into().ok()?,
        })
    }

    /// The BOOTREPLY of type `kind` giving `yiaddr`, from `server` (also
    /// the router) in a /24.
    fn reply(&self, kind: u8, yiaddr: Ipv4Addr, server: Ipv4Addr) -> Vec<u8> {
        let mut m = vec![0u8; OPTIONS_AT];
        m[0] = BOOTREPLY;
        m[1] = self.htype;
        m[2] = self.hlen;
        m[4..8].copy_from_slice(&self.xid);
        m[10..12].copy_from_slice(&self.flags);
        m[16..20].copy_from_slice(&yiaddr.octets());
        m[20..24].copy_from_slice(&server.octets());
        m[28..44].copy_from_slice(&self.chaddr);
        m[236..240].copy_from_slice(&MAGIC);
        let mut option = |code: u8, value: &[u8]| {
            m.push(code);
            m.push(value.len() as u8);
            m.extend_from_slice(value);
        };
        option(53, &[kind]);
        option(54, &server.octets());
        option(51, &LEASE_SECS.to_be_bytes());
        option(1, &[255, 255, 255, 0]);
        option(3, &server.octets());
        m.push(255);
        if m.len() < MIN_LEN {
            m.resize(MIN_LEN, 0);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discover() -> Vec<u8> {
        let mut m = vec![0u8; OPTIONS_AT];
        m[0] = BOOTREQUEST;
        m[1] = 1;
        m[2] = 6;
        m[4..8].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        m[10] = 0x80;
        m[28..34].copy_from_slice(&[0x52, 0x54, 0, 1, 2, 3]);
        m[236..240].copy_from_slice(&MAGIC);
        m.extend_from_slice(&[0, 53, 1, DISCOVER, 55, 2, 1, 3, 255]);
        m
    }

    #[test]
    fn answers_a_discover_with_an_offer() {
        let req = Request::parse(&discover()).expect("a DISCOVER");
        assert_eq!(req.kind, DISCOVER);
        let server = Ipv4Addr::new(10, 199, 3, 1);
        let offer = req.reply(OFFER, Ipv4Addr::new(10, 199, 3, 50), server);
        assert!(offer.len() >= MIN_LEN);
        assert_eq!(offer[0], BOOTREPLY);
        assert_eq!(offer[4..8], [0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(offer[10], 0x80, "the broadcast flag is echoed");
        assert_eq!(offer[16..20], [10, 199, 3, 50]);
        assert_eq!(offer[28..34], [0x52, 0x54, 0, 1, 2, 3]);
        assert_eq!(offer[OPTIONS_AT..OPTIONS_AT + 3], [53, 1, OFFER]);
        assert_eq!(offer[OPTIONS_AT + 3..OPTIONS_AT + 9], [54, 4, 10, 199, 3, 1]);
    }

    #[test]
    fn ignores_replies_and_garbage() {
        let mut reply = discover();
        reply[0] = BOOTREPLY;
        assert_eq!(Request::parse(&reply), None);
        assert_eq!(Request::parse(&[1; 100]), None);
        let mut cut = discover();
        cut.truncate(OPTIONS_AT + 2);
        assert_eq!(Request::parse(&cut), None, "option 53 cut off");
        let mut no_type = discover();
        no_type.truncate(OPTIONS_AT);
        no_type.push(255);
        assert_eq!(Request::parse(&no_type), None);
    }
}
