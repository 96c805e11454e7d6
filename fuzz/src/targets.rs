//! The bodies of the fuzz targets: one plain function per parser that takes
//! outside input, with the properties it must keep. Run two ways:
//!
//! - `fuzz_targets/` (cargo-fuzz, libFuzzer + ASan): `cargo xtask fuzz`
//!   runs them for minutes;
//! - dhcpfix's tests (`fuzz_short`): `cargo test` runs them on the seeds
//!   and a few thousand deterministic mutations, always.

use std::path::Path;

use dhcpfix::{
    agent::{
        config::{FileConfig, Overrides, Settings},
        pattern::Patterns,
    },
    attach::valid_ifname,
    integrations::libvirt::{self, Plan},
    kernel_layout::{self, Btf, LayoutSpec},
};
use dhcpfix_common::{
    checksum,
    config::{IfaceConfig, DEFAULT_PORTS, MAX_PORTS, MODE_FILL},
    event::{FillEvent, EVENT_FILLED},
    frame::{self, Parsed, MAX_UDP_LEN},
    key::IfaceKey,
    layout::LAYOUT_VALID,
};

use dhcpfix_lab::kit::{
    btf::{BtfWriter, Kind},
    reference::{ref_addresses, ref_classify, ref_udp_checksum, Check, FrameSpec, RefVerdict, Rng},
};

/// Every target, in the order `cargo xtask fuzz` runs them.
pub const TARGETS: [&str; 6] = ["frame", "btf", "layout_spec", "pattern", "config", "libvirt_xml"];

/// Runs the body of `target` on `data`.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "frame" => frame(data),
        "btf" => btf(data),
        "layout_spec" => layout_spec(data),
        "pattern" => pattern(data),
        "config" => config(data),
        "libvirt_xml" => libvirt_xml(data),
        other => panic!("no fuzz target {other}"),
    }
}

/// An operator sees errors as one line.
fn one_line(what: &str, message: &str) {
    assert!(
        !message.contains('\n') && !message.contains('\r'),
        "{what}: error message is not one line: {message:?}"
    );
}

// --- frame: the datapath's parser against the reference model ----------

/// `dhcpfix_common::frame::parse` (the code the classifier runs) must agree
/// with the independent reference on every frame, and what it derives from
/// a DHCP packet (checksum, fill event) must come from inside it.
pub fn frame(data: &[u8]) {
    let cfg = IfaceConfig::new(MODE_FILL, &DEFAULT_PORTS);
    let ours = frame::parse(data, |p| cfg.watches(p));
    let reference = ref_classify(data, &DEFAULT_PORTS, usize::from(MAX_UDP_LEN));
    match (ours, reference) {
        (Parsed::Other, RefVerdict::Other) | (Parsed::Skip(_), RefVerdict::Skip) => {}
        (Parsed::Dhcp(d), RefVerdict::Dhcp { l3, l4, udp_len }) => {
            assert_eq!(
                (d.l3 as usize, d.l4 as usize, usize::from(d.udp_len)),
                (l3, l4, udp_len)
            );
            let (src, dst) = ref_addresses(data, l3);
            assert_eq!(&d.src[..src.len()], src);
            assert_eq!(&d.dst[..dst.len()], dst);
            assert_eq!(d.dport, u16::from_be_bytes([data[l4 + 2], data[l4 + 3]]));
            let udp = &data[l4..l4 + udp_len];
            assert_eq!(
                checksum::udp_checksum(&d, udp),
                ref_udp_checksum(src, dst, udp),
                "checksum differs from the reference"
            );
            let key = IfaceKey::new(0x1234, 7);
            let event = FillEvent::read(data, key, &d, EVENT_FILLED);
            // The fields come from a whole message header only (a DHCPv4
            // message: its 240 bytes up to and with the magic cookie; a
            // DHCPv6 one: its 4-byte header); otherwise they stay zero.
            let dhcp = &udp[8..];
            let (xid, mac, msg_type) = if d.family == 6 {
                // DHCPv6: type, then a 24-bit transaction id; the client is
                // the frame's destination MAC.
                match dhcp.get(..4) {
                    Some(h) => (
                        u32::from_be_bytes([0, h[1], h[2], h[3]]),
                        data[..6].try_into().unwrap(),
                        h[0],
                    ),
                    None => (0, [0; 6], 0),
                }
            } else if dhcp.len() >= 240 && dhcp[236..240] == [99, 130, 83, 99] {
                (
                    u32::from_be_bytes(dhcp[4..8].try_into().unwrap()),
                    dhcp[28..34].try_into().unwrap(),
                    ref_message_type(dhcp),
                )
            } else {
                (0, [0; 6], 0)
            };
            assert_eq!(
                (event.xid, event.mac),
                (xid, mac),
                "event fields from outside the packet"
            );
            assert_eq!(event.msg_type, msg_type, "message type");
            assert_eq!(
                (event.netns, event.ifindex, event.dport, event.family),
                (0x1234, 7, d.dport, d.family)
            );
        }
        (ours, reference) => panic!("parser says {ours:?}, reference says {reference:?}"),
    }
}

