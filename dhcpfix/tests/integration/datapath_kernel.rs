//! The classifier attached by the real `dhcpfix attach` to real taps, fed
//! by the real kernel: random and mutated frames are written as
//! `CHECKSUM_PARTIAL` (or `CHECKSUM_NONE`) skbs through an `AF_PACKET`
//! socket with `PACKET_VNET_HDR`, the bridge forwards them to two taps (one
//! with tx checksum offload, one without) and the test reads them back from
//! the tap fds, vnet header included. Every frame is checked against the
//! independent reference in `support`; the counters must add up exactly.
//!
//! ```text
//!  sandbox netns
//!   AF_PACKET(br0) ---> br0 (bridge) ---> tapon  (IFF_VNET_HDR, TUN_F_CSUM) -> read
//!                        |   ^       \--> tapoff (IFF_VNET_HDR, no offload) -> read
//!   AF_PACKET(inj0) -> inj0 == inj1 (veth, inj1 a bridge port)
//! ```
//!
//! Two injection paths, alternating batch by batch: sent by the bridge
//! itself (a host DHCP server such as dnsmasq on virbr0), and received on a
//! bridge port (another guest, a container). On the second path the
//! kernel's receive path moves the outer VLAN tag out of the frame (into
//! the skb's hardware-accelerated tag), so the classifier sees the frame
//! without it, and the tap puts it back when the frame is read: the model
//! below does the same.
//!
//! `DHCPFIX_KERNEL_FRAMES=N` changes the number of frames (100,000);
//! `DHCPFIX_KERNEL_DEBUG=1` prints the frames around a mismatch.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use dhcpfix_common::{config::DEFAULT_PORTS, counters::Counters, counters::Outcome, frame::MAX_UDP_LEN};
use dhcpfix_lab::kit::{
    dev::{self, VIRTIO_NET_HDR_F_NEEDS_CSUM, VNET_HDR_LEN},
    privileged,
    reference::{
        random_ipv6_spec, ref_addresses, ref_classify, ref_sum, ref_udp_checksum, ref_verifies, Check,
        FrameSpec, RefVerdict, Rng,
    },
};
use serde_json::Value;

use crate::support::Sandbox;

const TAP_ON: &str = "tapon";
const TAP_OFF: &str = "tapoff";
const BRIDGE: &str = "br0";
const VETH: &str = "inj0";
const VETH_PEER: &str = "inj1";
/// Room for UDP segments beyond MAX_UDP_LEN (2048), which must be skipped.
const MTU: &str = "4000";
/// Frames per batch: sent, then read back from both taps before the next
/// batch (well below the taps' queue length).
const BATCH: usize = 200;

/// Whether br_netfilter is loaded (it hooks every bridge, see
/// [`program_view`]).
static BR_NETFILTER: AtomicBool = AtomicBool::new(false);

/// Where a frame enters the bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// Sent by the bridge device itself (locally originated).
    Bridge,
    /// Received on the bridge port inj1 (forwarded).
    Veth,
}

/// One frame to send.
#[derive(Clone, Debug)]
struct Case {
    frame: Vec<u8>,
    /// `(csum_start, csum_offset)` sent with NEEDS_CSUM; `None`: flags 0.
    partial: Option<(u16, u16)>,
    /// A well-formed partial DHCP frame, undamaged and without trailer: the
    /// kernel's own completion must make its checksum verify.
    pristine: bool,
    /// Built as IPv6.
    v6: bool,
}

/// What a tap must hand out for one case.
struct Expected {
    frame: Vec<u8>,
    flags: u8,
    csum: Option<(u16, u16)>,
    /// Offset of a filled check field in `frame` (tap with offload).
    filled_at: Option<usize>,
    /// `(l3, l4, udp_len)` of a UDP checksum that must verify on arrival:
    /// filled by the classifier, or completed by the kernel.
    verify: Option<(usize, usize, usize)>,
}

fn be16(f: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]))
}

fn is_vlan(ethertype: Option<u16>) -> bool {
    matches!(ethertype, Some(0x8100 | 0x88a8))
}

