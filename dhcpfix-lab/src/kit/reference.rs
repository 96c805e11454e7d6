//! An independent reference model of what the classifier must do, a frame
//! builder and a deterministic PRNG, for the tests, the benchmarks and the
//! fuzz targets.
//!
//! The reference is written separately from `dhcpfix-common` on purpose
//! (different structure, different arithmetic), so a bug shared by the
//! datapath and the common code cannot hide.

/// xorshift64*: deterministic, so a failing case can be replayed by seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Reference RFC 1071 sum: 32-bit accumulator over bytes, high byte first,
/// carries folded at the end.
pub fn ref_sum(chunks: &[&[u8]]) -> u16 {
    let mut acc: u32 = 0;
    for chunk in chunks {
        for (i, b) in chunk.iter().enumerate() {
            acc += if i % 2 == 0 {
                u32::from(*b) << 8
            } else {
                u32::from(*b)
            };
            if acc > 0x00ff_ffff {
                acc = (acc & 0xffff) + (acc >> 16);
            }
        }
        assert!(
            chunk.len() % 2 == 0 || std::ptr::eq(*chunk, *chunks.last().unwrap()),
            "odd chunk must be last"
        );
    }
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The pseudo-header: RFC 768's (12 bytes) for 4-byte addresses, RFC
/// 8200's (40 bytes) for 16-byte ones.
fn pseudo(src: &[u8], dst: &[u8], udp_len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    p.extend_from_slice(src);
    p.extend_from_slice(dst);
    if src.len() == 16 {
        p.extend_from_slice(&(udp_len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 17]);
    } else {
        p.extend_from_slice(&[0, 17]);
        p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    }
    p
}

/// The source and destination addresses of the IP header at `l3` (IPv4 or
/// IPv6, by its version nibble), as the pseudo-header takes them.
pub fn ref_addresses(f: &[u8], l3: usize) -> (&[u8], &[u8]) {
    if f[l3] >> 4 == 6 {
        (&f[l3 + 8..l3 + 24], &f[l3 + 24..l3 + 40])
    } else {
        (&f[l3 + 12..l3 + 16], &f[l3 + 16..l3 + 20])
    }
}

/// The correct UDP checksum of `udp` (its check field ignored).
pub fn ref_udp_checksum(src: &[u8], dst: &[u8], udp: &[u8]) -> u16 {
    let mut zeroed = udp.to_vec();
    zeroed[6] = 0;
    zeroed[7] = 0;
    let c = !ref_sum(&[&pseudo(src, dst, udp.len()), &zeroed]);
    if c == 0 {
        0xffff
    } else {
        c
    }
}

/// Whether `udp` verifies as a receiver checks it (a zero check field:
/// "not computed" for IPv4, invalid for IPv6).
pub fn ref_verifies(src: &[u8], dst: &[u8], udp: &[u8]) -> bool {
    if udp[6] == 0 && udp[7] == 0 {
        return src.len() == 4;
    }
    ref_sum(&[&pseudo(src, dst, udp.len()), udp]) == 0xffff
}

/// The pseudo-header sum a `CHECKSUM_PARTIAL` skb carries in the check field.
pub fn ref_partial_seed(src: &[u8], dst: &[u8], udp_len: usize) -> u16 {
    ref_sum(&[&pseudo(src, dst, udp_len)])
}

/// Where the reference finds a fillable DHCP packet: (l3, l4, udp_len).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefVerdict {
    /// Not UDP (IPv4, or IPv6 right after the fixed header) to a watched port.
    Other,
    /// Watched port, but must be left alone.
    Skip,
    /// Fillable at these offsets.
    Dhcp { l3: usize, l4: usize, udp_len: usize },
}

