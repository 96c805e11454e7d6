//! What the kernel says about network devices, asked the way that works
//! inside a network namespace (netlink and ioctls; `/sys/class/net` may show
//! another namespace): link kind, bridge master, MAC and IPv4 addresses
//! (rtnetlink), and the active checksum features (ethtool ioctl).

pub mod caps;
pub mod rtnetlink;

use std::{
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::{LinkAttribute, LinkInfo, LinkLayerType, LinkMessage},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Link kinds whose frames towards the guest bypass the egress hook
/// (drivers/net/tap.c: macvtap, and ipvtap which shares its receive path).
/// See docs/macvtap.md.
pub const RX_HANDLER_TAP_KINDS: [&str; 2] = ["macvtap", "ipvtap"];

/// `NETIF_F_IP_CSUM` and `NETIF_F_HW_CSUM` (bits 1 and 3 of enum
/// netdev_features, unchanged since Linux 2.6), for when BTF is unavailable.
pub const FALLBACK_CSUM_FEATURES: u64 = (1 << 1) | (1 << 3);

/// Errors while asking the kernel about devices.
#[derive(Debug, thiserror::Error)]
pub enum NetdevError {
    #[error("socket(AF_NETLINK, NETLINK_ROUTE): {0}")]
    Socket(#[source] io::Error),
    #[error("rtnetlink {request}: {source}")]
    Request {
        request: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("rtnetlink {request}: undecodable reply: {reason}")]
    Decode { request: &'static str, reason: String },
    #[error("ioctl(SIOCETHTOOL, ETHTOOL_GFEATURES) on {iface}: {source}")]
    Ethtool {
        iface: String,
        #[source]
        source: io::Error,
    },
}

/// One network device of this namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
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
    /// IPv4 addresses (filled by [`links`] only).
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
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    fn from_message(msg: LinkMessage) -> Self {
        let mut link = Link {
            index: msg.header.index,
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

/// Sends one rtnetlink request and collects the replies (all parts of a
/// dump, or the single answer).
fn request(
    msg: RouteNetlinkMessage,
    dump: bool,
    what: &'static str,
) -> Result<Vec<RouteNetlinkMessage>, NetdevError> {
    let io_err = |source| NetdevError::Request {
        request: what,
        source,
    };
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetdevError::Socket)?;
    socket.bind_auto().map_err(NetdevError::Socket)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(NetdevError::Socket)?;

    let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
    packet.header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
    packet.header.sequence_number = 1;
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0).map_err(io_err)?;

    let mut out = Vec::new();
    loop {
        let (data, _) = socket.recv_from_full().map_err(io_err)?;
        if data.is_empty() {
            return Err(io_err(io::ErrorKind::UnexpectedEof.into()));
        }
        let mut offset = 0;
        while offset < data.len() {
            let reply: NetlinkMessage<RouteNetlinkMessage> = NetlinkMessage::deserialize(&data[offset..])
                .map_err(|e| NetdevError::Decode {
                    request: what,
                    reason: e.to_string(),
                })?;
            let len = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => match e.code {
                    Some(code) => return Err(io_err(io::Error::from_raw_os_error(-code.get()))),
                    None if !dump => return Ok(out),
                    None => {}
                },
                NetlinkPayload::InnerMessage(m) => {
                    out.push(m);
                    if !dump {
                        return Ok(out);
                    }
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            // Netlink messages are 4-byte aligned.
            offset += (len + 3) & !3;
        }
    }
}

/// The device with ifindex `index`, or `None` if there is none.
pub fn link(index: u32) -> Result<Option<Link>, NetdevError> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    match request(RouteNetlinkMessage::GetLink(msg), false, "RTM_GETLINK") {
        Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
            _ => None,
        })),
        Err(NetdevError::Request { source, .. }) if source.raw_os_error() == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every device of this namespace, with its IPv4 addresses, by ifindex.
pub fn links() -> Result<Vec<Link>, NetdevError> {
    let mut links: Vec<Link> = request(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        true,
        "RTM_GETLINK dump",
    )?
    .into_iter()
    .filter_map(|m| match m {
        RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
        _ => None,
    })
    .collect();
    let mut query = AddressMessage::default();
    query.header.family = AddressFamily::Inet;
    for reply in request(RouteNetlinkMessage::GetAddress(query), true, "RTM_GETADDR dump")? {
        let RouteNetlinkMessage::NewAddress(addr) = reply else {
            continue;
        };
        let Some(link) = links.iter_mut().find(|l| l.index == addr.header.index) else {
            continue;
        };
        for attr in addr.attributes {
            if let AddressAttribute::Local(std::net::IpAddr::V4(ip))
            | AddressAttribute::Address(std::net::IpAddr::V4(ip)) = attr
            {
                if !link.ipv4.contains(&ip) {
                    link.ipv4.push(ip);
                }
            }
        }
    }
    links.sort_by_key(|l| l.index);
    Ok(links)
}

/// `ETHTOOL_GFEATURES`.
const ETHTOOL_GFEATURES: u32 = 0x3a;
/// Feature words asked for: 64 features, enough for the checksum bits.
const FEATURE_WORDS: usize = 2;

/// `struct ethtool_gfeatures` with room for [`FEATURE_WORDS`] blocks of
/// `{available, requested, active, never_changed}`.
#[repr(C)]
struct GFeatures {
    cmd: u32,
    size: u32,
    blocks: [[u32; 4]; FEATURE_WORDS],
}

/// `struct ifreq` with the `ifr_data` member.
#[repr(C)]
struct IfreqData {
    name: [u8; libc::IF_NAMESIZE],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// The device's active features (`dev->features`), low 64 bits.
pub fn features(iface: &str) -> Result<u64, NetdevError> {
    let err = |source| NetdevError::Ethtool {
        iface: iface.into(),
        source,
    };
    if !crate::bpffs::valid_ifname(iface) {
        return Err(err(io::ErrorKind::InvalidInput.into()));
    }
    // SAFETY: socket(2) has no memory preconditions.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: socket(2) just returned this descriptor; nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut gf = GFeatures {
        cmd: ETHTOOL_GFEATURES,
        size: FEATURE_WORDS as u32,
        blocks: [[0; 4]; FEATURE_WORDS],
    };
    let mut ifr = IfreqData {
        name: [0; libc::IF_NAMESIZE],
        data: (&mut gf as *mut GFeatures).cast(),
        _pad: [0; 16],
    };
    ifr.name[..iface.len()].copy_from_slice(iface.as_bytes());
    // SAFETY: `ifr` is a valid ifreq whose name is NUL-terminated (checked
    // length < IF_NAMESIZE) and whose data points at a live ethtool_gfeatures
    // with `size` blocks; the kernel writes only within those.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) };
    if rc != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(u64::from(gf.blocks[0][2]) | (u64::from(gf.blocks[1][2]) << 32))
}

/// The checksum feature bits the classifier tests, from the running
/// kernel's BTF, or the well-known bits when BTF is unavailable.
pub fn csum_feature_mask() -> u64 {
    crate::kernel_layout::resolve_from(None)
        .map(|l| l.csum_features)
        .unwrap_or(FALLBACK_CSUM_FEATURES)
}