/// Option 53 among the first 8 options of the DHCP message `dhcp`, read
/// only from inside it; 0 if absent.
fn ref_message_type(dhcp: &[u8]) -> u8 {
    if dhcp.get(236..240) != Some(&[99, 130, 83, 99][..]) {
        return 0;
    }
    let mut at = 240;
    for _ in 0..8 {
        match dhcp.get(at) {
            None | Some(255) => return 0,
            Some(0) => at += 1,
            Some(code) => {
                let len = match dhcp.get(at + 1) {
                    Some(l) => usize::from(*l),
                    // The length byte may lie past the message (in a
                    // trailer); no message type comes of it.
                    None => return 0,
                };
                if *code == 53 {
                    return if len > 0 {
                        dhcp.get(at + 2).copied().unwrap_or(0)
                    } else {
                        0
                    };
                }
                at += 2 + len;
            }
        }
    }
    0
}

// --- btf: the kernel layout resolver -------------------------------------

/// Raw input is parsed as BTF; input starting with a byte >= 0x80 is a list
/// of (offset: u16 LE, value: u8) patches applied to a realistic BTF blob,
/// so that mutations reach the resolver, not just the header checks.
pub fn btf(data: &[u8]) {
    let blob = match data.split_first() {
        Some((mode, patches)) if mode & 0x80 != 0 => {
            let mut blob = sample_btf(usize::from(mode & 3));
            for p in patches.chunks_exact(3) {
                let at = usize::from(u16::from_le_bytes([p[0], p[1]])) % blob.len();
                blob[at] = p[2];
            }
            blob
        }
        _ => data.to_vec(),
    };
    check_btf(blob);
}

/// Parsing and resolving never panic; a resolved layout is one the
/// classifier can use; errors are one line.
pub fn check_btf(blob: Vec<u8>) {
    let btf = match Btf::parse(blob) {
        Ok(b) => b,
        Err(e) => return one_line("Btf::parse", &e.to_string()),
    };
    match kernel_layout::resolve(&btf) {
        Ok(l) => {
            assert_eq!(l.flags & LAYOUT_VALID, LAYOUT_VALID);
            assert!(l.ip_summed_shift < 8 && l.ip_summed_mask != 0, "{l:?}");
            assert!(
                (l.ip_summed_mask << l.ip_summed_shift) <= 0xff,
                "ip_summed not within its byte: {l:?}"
            );
            assert!(l.csum_features != 0, "{l:?}");
            // What --kernel-layout would say for it parses back.
            let spec = LayoutSpec(l).to_string();
            let again: LayoutSpec = spec.parse().unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(
                (again.0.skb_dev, again.0.skb_ip_summed, again.0.dev_features),
                (l.skb_dev, l.skb_ip_summed, l.dev_features)
            );
        }
        Err(e) => one_line("resolve", &e.to_string()),
    }
    // Lookups by id and name on whatever was parsed.
    for id in [0, 1, 2, 3, 7, 100, u32::MAX] {
        let _ = btf.size_of(id);
        let _ = btf.member(id, "dev");
    }
    let _ = btf.enum_value("NETIF_F_HW_CSUM_BIT");
}

