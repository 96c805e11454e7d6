//! The classifier in the real kernel, through `BPF_PROG_TEST_RUN`, checked
//! against the independent reference in `support`.

use dhcpfix::testrun::{TestProgram, TEST_MARK_OFFLOAD, TEST_MARK_PARTIAL};
use dhcpfix_common::{
    config::{IfaceConfig, DEFAULT_PORTS, MODE_AUDIT, MODE_FILL},
    counters::Counters,
    frame::MAX_UDP_LEN,
};
use dhcpfix_lab::kit::{
    privileged,
    reference::{
        random_ipv6_spec, ref_addresses, ref_classify, ref_verifies, Check, FrameSpec, RefVerdict, Rng,
    },
};

const PARTIAL_OFFLOAD: u32 = TEST_MARK_PARTIAL | TEST_MARK_OFFLOAD;
/// TCX_NEXT / TC_ACT_UNSPEC.
const NEXT: i32 = -1;

fn program(mode: u32) -> TestProgram {
    let mut prog = TestProgram::load().unwrap_or_else(|e| panic!("{e}"));
    prog.configure(IfaceConfig::new(mode, &DEFAULT_PORTS))
        .unwrap_or_else(|e| panic!("{e}"));
    prog
}

fn l4_of(frame: &[u8]) -> (usize, usize) {
    match ref_classify(frame, &DEFAULT_PORTS, usize::from(MAX_UDP_LEN)) {
        RefVerdict::Dhcp { l4, udp_len, .. } => (l4, udp_len),
        other => panic!("test frame is not fillable: {other:?}"),
    }
}

fn addrs(frame: &[u8], l4: usize) -> ([u8; 4], [u8; 4]) {
    // IPv4 addresses end right before the options/UDP header: find l3 again.
    let l3 = match ref_classify(frame, &DEFAULT_PORTS, usize::from(MAX_UDP_LEN)) {
        RefVerdict::Dhcp { l3, .. } => l3,
        _ => l4,
    };
    (
        frame[l3 + 12..l3 + 16].try_into().unwrap(),
        frame[l3 + 16..l3 + 20].try_into().unwrap(),
    )
}

/// Asserts `after` equals `before` except possibly the two check bytes at l4+6.
fn only_check_changed(before: &[u8], after: &[u8], l4: Option<usize>) {
    assert_eq!(before.len(), after.len(), "frame length changed");
    for (i, (a, b)) in before.iter().zip(after).enumerate() {
        if a != b {
            assert!(
                l4.is_some_and(|l4| i == l4 + 6 || i == l4 + 7),
                "byte {i} changed: {a:#04x} -> {b:#04x}"
            );
        }
    }
}

#[test]
fn fills_partial_checksums_of_every_dhcp_size() {
    if !privileged("fills_partial_checksums_of_every_dhcp_size") {
        return;
    }
    let prog = program(MODE_FILL);
    let mut rng = Rng::new(1);
    // DHCP messages of 300, 576 and 1472 bytes, odd sizes, chunk borders.
    let sizes = [
        300 - 8,
        576 - 8,
        1472,
        1,
        2,
        3,
        503,
        504,
        505,
        511,
        1015,
        1016,
        1017,
        1471,
        2040,
    ];
    let mut filled = 0;
    for (i, payload) in sizes.iter().enumerate() {
        let mut spec = FrameSpec::dhcp_reply(*payload, &mut rng);
        spec.vlans = [vec![], vec![0x8100], vec![0x88a8, 0x8100]][i % 3].clone();
        spec.ip_options = [0, 4, 40][i % 3];
        spec.trailer = [0, 0, 7][i % 3];
        spec.dport = if i % 4 == 0 { 67 } else { 68 };
        let before = spec.build(Check::Partial);
        let run = prog
            .run(&before, PARTIAL_OFFLOAD)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(run.verdict, NEXT);
        let (l4, udp_len) = l4_of(&before);
        only_check_changed(&before, &run.frame, Some(l4));
        let (src, dst) = addrs(&before, l4);
        assert!(
            ref_verifies(&src, &dst, &run.frame[l4..l4 + udp_len]),
            "payload {payload}: filled checksum does not verify"
        );
        assert_ne!(
            &run.frame[l4 + 6..l4 + 8],
            &[0, 0],
            "a computed zero must be sent as 0xffff"
        );
        filled += 1;
    }
    let c = prog.counters().unwrap();
    assert_eq!(
        c,
        Counters {
            seen: filled,
            filled,
            ..Default::default()
        }
    );
}

