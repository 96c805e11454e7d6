//! The frames the bench feeds to `BPF_PROG_TEST_RUN`, and the bench's own
//! UDP checksum check (written here rather than shared with the classifier's
//! code, so a shared bug cannot hide).

const MAC_DST: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const MAC_SRC: [u8; 6] = [0xfe, 0x54, 0x00, 0xab, 0xcd, 0xef];
pub const SERVER: [u8; 4] = [10, 231, 0, 1];
pub const CLIENT: [u8; 4] = [10, 231, 0, 2];

/// RFC 1071 sum of `data`, not yet inverted.
fn sum16(chunks: &[&[u8]]) -> u16 {
    let mut acc: u64 = 0;
    for chunk in chunks {
        let mut pairs = chunk.chunks_exact(2);
        for p in &mut pairs {
            acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
        }
        if let [last] = pairs.remainder() {
            acc += u64::from(*last) << 8;
        }
    }
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

fn pseudo_header(src: [u8; 4], dst: [u8; 4], udp_len: usize) -> [u8; 12] {
    let len = (udp_len as u16).to_be_bytes();
    [
        src[0], src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3], 0, 17, len[0], len[1],
    ]
}

fn ethernet(ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(1514);
    f.extend_from_slice(&MAC_DST);
    f.extend_from_slice(&MAC_SRC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn ipv4_header(proto: u8, payload_len: usize, src: [u8; 4], dst: [u8; 4]) -> [u8; 20] {
    let total = ((20 + payload_len) as u16).to_be_bytes();
    let mut h = [
        0x45, 0, total[0], total[1], 0, 1, 0, 0, 64, proto, 0, 0, src[0], src[1], src[2], src[3], dst[0],
        dst[1], dst[2], dst[3],
    ];
    let c = !sum16(&[&h]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// Payload bytes that are not all zero.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

/// An IPv4 UDP frame. With `partial`, the check field holds the
/// pseudo-header sum, as in a `CHECKSUM_PARTIAL` skb; otherwise it holds
/// the complete checksum.
pub fn udp(sport: u16, dport: u16, payload_len: usize, partial: bool) -> Vec<u8> {
    udp_with(sport, dport, &payload(payload_len), partial)
}

fn udp_with(sport: u16, dport: u16, payload: &[u8], partial: bool) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let pseudo = pseudo_header(SERVER, CLIENT, udp_len);
    let check = if partial {
        sum16(&[&pseudo])
    } else {
        match !sum16(&[&pseudo, &udp]) {
            0 => 0xffff,
            c => c,
        }
    };
    udp[6..8].copy_from_slice(&check.to_be_bytes());
    let mut f = ethernet(0x0800);
    f.extend_from_slice(&ipv4_header(17, udp_len, SERVER, CLIENT));
    f.extend_from_slice(&udp);
    f
}

/// A DHCP reply (server port 67 to client port 68) of `dhcp_len` bytes of
/// UDP payload, as a `CHECKSUM_PARTIAL` skb carries it.
pub fn dhcp_reply(dhcp_len: usize) -> Vec<u8> {
    udp_with(67, 68, &dhcp_ack(dhcp_len), true)
}

/// The same DHCP reply with its checksum already complete (a server
/// without offload, or a relay).
pub fn dhcp_reply_complete(dhcp_len: usize) -> Vec<u8> {
    udp_with(67, 68, &dhcp_ack(dhcp_len), false)
}

/// A BOOTP/DHCP ACK message of `len` bytes (at least 244): fixed header,
/// magic cookie, message type and end options, zero padding.
pub fn dhcp_ack(len: usize) -> Vec<u8> {
    let mut m = vec![0u8; len.max(244)];
    m[..4].copy_from_slice(&[2, 1, 6, 0]); // BOOTREPLY, Ethernet, hlen 6, hops
    m[4..8].copy_from_slice(&0x3903_f326u32.to_be_bytes()); // xid
    m[16..20].copy_from_slice(&CLIENT); // yiaddr
    m[20..24].copy_from_slice(&SERVER); // siaddr
    m[28..34].copy_from_slice(&MAC_DST); // chaddr
    m[236..240].copy_from_slice(&[99, 130, 83, 99]);
    m[240..244].copy_from_slice(&[53, 1, 5, 255]); // DHCPACK, end
    m
}

/// The guest's MAC: the destination of what reaches it, the source and
/// `chaddr` of what it sends.
pub const GUEST_MAC: [u8; 6] = MAC_DST;

/// A DHCPREQUEST a guest sends (client port 68 to server port 67) of
/// `dhcp_len` bytes of UDP payload (at least 268): message type, requested
/// address, server identifier, host name, parameter list and vendor class,
/// as ISC dhclient orders them; checksum complete, as a guest sends it.
pub fn dhcp_request(dhcp_len: usize) -> Vec<u8> {
    let mut m = vec![0u8; dhcp_len.max(268)];
    m[..4].copy_from_slice(&[1, 1, 6, 0]); // BOOTREQUEST, Ethernet, hlen 6, hops
    m[4..8].copy_from_slice(&0x3903_f326u32.to_be_bytes()); // xid
    m[28..34].copy_from_slice(&GUEST_MAC); // chaddr
    m[236..240].copy_from_slice(&[99, 130, 83, 99]);
    let options: [&[u8]; 7] = [
        &[53, 1, 3],
        &[50, 4, CLIENT[0], CLIENT[1], CLIENT[2], CLIENT[3]],
        &[54, 4, SERVER[0], SERVER[1], SERVER[2], SERVER[3]],
        &[12, 3, b'v', b'm', b'1'],
        &[55, 7, 1, 28, 2, 3, 15, 6, 12],
        &[60, 4, b'l', b'a', b'b', b'1'],
        &[255],
    ];
    let mut at = 240;
    for o in options {
        m[at..at + o.len()].copy_from_slice(o);
        at += o.len();
    }
    let mut f = ethernet_from(GUEST_MAC, [0xff; 6], 0x0800);
    let udp = udp_segment(68, 67, &m, [0; 4], [255; 4]);
    f.extend_from_slice(&ipv4_header(17, udp.len(), [0; 4], [255; 4]));
    f.extend_from_slice(&udp);
    f
}

/// A DHCPv6 REPLY (547 to 546, link-local to link-local) with an IA_NA
/// address, `len` bytes of UDP payload (at least 110), checksum complete.
pub fn dhcpv6_reply(len: usize) -> Vec<u8> {
    let mut m = vec![7, 0x12, 0x34, 0x56]; // REPLY, transaction id
    m.extend_from_slice(&[0, 1, 0, 10, 0, 3, 0, 1]); // client id: DUID-LL
    m.extend_from_slice(&GUEST_MAC);
    m.extend_from_slice(&[0, 2, 0, 10, 0, 3, 0, 1]); // server id
    m.extend_from_slice(&MAC_SRC);
    m.extend_from_slice(&[0, 3, 0, 40, 0, 0, 0, 1, 0, 0, 0, 60, 0, 0, 0, 105]); // IA_NA: IAID, T1, T2
    m.extend_from_slice(&[0, 5, 0, 24, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]); // IA address
    m.extend_from_slice(&[0, 0, 0, 120, 0, 0, 0, 120]); // preferred, valid lifetimes
    m.resize(len.max(m.len()), 0);
    udp6(
        547,
        546,
        &m,
        [MAC_SRC, GUEST_MAC],
        [LINK_LOCAL_SERVER, LINK_LOCAL_GUEST],
    )
}

/// A DHCPv6 SOLICIT a guest sends (546 to 547, to All_DHCP_Relay_Agents_and_Servers)
/// with an IA_NA, `len` bytes of UDP payload (at least 52), checksum complete.
pub fn dhcpv6_solicit(len: usize) -> Vec<u8> {
    let mut m = vec![1, 0x12, 0x34, 0x56]; // SOLICIT, transaction id
    m.extend_from_slice(&[0, 1, 0, 10, 0, 3, 0, 1]); // client id: DUID-LL
    m.extend_from_slice(&GUEST_MAC);
    m.extend_from_slice(&[0, 8, 0, 2, 0, 0]); // elapsed time
    m.extend_from_slice(&[0, 3, 0, 12, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]); // IA_NA
    m.resize(len.max(m.len()), 0);
    let all_servers = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2];
    udp6(
        546,
        547,
        &m,
        [GUEST_MAC, [0x33, 0x33, 0, 1, 0, 2]],
        [LINK_LOCAL_GUEST, all_servers],
    )
}

const LINK_LOCAL_SERVER: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe, 0, 0, 1];
const LINK_LOCAL_GUEST: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe, 0, 0, 2];

