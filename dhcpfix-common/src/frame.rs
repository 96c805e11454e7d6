//! Locating the UDP header of a DHCP packet inside an Ethernet frame.
//!
//! The parser is generic over [`Frame`] so the same code reads a byte slice
//! on the host and the skb (through `bpf_skb_load_bytes`, which works on
//! non-linear skbs) in the kernel. Every read is bounds-checked by the
//! reader; every branch that cannot be sure returns without a verdict to act
//! on. The header layouts are network-types'.

use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
    vlan::VlanHdr,
};

/// Ethertype of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// Ethertype of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// Ethertype of an 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// Ethertype of an 802.1ad (QinQ) service tag.
pub const ETH_P_8021AD: u16 = 0x88a8;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// In-band VLAN tags the parser walks through.
pub const MAX_VLAN_TAGS: u32 = 2;
/// Largest UDP segment (header + payload) the classifier fills. DHCP on a
/// 1500-byte MTU needs at most 1480; larger segments are counted as skipped.
pub const MAX_UDP_LEN: u16 = 2048;
/// Offset of the check field inside the UDP header.
pub const UDP_CHECK_OFFSET: u32 = 6;

/// A packet header that is plain bytes: any bit pattern is a valid value,
/// so it can be copied out of a frame as is.
///
/// # Safety
///
/// Only for `#[repr(C)]` types made of integers and byte arrays.
pub unsafe trait Header: Copy {}

// SAFETY: network-types' headers are #[repr(C)] structs of u8, [u8; N] and
// u16 fields: every bit pattern is a valid value.
unsafe impl Header for EthHdr {}
// SAFETY: as above.
unsafe impl Header for VlanHdr {}
// SAFETY: as above.
unsafe impl Header for Ipv4Hdr {}
// SAFETY: as above.
unsafe impl Header for UdpHdr {}
// SAFETY: as above.
unsafe impl Header for Ipv6Hdr {}

/// Read access to a frame, starting at the Ethernet header.
pub trait Frame {
    /// Length of the frame in bytes.
    fn len(&self) -> u32;
    /// Whether the frame has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies `N` bytes at `offset`, or `None` if they are not all there.
    fn load<const N: usize>(&self, offset: u32) -> Option<[u8; N]>;
    /// Copies the header at `offset`, or `None` if it is not all there.
    fn header<H: Header>(&self, offset: u32) -> Option<H>;
}

impl Frame for [u8] {
    fn len(&self) -> u32 {
        <[u8]>::len(self) as u32
    }

    fn load<const N: usize>(&self, offset: u32) -> Option<[u8; N]> {
        let start = offset as usize;
        self.get(start..start.checked_add(N)?)?.try_into().ok()
    }

    fn header<H: Header>(&self, offset: u32) -> Option<H> {
        let start = offset as usize;
        let bytes = self.get(start..start.checked_add(core::mem::size_of::<H>())?)?;
        // SAFETY: `bytes` holds size_of::<H>() readable bytes, the read is
        // unaligned, and every bit pattern is a valid H (`Header`).
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<H>()) })
    }
}

/// The UDP ports of DHCPv6: clients listen on 546, servers and relays on
/// 547.
pub const DHCPV6_PORTS: [u16; 2] = [546, 547];

/// Why a DHCP-port UDP packet was left alone.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// First fragment of a fragmented datagram (More Fragments set).
    Fragment,
    /// IP total length and UDP length disagree, or UDP length < 8.
    BadLength,
    /// The frame is shorter than the IP total length.
    Truncated,
    /// UDP segment longer than [`MAX_UDP_LEN`].
    TooLarge,
}

/// A DHCP-port UDP packet (IPv4 or IPv6) that is safe to fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DhcpPacket {
    /// 4 or 6.
    pub family: u8,
    /// Offset of the IP header.
    pub l3: u32,
    /// Offset of the UDP header.
    pub l4: u32,
    /// UDP length (header + payload), consistent with the IP length.
    pub udp_len: u16,
    /// Source address as on the wire (IPv4: the first 4 bytes).
    pub src: [u8; 16],
    /// Destination address as on the wire (IPv4: the first 4 bytes).
    pub dst: [u8; 16],
    /// UDP source and destination ports.
    pub sport: u16,
    pub dport: u16,
}

impl DhcpPacket {
    /// Offset of the DHCP message (the UDP payload).
    pub fn payload(&self) -> u32 {
        self.l4 + UdpHdr::LEN as u32
    }

    /// Where the UDP payload ends.
    pub fn end(&self) -> u32 {
        self.l4 + u32::from(self.udp_len)
    }
}

/// What the parser found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not IPv4 UDP to a watched port (the fast path): not counted.
    Other,
    /// IPv4 UDP to a watched port that must be left alone.
    Skip(SkipReason),
    /// IPv4 UDP to a watched port, every length consistent.
    Dhcp(DhcpPacket),
}