#[test]
fn leaves_everything_but_offloaded_partial_alone() {
    if !privileged("leaves_everything_but_offloaded_partial_alone") {
        return;
    }
    let mut rng = Rng::new(2);
    let spec = FrameSpec::dhcp_reply(300, &mut rng);
    let partial = spec.build(Check::Partial);
    let complete = spec.build(Check::Complete);

    let prog = program(MODE_FILL);
    // Complete checksum (skb not partial): untouched, valid.
    let run = prog.run(&complete, TEST_MARK_OFFLOAD).unwrap();
    assert_eq!(run.frame, complete);
    // Partial on a device without offload: the kernel completes it; untouched.
    let run = prog.run(&partial, TEST_MARK_PARTIAL).unwrap();
    assert_eq!(run.frame, partial);
    assert_eq!(
        prog.counters().unwrap(),
        Counters {
            seen: 2,
            valid: 1,
            deferred: 1,
            ..Default::default()
        }
    );

    let audit = program(MODE_AUDIT);
    let run = audit.run(&partial, PARTIAL_OFFLOAD).unwrap();
    assert_eq!(run.frame, partial, "audit mode must not write");
    assert_eq!(
        audit.counters().unwrap(),
        Counters {
            seen: 1,
            would_fill: 1,
            ..Default::default()
        }
    );

    // An interface without configuration is not touched nor counted.
    let mut bare = program(MODE_FILL);
    bare.unconfigure().unwrap();
    let run = bare.run(&partial, PARTIAL_OFFLOAD).unwrap();
    assert_eq!(run.frame, partial);
    assert_eq!(bare.counters().unwrap(), Counters::default());
}

#[test]
fn skips_what_it_cannot_handle_safely() {
    if !privileged("skips_what_it_cannot_handle_safely") {
        return;
    }
    let prog = program(MODE_FILL);
    let mut rng = Rng::new(3);
    let mut frames = Vec::new();
    let mut spec = FrameSpec::dhcp_reply(300, &mut rng);
    spec.more_fragments = true;
    frames.push(spec.build(Check::Partial)); // first fragment
    let spec = FrameSpec::dhcp_reply(MAX_UDP_LEN as usize - 7, &mut rng);
    frames.push(spec.build(Check::Partial)); // larger than supported
    let spec = FrameSpec::dhcp_reply(300, &mut rng);
    let mut f = spec.build(Check::Partial);
    f[14 + 2..14 + 4].copy_from_slice(&400u16.to_be_bytes()); // total length > frame
    frames.push(f);
    let mut f = spec.build(Check::Partial);
    f[34 + 4..34 + 6].copy_from_slice(&100u16.to_be_bytes()); // UDP length != IP payload
    frames.push(f);
    for f in &frames {
        let run = prog.run(f, PARTIAL_OFFLOAD).unwrap();
        assert_eq!(&run.frame, f);
    }
    assert_eq!(
        prog.counters().unwrap(),
        Counters {
            seen: 4,
            skipped: 4,
            ..Default::default()
        }
    );

    // Not ours at all: other ports, later fragments, IPv6, ARP, 3 VLAN tags.
    let mut others = Vec::new();
    let mut spec = FrameSpec::dhcp_reply(300, &mut rng);
    spec.dport = 53;
    others.push(spec.build(Check::Partial));
    spec.dport = 68;
    spec.frag_offset = 100;
    others.push(spec.build(Check::Partial));
    spec.frag_offset = 0;
    spec.vlans = vec![0x8100, 0x8100, 0x8100];
    others.push(spec.build(Check::Partial));
    let mut v6 = spec.build(Check::Partial);
    v6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    others.push(v6);
    let mut arp = vec![0u8; 42];
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    others.push(arp);
    for f in &others {
        assert_eq!(&prog.run(f, PARTIAL_OFFLOAD).unwrap().frame, f);
    }
    assert_eq!(
        prog.counters().unwrap().seen,
        4,
        "frames that are not DHCP must not be counted"
    );
}

#[test]
fn wrong_and_zero_checksums_in_complete_skbs_stay() {
    if !privileged("wrong_and_zero_checksums_in_complete_skbs_stay") {
        return;
    }
    let prog = program(MODE_FILL);
    let mut rng = Rng::new(4);
    let spec = FrameSpec::dhcp_reply(400, &mut rng);
    for check in [Check::Zero, Check::Value(0x1234)] {
        let f = spec.build(check);
        assert_eq!(prog.run(&f, TEST_MARK_OFFLOAD).unwrap().frame, f);
    }
    assert_eq!(
        prog.counters().unwrap(),
        Counters {
            seen: 2,
            valid: 2,
            ..Default::default()
        }
    );
}