fn gen_case(rng: &mut Rng) -> Case {
    if rng.chance(8) {
        // Arbitrary bytes; now and then with a checksum pointer into them.
        let len = 14 + rng.below(300) as usize;
        let mut frame = rng.bytes(len);
        force_macs(&mut frame);
        let partial = (len >= 30 && rng.chance(20)).then(|| {
            let start = 20 + 2 * rng.below(((len - 20) / 2) as u64) as u16;
            (start, [6u16, 16, 0][rng.below(3) as usize])
        });
        return Case {
            frame,
            partial,
            pristine: false,
            v6: false,
        };
    }
    if rng.chance(25) {
        return gen_case_v6(rng);
    }
    let payload = if rng.chance(5) {
        // Around MAX_UDP_LEN: 2040 bytes of payload is a 2048-byte segment.
        1990 + rng.below(100) as usize
    } else {
        rng.below(1500) as usize
    };
    let mut spec = FrameSpec::dhcp_reply(payload, rng);
    spec.vlans = random_vlans(rng);
    spec.ip_options = if rng.chance(30) {
        4 * rng.below(11) as usize
    } else {
        0
    };
    spec.dport = [68, 68, 68, 67, 67, 53, 0, rng.next_u64() as u16][rng.below(8) as usize];
    spec.sport = [67, 68, rng.next_u64() as u16][rng.below(3) as usize];
    if rng.chance(30) {
        spec.src = rng.bytes(4).try_into().unwrap();
        spec.dst = rng.bytes(4).try_into().unwrap();
    }
    spec.more_fragments = rng.chance(4);
    spec.frag_offset = if rng.chance(4) {
        1 + rng.below(8191) as u16
    } else {
        0
    };
    spec.trailer = random_trailer(rng);
    let check = random_check(rng);
    let mut frame = spec.build(check);
    let l3 = 14 + 4 * spec.vlans.len();
    let l4 = (l3 + 20 + spec.ip_options) as u16;
    let mut partial = matches!(check, Check::Partial).then_some((l4, 6u16));
    if partial.is_some() && rng.chance(5) {
        // The kernel would finish the checksum elsewhere than at the UDP
        // check field: the classifier must not fill.
        partial = Some(match rng.below(4) {
            0 => (l4 + 2, 6),
            1 => (l4, 16),
            2 => (l4 - 4, 6),
            _ => (l3 as u16 + 10, 0),
        });
    }
    let damaged = damage(rng, &mut frame, l4, |rng, frame| {
        let delta = [1u16, 2, 4, 8, 100, 0x8000][rng.below(6) as usize];
        let l4 = usize::from(l4);
        match rng.below(6) {
            // Bogus IHL (0..15 words), or bogus version.
            0 => frame[l3] = (frame[l3] & 0xf0) | rng.below(16) as u8,
            1 => frame[l3] = ((rng.below(16) as u8) << 4) | (frame[l3] & 0x0f),
            // Total length and UDP length off by a little or a lot.
            2 => bump16(frame, l3 + 2, delta, rng.chance(50)),
            3 => bump16(frame, l4 + 4, delta, rng.chance(50)),
            // Not IPv4 at all.
            4 => frame[l3 - 2..l3]
                .copy_from_slice(&[[0x86, 0xdd], [0x08, 0x06], [0x88, 0xcc]][rng.below(3) as usize]),
            _ => frame[l3 + 9] = [6u8, 1, 0, 255][rng.below(4) as usize],
        }
    });
    force_macs(&mut frame);
    let pristine = !damaged && spec.trailer == 0 && partial == Some((l4, 6));
    Case {
        frame,
        partial,
        pristine,
        v6: false,
    }
}

