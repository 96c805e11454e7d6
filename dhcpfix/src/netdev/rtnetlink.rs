//! rtnetlink (`NETLINK_ROUTE`, on netlink-packet-route): one link
//! (`RTM_GETLINK`), every link (`RTM_GETLINK` dump), the IPv4 addresses
//! (`RTM_GETADDR` dump), namespace ids (`RTM_NEWNSID`), and the monitor of
//! link events in every namespace (`RTMGRP_LINK`, `RTNLGRP_NSID`).

use std::{
    io,
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
};

use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::LinkMessage,
    nsid::{NsidAttribute, NsidMessage},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::{
    netlink::{self, NetlinkError, Part},
    Link,
};

/// Socket receive queue asked for (SO_RCVBUF, capped by net.core.rmem_max):
/// room for a burst of events, such as a host starting many guests at once.
const MONITOR_RCVBUF: usize = 4 << 20;
/// The monitor's requests, as named in its errors.
const MONITOR: &str = "rtnetlink RTMGRP_LINK monitor";

/// The device with ifindex `index`, or `None` if there is none.
pub fn link(index: u32) -> Result<Option<Link>, NetlinkError> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    match netlink::request(
        NETLINK_ROUTE,
        RouteNetlinkMessage::GetLink(msg),
        false,
        "rtnetlink RTM_GETLINK",
    ) {
        Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
            _ => None,
        })),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every device of this network namespace, by ifindex (without addresses).
pub fn links() -> Result<Vec<Link>, NetlinkError> {
    let mut links: Vec<Link> = netlink::request(
        NETLINK_ROUTE,
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        true,
        "rtnetlink RTM_GETLINK dump",
    )?
    .into_iter()
    .filter_map(|m| match m {
        RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
        _ => None,
    })
    .collect();
    links.sort_by_key(|l| l.ifindex);
    Ok(links)
}

/// Every IPv4 address of this network namespace: `(ifindex, address)`.
pub fn ipv4_addresses() -> Result<Vec<(u32, Ipv4Addr)>, NetlinkError> {
    let mut query = AddressMessage::default();
    query.header.family = AddressFamily::Inet;
    let mut out = Vec::new();
    for reply in netlink::request(
        NETLINK_ROUTE,
        RouteNetlinkMessage::GetAddress(query),
        true,
        "rtnetlink RTM_GETADDR dump",
    )? {
        let RouteNetlinkMessage::NewAddress(addr) = reply else {
            continue;
        };
        for attr in addr.attributes {
            if let AddressAttribute::Local(IpAddr::V4(ip)) | AddressAttribute::Address(IpAddr::V4(ip)) = attr
            {
                if !out.contains(&(addr.header.index, ip)) {
                    out.push((addr.header.index, ip));
                }
            }
        }
    }
    Ok(out)
}

/// [`links`], each with its IPv4 addresses.
pub fn links_with_addresses() -> Result<Vec<Link>, NetlinkError> {
    let mut links = links()?;
    for (index, ip) in ipv4_addresses()? {
        if let Some(link) = links.iter_mut().find(|l| l.ifindex == index) {
            link.ipv4.push(ip);
        }
    }
    Ok(links)
}

/// What happened to a device, or to a network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// `RTM_NEWLINK`: created, or changed (flags, master, name), in the
    /// monitor's own namespace (`nsid` `None`) or the one with that id.
    Changed { nsid: Option<i32>, link: Link },
    /// `RTM_DELLINK`: deleted.
    Deleted { nsid: Option<i32>, link: Link },
    /// `RTM_NEWNSID`: a namespace got an id (possibly one not seen yet).
    NewNsid(i32),
    /// `RTM_DELNSID`: the namespace with this id is gone.
    NamespaceGone(i32),
    /// The kernel dropped events (`ENOBUFS`), or one did not decode:
    /// re-read everything.
    Lost,
}

/// `RTNLGRP_NSID`.
const RTNLGRP_NSID: u32 = 28;
/// `SOL_NETLINK`, and `NETLINK_LISTEN_ALL_NSID` (also the cmsg type of the
/// namespace id of a message).
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_LISTEN_ALL_NSID: libc::c_int = 8;
/// One datagram of the kernel's events is at most 32 KiB.
const MONITOR_BUF: usize = 64 * 1024;