/// Random and mutated frames: the program changes nothing but the check
/// field, fills exactly the frames the reference calls fillable, and every
/// fill verifies. Counters add up to what was sent.
#[test]
fn random_and_mutated_frames_match_the_reference() {
    if !privileged("random_and_mutated_frames_match_the_reference") {
        return;
    }
    let prog = program(MODE_FILL);
    let mut rng = Rng::new(0x5eed);
    let cases = std::env::var("DHCPFIX_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000u64);
    let mut expect = Counters::default();
    for case in 0..cases {
        let frame = random_frame(&mut rng);
        let mark = [0, TEST_MARK_PARTIAL, TEST_MARK_OFFLOAD, PARTIAL_OFFLOAD][rng.below(4) as usize];
        let run = prog.run(&frame, mark).unwrap_or_else(|e| {
            panic!(
                "case {case}: {e:?} len {} {:02x?}",
                frame.len(),
                &frame[..frame.len().min(40)]
            )
        });
        assert_eq!(run.verdict, NEXT);
        let verdict = ref_classify(&frame, &DEFAULT_PORTS, usize::from(MAX_UDP_LEN));
        match verdict {
            RefVerdict::Other => {
                assert_eq!(run.frame, frame, "case {case}: non-DHCP frame changed");
                continue;
            }
            RefVerdict::Skip => {
                assert_eq!(run.frame, frame, "case {case}: skipped frame changed");
                expect.seen += 1;
                expect.skipped += 1;
            }
            RefVerdict::Dhcp { l3, l4, udp_len } => {
                expect.seen += 1;
                if mark == PARTIAL_OFFLOAD {
                    only_check_changed(&frame, &run.frame, Some(l4));
                    let (src, dst) = ref_addresses(&frame, l3);
                    assert!(
                        ref_verifies(src, dst, &run.frame[l4..l4 + udp_len]),
                        "case {case}: fill does not verify"
                    );
                    expect.filled += 1;
                } else {
                    assert_eq!(
                        run.frame, frame,
                        "case {case}: frame changed without partial+offload"
                    );
                    if mark & TEST_MARK_PARTIAL == 0 {
                        expect.valid += 1;
                    } else {
                        expect.deferred += 1;
                    }
                }
            }
        }
    }
    assert_eq!(prog.counters().unwrap(), expect);
    assert!(
        expect.filled > cases / 20,
        "too few fillable frames generated: {expect:?}"
    );
}

/// A frame that is DHCP-shaped most of the time (IPv4 or, one in four,
/// IPv6), then damaged at random.
fn random_frame(rng: &mut Rng) -> Vec<u8> {
    if rng.chance(10) {
        let len = 15 + rng.below(200) as usize;
        return rng.bytes(len);
    }
    if rng.chance(25) {
        return random_ipv6_frame(rng);
    }
    let mut spec = FrameSpec::dhcp_reply(rng.below(1600) as usize, rng);
    spec.vlans = random_vlans(rng);
    spec.ip_options = 4 * rng.below(11) as usize;
    spec.dport = [67, 68, 68, 68, 53, 0][rng.below(6) as usize];
    spec.more_fragments = rng.chance(5);
    spec.frag_offset = if rng.chance(5) { rng.below(8192) as u16 } else { 0 };
    spec.trailer = random_trailer(rng);
    let mut f = spec.build(random_check(rng));
    // BPF_PROG_TEST_RUN rejects IPv4 frames shorter than an IPv4 header.
    damage(rng, &mut f, 80, 34);
    f
}

/// An IPv6 frame from the kit's generator (extension headers, jumbogram and
/// wrong lengths, DHCPv6 and other ports), tagged, damaged or truncated.
fn random_ipv6_frame(rng: &mut Rng) -> Vec<u8> {
    let mut spec = random_ipv6_spec(rng, 1600);
    spec.vlans = random_vlans(rng);
    spec.trailer = random_trailer(rng);
    let mut f = spec.build(random_check(rng));
    damage(rng, &mut f, 110, spec.l3() + 40);
    f
}

/// No tag (half the time), one, QinQ, or three.
fn random_vlans(rng: &mut Rng) -> Vec<u16> {
    match rng.below(6) {
        0 => vec![0x8100],
        1 => vec![0x88a8, 0x8100],
        2 => vec![0x8100, 0x8100, 0x8100],
        _ => vec![],
    }
}

/// Bytes after the frame's IP packet, one time in 20.
fn random_trailer(rng: &mut Rng) -> usize {
    if rng.chance(20) {
        rng.below(40) as usize
    } else {
        0
    }
}

fn random_check(rng: &mut Rng) -> Check {
    match rng.below(4) {
        0 => Check::Complete,
        1 => Check::Zero,
        2 => Check::Value(rng.next_u64() as u16),
        _ => Check::Partial,
    }
}

/// Damage, one time in five each: flip 1 to 3 bytes within the first
/// `headers` bytes, or truncate to no less than `min_len`; else leave it
/// well-formed.
fn damage(rng: &mut Rng, f: &mut Vec<u8>, headers: usize, min_len: usize) {
    match rng.below(5) {
        0 => {
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(f.len().min(headers) as u64) as usize;
                f[at] = rng.next_u64() as u8;
            }
        }
        1 => {
            let keep = 14 + rng.below((f.len() - 14) as u64) as usize;
            f.truncate(keep.max(min_len));
        }
        _ => {}
    }
}

