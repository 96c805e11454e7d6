//! Internet checksum (RFC 1071) arithmetic for the UDP checksum over IPv4
//! (RFC 768) and IPv6 (RFC 8200).
//!
//! Sums are kept in network byte order: a 16-bit word is `u16::from_be_bytes`
//! of two consecutive bytes, and the result is written back big-endian.

/// Adds `data` to a running one's-complement sum, as 16-bit big-endian words.
/// An odd trailing byte is padded with a zero byte, as RFC 768 requires.
pub fn sum_be_words(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for word in &mut chunks {
        acc += u64::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(u16::from_be_bytes([*last, 0]));
    }
    acc
}

/// Folds a wide one's-complement sum to 16 bits (end-around carry).
pub const fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The sum of the IPv4 pseudo-header used by UDP (RFC 768).
pub fn ipv4_pseudo_header_sum(src: [u8; 4], dst: [u8; 4], udp_len: u16) -> u64 {
    let mut acc = sum_be_words(&src, 0);
    acc = sum_be_words(&dst, acc);
    acc += u64::from(crate::frame::IPPROTO_UDP);
    acc + u64::from(udp_len)
}

/// The full UDP checksum of `udp` (header and payload, `udp.len()` bytes) sent
/// from `src` to `dst`, computed as if the check field (bytes 6..8) were zero.
///
/// Returns the value to write into the check field: a computed zero is sent
/// as `0xffff`, because zero on the wire means "no checksum" (RFC 768).
pub fn udp_ipv4_checksum(src: [u8; 4], dst: [u8; 4], udp: &[u8]) -> u16 {
    let len = udp.len() as u16;
    let mut acc = ipv4_pseudo_header_sum(src, dst, len);
    acc = sum_be_words(udp, acc);
    if let Some(check) = udp.get(6..8) {
        // Take the check field back out: the sum is defined with it zeroed.
        acc += u64::from(!u16::from_be_bytes([check[0], check[1]]));
    }
    match !fold(acc) {
        0 => 0xffff,
        csum => csum,
    }
}

/// Whether the checksum in `udp` verifies as a receiver checks it: a zero
/// check field means "not computed" and passes; otherwise the sum over
/// pseudo-header and segment including the field must fold to `0xffff`.
pub fn udp_ipv4_verifies(src: [u8; 4], dst: [u8; 4], udp: &[u8]) -> bool {
    match udp.get(6..8) {
        Some([0, 0]) => true,
        Some(_) => {
            let acc = sum_be_words(udp, ipv4_pseudo_header_sum(src, dst, udp.len() as u16));
            fold(acc) == 0xffff
        }
        None => false,
    }
}

/// The value a `CHECKSUM_PARTIAL` skb holds in the check field: the folded
/// pseudo-header sum, not inverted (what `udp4_hwcsum`/`csum_tcpudp_magic`
/// leave for the device to finish).
pub fn partial_seed(src: [u8; 4], dst: [u8; 4], udp_len: u16) -> u16 {
    fold(ipv4_pseudo_header_sum(src, dst, udp_len))
}

/// The sum of the IPv6 pseudo-header used by UDP (RFC 8200, 8.1).
pub fn ipv6_pseudo_header_sum(src: [u8; 16], dst: [u8; 16], udp_len: u16) -> u64 {
    let mut acc = sum_be_words(&src, 0);
    acc = sum_be_words(&dst, acc);
    acc += u64::from(crate::frame::IPPROTO_UDP);
    acc + u64::from(udp_len)
}

/// The pseudo-header sum of `packet`'s family and addresses.
pub fn pseudo_header_sum(packet: &crate::frame::DhcpPacket) -> u64 {
    if packet.family == crate::dhcp::FAMILY_V6 {
        ipv6_pseudo_header_sum(packet.src, packet.dst, packet.udp_len)
    } else {
        let four = |a: [u8; 16]| [a[0], a[1], a[2], a[3]];
        ipv4_pseudo_header_sum(four(packet.src), four(packet.dst), packet.udp_len)
    }
}