/// Reference classification, written from the spec in the issue.
pub fn ref_classify(f: &[u8], ports: &[u16], max_udp: usize) -> RefVerdict {
    let be16 = |at: usize| -> Option<u16> { Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?])) };
    let mut l3 = 14;
    let mut ethertype = match be16(12) {
        Some(t) => t,
        None => return RefVerdict::Other,
    };
    for _ in 0..2 {
        if ethertype == 0x8100 || ethertype == 0x88a8 {
            ethertype = match be16(l3 + 2) {
                Some(t) => t,
                None => return RefVerdict::Other,
            };
            l3 += 4;
        }
    }
    if ethertype == 0x86dd {
        return ref_classify_v6(f, l3, ports, max_udp);
    }
    if ethertype != 0x0800 || f.len() < l3 + 20 {
        return RefVerdict::Other;
    }
    let vihl = f[l3];
    let ihl = usize::from(vihl & 15) * 4;
    if vihl >> 4 != 4 || ihl < 20 || f[l3 + 9] != 17 {
        return RefVerdict::Other;
    }
    let flags_frag = be16(l3 + 6).unwrap();
    if flags_frag & 0x1fff != 0 {
        return RefVerdict::Other;
    }
    let l4 = l3 + ihl;
    if f.len() < l4 + 8 {
        return RefVerdict::Other;
    }
    let dport = be16(l4 + 2).unwrap();
    if !ports.contains(&dport) || dport == 0 {
        return RefVerdict::Other;
    }
    if flags_frag & 0x2000 != 0 {
        return RefVerdict::Skip;
    }
    let total = usize::from(be16(l3 + 2).unwrap());
    let udp_len = usize::from(be16(l4 + 4).unwrap());
    if total < ihl + 8 || udp_len != total - ihl || l3 + total > f.len() || udp_len > max_udp {
        return RefVerdict::Skip;
    }
    RefVerdict::Dhcp { l3, l4, udp_len }
}

/// IPv6: UDP must follow the 40-byte fixed header directly (any extension
/// header: not ours); payload length and UDP length must agree.
fn ref_classify_v6(f: &[u8], l3: usize, ports: &[u16], max_udp: usize) -> RefVerdict {
    let be16 = |at: usize| usize::from(u16::from_be_bytes([f[at], f[at + 1]]));
    let l4 = l3 + 40;
    if f.len() < l4 + 8 || f[l3] >> 4 != 6 || f[l3 + 6] != 17 {
        return RefVerdict::Other;
    }
    let dport = be16(l4 + 2) as u16;
    if !ports.contains(&dport) || dport == 0 {
        return RefVerdict::Other;
    }
    let payload = be16(l3 + 4);
    let udp_len = be16(l4 + 4);
    if payload < 8 || udp_len != payload || l4 + payload > f.len() || udp_len > max_udp {
        return RefVerdict::Skip;
    }
    RefVerdict::Dhcp { l3, l4, udp_len }
}

/// Builds an Ethernet frame carrying IPv4/UDP, or IPv6/UDP with
/// [`FrameSpec::ipv6`].
#[derive(Clone, Debug)]
pub struct FrameSpec {
    pub vlans: Vec<u16>,
    pub ip_options: usize,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub payload: Vec<u8>,
    pub more_fragments: bool,
    pub frag_offset: u16,
    /// Ethernet padding after the IP packet.
    pub trailer: usize,
    /// IPv6 instead of IPv4: then `src`, `dst`, `ip_options` and the
    /// fragment fields are unused.
    pub ipv6: Option<Ipv6Spec>,
}

/// The IPv6 part of a [`FrameSpec`].
#[derive(Clone, Debug)]
pub struct Ipv6Spec {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Extension headers between the fixed header and UDP, by type: 0
    /// (hop-by-hop options), 43 (routing), 44 (fragment: offset 0, last),
    /// 60 (destination options); 8 bytes each, padded with Pad1 options.
    pub ext: Vec<u8>,
    /// The payload length field as sent, when not the true length (0: a
    /// jumbogram's).
    pub payload_len: Option<u16>,
    /// The UDP length field as sent, when not the true length.
    pub udp_len: Option<u16>,
}

/// Extension header types [`Ipv6Spec::ext`] knows.
pub const IPV6_EXT_HEADERS: [u8; 4] = [0, 43, 44, 60];

impl FrameSpec {
    /// A DHCP reply (server 67 -> client 68) with `payload_len` bytes of payload.
    pub fn dhcp_reply(payload_len: usize, rng: &mut Rng) -> Self {
        Self {
            vlans: vec![],
            ip_options: 0,
            src: [10, 199, 0, 1],
            dst: [255, 255, 255, 255],
            sport: 67,
            dport: 68,
            payload: rng.bytes(payload_len),
            more_fragments: false,
            frag_offset: 0,
            trailer: 0,
            ipv6: None,
        }
    }