/// An IPv6 case: the kit's DHCPv6-shaped frames (extension headers,
/// jumbogram and wrong lengths, DHCPv6, DHCPv4 and other ports), tagged,
/// partial or not, pointed elsewhere now and then, damaged like the IPv4
/// ones.
fn gen_case_v6(rng: &mut Rng) -> Case {
    // Now and then around MAX_UDP_LEN (2048).
    let max_payload = if rng.chance(5) { 2100 } else { 1500 };
    let mut spec = random_ipv6_spec(rng, max_payload);
    spec.vlans = random_vlans(rng);
    spec.trailer = random_trailer(rng);
    let check = random_check(rng);
    let mut frame = spec.build(check);
    let (l3, l4) = (spec.l3(), spec.l4() as u16);
    let mut partial = matches!(check, Check::Partial).then_some((l4, 6u16));
    if partial.is_some() && rng.chance(5) {
        partial = Some(match rng.below(4) {
            0 => (l4 + 2, 6),
            1 => (l4, 16),
            2 => (l4 - 8, 6),
            _ => (l3 as u16 + 6, 0),
        });
    }
    let damaged = damage(rng, &mut frame, l4, |rng, frame| {
        let delta = [1u16, 2, 8, 100, 0x8000][rng.below(5) as usize];
        let l4 = usize::from(l4);
        match rng.below(5) {
            // Not version 6.
            0 => frame[l3] = ((rng.below(16) as u8) << 4) | (frame[l3] & 0x0f),
            // Payload length and UDP length off by a little or a lot.
            1 => bump16(frame, l3 + 4, delta, rng.chance(50)),
            2 => bump16(frame, l4 + 4, delta, rng.chance(50)),
            // Not IPv6 at all.
            3 => frame[l3 - 2..l3]
                .copy_from_slice(&[[0x08, 0x00], [0x08, 0x06], [0x88, 0xcc]][rng.below(3) as usize]),
            // Another next header: TCP, ICMPv6, hop-by-hop, fragment.
            _ => frame[l3 + 6] = [6u8, 58, 0, 44, 255][rng.below(5) as usize],
        }
    });
    force_macs(&mut frame);
    let pristine = !damaged && spec.trailer == 0 && partial == Some((l4, 6));
    Case {
        frame,
        partial,
        pristine,
        v6: true,
    }
}

/// No tag (half the time), one, QinQ, three, or an outer tag alone.
fn random_vlans(rng: &mut Rng) -> Vec<u16> {
    match rng.below(12) {
        0 | 1 => vec![0x8100],
        2 | 3 => vec![0x88a8, 0x8100],
        4 => vec![0x8100, 0x8100, 0x8100],
        5 => vec![0x88a8],
        _ => vec![],
    }
}

/// Bytes after the IP packet, one time in 8.
fn random_trailer(rng: &mut Rng) -> usize {
    if rng.chance(8) {
        1 + rng.below(40) as usize
    } else {
        0
    }
}

fn random_check(rng: &mut Rng) -> Check {
    match rng.below(10) {
        0 | 1 => Check::Complete,
        2 => Check::Zero,
        // A wrong complete checksum: must stay wrong.
        3 => Check::Value(rng.next_u64() as u16),
        _ => Check::Partial,
    }
}

/// Damages `frame` (UDP header at `l4`) six times in ten: flips 1 to 3
/// bytes from the ethertype to the end of the UDP header, truncates it, or
/// breaks a header field the family's way (`headers`). Returns whether it
/// did.
fn damage(rng: &mut Rng, frame: &mut Vec<u8>, l4: u16, headers: impl FnOnce(&mut Rng, &mut Vec<u8>)) -> bool {
    match rng.below(10) {
        0 | 1 => {
            for _ in 0..1 + rng.below(3) {
                let end = frame.len().min(usize::from(l4) + 8);
                let at = 12 + rng.below((end - 12) as u64) as usize;
                frame[at] = rng.next_u64() as u8;
            }
        }
        2 => {
            let keep = 14 + rng.below((frame.len() - 14) as u64) as usize;
            frame.truncate(keep);
        }
        3 => headers(rng, frame),
        _ => return false,
    }
    true
}

