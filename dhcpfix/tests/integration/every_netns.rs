//! `dhcpfix run --netns all`, started in the host's own namespace, covers
//! every network namespace of the host (issue 9):
//!
//! - two lab hosts, each in a namespace of its own with a tap `vnet0` of
//!   the same ifindex, its own dnsmasq and a guest with a real DHCP client
//!   (ISC dhclient in one, busybox udhcpc in the other): both get leases,
//!   `/metrics` has a filled series per namespace, and each lab's counters
//!   are exactly what its own guest received (the maps are keyed by
//!   namespace and ifindex: keyed by ifindex alone, the two would mix);
//! - 1000 namespaces, each with a matching tap, come and go: every one is
//!   attached and leaves nothing behind, and the agent's descriptors,
//!   memory and threads stay flat.
//!
//! The agent sees every lab and sandbox of the machine, so these tests run
//! alone (`gate::exclusive`). Costs: the two labs about 6 s, the 1000
//! namespaces about 60 s (printed at the end of each).

use std::{
    collections::BTreeSet,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use dhcpfix_lab::{
    kit::{self, gate, privileged},
    lab::{ClientOutcome, GuestKind, Lab, Offload},
};
use serde_json::Value;

use crate::support::{
    cookie_of, footprint, free_addr, host_agent, in_netns, lab, leased, remains_by_netns, replies_to_guest,
    run_dhcpfix_ok, samples, scrape, tcx_programs, wait_until, Agent, Footprint, Sandbox, AGENT_STARTUP, BIN,
};

const LEASE_TIMEOUT: Duration = Duration::from_secs(8);

/// `dhcpfix stats --json --netns NS IFACE` from the host's namespace: the
/// counters of that one interface.
fn counters(pins: &Path, netns: &str, iface: &str) -> Value {
    let out = run_dhcpfix_ok(
        Command::new(BIN),
        pins,
        &["stats", "--json", "--netns", netns, iface],
    );
    let stats: Value = serde_json::from_str(&out).unwrap();
    let interfaces = stats["interfaces"].as_array().unwrap();
    assert_eq!(interfaces.len(), 1, "{stats}");
    assert_eq!(interfaces[0]["netns"]["name"], netns, "{stats}");
    interfaces[0]["counters"].clone()
}

fn vnet0_attached(lab: &Lab) -> bool {
    tcx_programs(&lab.host_netns_path(), lab.tap_name()).is_some_and(|p| p == ["dhcpfix"])
}

#[test]
fn one_agent_covers_two_lab_hosts_whose_taps_share_an_ifindex() {
    if !privileged("one_agent_covers_two_lab_hosts_whose_taps_share_an_ifindex") {
        return;
    }
    let _alone = gate::exclusive().unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let a = lab(Offload::On, GuestKind::Legacy);
    let b = lab(Offload::On, GuestKind::Legacy);
    let ifindex = |l: &Lab| in_netns(&l.host_netns_path(), || dhcpfix::sys::ifindex(l.tap_name()));
    assert_eq!(a.tap_name(), b.tap_name());
    assert!(ifindex(&a).is_some());
    assert_eq!(ifindex(&a), ifindex(&b), "the two vnet0 must share an ifindex");
    let (cookie_a, cookie_b) = (cookie_of(&a.host_netns_path()), cookie_of(&b.host_netns_path()));
    assert_ne!(cookie_a, cookie_b);

    let sb = Sandbox::new();
    let pins = sb.pin_dir();
    let addr = free_addr();
    let mut agent = host_agent(
        &sb.dir,
        &pins,
        &["--netns", "all", "--iface", "vnet*", "--metrics-addr", &addr],
    );
    agent.wait_running(AGENT_STARTUP);
    assert!(
        wait_until(Duration::from_secs(10), || vnet0_attached(&a)
            && vnet0_attached(&b)),
        "vnet0 not attached in both labs:\n{}",
        agent.log()
    );

    // Unequal traffic: two dhclient runs in a, one udhcpc run in b, at once.
    let before = [a.dhcp_frames().len(), b.dhcp_frames().len()];
    let (runs_a, run_b) = std::thread::scope(|s| {
        let in_b = s.spawn(|| b.run_udhcpc(LEASE_TIMEOUT).unwrap_or_else(|e| panic!("{e}")));
        let in_a: Vec<ClientOutcome> = (0..2)
            .map(|_| a.run_dhclient(LEASE_TIMEOUT).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        (in_a, in_b.join().unwrap())
    });
    for out in &runs_a {
        assert!(leased(&a, out), "no lease in lab a:\n{}", out.log);
    }
    assert!(leased(&b, &run_b), "no lease in lab b:\n{}", run_b.log);

    let page = scrape(&addr).expect("/metrics");
    let series = samples(&page);
    let mut filled_by_lab = Vec::new();
    for (lab, before) in [(&a, before[0]), (&b, before[1])] {
        let (got, partial, bad) = replies_to_guest(lab, before);
        let c = counters(&pins, lab.host_netns(), lab.tap_name());
        eprintln!(
            "{}: guest got {got} DHCP replies ({partial} partial, {bad} bad); dhcpfix {c}",
            lab.host_netns()
        );
        assert!(
            got >= 2 && bad == 0,
            "{}: {got} replies, {bad} bad",
            lab.host_netns()
        );
        // Exactly this lab's replies: none of the other lab's.
        assert_eq!(c["seen"], got, "{}: {c}", lab.host_netns());
        assert_eq!(c["filled"], partial, "{}: {c}", lab.host_netns());
        assert_eq!(partial, got, "offload on: every reply is partial");
        let filled: Vec<_> = series
            .iter()
            .filter(|s| s.name == "dhcpfix_checksums_filled_total" && s.label("netns") == lab.host_netns())
            .collect();
        assert_eq!(
            filled.len(),
            1,
            "one filled series for {}:\n{page}",
            lab.host_netns()
        );
        assert_eq!(filled[0].label("interface"), "vnet0");
        assert_eq!(filled[0].label("pod"), "", "a lab host is no pod");
        assert_eq!(filled[0].value as u64, got, "{:?}", filled[0]);
        filled_by_lab.push(got);
    }
    assert!(
        filled_by_lab[0] > filled_by_lab[1],
        "lab a's guest ran twice: {filled_by_lab:?}"
    );

    let (status, _, log) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
    assert!(!log.contains(" ERROR "), "the agent logged errors:\n{log}");
    eprintln!("two lab hosts: {:.1?}", started.elapsed());
}

/// The tap in each namespace (a name no other test uses).
const TAP: &str = "chn0";
/// Namespaces made and removed per round.
const BATCH: usize = 50;
/// Rounds before the agent's footprint is taken as the baseline.
const WARM_UP: usize = 2;
const CYCLES: usize = 1000;
/// How much the agent's resident memory may grow over the 900 namespaces
/// after the warm-up (a leak of 1 KiB per namespace would be 900 KiB).
const RSS_GROWTH_KIB: u64 = 512;

/// The link pins of every namespace of `cookies`, as `links/<cookie>/<ifindex>`.
fn all_pinned(pins: &Path, cookies: &[u64]) -> bool {
    cookies
        .iter()
        .all(|c| pins.join(dhcpfix::pins::netns_links_rel(*c)).join("2").exists())
}

#[test]
fn a_thousand_namespaces_come_and_go_and_leave_nothing() {
    if !privileged("a_thousand_namespaces_come_and_go_and_leave_nothing") {
        return;
    }
    let _alone = gate::exclusive().unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let sb = Sandbox::new();
    let pins = sb.pin_dir();
    // One malloc arena: glibc otherwise opens another (a few MiB of RSS)
    // whenever threads contend, which reads like a leak and is none.
    let mut agent = Agent::start(
        |p| {
            let mut c = Command::new(p);
            c.env("MALLOC_ARENA_MAX", "1");
            c
        },
        &sb.dir,
        &pins,
        &["--netns", "all", "--iface", "chn*", "--metrics-addr", "none"],
        &[],
    );
    agent.wait_running(AGENT_STARTUP);
    let pid = agent.child.id();
    let mut baseline: Option<Footprint> = None;
    let mut seen = BTreeSet::new();
    let (mut attach_wait, mut cleanup_wait) = (Duration::ZERO, Duration::ZERO);
    // The namespaces of the round before, deleted: (their cookies, names).
    let mut deleted: Option<(Vec<u64>, Vec<String>)> = None;
    let mut cleaned = |deleted: &mut Option<(Vec<u64>, Vec<String>)>, agent: &Agent| {
        let Some((cookies, names)) = deleted.take() else {
            return;
        };
        let t = Instant::now();
        let left = || {
            let all = remains_by_netns(&pins);
            cookies
                .iter()
                .filter_map(|c| all.get(c).map(|r| format!("{c}: {r:?}")))
                .collect::<Vec<_>>()
        };
        assert!(
            wait_until(Duration::from_secs(20), || left().is_empty()),
            "deleted namespaces left {:?}\n{}",
            left(),
            about(&agent.log(), &names)
        );
        cleanup_wait += t.elapsed();
    };
    for round in 0..CYCLES / BATCH {
        let spaces = make_batch(&sb, round);
        let cookies: Vec<u64> = spaces.iter().map(|n| cookie_of(n.path())).collect();
        seen.extend(cookies.iter().copied());
        let t = Instant::now();
        if !wait_until(Duration::from_secs(20), || all_pinned(&pins, &cookies)) {
            let missing: Vec<String> = spaces
                .iter()
                .zip(&cookies)
                .filter(|(_, c)| !all_pinned(&pins, &[**c]))
                .map(|(ns, _)| ns.name().to_owned())
                .collect();
            panic!(
                "round {round}: {missing:?} not attached:\n{}",
                about(&agent.log(), &missing)
            );
        }
        attach_wait += t.elapsed();
        // The round before's clean-up ran meanwhile.
        cleaned(&mut deleted, &agent);
        let names: Vec<String> = spaces.iter().map(|n| n.name().to_owned()).collect();
        remove_batch(spaces);
        deleted = Some((cookies, names));
        assert!(
            agent.exited().is_none(),
            "the agent died:\n{}",
            tail(&agent.log())
        );
        if round + 1 == WARM_UP {
            cleaned(&mut deleted, &agent);
            baseline = Some(settled(pid));
        }
    }
    cleaned(&mut deleted, &agent);
    assert_eq!(seen.len(), CYCLES, "every namespace had a cookie of its own");
    let baseline = baseline.expect("a baseline");
    let end = settled(pid);
    let took = started.elapsed();
    eprintln!(
        "{CYCLES} namespaces in {took:.1?} (waiting for attachments {attach_wait:.1?}, for clean-up {cleanup_wait:.1?}); \
         agent after {} namespaces {baseline:?}, after {CYCLES} {end:?}",
        WARM_UP * BATCH
    );
    assert_eq!(end.fds, baseline.fds, "the agent's open files grew");
    assert!(
        end.rss_kib <= baseline.rss_kib + RSS_GROWTH_KIB,
        "the agent's RSS grew by more than {RSS_GROWTH_KIB} KiB: {baseline:?} -> {end:?}"
    );
    assert!(
        end.threads <= baseline.threads,
        "threads grew: {baseline:?} -> {end:?}"
    );
    let all = remains_by_netns(&pins);
    assert!(all.keys().all(|c| !seen.contains(c)), "left behind: {all:?}");
    let (status, _, log) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
    assert!(
        !log.contains(" ERROR "),
        "the agent logged errors:\n{}",
        tail(&log)
    );
}

/// Threads that make or remove a round's namespaces.
const WORKERS: usize = 5;

/// `BATCH` new namespaces, each with a persistent tap `TAP`.
fn make_batch(sb: &Sandbox, round: usize) -> Vec<kit::Netns> {
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                s.spawn(move || {
                    (w..BATCH)
                        .step_by(WORKERS)
                        .map(|i| {
                            let ns = sb.netns(&format!("c{round}-{i}"));
                            ns.ip(&["tuntap", "add", "dev", TAP, "mode", "tap"])
                                .unwrap_or_else(|e| panic!("{e}"));
                            ns
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    })
}

/// Deletes namespaces (and with them their taps).
fn remove_batch(spaces: Vec<kit::Netns>) {
    let mut chunks: Vec<Vec<kit::Netns>> = (0..WORKERS).map(|_| Vec::new()).collect();
    for (i, ns) in spaces.into_iter().enumerate() {
        chunks[i % WORKERS].push(ns);
    }
    std::thread::scope(|s| {
        for chunk in chunks {
            s.spawn(move || {
                for ns in chunk {
                    ns.remove().unwrap_or_else(|e| panic!("{e}"));
                }
            });
        }
    });
}

/// The agent's footprint once it has been idle for a moment (threads the
/// runtime started for blocking work end after 10 s idle).
fn settled(pid: u32) -> Footprint {
    std::thread::sleep(Duration::from_secs(1));
    footprint(pid)
}

/// The lines of a log about these namespaces, and its last lines.
fn about(log: &str, names: &[String]) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| {
            names
                .iter()
                .any(|n| l.contains(&format!("namespace {n} ")) || l.contains(&format!("namespace {n}:")))
        })
        .collect();
    format!("{}\n...\n{}", lines.join("\n"), tail(log))
}

/// The last 40 lines of a log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