/// A socket subscribed to link and namespace-id events, non-blocking.
///
/// A netlink socket holds a reference to the namespace it was made in, so a
/// socket per namespace would keep every pod's namespace (and its taps)
/// alive for as long as the agent runs. Instead one socket can listen to
/// all namespaces (`NETLINK_LISTEN_ALL_NSID`, Linux 4.6): the kernel tags
/// each message from another namespace with that namespace's id as seen
/// from this one (an *nsid*, assigned with [`nsid_of`]), and reports a
/// namespace's end with `RTM_DELNSID`. Neither keeps a namespace alive.
pub struct LinkMonitor {
    socket: Socket,
    buf: Vec<u8>,
}

impl LinkMonitor {
    /// Subscribes. `all` adds the events of other namespaces (it needs
    /// CAP_NET_BROADCAST). Open it before listing the devices, so that
    /// nothing falls between the list and the first event.
    pub fn open(all: bool) -> Result<Self, NetlinkError> {
        let err = |call| {
            move |error| NetlinkError::Socket {
                request: MONITOR,
                call,
                error,
            }
        };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(err("socket(AF_NETLINK, NETLINK_ROUTE)"))?;
        let groups = libc::RTMGRP_LINK as u32 | (1 << (RTNLGRP_NSID - 1));
        socket
            .bind(&SocketAddr::new(0, groups))
            .map_err(err("bind(RTMGRP_LINK, RTNLGRP_NSID)"))?;
        if all {
            socket
                .set_listen_all_namespaces(true)
                .map_err(err("setsockopt(NETLINK_LISTEN_ALL_NSID)"))?;
        }
        if let Err(e) = socket.set_rx_buf_sz(MONITOR_RCVBUF) {
            log::debug!("setsockopt(SO_RCVBUF) on the netlink socket: {e}");
        }
        socket.set_non_blocking(true).map_err(err("fcntl(O_NONBLOCK)"))?;
        Ok(Self {
            socket,
            buf: vec![0; MONITOR_BUF],
        })
    }

