//! What the kernel says about network devices, and what this process may
//! do to them: the one layer below `attach`, the agent and the doctor.
//!
//! Everything here asks the kernel in a way that works inside a network
//! namespace (netlink, ioctls, `/proc/self`; never `/sys/class/net`, which
//! may show another namespace), and each error names the syscall or the
//! request that failed:
//!
//! - [`rtnetlink`]: one device, every device, their IPv4 addresses, and
//!   the link event monitor the agent follows;
//! - [`ethtool`]: a device's active features (its tx checksum offload);
//! - [`sock_diag`]: UDP sockets and the device each is bound to;
//! - [`caps`]: the capabilities dhcpfix needs (measured), and whether this
//!   process has them;
//! - [`ifindex`], [`ifname`]: `if_nametoindex(3)`, `if_indextoname(3)`.
//!
//! [`Link`] is the one description of a device that `attach`, the agent
//! and the doctor share.

pub mod caps;
pub mod ethtool;
mod netlink;
pub mod rtnetlink;
pub mod sock_diag;

use std::{
    ffi::{CStr, CString},
    net::Ipv4Addr,
};

use netlink_packet_route::link::{LinkAttribute, LinkInfo, LinkLayerType, LinkMessage};

pub use ethtool::{features, EthtoolError};
pub use netlink::NetlinkError;
pub use rtnetlink::{link, links, links_with_addresses, LinkEvent, LinkMonitor};

/// Link kinds whose frames towards the guest bypass the egress hook
/// (drivers/net/tap.c: macvtap, and ipvtap which shares its receive path).
/// See docs/macvtap.md.
pub const RX_HANDLER_TAP_KINDS: [&str; 2] = ["macvtap", "ipvtap"];

/// One network device of this namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    /// `IFLA_INFO_KIND`: "tun", "bridge", "macvtap", "veth", ...; `None` for
    /// physical devices.
    pub kind: Option<String>,
    /// The bridge (or bond) this device is a port of (`IFLA_MASTER`).
    pub master: Option<u32>,
    /// Link-layer address.
    pub mac: Vec<u8>,
    /// Ethernet framing (a tap, not a tun).
    pub ethernet: bool,
    /// IPv4 addresses (filled by [`links_with_addresses`] only).
    pub ipv4: Vec<Ipv4Addr>,
}

impl Link {
    /// A tun/tap device in tap (Ethernet) mode: a guest's NIC on the host.
    pub fn is_tap(&self) -> bool {
        self.kind.as_deref() == Some("tun") && self.ethernet
    }

    /// A macvtap/ipvtap device: a guest's NIC dhcpfix cannot serve.
    pub fn is_rx_handler_tap(&self) -> bool {
        self.kind
            .as_deref()
            .is_some_and(|k| RX_HANDLER_TAP_KINDS.contains(&k))
    }

    pub fn is_bridge(&self) -> bool {
        self.kind.as_deref() == Some("bridge")
    }

    /// The MAC as `aa:bb:cc:dd:ee:ff`.
    pub fn mac_string(&self) -> String {
        format_mac(&self.mac)
    }

    fn from_message(msg: LinkMessage) -> Self {
        let mut link = Link {
            ifindex: msg.header.index,
            ethernet: msg.header.link_layer_type == LinkLayerType::Ether,
            ..Default::default()
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name,
                LinkAttribute::Controller(master) => link.master = Some(master),
                LinkAttribute::Address(mac) => link.mac = mac,
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = Some(kind.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// `if_nametoindex(3)`: the ifindex of `name` in this network namespace.
pub fn ifindex(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// `if_indextoname(3)`: the current name of interface `index`.
pub fn ifname(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes, as the function requires.
    let ret = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if ret.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// A hardware address as `52:54:00:ab:cd:ef`.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_indexes_of_loopback() {
        assert_eq!(ifindex("lo"), Some(1));
        assert_eq!(ifname(1).as_deref(), Some("lo"));
        assert_eq!(ifindex("no-such-dev0"), None);
        assert_eq!(ifindex("nul\0"), None);
        assert_eq!(ifname(0), None);
    }

    #[test]
    fn kinds() {
        let tap = Link {
            kind: Some("tun".into()),
            ethernet: true,
            mac: vec![0x52, 0x54, 0, 0xab, 0xcd, 0xef],
            ..Default::default()
        };
        assert!(tap.is_tap() && !tap.is_rx_handler_tap() && !tap.is_bridge());
        assert!(!Link {
            ethernet: false,
            ..tap.clone()
        }
        .is_tap());
        assert_eq!(tap.mac_string(), "52:54:00:ab:cd:ef");
        let macvtap = Link {
            kind: Some("macvtap".into()),
            ..tap
        };
        assert!(macvtap.is_rx_handler_tap() && !macvtap.is_tap());
    }
}
