//! The shared parser and checksum code (`dhcpfix-common`) against the
//! independent reference in `support`, over many random inputs. Runs
//! without privileges.

use dhcpfix_common::{
    checksum,
    config::DEFAULT_PORTS,
    frame::{self, Parsed, MAX_UDP_LEN},
};
use dhcpfix_lab::kit::reference::{
    random_ipv6_spec, ref_addresses, ref_classify, ref_partial_seed, ref_udp_checksum, ref_verifies, Check,
    FrameSpec, RefVerdict, Rng,
};

#[test]
fn checksum_matches_reference_on_random_segments() {
    let mut rng = Rng::new(7);
    for _ in 0..5_000 {
        let src: [u8; 4] = rng.bytes(4).try_into().unwrap();
        let dst: [u8; 4] = rng.bytes(4).try_into().unwrap();
        let len = 8 + rng.below(1500) as usize;
        let mut udp = rng.bytes(len);
        let ours = checksum::udp_ipv4_checksum(src, dst, &udp);
        assert_eq!(ours, ref_udp_checksum(&src, &dst, &udp), "len {len}");
        udp[6..8].copy_from_slice(&ours.to_be_bytes());
        assert!(ref_verifies(&src, &dst, &udp));
        assert!(checksum::udp_ipv4_verifies(src, dst, &udp));
        // A partial skb's seed is the reference's pseudo-header sum.
        assert_eq!(
            checksum::partial_seed(src, dst, len as u16),
            ref_partial_seed(&src, &dst, len)
        );
    }
}

#[test]
fn parser_matches_reference_on_random_and_mutated_frames() {
    let mut rng = Rng::new(8);
    let (mut dhcp, mut skip) = (0, 0);
    for case in 0..20_000 {
        let mut spec = FrameSpec::dhcp_reply(rng.below(2100) as usize, &mut rng);
        spec.vlans =
            [vec![], vec![0x8100], vec![0x88a8, 0x8100], vec![0x8100; 3]][rng.below(4) as usize].clone();
        spec.ip_options = 4 * rng.below(11) as usize;
        spec.dport = [67, 68, 53][rng.below(3) as usize];
        spec.more_fragments = rng.chance(10);
        spec.frag_offset = if rng.chance(10) {
            1 + rng.below(100) as u16
        } else {
            0
        };
        let mut f = spec.build(Check::Partial);
        if rng.chance(50) {
            let at = rng.below(f.len().min(90) as u64) as usize;
            f[at] = rng.next_u64() as u8;
        }
        if rng.chance(20) {
            f.truncate(rng.below(f.len() as u64) as usize);
        }
        let ours = frame::parse(&f[..], |p| DEFAULT_PORTS.contains(&p));
        let reference = ref_classify(&f, &DEFAULT_PORTS, usize::from(MAX_UDP_LEN));
        match (ours, reference) {
            (Parsed::Other, RefVerdict::Other) => {}
            (Parsed::Skip(_), RefVerdict::Skip) => skip += 1,
            (Parsed::Dhcp(p), RefVerdict::Dhcp { l3, l4, udp_len }) => {
                assert_eq!(
                    (p.l3 as usize, p.l4 as usize, p.udp_len as usize),
                    (l3, l4, udp_len)
                );
                dhcp += 1;
            }
            (ours, reference) => panic!("case {case}: parser {ours:?}, reference {reference:?}"),
        }
    }
    assert!(
        dhcp > 1_000 && skip > 1_000,
        "generator too narrow: {dhcp} fillable, {skip} skipped"
    );
}

/// IPv6 frames (extension headers, jumbogram and wrong lengths, DHCPv6 and
/// other ports, VLAN tags): the parser agrees with the reference, and a
/// built complete checksum is what the shared code computes.
#[test]
fn parser_matches_reference_on_ipv6_frames() {
    let mut rng = Rng::new(9);
    let (mut dhcp, mut skip, mut other) = (0, 0, 0);
    for case in 0..20_000 {
        let mut spec = random_ipv6_spec(&mut rng, 2100);
        spec.vlans = [
            vec![],
            vec![],
            vec![0x8100],
            vec![0x88a8, 0x8100],
            vec![0x8100; 3],
        ][rng.below(5) as usize]
            .clone();
        spec.trailer = if rng.chance(10) { rng.below(20) as usize } else { 0 };
        let complete = rng.chance(50);
        let mut f = spec.build(if complete { Check::Complete } else { Check::Partial });
        let damaged = rng.chance(30);
        if damaged {
            if rng.chance(50) {
                let at = rng.below(f.len().min(110) as u64) as usize;
                f[at] = rng.next_u64() as u8;
            } else {
                f.truncate(rng.below(f.len() as u64) as usize);
            }
        }
        let ours = frame::parse(&f[..], |p| DEFAULT_PORTS.contains(&p));
        let reference = ref_classify(&f, &DEFAULT_PORTS, usize::from(MAX_UDP_LEN));
        match (ours, reference) {
            (Parsed::Other, RefVerdict::Other) => other += 1,
            (Parsed::Skip(_), RefVerdict::Skip) => skip += 1,
            (Parsed::Dhcp(p), RefVerdict::Dhcp { l3, l4, udp_len }) => {
                assert_eq!(
                    (p.family, p.l3 as usize, p.l4 as usize, p.udp_len as usize),
                    (6, l3, l4, udp_len),
                    "case {case}"
                );
                assert_eq!(l4, spec.l4(), "case {case}");
                let udp = &f[l4..l4 + udp_len];
                if complete && !damaged {
                    let (src, dst) = ref_addresses(&f, l3);
                    assert!(ref_verifies(src, dst, udp), "case {case}");
                    assert_eq!(
                        checksum::udp_checksum(&p, udp).to_be_bytes(),
                        [udp[6], udp[7]],
                        "case {case}"
                    );
                }
                dhcp += 1;
            }
            (ours, reference) => panic!("case {case}: parser {ours:?}, reference {reference:?}: {spec:?}"),
        }
    }
    assert!(
        dhcp > 5_000 && skip > 1_000 && other > 1_000,
        "generator too narrow: {dhcp} fillable, {skip} skipped, {other} other"
    );
}