    /// A DHCPv6 reply (server 547 -> client 546, link-local to link-local)
    /// with `payload_len` bytes of payload.
    pub fn dhcpv6_reply(payload_len: usize, rng: &mut Rng) -> Self {
        let mut src = [0u8; 16];
        src[..2].copy_from_slice(&[0xfe, 0x80]);
        let mut dst = src;
        src[8..].copy_from_slice(&[0, 0, 0, 0xff, 0xfe, 0, 0, 1]);
        dst[8..].copy_from_slice(&[0, 0, 0, 0xff, 0xfe, 0, 0, 2]);
        Self {
            sport: 547,
            dport: 546,
            ipv6: Some(Ipv6Spec {
                src,
                dst,
                ext: vec![],
                payload_len: None,
                udp_len: None,
            }),
            ..Self::dhcp_reply(payload_len, rng)
        }
    }

    /// Where the IP header starts in the built frame.
    pub fn l3(&self) -> usize {
        14 + 4 * self.vlans.len()
    }

    /// Where the UDP header starts in the built frame.
    pub fn l4(&self) -> usize {
        match &self.ipv6 {
            Some(v6) => self.l3() + 40 + 8 * v6.ext.len(),
            None => self.l3() + 20 + self.ip_options,
        }
    }

    /// Builds the frame; the check field holds `check`.
    pub fn build(&self, check: Check) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        for (i, tpid) in self.vlans.iter().enumerate() {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&(100 + i as u16).to_be_bytes());
        }
        if let Some(v6) = &self.ipv6 {
            return self.build_v6(f, v6, check);
        }
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let ihl = 20 + self.ip_options;
        let udp_len = 8 + self.payload.len();
        let total = ihl + udp_len;
        let mut ip = vec![0u8; ihl];
        ip[0] = 0x40 | (ihl / 4) as u8;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        let frag = (if self.more_fragments { 0x2000 } else { 0 }) | (self.frag_offset & 0x1fff);
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&self.src);
        ip[16..20].copy_from_slice(&self.dst);
        for (i, b) in ip[20..].iter_mut().enumerate() {
            *b = if i + 1 == self.ip_options { 0 } else { 1 }; // NOPs, then EOL
        }
        let hsum = !ref_sum(&[&ip]);
        ip[10..12].copy_from_slice(&hsum.to_be_bytes());
        f.extend_from_slice(&ip);
        let mut udp = vec![0u8; 8];
        udp[0..2].copy_from_slice(&self.sport.to_be_bytes());
        udp[2..4].copy_from_slice(&self.dport.to_be_bytes());
        udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        udp.extend_from_slice(&self.payload);
        let check = match check {
            Check::Partial => ref_partial_seed(&self.src, &self.dst, udp_len),
            Check::Complete => ref_udp_checksum(&self.src, &self.dst, &udp),
            Check::Zero => 0,
            Check::Value(v) => v,
        };
        udp[6..8].copy_from_slice(&check.to_be_bytes());
        f.extend_from_slice(&udp);
        f.extend(std::iter::repeat_n(0u8, self.trailer));
        f
    }

    fn build_v6(&self, mut f: Vec<u8>, v6: &Ipv6Spec, check: Check) -> Vec<u8> {
        f.extend_from_slice(&0x86ddu16.to_be_bytes());
        let udp_len = 8 + self.payload.len();
        let payload_len = 8 * v6.ext.len() + udp_len;
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend_from_slice(&v6.payload_len.unwrap_or(payload_len as u16).to_be_bytes());
        ip.push(v6.ext.first().copied().unwrap_or(17));
        ip.push(255);
        ip.extend_from_slice(&v6.src);
        ip.extend_from_slice(&v6.dst);
        for i in 0..v6.ext.len() {
            let next = v6.ext.get(i + 1).copied().unwrap_or(17);
            // Next header, length 0 (8 bytes); the rest zero: Pad1 options,
            // a routing header with nothing left, an atomic fragment.
            ip.extend_from_slice(&[next, 0, 0, 0, 0, 0, 0, 0]);
        }
        f.extend_from_slice(&ip);
        let mut udp = vec![0u8; 8];
        udp[0..2].copy_from_slice(&self.sport.to_be_bytes());
        udp[2..4].copy_from_slice(&self.dport.to_be_bytes());
        udp[4..6].copy_from_slice(&v6.udp_len.unwrap_or(udp_len as u16).to_be_bytes());
        udp.extend_from_slice(&self.payload);
        let check = match check {
            Check::Partial => ref_partial_seed(&v6.src, &v6.dst, udp_len),
            Check::Complete => ref_udp_checksum(&v6.src, &v6.dst, &udp),
            Check::Zero => 0,
            Check::Value(v) => v,
        };
        udp[6..8].copy_from_slice(&check.to_be_bytes());
        f.extend_from_slice(&udp);
        f.extend(std::iter::repeat_n(0u8, self.trailer));
        f
    }
}