/// An IPv6 UDP frame, `macs` and `addrs` as (source, destination), with its
/// checksum complete (IPv6 pseudo-header, RFC 8200).
fn udp6(sport: u16, dport: u16, payload: &[u8], macs: [[u8; 6]; 2], addrs: [[u8; 16]; 2]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&addrs[0]);
    pseudo.extend_from_slice(&addrs[1]);
    pseudo.extend_from_slice(&(udp_len as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 17]);
    let check = match !sum16(&[&pseudo, &udp]) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&check.to_be_bytes());
    let mut f = ethernet_from(macs[0], macs[1], 0x86dd);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[17, 255]);
    f.extend_from_slice(&addrs[0]);
    f.extend_from_slice(&addrs[1]);
    f.extend_from_slice(&udp);
    f
}

fn ethernet_from(src: [u8; 6], dst: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(1514);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// A UDP header and `payload`, checksum complete over the IPv4
/// pseudo-header of `src` and `dst`.
fn udp_segment(sport: u16, dport: u16, payload: &[u8], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let check = match !sum16(&[&pseudo_header(src, dst, udp_len), &udp]) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&check.to_be_bytes());
    udp
}

/// A full-size IPv4 TCP segment (1514-byte frame).
pub fn tcp_ipv4() -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&5201u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&40000u16.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x10; // ACK
    tcp.extend_from_slice(&payload(1460));
    let mut f = ethernet(0x0800);
    f.extend_from_slice(&ipv4_header(6, tcp.len(), SERVER, CLIENT));
    f.extend_from_slice(&tcp);
    f
}

