//! UDP sockets of this network namespace and the device each is bound to
//! (`SO_BINDTODEVICE`, which `/proc/net/udp` does not show), from
//! `NETLINK_SOCK_DIAG` (`SOCK_DIAG_BY_FAMILY` dump, as `ss -u` does).
//!
//! The messages are netlink-packet-sock-diag's (the rust-netlink project,
//! like netlink-packet-route; same netlink-packet-core): typed
//! `inet_diag_req_v2` and `inet_diag_msg`, with length checks on every
//! reply, instead of byte offsets by hand. Needs the kernel's `udp_diag`
//! (`CONFIG_INET_UDP_DIAG`, loaded on demand); without it the dump fails
//! with ENOENT.

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_sock_diag::{
    constants::{AF_INET, IPPROTO_UDP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;

use super::netlink::{self, NetlinkError};

/// One IPv4 UDP socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpSocket {
    pub address: Ipv4Addr,
    pub port: u16,
    /// The device it is bound to (`SO_BINDTODEVICE`), if any.
    pub bound_ifindex: Option<u32>,
    /// Its inode, as in `/proc/<pid>/fd/* -> socket:[inode]`.
    pub inode: u64,
}

/// Every IPv4 UDP socket of this network namespace.
pub fn udp4_sockets() -> Result<Vec<UdpSocket>, NetlinkError> {
    let request = SockDiagMessage::InetRequest(InetRequest {
        family: AF_INET,
        protocol: IPPROTO_UDP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::all(),
        socket_id: SocketId::new_v4(),
    });
    let replies = netlink::request(
        NETLINK_SOCK_DIAG,
        request,
        true,
        "sock_diag SOCK_DIAG_BY_FAMILY dump (AF_INET, UDP)",
    )?;
    Ok(replies.into_iter().filter_map(udp_socket).collect())
}

fn udp_socket(msg: SockDiagMessage) -> Option<UdpSocket> {
    let SockDiagMessage::InetResponse(response) = msg else {
        return None;
    };
    let id = &response.header.socket_id;
    let IpAddr::V4(address) = id.source_address else {
        return None;
    };
    Some(UdpSocket {
        address,
        port: id.source_port,
        bound_ifindex: (id.interface_id != 0).then_some(id.interface_id),
        inode: u64::from(response.header.inode),
    })
}

#[cfg(test)]
mod tests {
    use std::os::{fd::AsRawFd, unix::fs::MetadataExt};

    use super::*;

    #[test]
    fn finds_a_socket_of_this_process() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        let inode = std::fs::metadata(format!("/proc/self/fd/{}", socket.as_raw_fd()))
            .unwrap()
            .ino();
        let sockets = udp4_sockets().unwrap();
        let mine = sockets
            .iter()
            .find(|s| s.port == port)
            .unwrap_or_else(|| panic!("port {port} not in {sockets:?}"));
        assert_eq!(
            *mine,
            UdpSocket {
                address: Ipv4Addr::LOCALHOST,
                port,
                bound_ifindex: None,
                inode,
            }
        );
    }
}