/// The full UDP checksum of `packet`'s segment `udp` (IPv4 or IPv6), as
/// [`udp_ipv4_checksum`] computes it. A computed zero is sent as `0xffff`
/// for both families (IPv6 forbids a zero check field).
pub fn udp_checksum(packet: &crate::frame::DhcpPacket, udp: &[u8]) -> u16 {
    let mut acc = sum_be_words(udp, pseudo_header_sum(packet));
    if let Some(check) = udp.get(6..8) {
        acc += u64::from(!u16::from_be_bytes([check[0], check[1]]));
    }
    match !fold(acc) {
        0 => 0xffff,
        csum => csum,
    }
}

/// Whether `udp` verifies as a receiver of `packet`'s family checks it: for
/// IPv4 a zero check field passes ("not computed"); for IPv6 it fails.
pub fn udp_verifies(packet: &crate::frame::DhcpPacket, udp: &[u8]) -> bool {
    match udp.get(6..8) {
        Some([0, 0]) => packet.family != crate::dhcp::FAMILY_V6,
        Some(_) => fold(sum_be_words(udp, pseudo_header_sum(packet))) == 0xffff,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum_be_words(&data, 0)), 0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(fold(sum_be_words(&[0xab], 0)), 0xab00);
        assert_eq!(fold(sum_be_words(&[0x12, 0x34, 0x56], 0)), 0x1234 + 0x5600);
    }

    #[test]
    fn computed_checksum_verifies_and_ignores_old_field() {
        let src = [10, 0, 0, 1];
        let dst = [255, 255, 255, 255];
        let mut udp = [0u8; 13];
        udp[0..8].copy_from_slice(&[0, 67, 0, 68, 0, 13, 0xde, 0xad]);
        udp[8..].copy_from_slice(b"hello");
        let csum = udp_ipv4_checksum(src, dst, &udp);
        udp[6..8].copy_from_slice(&csum.to_be_bytes());
        assert!(udp_ipv4_verifies(src, dst, &udp));
        // Recomputing over the filled segment gives the same value.
        assert_eq!(udp_ipv4_checksum(src, dst, &udp), csum);
    }

    #[test]
    fn zero_result_is_sent_as_ffff() {
        // Choose a payload word that makes the sum fold to 0xffff.
        let src = [0, 0, 0, 0];
        let dst = [0, 0, 0, 0];
        let mut udp = [0u8; 10];
        udp[5] = 10; // length
        let partial = !fold(sum_be_words(&udp, ipv4_pseudo_header_sum(src, dst, 10)));
        udp[8..10].copy_from_slice(&partial.to_be_bytes());
        assert_eq!(udp_ipv4_checksum(src, dst, &udp), 0xffff);
        udp[6..8].copy_from_slice(&0xffffu16.to_be_bytes());
        assert!(udp_ipv4_verifies(src, dst, &udp));
    }

    /// A DHCPv6 Reply from fe80::1 to fe80::5054:ff:feab:cdef, the checksum
    /// computed independently (Python, RFC 8200's pseudo-header).
    #[test]
    fn ipv6_checksum_matches_an_independent_computation() {
        let mut src = [0u8; 16];
        src[..2].copy_from_slice(&[0xfe, 0x80]);
        src[15] = 1;
        let mut dst = [0u8; 16];
        dst[..2].copy_from_slice(&[0xfe, 0x80]);
        dst[8..].copy_from_slice(&[0x50, 0x54, 0x00, 0xff, 0xfe, 0xab, 0xcd, 0xef]);
        let mut udp = [0u8; 24];
        udp[..8].copy_from_slice(&[0x02, 0x23, 0x02, 0x22, 0, 24, 0x12, 0x34]);
        udp[8..12].copy_from_slice(&[7, 0x12, 0x34, 0x56]);
        udp[12..].copy_from_slice(b"dhcpv6-reply");
        let packet = crate::frame::DhcpPacket {
            family: crate::dhcp::FAMILY_V6,
            l3: 14,
            l4: 54,
            udp_len: 24,
            src,
            dst,
            sport: 547,
            dport: 546,
        };
        assert_eq!(udp_checksum(&packet, &udp), 0x67b4);
        assert!(!udp_verifies(&packet, &udp));
        udp[6..8].copy_from_slice(&0x67b4u16.to_be_bytes());
        assert!(udp_verifies(&packet, &udp));
        // Zero is "no checksum" for IPv4 only.
        udp[6..8].copy_from_slice(&[0, 0]);
        assert!(!udp_verifies(&packet, &udp));
    }
}