/// DHCPv6: replies of every size are filled with the IPv6 pseudo-header
/// (a computed zero sent as 0xffff), behind VLAN tags too; what the
/// classifier leaves to others (extension headers, jumbograms, wrong UDP
/// lengths) stays as it was.
#[test]
fn fills_dhcpv6_replies_and_skips_what_it_must() {
    if !privileged("fills_dhcpv6_replies_and_skips_what_it_must") {
        return;
    }
    let prog = program(MODE_FILL);
    let mut rng = Rng::new(6);
    let mut filled = 0;
    for (i, payload) in [100usize, 1, 2, 3, 503, 504, 505, 1015, 1016, 1432, 2040]
        .into_iter()
        .enumerate()
    {
        let mut spec = FrameSpec::dhcpv6_reply(payload, &mut rng);
        spec.vlans = [vec![], vec![0x8100], vec![0x88a8, 0x8100]][i % 3].clone();
        spec.trailer = [0, 0, 7][i % 3];
        spec.dport = if i % 4 == 0 { 547 } else { 546 };
        let before = spec.build(Check::Partial);
        let run = prog
            .run(&before, PARTIAL_OFFLOAD)
            .unwrap_or_else(|e| panic!("{e}"));
        let l4 = spec.l4();
        let udp_len = 8 + payload;
        only_check_changed(&before, &run.frame, Some(l4));
        let (src, dst) = ref_addresses(&run.frame, spec.l3());
        assert!(
            ref_verifies(src, dst, &run.frame[l4..l4 + udp_len]),
            "payload {payload}: the fill does not verify"
        );
        filled += 1;
    }
    // A payload whose checksum comes out zero: sent as 0xffff.
    let mut spec = FrameSpec::dhcpv6_reply(2, &mut rng);
    let l4 = spec.l4();
    let probe = spec.build(Check::Complete);
    let c = u16::from_be_bytes([probe[l4 + 6], probe[l4 + 7]]);
    // Adding the checksum to the payload's last word makes the sum 0xffff.
    let word = u16::from_be_bytes([spec.payload[0], spec.payload[1]]);
    let (sum, carry) = word.overflowing_add(c);
    spec.payload[..2].copy_from_slice(&(sum + u16::from(carry)).to_be_bytes());
    let zero = spec.build(Check::Partial);
    let run = prog.run(&zero, PARTIAL_OFFLOAD).unwrap();
    assert_eq!(
        &run.frame[l4 + 6..l4 + 8],
        &[0xff, 0xff],
        "zero goes out as 0xffff"
    );
    filled += 1;
    assert_eq!(
        prog.counters().unwrap(),
        Counters {
            seen: filled,
            filled,
            ..Default::default()
        }
    );

    let prog = program(MODE_FILL);
    let mut skipped = Vec::new();
    let mut spec = FrameSpec::dhcpv6_reply(300, &mut rng);
    for len in [0u16, 100, 1000] {
        spec.ipv6.as_mut().unwrap().payload_len = Some(len); // jumbogram, too short, too long
        skipped.push(spec.build(Check::Partial));
    }
    spec.ipv6.as_mut().unwrap().payload_len = None;
    spec.ipv6.as_mut().unwrap().udp_len = Some(100);
    skipped.push(spec.build(Check::Partial));
    let mut others = Vec::new();
    for ext in [0u8, 43, 44, 60] {
        let mut spec = FrameSpec::dhcpv6_reply(300, &mut rng);
        spec.ipv6.as_mut().unwrap().ext = vec![ext];
        others.push(spec.build(Check::Partial));
    }
    let mut spec = FrameSpec::dhcpv6_reply(300, &mut rng);
    spec.dport = 53;
    others.push(spec.build(Check::Partial));
    for f in skipped.iter().chain(&others) {
        assert_eq!(&prog.run(f, PARTIAL_OFFLOAD).unwrap().frame, f);
    }
    assert_eq!(
        prog.counters().unwrap(),
        Counters {
            seen: skipped.len() as u64,
            skipped: skipped.len() as u64,
            ..Default::default()
        }
    );
}