/// A DHCPv6-shaped frame, varied in what is IPv6's own: extension
/// headers before UDP (one in five), the ports (DHCPv6's, DHCPv4's, others),
/// the payload length field (a jumbogram's 0, off by a little or a lot)
/// and the UDP length field, link-local or random addresses. The caller
/// adds VLAN tags, a trailer and damage. Payload up to `max_payload` bytes.
pub fn random_ipv6_spec(rng: &mut Rng, max_payload: u64) -> FrameSpec {
    let mut spec = FrameSpec::dhcpv6_reply(rng.below(max_payload + 1) as usize, rng);
    let Some(v6) = spec.ipv6.as_mut() else {
        unreachable!("dhcpv6_reply builds IPv6")
    };
    if rng.chance(20) {
        v6.ext = (0..1 + rng.below(2))
            .map(|_| IPV6_EXT_HEADERS[rng.below(4) as usize])
            .collect();
    }
    if rng.chance(30) {
        v6.src = rng.bytes(16).try_into().unwrap_or(v6.src);
        v6.dst = rng.bytes(16).try_into().unwrap_or(v6.dst);
    }
    let true_len = (8 * v6.ext.len() + 8 + spec.payload.len()) as u16;
    v6.payload_len = match rng.below(25) {
        0 => Some(0),
        1 => Some(true_len.wrapping_add([1, 8, 0x8000][rng.below(3) as usize])),
        2 => Some(true_len.wrapping_sub([1, 2, 100][rng.below(3) as usize])),
        _ => None,
    };
    if rng.chance(4) {
        v6.udp_len = Some([0, 7, 8, rng.next_u64() as u16][rng.below(4) as usize]);
    }
    spec.dport = [546, 546, 546, 547, 547, 68, 67, 53, rng.next_u64() as u16][rng.below(9) as usize];
    spec.sport = [547, 546, rng.next_u64() as u16][rng.below(3) as usize];
    spec
}

/// A DHCPv4 message from a server (BOOTREPLY) of type `msg_type` (2 OFFER,
/// 5 ACK, ...) for the client `chaddr`, transaction `xid`: fixed header,
/// magic cookie, option 53, end. 244 bytes, the UDP payload of a
/// [`FrameSpec`].
pub fn dhcp_reply_message(msg_type: u8, xid: u32, chaddr: [u8; 6]) -> Vec<u8> {
    let mut m = vec![0u8; 244];
    m[..4].copy_from_slice(&[2, 1, 6, 0]); // BOOTREPLY, Ethernet, hlen 6, hops
    m[4..8].copy_from_slice(&xid.to_be_bytes());
    m[28..34].copy_from_slice(&chaddr);
    m[236..240].copy_from_slice(&[99, 130, 83, 99]);
    m[240..244].copy_from_slice(&[53, 1, msg_type, 255]);
    m
}

/// What the check field holds when the frame is built.
#[derive(Clone, Copy, Debug)]
pub enum Check {
    /// The pseudo-header seed of a `CHECKSUM_PARTIAL` skb.
    Partial,
    /// The correct full checksum.
    Complete,
    /// Zero ("no checksum").
    Zero,
    /// An arbitrary value.
    Value(u16),
}
