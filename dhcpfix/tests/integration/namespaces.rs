//! Attachments are filed by network namespace and ifindex (issue 12, items
//! 5 and 12): an ifindex is only unique within its namespace, and the
//! kernel hands a deleted interface's ifindex to the next one.
//!
//! - An interface that takes over the ifindex of a deleted one starts with
//!   counters at zero; attaching an attached interface again keeps them.
//! - One pin directory serves two namespaces whose taps have the same name
//!   and ifindex: both are listed with their namespace, and an agent or a
//!   `detach` in one leaves the other alone.

use std::{
    os::fd::OwnedFd,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use dhcpfix_lab::kit::{
    dev, privileged,
    reference::{dhcp_reply_message, Check, FrameSpec, Rng},
};
use serde_json::Value;

use crate::support::{
    iface_key, run_dhcpfix_ok, tcx_programs, wait_until, Agent, Sandbox, AGENT_STARTUP, BIN,
};

/// The client the test's DHCP replies are for.
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x0c, 0x05];

/// Opens the persistent tap `name` of the namespace at `ns` with a vnet
/// header and checksum offload (a guest whose driver negotiated it), and
/// brings it up: the classifier fills what leaves through it.
fn open_offloading_tap(sb: &Sandbox, name: &str) -> OwnedFd {
    let fd = sb.in_netns(|| {
        let fd = dev::open_tap(name, true).unwrap_or_else(|e| panic!("open tap {name}: {e}"));
        dev::set_tap_offload(&fd, libc::TUN_F_CSUM).unwrap_or_else(|e| panic!("TUNSETOFFLOAD {name}: {e}"));
        fd
    });
    sb.ip(&["link", "set", name, "up"]);
    fd
}

/// Sends `n` DHCP replies with partial checksums (as a host DHCP server
/// behind checksum offload does) out of `iface`, through its egress.
fn send_partial_replies(sb: &Sandbox, iface: &str, n: u32) {
    let frame = FrameSpec {
        payload: dhcp_reply_message(2, 0x0c05_0001, GUEST_MAC),
        ..FrameSpec::dhcp_reply(0, &mut Rng::new(5))
    }
    .build(Check::Partial);
    // Ethernet 14 + IPv4 20: the UDP header; its check field 6 bytes in.
    let header = dev::vnet_header(Some((34, 6)));
    sb.in_netns(|| {
        let ifindex = dhcpfix::netdev::ifindex(iface).expect("interface to send from");
        let sock = dev::vnet_packet_socket(ifindex).unwrap_or_else(|e| panic!("AF_PACKET on {iface}: {e}"));
        for _ in 0..n {
            dev::write_with_header(&sock, &header, &frame).unwrap_or_else(|e| panic!("send on {iface}: {e}"));
        }
    });
}

