//! The interfaces of this network namespace, and their comings and goings,
//! from rtnetlink (`RTM_GETLINK` dumps, `RTMGRP_LINK` events).

use std::{
    io,
    os::fd::{AsFd, BorrowedFd},
};

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::{
    link::{LinkAttribute, LinkMessage},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::agent::AgentError;

/// Receive buffer for one datagram; the kernel sends at most a page or
/// 8 KiB of messages per datagram.
const RECV_BUF: usize = 64 * 1024;
/// Socket receive queue asked for (SO_RCVBUF, capped by net.core.rmem_max):
/// room for a burst of events, such as a host starting many guests at once.
const SOCKET_RCVBUF: usize = 4 << 20;

/// One interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
}

/// What happened to an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// `RTM_NEWLINK`: created, or changed (flags, master, name).
    Changed(Link),
    /// `RTM_DELLINK`: deleted.
    Deleted(Link),
    /// The kernel dropped events (`ENOBUFS`): re-read everything.
    Lost,
}

fn err(op: &'static str) -> impl FnOnce(io::Error) -> AgentError {
    move |source| AgentError::Netlink { op, source }
}

/// A socket subscribed to link events.
pub struct LinkMonitor {
    socket: Socket,
    buf: Vec<u8>,
}

impl LinkMonitor {
    /// Subscribes to `RTMGRP_LINK`. Open it before listing the interfaces,
    /// so that nothing falls between the list and the first event.
    pub fn open() -> Result<Self, AgentError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(err("socket(AF_NETLINK, NETLINK_ROUTE)"))?;
        socket
            .bind(&SocketAddr::new(0, libc::RTMGRP_LINK as u32))
            .map_err(err("bind(RTMGRP_LINK)"))?;
        if let Err(e) = socket.set_rx_buf_sz(SOCKET_RCVBUF) {
            log::debug!("setsockopt(SO_RCVBUF) on the netlink socket: {e}");
        }
        socket
            .set_non_blocking(true)
            .map_err(err("fcntl(O_NONBLOCK) on the netlink socket"))?;
        Ok(Self {
            socket,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Every event queued so far, in order; empty when there is none.
    pub fn drain(&mut self) -> Result<Vec<LinkEvent>, AgentError> {
        let mut events = Vec::new();
        loop {
            self.buf.clear();
            match self.socket.recv(&mut self.buf, 0) {
                Ok(_) => {
                    if decode(&self.buf, |msg| {
                        if let Some(event) = event_of(msg) {
                            events.push(event);
                        }
                    })
                    .is_err()
                    {
                        events.push(LinkEvent::Lost);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(events),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => events.push(LinkEvent::Lost),
                Err(e) => return Err(err("recv on the netlink socket")(e)),
            }
        }
    }
}

impl AsFd for LinkMonitor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
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

fn event_of(msg: RouteNetlinkMessage) -> Option<LinkEvent> {
    match msg {
        RouteNetlinkMessage::NewLink(m) => link_of(&m).map(LinkEvent::Changed),
        RouteNetlinkMessage::DelLink(m) => link_of(&m).map(LinkEvent::Deleted),
        _ => None,
    }
}

/// Calls `each` for every route message in one datagram. `Ok(true)` once
/// the end of a dump (`NLMSG_DONE`) was seen.
fn decode(mut bytes: &[u8], mut each: impl FnMut(RouteNetlinkMessage)) -> Result<bool, String> {
    while !bytes.is_empty() {
        let msg: NetlinkMessage<RouteNetlinkMessage> =
            NetlinkMessage::deserialize(bytes).map_err(|e| e.to_string())?;
        let len = msg.header.length as usize;
        match msg.payload {
            NetlinkPayload::InnerMessage(inner) => each(inner),
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io().to_string()),
            _ => {}
        }
        if len == 0 || len > bytes.len() {
            break;
        }
        // Messages are 4-byte aligned (NLMSG_ALIGN).
        bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
    }
    Ok(false)
}

/// Every interface of this network namespace (`RTM_GETLINK` dump).
pub fn list_links() -> Result<Vec<Link>, AgentError> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(err("socket(AF_NETLINK, NETLINK_ROUTE)"))?;
    socket.bind_auto().map_err(err("bind on a netlink socket"))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(err("connect on a netlink socket"))?;
    let mut request = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(LinkMessage::default())),
    );
    request.header.flags = NLM_F_DUMP | NLM_F_REQUEST;
    request.header.sequence_number = 1;
    request.finalize();
    let mut out = vec![0; request.buffer_len()];
    request.serialize(&mut out);
    socket.send(&out, 0).map_err(err("send(RTM_GETLINK)"))?;

    let mut links = Vec::new();
    let mut buf = Vec::with_capacity(RECV_BUF);
    loop {
        buf.clear();
        match socket.recv(&mut buf, 0) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(err("recv(RTM_GETLINK)")(e)),
        }
        let done = decode(&buf, |msg| {
            if let RouteNetlinkMessage::NewLink(m) = msg {
                links.extend(link_of(&m));
            }
        })
        .map_err(|reason| AgentError::NetlinkDecode { reason })?;
        if done {
            return Ok(links);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_loopback() {
        // Every network namespace has `lo`, ifindex 1; no privileges needed.
        let links = list_links().unwrap();
        assert!(links.contains(&Link {
            ifindex: 1,
            name: "lo".into()
        }));
    }

    #[test]
    fn decodes_new_and_deleted_links() {
        let mut msg = LinkMessage::default();
        msg.header.index = 42;
        msg.attributes.push(LinkAttribute::IfName("vnet9".into()));
        let mut bytes = Vec::new();
        for payload in [
            RouteNetlinkMessage::NewLink(msg.clone()),
            RouteNetlinkMessage::DelLink(msg),
        ] {
            let mut m = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(payload));
            m.finalize();
            let mut b = vec![0; m.buffer_len()];
            m.serialize(&mut b);
            bytes.extend(b);
        }
        let mut events = Vec::new();
        assert_eq!(decode(&bytes, |m| events.extend(event_of(m))), Ok(false));
        let link = Link {
            ifindex: 42,
            name: "vnet9".into(),
        };
        assert_eq!(
            events,
            [LinkEvent::Changed(link.clone()), LinkEvent::Deleted(link)]
        );
    }
}
