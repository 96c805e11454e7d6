//! One rtnetlink socket for the link events of every network namespace.
//!
//! A netlink socket holds a reference to the namespace it was made in, so a
//! socket per namespace would keep every pod's namespace (and its taps)
//! alive for as long as the agent runs. Instead the agent's own socket
//! listens to all namespaces (`NETLINK_LISTEN_ALL_NSID`, Linux 4.6): the
//! kernel tags each message from another namespace with that namespace's id
//! as seen from ours (an *nsid*, which the agent assigns with
//! `RTM_NEWNSID`), and reports a namespace's end with `RTM_DELNSID`. Neither
//! the id nor the socket keeps a namespace alive.

use std::{
    io,
    mem::MaybeUninit,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
};

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_route::{
    link::{LinkAttribute, LinkMessage},
    nsid::{NsidAttribute, NsidMessage},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::{netlink::Link, AgentError};

/// `RTNLGRP_NSID`.
const RTNLGRP_NSID: u32 = 28;
/// `SOL_NETLINK` / `NETLINK_LISTEN_ALL_NSID` (the cmsg type of the nsid).
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_LISTEN_ALL_NSID: libc::c_int = 8;
/// Socket receive queue asked for (SO_RCVBUF, capped by net.core.rmem_max):
/// room for a burst, such as a host starting many guests at once.
const SOCKET_RCVBUF: usize = 4 << 20;
/// One datagram of the kernel is at most 32 KiB of messages.
const RECV_BUF: usize = 64 * 1024;

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `RTM_NEWLINK`: an interface appeared or changed, in the agent's own
    /// namespace (`nsid` `None`) or in the one with that id.
    Changed { nsid: Option<i32>, link: Link },
    /// `RTM_DELLINK`.
    Deleted { nsid: Option<i32>, link: Link },
    /// `RTM_NEWNSID`: a namespace got an id (possibly one not seen yet).
    NewNsid(i32),
    /// `RTM_DELNSID`: the namespace with this id is gone.
    Gone(i32),
    /// The kernel dropped messages (`ENOBUFS`): re-read everything.
    Lost,
}

fn err(op: &'static str) -> impl FnOnce(io::Error) -> AgentError {
    move |source| AgentError::Netlink { op, source }
}

/// The socket subscribed to link and nsid events of every namespace.
pub struct Monitor {
    socket: Socket,
    buf: Vec<u8>,
}

impl Monitor {
    /// Subscribes. `all` adds the events of other namespaces (needs
    /// CAP_NET_BROADCAST); without it only the agent's own are seen.
    pub fn open(all: bool) -> Result<Self, AgentError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(err("socket(AF_NETLINK, NETLINK_ROUTE)"))?;
        let groups = libc::RTMGRP_LINK as u32 | (1 << (RTNLGRP_NSID - 1));
        socket
            .bind(&SocketAddr::new(0, groups))
            .map_err(err("bind(RTMGRP_LINK, RTNLGRP_NSID)"))?;
        if all {
            socket.set_listen_all_namespaces(true).map_err(err(
                "setsockopt(NETLINK_LISTEN_ALL_NSID); it needs CAP_NET_BROADCAST",
            ))?;
        }
        if let Err(e) = socket.set_rx_buf_sz(SOCKET_RCVBUF) {
            log::debug!("setsockopt(SO_RCVBUF) on the netlink socket: {e}");
        }
        socket
            .set_non_blocking(true)
            .map_err(err("fcntl(O_NONBLOCK) on the netlink socket"))?;
        Ok(Self {
            socket,
            buf: vec![0; RECV_BUF],
        })
    }

    /// The events queued so far, in order, at most `limit` datagrams' worth;
    /// and whether more may be queued (the limit was reached).
    pub fn drain(&mut self, limit: usize) -> Result<(Vec<Event>, bool), AgentError> {
        let mut events = Vec::new();
        for _ in 0..limit {
            match recv_with_nsid(self.socket.as_fd(), &mut self.buf) {
                Ok((len, nsid)) => {
                    if decode(&self.buf[..len], nsid, &mut events).is_err() {
                        events.push(Event::Lost);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((events, false)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => events.push(Event::Lost),
                Err(e) => return Err(err("recvmsg(2) on the netlink socket")(e)),
            }
        }
        Ok((events, true))
    }
}

impl AsFd for Monitor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl AsRawFd for Monitor {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }
}

/// `recvmsg(2)` with the `NETLINK_LISTEN_ALL_NSID` control message: the
/// datagram's length and the id of the namespace it comes from (`None`:
/// ours).
fn recv_with_nsid(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Option<i32>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one cmsg carrying an int, 8-aligned.
    let mut control = [0u64; 8];
    // SAFETY: a zeroed msghdr is a valid value; the pointers set below
    // point at live buffers of the lengths given.
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // (size_t with glibc, socklen_t with musl, the container image's build.)
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

fn link_of(msg: &LinkMessage) -> Option<Link> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(Link {
            ifindex: msg.header.index,
            name: name.clone(),
        }),
        _ => None,
    })
}

fn nsid_in(msg: &NsidMessage) -> Option<i32> {
    msg.attributes.iter().find_map(|a| match a {
        NsidAttribute::Id(id) => Some(*id),
        _ => None,
    })
}

/// The events in one datagram.
fn decode(mut bytes: &[u8], nsid: Option<i32>, out: &mut Vec<Event>) -> Result<(), String> {
    while !bytes.is_empty() {
        let msg: NetlinkMessage<RouteNetlinkMessage> =
            NetlinkMessage::deserialize(bytes).map_err(|e| e.to_string())?;
        let len = msg.header.length as usize;
        if let NetlinkPayload::InnerMessage(inner) = msg.payload {
            out.extend(event_of(inner, nsid));
        }
        if len == 0 || len > bytes.len() {
            break;
        }
        // Messages are 4-byte aligned (NLMSG_ALIGN).
        bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
    }
    Ok(())
}