/// The counters of `iface` (`stats --json IFACE`, run in the sandbox).
fn counters(sb: &Sandbox, pins: &Path, iface: &str) -> Value {
    let stats: Value = serde_json::from_str(&sb.dhcpfix_ok(pins, &["stats", "--json", iface])).unwrap();
    let entries = stats["interfaces"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{stats}");
    assert_eq!(entries[0]["name"], iface, "{stats}");
    entries[0]["counters"].clone()
}

fn counter(sb: &Sandbox, pins: &Path, iface: &str, name: &str) -> u64 {
    counters(sb, pins, iface)[name].as_u64().unwrap()
}

#[test]
fn counters_start_from_zero_on_an_interface_that_reuses_an_ifindex() {
    if !privileged("counters_start_from_zero_on_an_interface_that_reuses_an_ifindex") {
        return;
    }
    let sb = Sandbox::new();
    let pins = sb.pin_dir();
    // Both namespaces are new: their first interface after lo gets the
    // same ifindex.
    let elsewhere = sb.netns("h");
    sb.ip(&["tuntap", "add", "dev", "vnetA", "mode", "tap", "vnet_hdr"]);
    elsewhere
        .ip(&["tuntap", "add", "dev", "vnetB", "mode", "tap", "vnet_hdr"])
        .unwrap();
    let key = sb.key("vnetA").unwrap();

    let tap = open_offloading_tap(&sb, "vnetA");
    let out = sb.dhcpfix_ok(&pins, &["attach", "vnetA"]);
    assert!(out.contains("vnetA: attached"), "{out}");
    let zero = counters(&sb, &pins, "vnetA");
    assert!(
        zero.as_object().unwrap().values().all(|v| v == 0),
        "a new attachment: {zero}"
    );
    send_partial_replies(&sb, "vnetA", 3);
    assert!(
        wait_until(Duration::from_secs(3), || counter(&sb, &pins, "vnetA", "filled")
            == 3),
        "vnetA: {}",
        counters(&sb, &pins, "vnetA")
    );
    // Attaching again keeps the attachment and its counters.
    let out = sb.dhcpfix_ok(&pins, &["attach", "vnetA"]);
    assert!(out.contains("vnetA: already attached"), "{out}");
    assert_eq!(counter(&sb, &pins, "vnetA", "filled"), 3);
    assert_eq!(counter(&sb, &pins, "vnetA", "seen"), 3);

    // vnetA goes away without a detach (no agent runs); vnetB moves in and
    // keeps its ifindex, which is free again.
    drop(tap);
    sb.del_link("vnetA");
    elsewhere
        .ip(&["link", "set", "vnetB", "netns", &sb.name])
        .unwrap();
    assert_eq!(sb.key("vnetB"), Some(key), "vnetB did not get vnetA's ifindex");

    let out = sb.dhcpfix_ok(&pins, &["attach", "vnetB"]);
    assert!(out.contains("vnetB: attached"), "a new attachment: {out}");
    let fresh = counters(&sb, &pins, "vnetB");
    assert!(
        fresh.as_object().unwrap().values().all(|v| v == 0),
        "vnetB starts with what vnetA counted: {fresh}"
    );
    let status: Value = serde_json::from_str(&sb.dhcpfix_ok(&pins, &["status", "--json"])).unwrap();
    let listed: Vec<(&str, bool)> = status["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap(), i["attached"] == true))
        .collect();
    assert_eq!(listed, [("vnetB", true)], "{status}");

    // And it counts its own packets from there.
    let _tap = open_offloading_tap(&sb, "vnetB");
    send_partial_replies(&sb, "vnetB", 2);
    assert!(
        wait_until(Duration::from_secs(3), || counter(&sb, &pins, "vnetB", "filled")
            == 2),
        "vnetB: {}",
        counters(&sb, &pins, "vnetB")
    );
    assert_eq!(counter(&sb, &pins, "vnetB", "seen"), 2);
}

/// `dhcpfix --pin-dir PINS ARGS` from the sandbox's own namespace (the
/// "host" of this test).
fn dhcpfix_ok(sb: &Sandbox, pins: &Path, args: &[&str]) -> String {
    run_dhcpfix_ok(sb.command(BIN), pins, args)
}

/// (namespace name, ifindex, attached) of each `vnet0` in `status --json`.
fn listed(sb: &Sandbox, pins: &Path) -> Vec<(String, u64, u64, bool)> {
    let status: Value = serde_json::from_str(&dhcpfix_ok(sb, pins, &["status", "--json"])).unwrap();
    let mut out: Vec<(String, u64, u64, bool)> = status["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            assert_eq!(i["name"], "vnet0", "{status}");
            (
                i["netns"]["name"].as_str().unwrap_or("?").to_owned(),
                i["netns"]["cookie"].as_u64().unwrap(),
                i["ifindex"].as_u64().unwrap(),
                i["attached"] == true,
            )
        })
        .collect();
    out.sort();
    out
}

fn covered(ns: &Path) -> bool {
    tcx_programs(ns, "vnet0").is_some_and(|p| p == ["dhcpfix"])
}

#[test]
fn one_pin_directory_serves_two_namespaces_with_the_same_ifindex() {
    if !privileged("one_pin_directory_serves_two_namespaces_with_the_same_ifindex") {
        return;
    }
    let sb = Sandbox::new();
    let pins = sb.pin_dir();
    let a = sb.netns("a");
    let b = sb.netns("b");
    for ns in [&a, &b] {
        ns.ip(&["tuntap", "add", "dev", "vnet0", "mode", "tap"]).unwrap();
    }
    let (ka, kb) = (
        iface_key(a.path(), "vnet0").unwrap(),
        iface_key(b.path(), "vnet0").unwrap(),
    );
    assert_eq!(ka.ifindex, kb.ifindex, "the two vnet0 have different ifindexes");
    let (ifindex, ca, cb) = (ka.ifindex, ka.netns, kb.netns);

    for ns in [&a, &b] {
        let out = dhcpfix_ok(&sb, &pins, &["attach", "--netns", ns.name(), "vnet0"]);
        assert!(out.contains("vnet0: attached"), "{}: {out}", ns.name());
    }
    let both = {
        let mut v = vec![
            (a.name().to_owned(), ca, u64::from(ifindex), true),
            (b.name().to_owned(), cb, u64::from(ifindex), true),
        ];
        v.sort();
        v
    };
    assert_eq!(listed(&sb, &pins), both);
    assert!(covered(a.path()) && covered(b.path()));
    // Each namespace's view is its own.
    let stats: Value =
        serde_json::from_str(&dhcpfix_ok(&sb, &pins, &["stats", "--json", "--netns", b.name()])).unwrap();
    let only: Vec<&Value> = stats["interfaces"].as_array().unwrap().iter().collect();
    assert_eq!(only.len(), 1, "{stats}");
    assert_eq!(only[0]["netns"]["cookie"], cb, "{stats}");

    // An agent inside namespace a (its network namespace only: the mount
    // namespace stays the host's), passing every second, with a tap coming
    // and going there: it keeps a's vnet0 and never touches b's.
    let args = ["--iface", "vnet*", "--metrics-addr", "none", "--resync", "1"];
    let mut agent = Agent::start(|p| a.command(p), &sb.dir, &pins, &args, &[]);
    agent.wait_running(AGENT_STARTUP);
    a.ip(&["tuntap", "add", "dev", "vnet1", "mode", "tap"]).unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || tcx_programs(a.path(), "vnet1")
            .is_some_and(|p| p == ["dhcpfix"])),
        "the agent did not attach vnet1:\n{}",
        agent.log()
    );
    a.ip(&["link", "del", "vnet1"]).unwrap();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert!(covered(b.path()), "b's vnet0 lost its program:\n{}", agent.log());
        thread::sleep(Duration::from_millis(100));
    }
    let (status, _, log) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{log}");
    assert!(log.contains("kept vnet0"), "{log}");
    assert!(!log.contains("detached vnet0"), "{log}");
    assert_eq!(listed(&sb, &pins), both);

    // The same from the "host", covering namespace a by name.
    let args = [
        "--iface",
        "vnet*",
        "--metrics-addr",
        "none",
        "--resync",
        "1",
        "--netns",
        a.name(),
    ];
    let mut agent = sb.agent(&pins, &args, &[]);
    agent.wait_running(AGENT_STARTUP);
    thread::sleep(Duration::from_secs(3));
    assert!(covered(b.path()), "b's vnet0 lost its program:\n{}", agent.log());
    let (status, _, log) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{log}");
    assert!(
        log.contains(&format!("kept vnet0 in network namespace {}", a.name())),
        "{log}"
    );
    assert_eq!(listed(&sb, &pins), both);

    // Detaching in a leaves b attached.
    let out = dhcpfix_ok(&sb, &pins, &["detach", "--netns", a.name(), "vnet0"]);
    assert!(out.contains("vnet0: detached"), "{out}");
    assert!(
        wait_until(Duration::from_secs(3), || tcx_programs(a.path(), "vnet0")
            .is_some_and(|p| p.is_empty())),
        "a's vnet0 still has a program"
    );
    assert!(covered(b.path()));
    assert_eq!(
        listed(&sb, &pins),
        [(b.name().to_owned(), cb, u64::from(ifindex), true)]
    );
}