fn bump16(frame: &mut [u8], at: usize, delta: u16, up: bool) {
    let v = be16(frame, at).unwrap();
    let v = if up {
        v.wrapping_add(delta)
    } else {
        v.wrapping_sub(delta)
    };
    frame[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Broadcast destination (the bridge floods it to both taps), a fixed
/// unicast source (a multicast source would be dropped by the bridge).
fn force_macs(frame: &mut [u8]) {
    frame[..6].fill(0xff);
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
}

/// Whether `packet_snd` refuses the vnet header: NEEDS_CSUM with the
/// checksum start before the end of a minimal IPv4 header, or the check
/// field not inside the frame.
fn refused_at_send(case: &Case) -> bool {
    case.partial.is_some_and(|(start, off)| {
        start < 20 || usize::from(start) + usize::from(off) + 2 > case.frame.len()
    })
}

/// The frame as the classifier sees it at the tap's egress, and how far its
/// offsets are shifted from the sent frame's; `None` if the kernel drops it
/// on the way.
fn program_view(path: Path, frame: &[u8], partial: bool) -> Option<(Vec<u8>, usize)> {
    let (view, shift) = if path == Path::Veth && is_vlan(be16(frame, 12)) {
        // skb_vlan_untag: the outer tag leaves the frame; it needs the tag
        // and the next ethertype (20 bytes) or drops the frame.
        if frame.len() < 20 {
            return None;
        }
        let mut v = frame[..12].to_vec();
        v.extend_from_slice(&frame[16..]);
        (v, 4)
    } else {
        (frame.to_vec(), 0)
    };
    if path == Path::Veth && BR_NETFILTER.load(Ordering::Relaxed) {
        // br_netfilter's bridge pre-routing hook pulls the encapsulation
        // header of 802.1Q and PPPoE-session frames, whatever its sysctls
        // say, and drops frames too short for it.
        match be16(&view, 12) {
            Some(0x8100) if view.len() < 14 + 4 => return None,
            Some(0x8864) if view.len() < 14 + 8 => return None,
            _ => {}
        }
    }
    if partial && is_vlan(be16(&view, 12)) {
        // br_dev_queue_push_xmit: a partial skb with in-frame VLAN tags
        // must have them all, ending in a non-zero ethertype
        // (vlan_get_protocol_and_depth), or it is dropped.
        let mut at = 12;
        while is_vlan(be16(&view, at)) {
            at += 4;
        }
        if be16(&view, at).unwrap_or(0) == 0 {
            return None;
        }
    }
    Some((view, shift))
}

/// What skb_checksum_help writes: the folded sum of the frame from
/// csum_start to its end (check field as it is), inverted, 0 sent as 0xffff.
fn kernel_completion(frame: &[u8], start: usize) -> u16 {
    let c = !ref_sum(&[&frame[start..]]);
    if c == 0 {
        0xffff
    } else {
        c
    }
}

/// The model: what `tap` (offload or not) hands out for `case` sent on
/// `path`, and the classifier outcome it must count. `None` if the frame
/// does not arrive.
fn expect(case: &Case, path: Path, offload: bool) -> Option<(Expected, Option<Outcome>)> {
    if refused_at_send(case) {
        return None;
    }
    let (view, shift) = program_view(path, &case.frame, case.partial.is_some())?;
    let verdict = ref_classify(&view, &DEFAULT_PORTS, usize::from(MAX_UDP_LEN));
    let partial = case.partial.is_some();
    let mut out = Expected {
        frame: case.frame.clone(),
        flags: 0,
        csum: None,
        filled_at: None,
        verify: None,
    };
    let outcome = match verdict {
        RefVerdict::Other => None,
        RefVerdict::Skip => Some(Outcome::Skipped),
        RefVerdict::Dhcp { .. } if !partial => Some(Outcome::Valid),
        RefVerdict::Dhcp { l3, l4, udp_len } if !offload => {
            if case.pristine {
                out.verify = Some((l3 + shift, l4 + shift, udp_len));
            }
            Some(Outcome::Deferred)
        }
        RefVerdict::Dhcp { l3, l4, udp_len } => {
            let at_check = case.partial == Some(((l4 + shift) as u16, 6));
            if at_check {
                let (l3, l4) = (l3 + shift, l4 + shift);
                let f = &mut out.frame;
                let (src, dst) = ref_addresses(f, l3);
                let sum = ref_udp_checksum(src, dst, &f[l4..l4 + udp_len]);
                f[l4 + 6..l4 + 8].copy_from_slice(&sum.to_be_bytes());
                out.filled_at = Some(l4 + 6);
                out.verify = Some((l3, l4, udp_len));
                Some(Outcome::Filled)
            } else {
                Some(Outcome::Skipped)
            }
        }
    };
    if let Some((start, off)) = case.partial {
        if offload {
            // The skb stays partial: the tap says so (README "Limits").
            out.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
            out.csum = Some((start, off));
        } else {
            // The kernel completes it before the tap; flags 0.
            let (start, at) = (usize::from(start), usize::from(start + off));
            let c = kernel_completion(&out.frame, start);
            out.frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
    }
    Some((out, outcome))
}

/// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` tap, non-blocking, with
/// `TUNSETOFFLOAD` `TUN_F_CSUM` or 0. Call on a thread inside the netns.
fn open_tap(name: &str, offload: bool) -> OwnedFd {
    let fd = dev::open_tap(name, true).unwrap_or_else(|e| panic!("tap {name}: {e}"));
    let flags = if offload { libc::TUN_F_CSUM } else { 0 };
    dev::set_tap_offload(&fd, flags).unwrap_or_else(|e| panic!("TUNSETOFFLOAD {name}: {e}"));
    fd
}

/// An `AF_PACKET` raw socket with `PACKET_VNET_HDR`, bound to `ifname`
/// (protocol 0: it sends only). Call on a thread inside the netns.
fn packet_socket(ifname: &str) -> OwnedFd {
    let ifindex = dhcpfix::netdev::ifindex(ifname).expect("injection interface");
    dev::vnet_packet_socket(ifindex).unwrap_or_else(|e| panic!("AF_PACKET socket on {ifname}: {e}"))
}

/// Writes header + frame; the errno if the kernel refuses it.
fn send(sock: &OwnedFd, case: &Case) -> Result<(), i32> {
    dev::write_with_header(sock, &dev::vnet_header(case.partial), &case.frame)
        .map_err(|e| e.raw_os_error().unwrap_or(0))
}

/// Reads frames (vnet header included) from a tap until `want` have come
/// and the queue is empty, or none came for 500 ms.
fn read_frames(tap: &OwnedFd, want: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::with_capacity(want);
    let mut buf = vec![0u8; 65536];
    let mut last = Instant::now();
    loop {
        // SAFETY: `buf` is writable for its length during the call.
        let n = unsafe { libc::read(tap.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            got.push(buf[..n as usize].to_vec());
            last = Instant::now();
            continue;
        }
        let e = io::Error::last_os_error();
        assert_eq!(e.raw_os_error(), Some(libc::EAGAIN), "read tap: {e}");
        if got.len() >= want {
            // Frames reach the tap within the sender's system call; anything
            // extra would show up in the next batch's comparison.
            return got;
        }
        if last.elapsed() > Duration::from_millis(500) {
            return got;
        }
        let mut pfd = libc::pollfd {
            fd: tap.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the call's duration.
        unsafe { libc::poll(&mut pfd, 1, 5) };
    }
}

/// Checks what a tap handed out against the model, case by case, in order.
fn check_tap(tap: &str, sent: &[(u64, &Case, Option<Expected>)], got: &[Vec<u8>]) {
    let want: Vec<(u64, &Case, &Expected)> = sent
        .iter()
        .filter_map(|(n, c, e)| e.as_ref().map(|e| (*n, *c, e)))
        .collect();
    let w: Vec<usize> = want.iter().map(|(_, c, _)| c.frame.len()).collect();
    let g: Vec<usize> = got.iter().map(|f| f.len() - VNET_HDR_LEN).collect();
    if w != g && std::env::var_os("DHCPFIX_KERNEL_DEBUG").is_some() {
        eprintln!("{tap}: want {w:?}\n{tap}: got  {g:?}");
        let first = w.iter().zip(&g).position(|(a, b)| a != b).unwrap_or(0);
        for (_, c, _) in want.iter().skip(first.saturating_sub(1)).take(3) {
            eprintln!("want {:?} {:02x?}", c.partial, &c.frame[..c.frame.len().min(80)]);
        }
        for f in got.iter().skip(first.saturating_sub(1)).take(3) {
            eprintln!("got  {:02x?} {:02x?}", &f[..10], &f[10..f.len().min(90)]);
        }
    }
    for (i, (n, case, exp)) in want.iter().enumerate() {
        let Some(raw) = got.get(i) else {
            panic!(
                "{tap}: frame {n} did not arrive ({} of {} in this batch did); sent {} bytes, partial {:?}: {:02x?}",
                got.len(),
                want.len(),
                case.frame.len(),
                case.partial,
                &case.frame[..case.frame.len().min(64)]
            );
        };
        let (hdr, frame) = raw.split_at(VNET_HDR_LEN);
        let ctx = || {
            format!(
                "{tap}: frame {n} ({} bytes, partial {:?})",
                case.frame.len(),
                case.partial
            )
        };
        assert_eq!(frame.len(), case.frame.len(), "{}: length changed", ctx());
        assert_eq!(hdr[0], exp.flags, "{}: vnet header flags {:02x?}", ctx(), hdr);
        assert_eq!(hdr[1], 0, "{}: gso_type", ctx());
        if let Some((start, off)) = exp.csum {
            let got_csum = (
                u16::from_le_bytes([hdr[6], hdr[7]]),
                u16::from_le_bytes([hdr[8], hdr[9]]),
            );
            assert_eq!(got_csum, (start, off), "{}: csum_start/offset", ctx());
        }
        for (at, (a, b)) in exp.frame.iter().zip(frame).enumerate() {
            if a != b {
                panic!(
                    "{}: byte {at} is {b:#04x}, expected {a:#04x} (sent {:#04x}); filled at {:?}",
                    ctx(),
                    case.frame[at],
                    exp.filled_at
                );
            }
        }
        if let Some((l3, l4, udp_len)) = exp.verify {
            // Filled by the classifier, or completed by the kernel: the
            // checksum verifies (the byte comparison above already showed
            // the kernel wrote what the reference computed).
            assert!(
                {
                    let (src, dst) = ref_addresses(frame, l3);
                    ref_verifies(src, dst, &frame[l4..l4 + udp_len])
                },
                "{}: UDP checksum does not verify (filled at {:?})",
                ctx(),
                exp.filled_at
            );
        }
    }
    assert_eq!(
        got.len(),
        want.len(),
        "{tap}: {} frames arrived, {} expected in this batch",
        got.len(),
        want.len()
    );
}

fn counters_json(sb: &Sandbox, iface: &str) -> Value {
    let out = sb.dhcpfix_ok(&sb.pin_dir(), &["stats", "--json", iface]);
    let v: Value = serde_json::from_str(&out).expect("stats --json");
    v["interfaces"][0]["counters"].clone()
}

fn assert_counters(tap: &str, got: &Value, want: &Counters) {
    let field = |name: &str| {
        got[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{tap}: no {name} in {got}"))
    };
    let got = Counters {
        seen: field("seen"),
        filled: field("filled"),
        would_fill: field("would_fill"),
        valid: field("valid"),
        deferred: field("deferred"),
        skipped: field("skipped"),
        errors: field("errors"),
    };
    assert_eq!(&got, want, "{tap}: counters differ from the reference");
}

/// Builds the topology in the sandbox; returns (tap on, tap off, bridge
/// socket, veth socket).
fn topology(sb: &Sandbox) -> (OwnedFd, OwnedFd, OwnedFd, OwnedFd) {
    if sb.in_netns(crate::support::quiet_l2_here) {
        BR_NETFILTER.store(true, Ordering::Relaxed);
    }
    sb.ip(&crate::support::plain_bridge(BRIDGE));
    sb.ip(&["link", "add", VETH, "type", "veth", "peer", "name", VETH_PEER]);
    let (on, off) = sb.in_netns(|| (open_tap(TAP_ON, true), open_tap(TAP_OFF, false)));
    for dev in [VETH, VETH_PEER, TAP_ON, TAP_OFF] {
        sb.ip(&["link", "set", dev, "mtu", MTU]);
    }
    for port in [VETH_PEER, TAP_ON, TAP_OFF] {
        sb.ip(&["link", "set", port, "master", BRIDGE]);
    }
    for tap in [TAP_ON, TAP_OFF] {
        sb.ip(&["link", "set", tap, "txqueuelen", "4096"]);
    }
    sb.ip(&["link", "set", BRIDGE, "mtu", MTU]);
    for dev in [TAP_ON, TAP_OFF, VETH_PEER, VETH, BRIDGE] {
        sb.ip(&["link", "set", dev, "up"]);
    }
    let (br, veth) = sb.in_netns(|| (packet_socket(BRIDGE), packet_socket(VETH)));
    (on, off, br, veth)
}

#[test]
fn random_and_mutated_frames_through_the_kernel_match_the_reference() {
    if !privileged("random_and_mutated_frames_through_the_kernel_match_the_reference") {
        return;
    }
    let total: u64 = std::env::var("DHCPFIX_KERNEL_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let sb = Sandbox::new();
    let (tap_on, tap_off, sock_bridge, sock_veth) = topology(&sb);
    sb.dhcpfix_ok(&sb.pin_dir(), &["attach", TAP_ON, TAP_OFF]);
    // Keep the sender on one CPU: the veth path queues to that CPU's
    // backlog, so order is kept.
    // SAFETY: an all-zero cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }

    let start = Instant::now();
    let mut rng = Rng::new(0xdf_c0de);
    let (mut want_on, mut want_off) = (Counters::default(), Counters::default());
    let mut refused = std::collections::BTreeMap::<i32, u64>::new();
    let (mut sent_ok, mut dropped, mut batches, mut pristine_done) = (0u64, 0u64, 0u64, 0u64);
    // IPv6 cases: (filled on the offload tap, skipped there, completed by
    // the kernel and verified on the other).
    let (mut v6_filled, mut v6_skipped, mut v6_pristine) = (0u64, 0u64, 0u64);
    let mut n = 0u64;
    while n < total {
        let path = if batches % 2 == 0 {
            Path::Bridge
        } else {
            Path::Veth
        };
        let sock = if path == Path::Bridge {
            &sock_bridge
        } else {
            &sock_veth
        };
        batches += 1;
        let cases: Vec<Case> = (0..BATCH.min((total - n) as usize))
            .map(|_| gen_case(&mut rng))
            .collect();
        let mut on_sent = Vec::with_capacity(cases.len());
        let mut off_sent = Vec::with_capacity(cases.len());
        for case in &cases {
            let id = n;
            n += 1;
            match send(sock, case) {
                Err(errno) => {
                    assert!(
                        refused_at_send(case),
                        "frame {id}: the kernel refused it ({}) but the model accepts it: partial {:?}, {} bytes",
                        io::Error::from_raw_os_error(errno),
                        case.partial,
                        case.frame.len()
                    );
                    *refused.entry(errno).or_default() += 1;
                    continue;
                }
                Ok(()) => {
                    assert!(
                        !refused_at_send(case),
                        "frame {id}: accepted, but the model refuses it: {case:?}"
                    );
                    sent_ok += 1;
                }
            }
            let on = expect(case, path, true);
            let off = expect(case, path, false);
            if on.is_none() {
                dropped += 1;
            }
            pristine_done += u64::from(off.as_ref().is_some_and(|(e, _)| e.verify.is_some()));
            if case.v6 {
                v6_filled += u64::from(on.as_ref().is_some_and(|(_, o)| *o == Some(Outcome::Filled)));
                v6_skipped += u64::from(on.as_ref().is_some_and(|(_, o)| *o == Some(Outcome::Skipped)));
                v6_pristine += u64::from(off.as_ref().is_some_and(|(e, _)| e.verify.is_some()));
            }
            for (exp, want, list) in [
                (on, &mut want_on, &mut on_sent),
                (off, &mut want_off, &mut off_sent),
            ] {
                let exp = exp.map(|(e, outcome)| {
                    if let Some(o) = outcome {
                        want.record(o);
                    }
                    e
                });
                list.push((id, case, exp));
            }
        }
        let expected = |l: &Vec<(u64, &Case, Option<Expected>)>| l.iter().filter(|e| e.2.is_some()).count();
        let got_on = read_frames(&tap_on, expected(&on_sent));
        let got_off = read_frames(&tap_off, expected(&off_sent));
        check_tap(TAP_ON, &on_sent, &got_on);
        check_tap(TAP_OFF, &off_sent, &got_off);
    }
    let took = start.elapsed();
    eprintln!(
        "{total} frames in {took:.2?} ({batches} batches): {sent_ok} sent, refused at send {refused:?}, \
         {dropped} dropped by the kernel as predicted, {pristine_done} DHCP checksums completed by the kernel and verified\n\
         offload tap counters {want_on:?}\nno-offload tap counters {want_off:?}\n\
         IPv6: {v6_filled} filled, {v6_skipped} skipped, {v6_pristine} completed by the kernel and verified"
    );
    assert_counters(TAP_ON, &counters_json(&sb, TAP_ON), &want_on);
    assert_counters(TAP_OFF, &counters_json(&sb, TAP_OFF), &want_off);
    // The generator reaches every outcome, in numbers.
    assert!(want_on.filled > total / 10, "{want_on:?}");
    assert!(
        want_on.skipped > total / 50 && want_on.valid > total / 20,
        "{want_on:?}"
    );
    assert!(
        want_off.deferred > total / 10 && want_off.filled == 0,
        "{want_off:?}"
    );
    assert_eq!(want_on.errors + want_off.errors, 0);
    assert!(
        v6_filled > total / 50 && v6_skipped > total / 500 && v6_pristine > total / 100,
        "too few IPv6 cases of each kind: {v6_filled} filled, {v6_skipped} skipped, {v6_pristine} completed"
    );
    assert!(
        refused.values().sum::<u64>() > 0,
        "no vnet header was refused: the model of refusals is untested"
    );
    assert!(took < Duration::from_secs(60), "too slow: {took:?}");
    drop((tap_on, tap_off, sock_bridge, sock_veth));
}
