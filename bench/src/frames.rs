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
    fn frame_sizes() {
        assert_eq!(tcp_ipv4().len(), 1514);
        assert_eq!(tcp_ipv6().len(), 1514);
        assert_eq!(arp().len(), 60);
        assert_eq!(dhcp_reply(1472).len(), 1514);
        assert_eq!(sum16(&[&ipv4_header(17, 8, SERVER, CLIENT)]), 0xffff);
    }
}