/// A BTF blob shaped like the kernel's where it matters: `sk_buff` with
/// `dev` inside an anonymous union inside an anonymous struct, `ip_summed`
/// a 2-bit bitfield, `csum_start`/`csum_offset` in a union, `head`/`data`
/// pointers; `net_device.features` behind a typedef, `net_device.nd_net`
/// (`possible_net_t`) leading to `net.net_cookie`; the feature bits in an
/// enum (variant 1: an ENUM64); other kinds around them. Variant 2 makes
/// `ip_summed` a plain byte; variant 3 drops `net_device.features`.
pub fn sample_btf(variant: usize) -> Vec<u8> {
    let mut w = BtfWriter::new();
    let names: Vec<u32> = [
        "unsigned char",          // 0
        "__u16",                  // 1
        "long long unsigned int", // 2
        "sk_buff",                // 3
        "dev",                    // 4
        "ip_summed",              // 5
        "net_device",             // 6
        "features",               // 7
        "netdev_features_t",      // 8
        "netdev_features",        // 9
        "NETIF_F_SG_BIT",         // 10
        "NETIF_F_IP_CSUM_BIT",    // 11
        "__UNUSED_NETIF_F_1",     // 12
        "NETIF_F_HW_CSUM_BIT",    // 13
        "csum_start",             // 14
        "csum_offset",            // 15
        "head",                   // 16
        "data",                   // 17
        "len",                    // 18
        "next",                   // 19
        "kfree_skb",              // 20
        ".data..percpu",          // 21
        "skb_var",                // 22
        "u8",                     // 23
        "nd_net",                 // 24
        "possible_net_t",         // 25
        "net",                    // 26
        "net_cookie",             // 27
        "NETIF_F_IPV6_CSUM_BIT",  // 28
    ]
    .iter()
    .map(|n| w.name(n))
    .collect();
    let n = |i: usize| names[i];
    // 1: unsigned char, 2: __u16, 3: u64
    w.ty(n(0), Kind::Int, false, 0, 1, &[8]);
    w.ty(n(1), Kind::Int, false, 0, 2, &[16]);
    w.ty(n(2), Kind::Int, false, 0, 8, &[64]);
    // 4: struct net_device *, 5: unsigned char *
    w.ty(0, Kind::Ptr, false, 0, 12, &[]);
    w.ty(0, Kind::Ptr, false, 0, 1, &[]);
    // 6: anonymous union { struct net_device *dev; unsigned long len; }
    w.ty(0, Kind::Union, false, 2, 8, &[n(4), 4, 0, n(18), 3, 0]);
    // 7: anonymous struct { struct sk_buff *next; union @64 }
    w.ty(0, Kind::Struct, false, 2, 16, &[n(19), 13, 0, 0, 6, 64]);
    // 8: anonymous union { struct { __u16 csum_start; __u16 csum_offset; } }
    w.ty(0, Kind::Union, false, 1, 4, &[0, 9, 0]);
    // 9: struct { csum_start @0, csum_offset @16 }
    w.ty(0, Kind::Struct, false, 2, 4, &[n(14), 2, 0, n(15), 2, 16]);
    // 10: volatile unsigned char (a qualifier to skip)
    w.ty(0, Kind::Volatile, false, 0, 1, &[]);
    // 11: struct sk_buff (size 232)
    let summed = if variant == 2 {
        [n(5), 10, 128 * 8]
    } else {
        [n(5), 1, (2 << 24) | (128 * 8 + 5)]
    };
    let mut skb = vec![0, 7, 0];
    skb.extend_from_slice(&summed);
    skb.extend_from_slice(&[0, 8, 152 * 8, n(16), 5, 192 * 8, n(17), 5, 200 * 8]);
    w.ty(n(3), Kind::Struct, variant != 2, 5, 232, &skb);
    // 12: struct net_device { netdev_features_t features @184;
    // possible_net_t nd_net @288 }
    // (variant 3: a pointer member named `dev` instead of `features`)
    let [first, first_type] = if variant == 3 { [n(4), 4] } else { [n(7), 14] };
    let dev = [first, first_type, 184 * 8, n(24), 22, 288 * 8];
    w.ty(n(6), Kind::Struct, false, 2, 2048, &dev);
    // 13: struct sk_buff * (for next)
    w.ty(0, Kind::Ptr, false, 0, 11, &[]);
    // 14: typedef netdev_features_t -> u64
    w.ty(n(8), Kind::Typedef, false, 0, 3, &[]);
    // 15: the feature bits
    if variant == 1 {
        w.ty(
            n(9),
            Kind::Enum64,
            false,
            5,
            8,
            &[n(10), 0, 0, n(11), 1, 0, n(12), 2, 0, n(13), 3, 0, n(28), 4, 0],
        );
    } else {
        w.ty(
            n(9),
            Kind::Enum,
            false,
            5,
            4,
            &[n(10), 0, n(11), 1, n(12), 2, n(13), 3, n(28), 4],
        );
    }
    // 16: array of 4 bytes; 17: func proto void(struct sk_buff *); 18: func
    w.ty(0, Kind::Array, false, 0, 0, &[1, 3, 4]);
    w.ty(0, Kind::FuncProto, false, 1, 0, &[0, 13]);
    w.ty(n(20), Kind::Func, false, 0, 17, &[]);
    // 19: var, 20: datasec holding it
    w.ty(n(22), Kind::Var, false, 0, 11, &[1]);
    w.ty(n(21), Kind::Datasec, false, 1, 232, &[19, 0, 232]);
    // 21: a typedef of unsigned char named u8
    w.ty(n(23), Kind::Typedef, false, 0, 1, &[]);
    // 22: possible_net_t { struct net *net @0 }; 23: struct net *;
    // 24: struct net { u64 net_cookie @160 }
    w.ty(n(25), Kind::Struct, false, 1, 8, &[n(26), 23, 0]);
    w.ty(0, Kind::Ptr, false, 0, 24, &[]);
    w.ty(n(26), Kind::Struct, false, 1, 4096, &[n(27), 3, 160 * 8]);
    w.finish()
}

