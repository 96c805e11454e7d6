//! In-place upgrade (dhcpfix/src/pins/upgrade.rs) under traffic: this
//! build (pins `abi-2`) attached to 50 taps in 5 namespaces (10 each), a
//! stream of `CHECKSUM_PARTIAL` DHCP replies flooding through every tap,
//! and a newer dhcpfix (the `next-abi` build, `abi-3`, other records) takes
//! over the same pin directory while it flows:
//!
//! - every reply read from a tap (the guest side) has a valid checksum:
//!   not one left unfilled;
//! - the counters continue: after the upgrade they hold every reply sent,
//!   before and after (each counted by one program or the other);
//! - every hook runs the new program only (tcx egress and ingress, or the
//!   netlink filter at its priority), and `abi-2/` is gone.
//!
//! The tcx attachments move when the newer agent (`dhcpfix run`) starts;
//! the netlink ones (`--method netlink`) when the newer `attach` runs.
//!
//! ```text
//!  namespace (x5)
//!   AF_PACKET(br0, vnet header: NEEDS_CSUM) -> br0 -+-> upg0 (tap, TUN_F_CSUM) -> read, verify
//!                                                   +-> ...
//!                                                   +-> upg9
//! ```
//!
//! Cost: about 10 s each (the next-abi build comes from `cargo xtask test`,
//! or is built once, two minutes, into target/next-abi).

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
    process::Command,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use dhcpfix_lab::kit::{
    self, dev, privileged,
    reference::{ref_addresses, ref_classify, ref_verifies, Check, FrameSpec, RefVerdict, Rng},
};
use serde_json::Value;

use crate::support::{cookie_of, in_netns, next_abi_bin, run_dhcpfix_ok, wait_until, Agent, Sandbox, BIN};

const NAMESPACES: usize = 5;
const TAPS: usize = 10;
const BRIDGE: &str = "br0";
/// A frame every this often, per namespace (each reaches all its taps).
const EVERY: Duration = Duration::from_millis(2);

fn tap_name(i: usize) -> String {
    format!("upg{i}")
}

/// One namespace of the scene: its taps' fds (the guest side) and the
/// socket that injects into its bridge.
struct Space {
    ns: kit::Netns,
    cookie: u64,
    /// (name, ifindex, fd)
    taps: Vec<(String, u32, OwnedFd)>,
    inject: OwnedFd,
}

fn space(sb: &Sandbox, k: usize) -> Space {
    let ns = sb.netns(&format!("u{k}"));
    in_netns(ns.path(), crate::support::quiet_l2_here);
    let ip = |args: &[&str]| ns.ip(args).unwrap_or_else(|e| panic!("{e}"));
    ip(&crate::support::plain_bridge(BRIDGE));
    let fds: Vec<OwnedFd> = in_netns(ns.path(), || {
        (0..TAPS)
            .map(|i| {
                let fd = dev::open_tap(&tap_name(i), true).unwrap_or_else(|e| panic!("tap: {e}"));
                dev::set_tap_offload(&fd, libc::TUN_F_CSUM).unwrap_or_else(|e| panic!("TUNSETOFFLOAD: {e}"));
                fd
            })
            .collect()
    });
    let mut batch = String::new();
    for i in 0..TAPS {
        let t = tap_name(i);
        batch.push_str(&format!(
            "link set {t} master {BRIDGE}\nlink set {t} txqueuelen 4096\nlink set {t} up\n"
        ));
    }
    batch.push_str(&format!("link set {BRIDGE} up\n"));
    ns.ip_batch(&batch).unwrap_or_else(|e| panic!("{e}"));
    let (taps, inject) = in_netns(ns.path(), || {
        let taps: Vec<(String, u32, OwnedFd)> = fds
            .into_iter()
            .enumerate()
            .map(|(i, fd)| (tap_name(i), dhcpfix::sys::ifindex(&tap_name(i)).unwrap(), fd))
            .collect();
        let br = dhcpfix::sys::ifindex(BRIDGE).unwrap();
        let inject = dev::vnet_packet_socket(br).unwrap_or_else(|e| panic!("AF_PACKET on {BRIDGE}: {e}"));
        (taps, inject)
    });
    Space {
        cookie: cookie_of(ns.path()),
        ns,
        taps,
        inject,
    }
}

/// What the stream did.
#[derive(Default)]
struct Flow {
    sent: AtomicU64,
    /// DHCP replies read from the taps, and those whose checksum did not
    /// verify.
    received: AtomicU64,
    bad: AtomicU64,
}

/// Sends partial DHCP replies into each namespace's bridge and reads them
/// from its taps, until `stop`.
fn stream(spaces: &[Space], stop: &AtomicBool, flow: &Flow) {
    thread::scope(|s| {
        for (k, sp) in spaces.iter().enumerate() {
            s.spawn(move || send_until(&sp.inject, k as u64, stop, flow));
            s.spawn(move || read_until(&sp.taps, stop, flow));
        }
    });
}