    /// The events queued so far, in order, at most `limit` datagrams' worth,
    /// and whether more may be queued (the limit was reached).
    pub fn drain(&mut self, limit: usize) -> Result<(Vec<LinkEvent>, bool), NetlinkError> {
        let mut events = Vec::new();
        for _ in 0..limit {
            match recv_with_nsid(self.socket.as_fd(), &mut self.buf) {
                Ok((len, nsid)) => decode_events(&self.buf[..len], nsid, &mut events),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((events, false)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => events.push(LinkEvent::Lost),
                Err(error) => {
                    return Err(NetlinkError::Request {
                        request: MONITOR,
                        error,
                    })
                }
            }
        }
        Ok((events, true))
    }
}

impl AsFd for LinkMonitor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl AsRawFd for LinkMonitor {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

/// `recvmsg(2)` with the `NETLINK_LISTEN_ALL_NSID` control message: the
/// datagram's length and the id of the namespace it comes from (`None`:
/// the socket's own).
fn recv_with_nsid(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Option<i32>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one cmsg carrying an int, 8-aligned.
    let mut control = [0u64; 8];
    // SAFETY: a zeroed msghdr is a valid value; the pointers set below
    // point at live buffers of the lengths given.
    let mut msg: libc::msghdr = unsafe { std::mem::MaybeUninit::zeroed().assume_init() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` describes writable buffers that outlive the call.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut nsid = None;
    // SAFETY: CMSG_FIRSTHDR/NXTHDR walk the control buffer the kernel just
    // filled, within msg_controllen; CMSG_DATA of a cmsg whose length covers
    // an int is readable as one (unaligned read).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == SOL_NETLINK
                && (*cmsg).cmsg_type == NETLINK_LISTEN_ALL_NSID
                && (*cmsg).cmsg_len as usize >= libc::CMSG_LEN(4) as usize
            {
                nsid = Some(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>()));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, nsid))
}

/// The events in one datagram of the monitor; [`LinkEvent::Lost`] if part
/// of it does not decode.
fn decode_events(datagram: &[u8], nsid: Option<i32>, events: &mut Vec<LinkEvent>) {
    let decoded = netlink::decode(datagram, |part| {
        if let Part::Message(msg) = part {
            events.extend(event_of(msg, nsid));
        }
    });
    if decoded.is_err() {
        events.push(LinkEvent::Lost);
    }
}

fn nsid_in(msg: &NsidMessage) -> Option<i32> {
    msg.attributes.iter().find_map(|a| match a {
        NsidAttribute::Id(id) => Some(*id),
        _ => None,
    })
}

fn event_of(msg: RouteNetlinkMessage, nsid: Option<i32>) -> Option<LinkEvent> {
    let (deleted, msg) = match msg {
        RouteNetlinkMessage::NewLink(m) => (false, m),
        RouteNetlinkMessage::DelLink(m) => (true, m),
        RouteNetlinkMessage::NewNsId(m) => return nsid_in(&m).map(LinkEvent::NewNsid),
        RouteNetlinkMessage::DelNsId(m) => return nsid_in(&m).map(LinkEvent::NamespaceGone),
        _ => return None,
    };
    // The bridge's messages about its ports (family AF_BRIDGE) describe the
    // port, not the device: a port leaving its bridge (`ip link set X
    // nomaster`) comes as an AF_BRIDGE RTM_DELLINK while X lives on.
    if msg.header.interface_family == AddressFamily::Bridge {
        return None;
    }
    let link = Link::from_message(msg);
    if link.name.is_empty() {
        return None;
    }
    Some(if deleted {
        LinkEvent::Deleted { nsid, link }
    } else {
        LinkEvent::Changed { nsid, link }
    })
}

/// The id this namespace gives the namespace behind the nsfs file `ns`
/// (`RTM_NEWNSID` with an id the kernel chooses, or the one it has).
pub fn nsid_of(ns: BorrowedFd<'_>) -> Result<i32, NetlinkError> {
    let with_fd = |id: Option<i32>| {
        let mut m = NsidMessage::default();
        m.attributes.push(NsidAttribute::Fd(ns.as_raw_fd() as u32));
        if let Some(id) = id {
            m.attributes.push(NsidAttribute::Id(id));
        }
        m
    };
    // -1: let the kernel choose. EEXIST: it has one already.
    match netlink::request(
        NETLINK_ROUTE,
        RouteNetlinkMessage::NewNsId(with_fd(Some(-1))),
        false,
        "rtnetlink RTM_NEWNSID",
    ) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(e),
    }
    let replies = netlink::request(
        NETLINK_ROUTE,
        RouteNetlinkMessage::GetNsId(with_fd(None)),
        false,
        "rtnetlink RTM_GETNSID",
    )?;
    replies
        .iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewNsId(m) => nsid_in(m).filter(|id| *id >= 0),
            _ => None,
        })
        .ok_or(NetlinkError::Request {
            request: "rtnetlink RTM_GETNSID",
            error: io::Error::other("no id assigned"),
        })
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
    use netlink_packet_route::link::LinkAttribute;

    use super::*;

    #[test]
    fn lists_loopback() {
        // Every network namespace has `lo`, ifindex 1; no privileges needed.
        let links = links().unwrap();
        let lo = links.iter().find(|l| l.ifindex == 1).expect("lo");
        assert_eq!(lo.name, "lo");
        assert!(!lo.ethernet);
        assert_eq!(link(1).unwrap().as_ref(), Some(lo));
        assert_eq!(link(i32::MAX as u32).unwrap(), None);
        let with_addresses = links_with_addresses().unwrap();
        let lo = with_addresses.iter().find(|l| l.ifindex == 1).unwrap();
        // The sandbox may leave lo down, without its address; when it has
        // one, it is 127.0.0.1.
        assert!(lo.ipv4.iter().all(|ip| ip.is_loopback()), "{:?}", lo.ipv4);
    }