// --- layout_spec: --kernel-layout ----------------------------------------

/// Never panics; errors are one line; an accepted spec round-trips through
/// its display form and is usable (shift within the byte, some bit set).
pub fn layout_spec(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match text.parse::<LayoutSpec>() {
        Err(e) => one_line("--kernel-layout", &e.to_string()),
        Ok(spec) => {
            let l = spec.0;
            assert!(l.ip_summed_shift <= 6 && l.ip_summed_mask == 3, "{l:?}");
            assert!(l.csum_features != 0 && l.flags & LAYOUT_VALID != 0, "{l:?}");
            let shown = spec.to_string();
            let again: LayoutSpec = shown.parse().unwrap_or_else(|e| panic!("{shown:?}: {e}"));
            assert_eq!(again, spec, "{text:?} -> {shown:?}");
        }
    }
}

// --- pattern: --iface globs ----------------------------------------------

/// First line: globs separated by tabs (a tab cannot be in a valid glob);
/// further lines: interface names to match. Never panics; errors are one
/// line; a glob without metacharacters matches exactly itself.
pub fn pattern(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let globs: Vec<&str> = lines.next().unwrap_or("").split('\t').collect();
    match Patterns::new(&globs) {
        Err(e) => one_line("--iface", &e.to_string()),
        Ok(p) => {
            for name in lines {
                let _ = p.matches(name);
            }
            for g in &globs {
                if !g.contains(['*', '?', '[', ']']) {
                    assert!(p.matches(g), "{g:?} does not match itself");
                }
            }
            let _ = p.to_string();
        }
    }
}

// --- config: the agent's TOML file ---------------------------------------

/// Never panics; every error is one line; accepted settings are within the
/// limits the classifier has (1 to 4 ports, none zero).
pub fn config(data: &[u8]) {
    // The file is read as UTF-8; anything else fails before parsing.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = match FileConfig::fuzz_parse(text) {
        Ok(f) => f,
        Err(e) => return one_line("config", &e),
    };
    let path = Path::new("/etc/dhcpfix/dhcpfix.toml");
    match Settings::resolve(Overrides::default(), Some((path, file))) {
        Err(e) => one_line("config", &e.to_string()),
        Ok(s) => {
            let ports = &s.attach.ports;
            assert!(
                !ports.is_empty() && ports.len() <= MAX_PORTS && !ports.contains(&0),
                "{ports:?}"
            );
            let _ = s.patterns.matches("vnet0");
            let _ = s.metrics_addr.to_string();
        }
    }
}

// --- libvirt_xml: the domain XML on the hook's stdin ----------------------

/// Never panics; every tap it names is a valid interface name, named once;
/// descriptions and reasons are one line.
pub fn libvirt_xml(data: &[u8]) {
    let domain = match libvirt::parse_domain(data) {
        Ok(d) => d,
        // The XML parser's messages quote the offending character as is
        // (a newline too); the hook's reporter turns control characters
        // into spaces before anything is written.
        Err(e) => return drop(e.to_string()),
    };
    let mut taps = Vec::new();
    for iface in &domain.interfaces {
        one_line("interface", &iface.to_string());
        match &iface.plan {
            Plan::Tap(name) => {
                assert!(valid_ifname(name), "{name:?} planned as a tap");
                assert!(!taps.contains(name), "{name:?} planned twice");
                taps.push(name.clone());
            }
            Plan::Skip(why) | Plan::Refuse(why) => one_line("reason", why),
        }
    }
    assert_eq!(domain.taps().count(), taps.len());
}