fn send_until(sock: &OwnedFd, seed: u64, stop: &AtomicBool, flow: &Flow) {
    let mut rng = Rng::new(0x0abc_0000 + seed);
    let header = dev::vnet_header(Some((34, 6)));
    while !stop.load(Ordering::Relaxed) {
        let mut frame = FrameSpec::dhcp_reply(300, &mut rng).build(Check::Partial);
        // Broadcast, as a DHCP server's OFFER to a client without address.
        frame[..6].fill(0xff);
        let mut buf = header.to_vec();
        buf.extend_from_slice(&frame);
        // SAFETY: `buf` is readable for its length during the call.
        let n = unsafe { libc::send(sock.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
        assert_eq!(
            n,
            buf.len() as isize,
            "AF_PACKET send: {}",
            io::Error::last_os_error()
        );
        flow.sent.fetch_add(1, Ordering::Relaxed);
        thread::sleep(EVERY);
    }
}

/// Reads the taps until `stop`, then until they are quiet.
fn read_until(taps: &[(String, u32, OwnedFd)], stop: &AtomicBool, flow: &Flow) {
    let mut buf = vec![0u8; 65536];
    let mut quiet_since: Option<Instant> = None;
    loop {
        let mut fds: Vec<libc::pollfd> = taps
            .iter()
            .map(|(_, _, fd)| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20) };
        if n <= 0 {
            if stop.load(Ordering::Relaxed) {
                let since = *quiet_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(300) {
                    return;
                }
            }
            continue;
        }
        quiet_since = None;
        for (pfd, (_, _, fd)) in fds.iter().zip(taps) {
            if pfd.revents & libc::POLLIN == 0 {
                continue;
            }
            loop {
                // SAFETY: `buf` is writable for its length during the call.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < dev::VNET_HDR_LEN as isize {
                    break;
                }
                let frame = &buf[dev::VNET_HDR_LEN..n as usize];
                if let RefVerdict::Dhcp { l3, l4, udp_len } = ref_classify(frame, &[68], usize::MAX) {
                    flow.received.fetch_add(1, Ordering::Relaxed);
                    let (src, dst) = ref_addresses(frame, l3);
                    if !ref_verifies(src, dst, &frame[l4..l4 + udp_len]) {
                        flow.bad.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// The sum of `filled` over the `upg*` taps, and how many of them are
/// attached, as `bin stats --json` reports them.
fn filled(bin: &Path, pins: &Path) -> (u64, usize) {
    let out = run_dhcpfix_ok(Command::new(bin), pins, &["stats", "--json"]);
    let stats: Value = serde_json::from_str(&out).unwrap();
    let taps: Vec<&Value> = stats["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["name"].as_str().is_some_and(|n| n.starts_with("upg")))
        .collect();
    (
        taps.iter()
            .map(|i| i["counters"]["filled"].as_u64().unwrap())
            .sum(),
        taps.iter().filter(|i| i["attached"] == true).count(),
    )
}

/// The id of the program pinned at `path`.
pub(crate) fn prog_id(path: &Path) -> u32 {
    SchedClassifier::from_pin(path)
        .and_then(|p| p.info())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .id()
}

/// The ids of the tcx programs on `iface`'s `hook` in the namespace at `ns`.
pub(crate) fn tcx_ids(ns: &Path, iface: &str, hook: TcAttachType) -> Vec<u32> {
    in_netns(ns, || {
        let (_, progs) = SchedClassifier::query_tcx(iface, hook).unwrap_or_else(|e| panic!("{iface}: {e}"));
        progs.iter().map(|p| p.id()).collect()
    })
}

/// The ids of the programs of the netlink (clsact) filters on `iface`'s
/// egress in namespace `ns`.
fn netlink_ids(ns: &str, iface: &str) -> Vec<u64> {
    let out = Command::new("tc")
        .args(["-n", ns, "-j", "filter", "show", "dev", iface, "egress"])
        .output()
        .expect("run tc");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let filters: Value = serde_json::from_slice(&out.stdout).unwrap();
    filters
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["options"]["prog"]["id"].as_u64())
        .collect()
}

/// Which hook the attachments use.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Method {
    Tcx,
    Netlink,
}

fn upgrade_under_traffic(method: Method) {
    let started = Instant::now();
    let newer = next_abi_bin();
    let sb = Sandbox::new();
    let pins = sb.pin_dir();
    let spaces: Vec<Space> = (0..NAMESPACES).map(|k| space(&sb, k)).collect();
    let method_args: &[&str] = match method {
        Method::Tcx => &[],
        Method::Netlink => &["--method", "netlink"],
    };
    for sp in &spaces {
        let mut args = vec!["attach", "--netns", sp.ns.name()];
        args.extend(method_args);
        let names: Vec<String> = (0..TAPS).map(tap_name).collect();
        args.extend(names.iter().map(String::as_str));
        run_dhcpfix_ok(Command::new(BIN), &pins, &args);
    }
    assert!(pins.join("abi-2/prog").exists());
    assert_eq!(filled(Path::new(BIN), &pins).1, NAMESPACES * TAPS);

    let stop = AtomicBool::new(false);
    let flow = Flow::default();
    let mut agent: Option<Agent> = None;
    let (before, sent_before) = thread::scope(|s| {
        s.spawn(|| stream(&spaces, &stop, &flow));
        // Under way.
        assert!(wait_until(Duration::from_secs(10), || flow
            .received
            .load(Ordering::Relaxed)
            > (NAMESPACES * TAPS * 50) as u64));
        let (before, _) = filled(Path::new(BIN), &pins);
        let sent_before = flow.sent.load(Ordering::Relaxed);
        // The newer dhcpfix takes over.
        let t = Instant::now();
        match method {
            Method::Tcx => {
                let sandbox = sb.dir.file_name().unwrap().to_str().unwrap().to_owned();
                let a = Agent::start_bin(
                    &newer,
                    |p| Command::new(p),
                    &sb.dir,
                    &pins,
                    &[
                        "--netns",
                        &format!("{sandbox}-*"),
                        "--iface",
                        "upg*",
                        "--metrics-addr",
                        "none",
                    ],
                    &[],
                );
                agent = Some(a);
                let a = agent.as_mut().unwrap();
                a.wait_running(Duration::from_secs(30));
            }
            Method::Netlink => {
                let sp = &spaces[0];
                let name = tap_name(0);
                let mut args = vec!["attach", "--netns", sp.ns.name()];
                args.extend(method_args);
                args.push(&name);
                run_dhcpfix_ok(Command::new(&newer), &pins, &args);
            }
        }
        assert!(!pins.join("abi-2").exists(), "abi-2/ is still there");
        eprintln!(
            "upgrade ({method:?}) done {:.2?} after the newer dhcpfix started",
            t.elapsed()
        );
        // More traffic through the new program, then stop.
        let at = flow.received.load(Ordering::Relaxed);
        assert!(wait_until(Duration::from_secs(10), || flow
            .received
            .load(Ordering::Relaxed)
            > at + (NAMESPACES * TAPS * 50) as u64));
        stop.store(true, Ordering::Relaxed);
        (before, sent_before)
    });
    let sent = flow.sent.load(Ordering::Relaxed);
    let received = flow.received.load(Ordering::Relaxed);
    let bad = flow.bad.load(Ordering::Relaxed);
    let (after, attached) = filled(&newer, &pins);
    let flooded = sent * TAPS as u64;
    eprintln!(
        "{method:?}: sent {sent} replies ({flooded} through the taps), read {received}, {bad} unfilled; \
         filled before the upgrade {before} (of {} sent), after {after}",
        sent_before * TAPS as u64
    );
    assert_eq!(bad, 0, "replies reached the guest side unfilled");
    assert!(received >= flooded * 99 / 100, "read {received} of {flooded}");
    assert_eq!(attached, NAMESPACES * TAPS);
    assert!(
        after >= before + (sent - sent_before) * TAPS as u64,
        "the counters did not continue"
    );
    assert_eq!(
        after, flooded,
        "every reply counted once, by the old program or the new"
    );

    // The new program only, on every hook; nothing of abi-2 left.
    let new_egress = prog_id(&pins.join("abi-3/prog"));
    for sp in &spaces {
        for (name, ifindex, _) in &sp.taps {
            match method {
                Method::Tcx => {
                    assert_eq!(
                        tcx_ids(sp.ns.path(), name, TcAttachType::Egress),
                        [new_egress],
                        "{name}"
                    );
                    let new_ingress = prog_id(&pins.join("abi-3/prog-ingress"));
                    assert_eq!(
                        tcx_ids(sp.ns.path(), name, TcAttachType::Ingress),
                        [new_ingress],
                        "{name}"
                    );
                    let link = pins.join(format!("abi-3/links/{}/{ifindex}", sp.cookie));
                    assert!(link.exists(), "{}", link.display());
                }
                Method::Netlink => {
                    assert_eq!(netlink_ids(sp.ns.name(), name), [u64::from(new_egress)], "{name}");
                    assert_eq!(
                        tcx_ids(sp.ns.path(), name, TcAttachType::Egress),
                        Vec::<u32>::new()
                    );
                }
            }
        }
    }
    assert!(!pins.join("abi-2").exists());
    if let Some(agent) = agent {
        let (status, _, log) = agent.stop(libc::SIGTERM);
        assert!(status.success(), "{status:?}");
        assert!(log.contains("moved "), "{log}");
    }
    // Netlink filters stay on the taps until they go (with the fds).
    drop(spaces);
    eprintln!("upgrade under traffic ({method:?}): {:.1?}", started.elapsed());
}

#[test]
fn tcx_links_move_to_a_newer_dhcpfix_under_traffic() {
    if !privileged("tcx_links_move_to_a_newer_dhcpfix_under_traffic") {
        return;
    }
    upgrade_under_traffic(Method::Tcx);
}

#[test]
fn netlink_filters_move_to_a_newer_dhcpfix_under_traffic() {
    if !privileged("netlink_filters_move_to_a_newer_dhcpfix_under_traffic") {
        return;
    }
    upgrade_under_traffic(Method::Netlink);
}