fn event_of(msg: RouteNetlinkMessage, nsid: Option<i32>) -> Option<Event> {
    match msg {
        // A bridge reports its ports' changes with family AF_BRIDGE: an
        // RTM_DELLINK then means "left the bridge", not "deleted".
        RouteNetlinkMessage::NewLink(m) | RouteNetlinkMessage::DelLink(m)
            if m.header.interface_family == AddressFamily::Bridge =>
        {
            None
        }
        RouteNetlinkMessage::NewLink(m) => link_of(&m).map(|link| Event::Changed { nsid, link }),
        RouteNetlinkMessage::DelLink(m) => link_of(&m).map(|link| Event::Deleted { nsid, link }),
        RouteNetlinkMessage::NewNsId(m) => nsid_in(&m).map(Event::NewNsid),
        RouteNetlinkMessage::DelNsId(m) => nsid_in(&m).map(Event::Gone),
        _ => None,
    }
}

/// The id the agent's namespace gives the namespace behind the nsfs file
/// `ns` (`RTM_NEWNSID` with an id chosen by the kernel, or the one it has).
pub fn nsid_of(ns: BorrowedFd<'_>) -> Result<i32, AgentError> {
    let ask = |msg: RouteNetlinkMessage, flags: u16| -> Result<Option<i32>, AgentError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(err("socket(AF_NETLINK, NETLINK_ROUTE)"))?;
        socket.bind_auto().map_err(err("bind on a netlink socket"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(err("connect on a netlink socket"))?;
        let mut request = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        request.header.flags = NLM_F_REQUEST | flags;
        request.header.sequence_number = 1;
        request.finalize();
        let mut out = vec![0; request.buffer_len()];
        request.serialize(&mut out);
        socket.send(&out, 0).map_err(err("send(RTM_*NSID)"))?;
        let (data, _) = socket.recv_from_full().map_err(err("recv(RTM_*NSID)"))?;
        let reply: NetlinkMessage<RouteNetlinkMessage> =
            NetlinkMessage::deserialize(&data).map_err(|e| AgentError::NetlinkDecode {
                reason: e.to_string(),
            })?;
        match reply.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) => Ok(nsid_in(&m)),
            NetlinkPayload::Error(e) if e.code.is_some() => Err(err("RTM_NEWNSID")(e.to_io())),
            _ => Ok(None),
        }
    };
    let with_fd = |id: Option<i32>| {
        let mut m = NsidMessage::default();
        m.header.family = AddressFamily::Unspec;
        m.attributes.push(NsidAttribute::Fd(ns.as_raw_fd() as u32));
        if let Some(id) = id {
            m.attributes.push(NsidAttribute::Id(id));
        }
        m
    };
    // -1: let the kernel choose. EEXIST: it has one already.
    match ask(RouteNetlinkMessage::NewNsId(with_fd(Some(-1))), NLM_F_ACK) {
        Ok(_) => {}
        Err(AgentError::Netlink { source, .. }) if source.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(e),
    }
    match ask(RouteNetlinkMessage::GetNsId(with_fd(None)), 0)? {
        Some(id) if id >= 0 => Ok(id),
        _ => Err(AgentError::Netlink {
            op: "RTM_GETNSID",
            source: io::Error::other("no id assigned"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::LinkHeader;

    fn bytes(payloads: Vec<RouteNetlinkMessage>) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            let mut m = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(p));
            m.finalize();
            let mut b = vec![0; m.buffer_len()];
            m.serialize(&mut b);
            out.extend(b);
        }
        out
    }

    fn link(family: AddressFamily) -> LinkMessage {
        let mut msg = LinkMessage::default();
        msg.header = LinkHeader {
            interface_family: family,
            index: 42,
            ..Default::default()
        };
        msg.attributes.push(LinkAttribute::IfName("vnet2".into()));
        msg
    }

    #[test]
    fn links_nsids_and_bridge_port_events() {
        let mut gone = NsidMessage::default();
        gone.attributes.push(NsidAttribute::Id(3));
        let data = bytes(vec![
            RouteNetlinkMessage::NewLink(link(AddressFamily::Unspec)),
            // `ip link set vnet2 nomaster`: the bridge's view, not a deletion.
            RouteNetlinkMessage::DelLink(link(AddressFamily::Bridge)),
            RouteNetlinkMessage::DelLink(link(AddressFamily::Unspec)),
            RouteNetlinkMessage::DelNsId(gone),
        ]);
        let mut events = Vec::new();
        decode(&data, Some(7), &mut events).unwrap();
        let vnet2 = Link {
            ifindex: 42,
            name: "vnet2".into(),
        };
        assert_eq!(
            events,
            [
                Event::Changed {
                    nsid: Some(7),
                    link: vnet2.clone()
                },
                Event::Deleted {
                    nsid: Some(7),
                    link: vnet2
                },
                Event::Gone(3),
            ]
        );
    }

    #[test]
    fn own_namespace_gets_an_id_too() {
        // Asking is allowed to anyone with CAP_NET_ADMIN; skip otherwise.
        let own = std::fs::File::open("/proc/self/ns/net").unwrap();
        if let Ok(id) = nsid_of(own.as_fd()) {
            assert!(id >= 0);
            assert_eq!(nsid_of(own.as_fd()).unwrap(), id, "stable");
        }
    }
}