/// Parses `frame` and decides whether it is a DHCP packet to act on.
/// `watches` says whether a UDP destination port is configured.
#[inline(always)]
pub fn parse<F: Frame + ?Sized>(frame: &F, watches: impl Fn(u16) -> bool) -> Parsed {
    let Some(eth) = frame.header::<EthHdr>(0) else {
        return Parsed::Other;
    };
    let mut ethertype = u16::from_be(eth.ether_type);
    let mut l3 = EthHdr::LEN as u32;
    let mut tags = 0;
    while tags < MAX_VLAN_TAGS && (ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD) {
        // The tag's TCI and the next ethertype follow the TPID.
        let Some(tag) = frame.header::<VlanHdr>(l3) else {
            return Parsed::Other;
        };
        ethertype = u16::from_be(tag.ether_type);
        l3 += VlanHdr::LEN as u32;
        tags += 1;
    }
    if ethertype == ETH_P_IPV6 {
        return parse_v6(frame, l3, watches);
    }
    if ethertype != ETH_P_IP {
        return Parsed::Other;
    }
    let Some(ip) = frame.header::<Ipv4Hdr>(l3) else {
        return Parsed::Other;
    };
    let ihl = u32::from(ip.vihl & 0x0f) * 4;
    if ip.version() != 4 || ihl < Ipv4Hdr::LEN as u32 || ip.proto != IPPROTO_UDP {
        return Parsed::Other;
    }
    let frag = u16::from_be_bytes(ip.frags);
    if frag & 0x1fff != 0 {
        // A later fragment carries no UDP header: nothing to recognise.
        return Parsed::Other;
    }
    let l4 = l3 + ihl;
    let Some(udp) = frame.header::<UdpHdr>(l4) else {
        return Parsed::Other;
    };
    let dport = u16::from_be_bytes(udp.dst);
    if !watches(dport) {
        return Parsed::Other;
    }
    if frag & 0x2000 != 0 {
        return Parsed::Skip(SkipReason::Fragment);
    }
    let total_len = u32::from(u16::from_be_bytes(ip.tot_len));
    let udp_len = u16::from_be_bytes(udp.len);
    if total_len < ihl + UdpHdr::LEN as u32 || u32::from(udp_len) != total_len - ihl {
        return Parsed::Skip(SkipReason::BadLength);
    }
    if l3 + total_len > frame.len() {
        return Parsed::Skip(SkipReason::Truncated);
    }
    if udp_len > MAX_UDP_LEN {
        return Parsed::Skip(SkipReason::TooLarge);
    }
    let mut src = [0; 16];
    let mut dst = [0; 16];
    src[..4].copy_from_slice(&ip.src_addr);
    dst[..4].copy_from_slice(&ip.dst_addr);
    Parsed::Dhcp(DhcpPacket {
        family: 4,
        l3,
        l4,
        udp_len,
        src,
        dst,
        sport: u16::from_be_bytes(udp.src),
        dport,
    })
}