    /// The bytes the kernel would send for `msgs`, one datagram.
    fn datagram(msgs: Vec<RouteNetlinkMessage>) -> Vec<u8> {
        let mut bytes = Vec::new();
        for payload in msgs {
            let mut m = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(payload));
            m.finalize();
            let mut b = vec![0; m.buffer_len()];
            m.serialize(&mut b);
            bytes.extend(b);
        }
        bytes
    }

    fn link_message(family: AddressFamily) -> LinkMessage {
        let mut msg = LinkMessage::default();
        msg.header.index = 42;
        msg.header.interface_family = family;
        msg.attributes.push(LinkAttribute::IfName("vnet9".into()));
        msg.attributes.push(LinkAttribute::Controller(7));
        msg
    }

    #[test]
    fn decodes_new_and_deleted_links() {
        let msg = link_message(AddressFamily::Unspec);
        let bytes = datagram(vec![
            RouteNetlinkMessage::NewLink(msg.clone()),
            RouteNetlinkMessage::DelLink(msg),
        ]);
        let mut events = Vec::new();
        decode_events(&bytes, Some(3), &mut events);
        let link = Link {
            ifindex: 42,
            name: "vnet9".into(),
            master: Some(7),
            ..Default::default()
        };
        assert_eq!(
            events,
            [
                LinkEvent::Changed {
                    nsid: Some(3),
                    link: link.clone()
                },
                LinkEvent::Deleted { nsid: Some(3), link }
            ]
        );
        let mut gone = NsidMessage::default();
        gone.attributes.push(NsidAttribute::Id(3));
        let mut events = Vec::new();
        decode_events(
            &datagram(vec![RouteNetlinkMessage::DelNsId(gone)]),
            None,
            &mut events,
        );
        assert_eq!(events, [LinkEvent::NamespaceGone(3)]);
    }

    #[test]
    fn own_namespace_gets_an_id() {
        // Assigning one needs CAP_NET_ADMIN; without it there is nothing to see.
        let own = std::fs::File::open("/proc/self/ns/net").unwrap();
        if let Ok(id) = nsid_of(own.as_fd()) {
            assert!(id >= 0);
            assert_eq!(nsid_of(own.as_fd()).unwrap(), id, "stable");
        }
    }

    /// A namespace without an id yet: the kernel answers a successful
    /// RTM_NEWNSID only when asked for an acknowledgement (the agent used
    /// to wait for a reply forever at the first such namespace).
    #[test]
    fn a_new_namespace_gets_an_id_without_hanging() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: assigning a namespace id needs CAP_NET_ADMIN (root)");
            return;
        }
        // A namespace only a file descriptor holds: gone with the test.
        let fresh = std::thread::spawn(|| {
            // SAFETY: unshare changes only this thread, which ends here.
            assert_eq!(
                unsafe { libc::unshare(libc::CLONE_NEWNET) },
                0,
                "unshare(CLONE_NEWNET)"
            );
            std::fs::File::open("/proc/thread-self/ns/net").unwrap()
        })
        .join()
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let first = nsid_of(fresh.as_fd()).map_err(|e| e.to_string());
            let again = nsid_of(fresh.as_fd()).map_err(|e| e.to_string());
            let _ = tx.send((first, again));
        });
        let (first, again) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("RTM_NEWNSID of a new namespace got no answer within 10 s");
        let id = first.unwrap();
        assert!(id >= 0);
        assert_eq!(again.unwrap(), id, "stable");
    }

    /// Defect 14: `ip link set vnet9 nomaster` makes the bridge send an
    /// AF_BRIDGE RTM_DELLINK for its port; the device is not deleted.
    #[test]
    fn bridge_port_messages_are_not_link_events() {
        let port = link_message(AddressFamily::Bridge);
        let bytes = datagram(vec![
            RouteNetlinkMessage::DelLink(port.clone()),
            RouteNetlinkMessage::NewLink(port),
        ]);
        let mut events = Vec::new();
        decode_events(&bytes, None, &mut events);
        assert_eq!(events, []);
    }

    #[test]
    fn garbage_is_a_lost_event_not_a_panic() {
        let good = datagram(vec![RouteNetlinkMessage::DelLink(link_message(
            AddressFamily::Unspec,
        ))]);
        for cut in 1..good.len() {
            let mut events = Vec::new();
            decode_events(&good[..cut], None, &mut events);
            assert!(events.iter().all(|e| *e == LinkEvent::Lost), "{cut}: {events:?}");
        }
        let mut events = Vec::new();
        decode_events(&[0xff; 64], None, &mut events);
        assert_eq!(events, [LinkEvent::Lost]);
    }
}