/// A full-size IPv6 TCP segment (1514-byte frame).
pub fn tcp_ipv6() -> Vec<u8> {
    let tcp_len = 20 + 1440;
    let mut f = ethernet(0x86dd);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(tcp_len as u16).to_be_bytes());
    f.extend_from_slice(&[6, 64]);
    f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    let mut tcp = vec![0u8; 20];
    tcp[12] = 5 << 4;
    tcp[13] = 0x10;
    f.extend_from_slice(&tcp);
    f.extend_from_slice(&payload(1440));
    f
}

/// An ARP request, padded to the 60-byte Ethernet minimum.
pub fn arp() -> Vec<u8> {
    let mut f = ethernet(0x0806);
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&MAC_SRC);
    f.extend_from_slice(&SERVER);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&CLIENT);
    f.resize(60, 0);
    f
}

/// Where an untagged IPv4 UDP datagram sits in an Ethernet frame.
pub struct UdpView<'a> {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    /// The UDP header and payload (`udp_len` bytes).
    pub segment: &'a [u8],
}

/// Parses an untagged, unfragmented IPv4 UDP frame.
pub fn udp_view(f: &[u8]) -> Option<UdpView<'_>> {
    if f.len() < 42 || f[12..14] != [0x08, 0x00] || f[14] >> 4 != 4 || f[23] != 17 {
        return None;
    }
    let ihl = usize::from(f[14] & 15) * 4;
    let l4 = 14 + ihl;
    let udp_len = usize::from(u16::from_be_bytes([*f.get(l4 + 4)?, *f.get(l4 + 5)?]));
    let segment = f.get(l4..l4 + udp_len)?;
    if udp_len < 8 {
        return None;
    }
    Some(UdpView {
        src: f[26..30].try_into().ok()?,
        dst: f[30..34].try_into().ok()?,
        sport: u16::from_be_bytes([segment[0], segment[1]]),
        dport: u16::from_be_bytes([segment[2], segment[3]]),
        segment,
    })
}

/// Whether the datagram's UDP checksum verifies as a receiver checks it.
pub fn udp_checksum_ok(v: &UdpView<'_>) -> bool {
    v.segment[6..8] != [0, 0] && sum16(&[&pseudo_header(v.src, v.dst, v.segment.len()), v.segment]) == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_checksums_verify_and_partial_ones_do_not() {
        for len in [0, 1, 300, 301, 576, 1472] {
            let full = udp(67, 68, len, false);
            assert!(udp_checksum_ok(&udp_view(&full).unwrap()), "len {len}");
            let partial = dhcp_reply(len);
            assert!(!udp_checksum_ok(&udp_view(&partial).unwrap()), "len {len}");
            let complete = dhcp_reply_complete(len);
            assert!(udp_checksum_ok(&udp_view(&complete).unwrap()), "len {len}");
        }
    }

    #[test]
    fn client_messages_verify() {
        let request = dhcp_request(300);
        assert_eq!(request.len(), 14 + 20 + 8 + 300);
        let v = udp_view(&request).unwrap();
        assert_eq!((v.sport, v.dport), (68, 67));
        assert!(udp_checksum_ok(&v));
        // IPv6: the segment sums to 0xffff with its pseudo-header.
        for f in [dhcpv6_reply(200), dhcpv6_solicit(100)] {
            let udp = &f[54..];
            let mut pseudo = f[22..54].to_vec();
            pseudo.extend_from_slice(&(udp.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 17]);
            assert_eq!(sum16(&[&pseudo, udp]), 0xffff);
        }
    }

    #[test]
    fn frame_sizes() {
        assert_eq!(tcp_ipv4().len(), 1514);
        assert_eq!(tcp_ipv6().len(), 1514);
        assert_eq!(arp().len(), 60);
        assert_eq!(dhcp_reply(1472).len(), 1514);
        assert_eq!(sum16(&[&ipv4_header(17, 8, SERVER, CLIENT)]), 0xffff);
    }
}