// --- seeds and the short run ---------------------------------------------

/// Real inputs to start from: frames the classifier acts on, the shapes of
/// kernel BTF, the manual's examples, the repository's config and libvirt
/// fixtures (`root` is the repository).
pub fn seeds(target: &str, root: &Path) -> Vec<Vec<u8>> {
    let files = |dir: &str, ext: &str| -> Vec<Vec<u8>> {
        let mut paths: Vec<_> = std::fs::read_dir(root.join(dir))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect();
        paths.sort();
        paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
    };
    let text = |items: &[&str]| items.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
    match target {
        "frame" => {
            let mut rng = Rng::new(1);
            let mut out = Vec::new();
            for (i, payload) in [300usize, 548, 1, 0, 2040, 2041, 1472].into_iter().enumerate() {
                let mut spec = FrameSpec::dhcp_reply(payload, &mut rng);
                spec.vlans = [vec![], vec![0x8100], vec![0x88a8, 0x8100]][i % 3].clone();
                spec.ip_options = [0, 4, 40][i % 3];
                spec.trailer = [0, 6][i % 2];
                if payload >= 240 {
                    // A real DHCP message: magic cookie, option 53 = OFFER.
                    spec.payload[236..244].copy_from_slice(&[99, 130, 83, 99, 53, 1, 2, 255]);
                }
                out.push(spec.build(Check::Partial));
            }
            let mut spec = FrameSpec::dhcp_reply(300, &mut rng);
            spec.more_fragments = true;
            out.push(spec.build(Check::Complete));
            // DHCPv6: REPLYs (type 7, a transaction id) to 546, one to 547
            // behind two tags, then what is left alone: extension headers,
            // a jumbogram's zero length, a UDP length that disagrees.
            for (i, payload) in [100usize, 4, 1, 2040, 2041].into_iter().enumerate() {
                let mut spec = FrameSpec::dhcpv6_reply(payload, &mut rng);
                spec.vlans = [vec![], vec![0x8100], vec![0x88a8, 0x8100]][i % 3].clone();
                spec.trailer = [0, 6][i % 2];
                if i == 2 {
                    spec.dport = 547;
                }
                if payload >= 4 {
                    spec.payload[..4].copy_from_slice(&[7, 0x12, 0x34, 0x56]);
                }
                out.push(spec.build(Check::Partial));
            }
            for ext in [vec![0u8], vec![60, 44]] {
                let mut spec = FrameSpec::dhcpv6_reply(100, &mut rng);
                spec.ipv6.as_mut().expect("IPv6").ext = ext;
                out.push(spec.build(Check::Partial));
            }
            let mut spec = FrameSpec::dhcpv6_reply(100, &mut rng);
            spec.ipv6.as_mut().expect("IPv6").payload_len = Some(0);
            out.push(spec.build(Check::Partial));
            spec.ipv6.as_mut().expect("IPv6").payload_len = None;
            spec.ipv6.as_mut().expect("IPv6").udp_len = Some(50);
            out.push(spec.build(Check::Complete));
            out
        }
        "btf" => {
            let mut out: Vec<Vec<u8>> = (0..4).map(sample_btf).collect();
            // The patch form, over each variant, with no patch yet.
            out.extend([0x80u8, 0x81, 0x82, 0x83].map(|m| vec![m]));
            // Found by `cargo xtask fuzz btf`: nested anonymous members whose
            // offsets add up past u32 (a panic, a wrapped offset in release).
            out.push(
                b"\xca\xff\x7a\xff\xff\xc1\x41\x85\x85\x73\x6b\x5f\x62\x75\x66\x66\x85\x85\x00\x00\x05\x66\xff\xff\x00\xfc\x83\xff\x77"
                    .to_vec(),
            );
            out
        }
        "layout_spec" => text(&[
            "skb_dev=16,ip_summed=128:5,dev_features=184,csum_bits=1+3",
            "skb_dev=16, ip_summed=130:0, dev_features=200, csum_bits=3",
            "csum_bits=1+3+4,dev_features=184,ip_summed=128:5,skb_dev=16",
        ]),
        "pattern" => text(&[
            "vnet*\nvnet0\nvnet12\nbr0",
            "tap*\tvnet*\tfwpr*p[0-9]\ntap100i0\nvnet3",
            "tap?i[0-9]\ntap1i0\ntap12i0",
            "[!a-z]*\n0abc",
        ]),
        "config" => {
            let mut out = files("contrib/systemd", "toml");
            out.extend(text(&[
                "interfaces = [\"vnet*\", \"tap*\"]\nmetrics_addr = \"none\"\nmode = \"audit\"\nports = [68]\n",
                "interfaces = [\"vnet*\"]\nmetrics_addr = \"[::1]:9788\"\nmethod = \"netlink\"\ndetach_on_exit = true\n",
            ]));
            out
        }
        "libvirt_xml" => {
            let mut out = files("dhcpfix/tests/fixtures/libvirt", "xml");
            out.extend(text(&[
                "<domain type='kvm'><name>web</name><devices><interface type='network'><mac address='52:54:00:aa:bb:cc'/><target dev='vnet3'/></interface></devices></domain>",
                "<domstatus state='running'><domain><devices><interface type='bridge'><target dev='vnet0'/></interface></devices></domain></domstatus>",
            ]));
            out
        }
        other => panic!("no fuzz target {other}"),
    }
}