/// IPv6: UDP right after the fixed header only. An extension header (or
/// anything else) before the transport header is left alone: DHCPv6
/// messages carry none, and walking headers this code does not know could
/// misplace the checksum.
#[inline(always)]
fn parse_v6<F: Frame + ?Sized>(frame: &F, l3: u32, watches: impl Fn(u16) -> bool) -> Parsed {
    let Some(ip) = frame.header::<Ipv6Hdr>(l3) else {
        return Parsed::Other;
    };
    if ip.vcf[0] >> 4 != 6 || ip.next_hdr != IPPROTO_UDP {
        return Parsed::Other;
    }
    let l4 = l3 + Ipv6Hdr::LEN as u32;
    let Some(udp) = frame.header::<UdpHdr>(l4) else {
        return Parsed::Other;
    };
    let dport = u16::from_be_bytes(udp.dst);
    if !watches(dport) {
        return Parsed::Other;
    }
    let payload_len = u32::from(u16::from_be_bytes(ip.payload_len));
    let udp_len = u16::from_be_bytes(udp.len);
    // A jumbogram (payload length 0) or a UDP length that disagrees.
    if payload_len < UdpHdr::LEN as u32 || u32::from(udp_len) != payload_len {
        return Parsed::Skip(SkipReason::BadLength);
    }
    if l4 + payload_len > frame.len() {
        return Parsed::Skip(SkipReason::Truncated);
    }
    if udp_len > MAX_UDP_LEN {
        return Parsed::Skip(SkipReason::TooLarge);
    }
    Parsed::Dhcp(DhcpPacket {
        family: 6,
        l3,
        l4,
        udp_len,
        src: ip.src_addr,
        dst: ip.dst_addr,
        sport: u16::from_be_bytes(udp.src),
        dport,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dhcp(dport: u16) -> impl Fn(u16) -> bool {
        move |p| p == dport
    }

    /// eth + optional tags + IPv4 (ihl words) + UDP + payload.
    fn frame(tags: &[u16], ihl_words: u8, payload: usize) -> [u8; 200] {
        let mut f = [0u8; 200];
        let mut at = 12;
        for tpid in tags {
            f[at..at + 2].copy_from_slice(&tpid.to_be_bytes());
            at += 4;
        }
        f[at..at + 2].copy_from_slice(&ETH_P_IP.to_be_bytes());
        let l3 = at + 2;
        let ihl = usize::from(ihl_words) * 4;
        let total = (ihl + 8 + payload) as u16;
        f[l3] = 0x40 | ihl_words;
        f[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
        f[l3 + 9] = IPPROTO_UDP;
        f[l3 + 12..l3 + 16].copy_from_slice(&[10, 0, 0, 1]);
        f[l3 + 16..l3 + 20].copy_from_slice(&[10, 0, 0, 2]);
        let l4 = l3 + ihl;
        f[l4..l4 + 2].copy_from_slice(&67u16.to_be_bytes());
        f[l4 + 2..l4 + 4].copy_from_slice(&68u16.to_be_bytes());
        f[l4 + 4..l4 + 6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        f
    }

    fn expect_dhcp(p: Parsed) -> DhcpPacket {
        match p {
            Parsed::Dhcp(d) => d,
            other => panic!("expected Dhcp, got {other:?}"),
        }
    }

    #[test]
    fn plain_and_tagged_and_options() {
        let f = frame(&[], 5, 10);
        let d = expect_dhcp(parse(&f[..60], dhcp(68)));
        assert_eq!((d.l3, d.l4, d.udp_len), (14, 34, 18));
        let f = frame(&[ETH_P_8021AD, ETH_P_8021Q], 5, 10);
        let d = expect_dhcp(parse(&f[..70], dhcp(68)));
        assert_eq!((d.l3, d.l4), (22, 42));
        let f = frame(&[ETH_P_8021Q], 15, 10);
        let d = expect_dhcp(parse(&f[..120], dhcp(68)));
        assert_eq!((d.l3, d.l4), (18, 78));
        assert_eq!(&d.src[..4], &[10, 0, 0, 1]);
        assert_eq!((d.family, d.sport, d.dport), (4, 67, 68));
    }

    #[test]
    fn three_tags_and_other_ports_are_not_ours() {
        let f = frame(&[ETH_P_8021Q, ETH_P_8021Q, ETH_P_8021Q], 5, 10);
        assert_eq!(parse(&f[..], dhcp(68)), Parsed::Other);
        let f = frame(&[], 5, 10);
        assert_eq!(parse(&f[..], dhcp(53)), Parsed::Other);
    }

    /// eth + IPv6 (next header `nh`) + UDP 547 -> 546 + payload.
    fn frame6(nh: u8, payload: usize) -> [u8; 200] {
        let mut f = [0u8; 200];
        f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
        f[14] = 0x60;
        f[18..20].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        f[20] = nh;
        f[21] = 64;
        f[22] = 0xfe;
        f[23] = 0x80;
        f[37] = 1;
        f[38] = 0xfe;
        f[39] = 0x80;
        f[53] = 2;
        f[54..56].copy_from_slice(&547u16.to_be_bytes());
        f[56..58].copy_from_slice(&546u16.to_be_bytes());
        f[58..60].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        f
    }

    #[test]
    fn dhcpv6_replies() {
        let f = frame6(IPPROTO_UDP, 20);
        let d = expect_dhcp(parse(&f[..82], dhcp(546)));
        assert_eq!((d.family, d.l3, d.l4, d.udp_len, d.sport), (6, 14, 54, 28, 547));
        assert_eq!((d.src[0], d.src[15], d.dst[15]), (0xfe, 1, 2));
        // An extension header first (hop-by-hop, 0): left alone.
        assert_eq!(parse(&frame6(0, 20)[..], dhcp(546)), Parsed::Other);
        assert_eq!(parse(&f[..80], dhcp(546)), Parsed::Skip(SkipReason::Truncated));
        let mut bad = f;
        bad[59] = 99;
        assert_eq!(parse(&bad[..], dhcp(546)), Parsed::Skip(SkipReason::BadLength));
        assert_eq!(parse(&f[..], dhcp(68)), Parsed::Other);
    }

    #[test]
    fn bad_lengths_fragments_truncation() {
        let mut f = frame(&[], 5, 10);
        f[38..40].copy_from_slice(&17u16.to_be_bytes());
        assert_eq!(parse(&f[..], dhcp(68)), Parsed::Skip(SkipReason::BadLength));
        let mut f = frame(&[], 5, 10);
        f[20] = 0x20; // MF
        assert_eq!(parse(&f[..], dhcp(68)), Parsed::Skip(SkipReason::Fragment));
        f[20] = 0x00;
        f[21] = 0x01; // offset 8: no UDP header here
        assert_eq!(parse(&f[..], dhcp(68)), Parsed::Other);
        let f = frame(&[], 5, 100);
        assert_eq!(parse(&f[..100], dhcp(68)), Parsed::Skip(SkipReason::Truncated));
        // Header itself cut short: cannot even read the ports.
        assert_eq!(parse(&f[..40], dhcp(68)), Parsed::Other);
        let mut f = frame(&[], 4, 10);
        f[14] = 0x44;
        assert_eq!(parse(&f[..], dhcp(68)), Parsed::Other);
    }
}
