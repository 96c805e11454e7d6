//! The interfaces of this network namespace (`RTM_GETLINK` dump).

use std::io;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::{
    link::{LinkAttribute, LinkMessage},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::AgentError;

fn err(op: &'static str) -> impl FnOnce(io::Error) -> AgentError {
    move |source| AgentError::Netlink { op, source }
}

/// Receive buffer for one datagram; the kernel sends at most a page or
/// 8 KiB of messages per datagram.
const RECV_BUF: usize = 64 * 1024;

/// One interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
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
}
