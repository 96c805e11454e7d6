//! macvtap (libvirt `type='direct'`): the kernel facts behind dhcpfix's
//! refusal (docs/macvtap.md), and the refusal itself, in a network namespace
//! made here:
//!
//! ```text
//!  netns -h: vA (veth) -- macvtap0 (bridge mode, the guest: /dev/tapN)
//!                      \- mvhost (macvlan, bridge mode, 10.231.x.1: the host's DHCP server side)
//!  netns -p: vB (veth peer)
//! ```

use std::{
    fs,
    io::{self, Read},
    net::{Ipv4Addr, UdpSocket},
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use dhcpfix_lab::kit::{dev, privileged, Netns};
use serde_json::Value;

use crate::support::{ip, run_dhcpfix, Sandbox, BIN};

/// An unusual ifindex, so the macvtap's /dev/tap<ifindex> does not collide
/// with another namespace's macvtap.
const MACVTAP_INDEX: u32 = 31_337;
const PAYLOAD: &[u8] = b"dhcpfix macvtap probe";

/// The namespaces (the sandbox's own: the host; `-p`: the peer) and the
/// pin directory; removed on drop.
struct Net {
    sb: Sandbox,
    peer: Netns,
    subnet: u8,
}

impl Net {
    fn new() -> Net {
        let sb = Sandbox::new();
        let peer = sb.netns("p");
        let net = Net {
            subnet: (std::process::id() % 200) as u8 + 20,
            sb,
            peer,
        };
        let (h, p) = (net.host(), net.peer.name());
        let idx = MACVTAP_INDEX.to_string();
        let host_ip = format!("{}/24", net.ip(1));
        let peer_ip = format!("{}/24", net.ip(2));
        for args in [
            &[
                "-n", h, "link", "add", "vA", "type", "veth", "peer", "name", "vB", "netns", p,
            ][..],
            &[
                "-n", h, "link", "add", "link", "vA", "name", "macvtap0", "index", &idx, "type", "macvtap",
                "mode", "bridge",
            ],
            &[
                "-n", h, "link", "add", "link", "vA", "name", "mvhost", "type", "macvlan", "mode", "bridge",
            ],
            &["-n", h, "addr", "add", &host_ip, "dev", "mvhost"],
            &["-n", p, "addr", "add", &peer_ip, "dev", "vB"],
        ] {
            ip(args);
        }
        for dev in ["lo", "vA", "macvtap0", "mvhost"] {
            ip(&["-n", h, "link", "set", dev, "up"]);
        }
        ip(&["-n", p, "link", "set", "vB", "up"]);
        net
    }

    /// The host namespace's name.
    fn host(&self) -> &str {
        &self.sb.name
    }

    fn ip(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.subnet, last)
    }

    fn pin_dir(&self) -> PathBuf {
        self.sb.pin_dir()
    }

    /// `program` in the host namespace (keeping our mount namespace).
    fn command(&self, program: &str) -> Command {
        self.sb.command(program)
    }

    /// Runs dhcpfix in the host namespace.
    fn dhcpfix(&self, args: &[&str]) -> Output {
        run_dhcpfix(self.command(BIN), &self.pin_dir(), args)
    }
}

/// The guest's end of the macvtap: /dev/tap<ifindex> with a vnet header.
fn open_guest(offload: u32) -> fs::File {
    let path = format!("/dev/tap{MACVTAP_INDEX}");
    let deadline = Instant::now() + Duration::from_secs(3);
    while !Path::new(&path).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let file = dev::open_tun_device(Path::new(&path)).unwrap_or_else(|e| panic!("open {path}: {e}"));
    dev::set_tap(&file, "", true).unwrap_or_else(|e| panic!("TUNSETIFF: {e}"));
    dev::set_tap_offload(&file, offload).unwrap_or_else(|e| panic!("TUNSETOFFLOAD: {e}"));
    file
}

/// The virtio_net_hdr flags of the probe frame as the guest reads it.
fn guest_reads_probe(guest: &mut fs::File) -> Option<u8> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        match guest.read(&mut buf) {
            Ok(n) if buf[..n].windows(PAYLOAD.len()).any(|w| w == PAYLOAD) => return Some(buf[0]),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("read guest tap: {e}"),
        }
    }
    None
}

/// An AF_PACKET socket on `ifindex` (in the calling thread's namespace).
fn packet_socket(ifindex: u32) -> OwnedFd {
    let proto = libc::ETH_P_ALL as u16;
    let fd = dev::packet_socket(proto).unwrap_or_else(|e| panic!("socket(AF_PACKET): {e}"));
    dev::bind_packet(&fd, ifindex, proto).unwrap_or_else(|e| panic!("bind AF_PACKET: {e}"));
    dev::set_recv_timeout(&fd, Duration::from_millis(100)).unwrap_or_else(|e| panic!("SO_RCVTIMEO: {e}"));
    fd
}

/// Packet types (`PACKET_HOST`, `PACKET_OUTGOING`, ...) under which the
/// probe showed up on the socket within `wait`.
fn probe_directions(fd: &OwnedFd, wait: Duration) -> Vec<u8> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        // SAFETY: zeroed sockaddr_ll is a valid out-parameter.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: `buf` and `from` are valid for the sizes passed.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        if n > 0 && buf[..n as usize].windows(PAYLOAD.len()).any(|w| w == PAYLOAD) {
            seen.push(from.sll_pkttype);
        }
    }
    seen
}