/// Tokens worth inserting, per target (a small dictionary).
fn tokens(target: &str) -> &'static [&'static [u8]] {
    match target {
        "layout_spec" => &[
            b",",
            b"=",
            b":",
            b"+",
            b"skb_dev",
            b"ip_summed",
            b"dev_features",
            b"csum_bits",
            b"63",
            b"64",
            b"4294967296",
            b" ",
        ],
        "pattern" => &[
            b"*", b"?", b"[", b"]", b"[!", b"-", b"\t", b"\n", b"/", b" ", b"\\",
        ],
        "config" => &[
            b"=",
            b"[",
            b"]",
            b"\"",
            b"\n",
            b"interfaces",
            b"ports",
            b"metrics_addr",
            b"mode",
            b"method",
            b"[[x]]",
            b"\\u0000",
            b"\\r",
            b"65536",
            b"0",
            b"{",
            b"}",
            b"'''",
        ],
        "libvirt_xml" => &[
            b"<",
            b">",
            b"/>",
            b"</interface>",
            b"<interface type='bridge'>",
            b"<target dev='",
            b"'",
            b"&amp;",
            b"&#10;",
            b"<!DOCTYPE d [",
            b"<![CDATA[",
            b"\n",
        ],
        _ => &[
            b"\x81\x00",
            b"\x08\x00",
            b"\x88\xa8",
            b"\x45",
            b"\x00\x44",
            b"\x00\x43",
            b"\xff\xff",
            b"\x00\x00\x00\x00",
        ],
    }
}

/// One mutation of a seed: byte flips, interesting values, inserted bytes
/// or tokens, deletions, truncation, splices.
pub fn mutate(target: &str, rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut d = seeds[rng.below(seeds.len() as u64) as usize].clone();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(d.len() as u64 + 1) as usize;
        match rng.below(7) {
            0 if !d.is_empty() => {
                let i = at.min(d.len() - 1);
                d[i] ^= 1 << rng.below(8);
            }
            1 if !d.is_empty() => {
                let i = at.min(d.len() - 1);
                d[i] = [0u8, 0xff, 0x7f, 0x80, 1, b'0'][rng.below(6) as usize];
            }
            2 => {
                let n = 1 + rng.below(8) as usize;
                let bytes = rng.bytes(n);
                d.splice(at..at, bytes);
            }
            3 => {
                let t = tokens(target);
                let tok = t[rng.below(t.len() as u64) as usize];
                d.splice(at..at, tok.iter().copied());
            }
            4 => {
                let end = (at + 1 + rng.below(16) as usize).min(d.len());
                d.drain(at.min(end)..end);
            }
            5 => d.truncate(at),
            _ => {
                let other = &seeds[rng.below(seeds.len() as u64) as usize];
                let from = rng.below(other.len() as u64 + 1) as usize;
                d.truncate(at);
                d.extend_from_slice(&other[from..]);
            }
        }
    }
    d
}

/// The seeds, then `n` deterministic mutations of them, through the body
/// of `target`. Returns how many inputs ran.
pub fn short_run(target: &str, root: &Path, n: usize, seed: u64) -> usize {
    let seeds = seeds(target, root);
    assert!(!seeds.is_empty(), "{target}: no seeds");
    for s in &seeds {
        run(target, s);
    }
    let mut rng = Rng::new(seed);
    for _ in 0..n {
        let input = mutate(target, &mut rng, &seeds);
        run(target, &input);
    }
    seeds.len() + n
}
