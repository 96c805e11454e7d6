//! rtnetlink (`NETLINK_ROUTE`, on netlink-packet-route): one link
//! (`RTM_GETLINK`), every link (`RTM_GETLINK` dump), the IPv4 addresses
//! (`RTM_GETADDR` dump), and the link event monitor (`RTMGRP_LINK`).

use std::{
    io,
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsFd, BorrowedFd},
};

use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::LinkMessage,
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

/// What happened to a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// `RTM_NEWLINK`: created, or changed (flags, master, name).
    Changed(Link),
    /// `RTM_DELLINK`: deleted.
    Deleted(Link),
    /// The kernel dropped events (`ENOBUFS`), or one did not decode:
    /// re-read everything.
    Lost,
}

/// A socket subscribed to link events (`RTMGRP_LINK`), non-blocking, for
/// poll(2).
pub struct LinkMonitor {
    socket: Socket,
    buf: Vec<u8>,
}

impl LinkMonitor {
    /// Subscribes. Open it before listing the devices, so that nothing
    /// falls between the list and the first event.
    pub fn open() -> Result<Self, NetlinkError> {
        let err = |call| {
            move |error| NetlinkError::Socket {
                request: MONITOR,
                call,
                error,
            }
        };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(err("socket(AF_NETLINK, NETLINK_ROUTE)"))?;
        socket
            .bind(&SocketAddr::new(0, libc::RTMGRP_LINK as u32))
            .map_err(err("bind(RTMGRP_LINK)"))?;
        if let Err(e) = socket.set_rx_buf_sz(MONITOR_RCVBUF) {
            log::debug!("setsockopt(SO_RCVBUF) on the netlink socket: {e}");
        }
        socket.set_non_blocking(true).map_err(err("fcntl(O_NONBLOCK)"))?;
        Ok(Self {
            socket,
            buf: Vec::new(),
        })
    }

    /// Every event queued so far, in order; empty when there is none.
    pub fn drain(&mut self) -> Result<Vec<LinkEvent>, NetlinkError> {
        let mut events = Vec::new();
        loop {
            match netlink::recv_datagram(&self.socket, &mut self.buf) {
                Ok(()) => decode_events(&self.buf, &mut events),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(events),
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
    }
}

impl AsFd for LinkMonitor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// The events in one datagram of the monitor; [`LinkEvent::Lost`] if part
/// of it does not decode.
fn decode_events(datagram: &[u8], events: &mut Vec<LinkEvent>) {
    let decoded = netlink::decode(datagram, |part| {
        if let Part::Message(msg) = part {
            events.extend(event_of(msg));
        }
    });
    if decoded.is_err() {
        events.push(LinkEvent::Lost);
    }
}

fn event_of(msg: RouteNetlinkMessage) -> Option<LinkEvent> {
    let (deleted, msg) = match msg {
        RouteNetlinkMessage::NewLink(m) => (false, m),
        RouteNetlinkMessage::DelLink(m) => (true, m),
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
        LinkEvent::Deleted(link)
    } else {
        LinkEvent::Changed(link)
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
        decode_events(&bytes, &mut events);
        let link = Link {
            ifindex: 42,
            name: "vnet9".into(),
            master: Some(7),
            ..Default::default()
        };
        assert_eq!(
            events,
            [LinkEvent::Changed(link.clone()), LinkEvent::Deleted(link)]
        );
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
        decode_events(&bytes, &mut events);
        assert_eq!(events, []);
    }

    #[test]
    fn garbage_is_a_lost_event_not_a_panic() {
        let good = datagram(vec![RouteNetlinkMessage::DelLink(link_message(
            AddressFamily::Unspec,
        ))]);
        for cut in 1..good.len() {
            let mut events = Vec::new();
            decode_events(&good[..cut], &mut events);
            assert!(events.iter().all(|e| *e == LinkEvent::Lost), "{cut}: {events:?}");
        }
        let mut events = Vec::new();
        decode_events(&[0xff; 64], &mut events);
        assert_eq!(events, [LinkEvent::Lost]);
    }
}