/// Sends the probe (UDP 67 -> 68, like a DHCP reply) from the host's
/// macvlan to the guest's MAC, and reports the directions in which it
/// crossed macvtap0.
fn send_probe(net: &Net, guest_mac: &str) -> Vec<u8> {
    let (src, dst) = (net.ip(1), net.ip(3));
    ip(&[
        "-n",
        net.host(),
        "neigh",
        "replace",
        &dst.to_string(),
        "lladdr",
        guest_mac,
        "dev",
        "mvhost",
    ]);
    net.sb.in_netns(|| {
        let tap = packet_socket(MACVTAP_INDEX);
        let sock = UdpSocket::bind((src, 67)).expect("bind UDP 67 on mvhost");
        sock.send_to(PAYLOAD, (dst, 68)).expect("send probe");
        probe_directions(&tap, Duration::from_millis(600))
    })
}

fn parse_mac(mac: &str) -> Vec<u8> {
    mac.split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect()
}

fn link_mac(ns: &str, dev: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "link", "show", dev])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["address"].as_str().unwrap().to_owned()
}

#[test]
fn macvtap_is_refused_for_the_reasons_measured() {
    if !privileged("macvtap_is_refused_for_the_reasons_measured") {
        return;
    }
    let net = Net::new();
    let mac = link_mac(net.host(), "macvtap0");
    let csum_mask = dhcpfix::kernel_layout::csum_feature_mask();

    // 1. The bug exists for macvtap guests too: with the guest's checksum
    //    offload on, a DHCP-like reply from the host arrives unfinished.
    let mut guest = open_guest(libc::TUN_F_CSUM);
    let directions = send_probe(&net, &mac);
    assert_eq!(
        guest_reads_probe(&mut guest),
        Some(1),
        "the guest should get the frame with VIRTIO_NET_HDR_F_NEEDS_CSUM"
    );
    // 2. It crosses macvtap0 on the receive path only: PACKET_HOST, never
    //    PACKET_OUTGOING. An egress hook (where dhcpfix sits) never sees it.
    eprintln!("probe towards the guest crossed macvtap0 as packet types {directions:?}");
    assert!(!directions.is_empty(), "the probe did not cross macvtap0");
    assert!(
        !directions.contains(&libc::PACKET_OUTGOING),
        "the probe left through macvtap0's transmit path: {directions:?}; docs/macvtap.md is out of date"
    );
    // 3. macvtap0 advertises checksum offload whatever the guest negotiated,
    //    so the classifier's offload test cannot tell a firmware-phase guest
    //    (which a fill would break) from one that needs the fill.
    let with_offload = net.sb.in_netns(|| dhcpfix::netdev::features("macvtap0")).unwrap();
    // Control: what the guest sends does leave through macvtap0's transmit
    // path, and the socket sees it as PACKET_OUTGOING.
    let sent = net.sb.in_netns(|| {
        let tap = packet_socket(MACVTAP_INDEX);
        let mut frame = vec![0u8; 10]; // virtio_net_hdr: nothing to do
        frame.extend_from_slice(&[0xff; 6]);
        frame.extend_from_slice(&parse_mac(&mac));
        frame.extend_from_slice(&[0x88, 0xb5]); // local experimental ethertype
        frame.extend_from_slice(PAYLOAD);
        std::io::Write::write_all(&mut guest, &frame).expect("guest writes a frame");
        probe_directions(&tap, Duration::from_millis(400))
    });
    assert!(
        sent.contains(&libc::PACKET_OUTGOING),
        "control failed: the guest's own frame not seen as outgoing: {sent:?}"
    );
    drop(guest);
    let mut guest = open_guest(0);
    let without = net.sb.in_netns(|| dhcpfix::netdev::features("macvtap0")).unwrap();
    assert_ne!(with_offload & csum_mask, 0);
    assert_ne!(
        without & csum_mask,
        0,
        "macvtap0 now reflects the guest's offload; revisit docs/macvtap.md"
    );
    send_probe(&net, &mac);
    assert_eq!(
        guest_reads_probe(&mut guest),
        Some(0),
        "offload off: a complete checksum"
    );
    drop(guest);

    // 4. So attach refuses it, saying why, and leaves nothing behind.
    let out = net.dhcpfix(&["attach", "macvtap0"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    for part in ["macvtap0 is a macvtap device", "egress hook", "docs/macvtap.md"] {
        assert!(stderr.contains(part), "{part:?} missing from {stderr}");
    }
    let status: Value = serde_json::from_slice(&net.dhcpfix(&["status", "--json"]).stdout).unwrap();
    assert!(status["interfaces"].as_array().unwrap().is_empty(), "{status}");

    // 5. doctor lists it as unsupported (a warning, not an action).
    let out = net.dhcpfix(&["doctor", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = report["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "macvtap0")
        .unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(entry["verdict"], "unsupported");
    assert_eq!(entry["kind"], "macvtap");
    assert_eq!(out.status.code(), Some(0));

    // 6. A libvirt network in macvtap mode gives type='network' with a
    //    macvtap target: the hook reports the refusal and exits 0.
    let xml = "<domain><name>lan</name><devices><interface type='network'>\
               <source network='macvtap-net'/><target dev='macvtap0'/></interface>\
               </devices></domain>";
    let mut child = net
        .command(BIN)
        .arg("--pin-dir")
        .arg(net.pin_dir())
        .args(["libvirt-hook", "--", "lan", "started", "begin", "-"])
        .env("DHCPFIX_SYSLOG_SOCKET", net.sb.dir.join("no-syslog"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), xml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a macvtap device"));
}
