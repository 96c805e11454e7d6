//! A KubeVirt node in a box (docs/kubevirt.md): virt-launcher pods, each
//! in a network namespace pinned as containerd pins it
//! (`/run/netns/cni-<uuid>`) or held only by the pod's processes, its host
//! name the VMI's; inside, the bridge `k6t-eth0` (tx checksum offload on,
//! as from KubeVirt 1.8), the tap `tap0` of an emulated vhost-net guest with
//! real ISC dhclient, the renamed CNI port `eth0-nic` and its `eth0`, and a
//! DHCP server on an ordinary UDP socket, as virt-launcher's.
//!
//! One `dhcpfix run --netns all --iface 'tap*'` in the host's namespace,
//! as docs/kubevirt.md says to run it, covers them: guests get leases with
//! it and none without it; `tap0` is the only device attached in a pod; a
//! pod created while it runs is covered; a deleted pod leaves no pin and
//! no map entry; the metrics carry each pod's `netns` and `pod` labels.
//!
//! Cost: about 25 s (two dhclient runs that must fail, 4 s, in parallel).

use std::{path::Path, process::Command, time::Duration};

use dhcpfix_lab::{
    kit::{gate, privileged},
    lab::{
        ClientOutcome, GuestKind, Host, Lab, LabOptions, Offload, Pod, PodNetns, GUEST_TAP, POD_BRIDGE,
        POD_ETH, POD_NIC, POD_TAP,
    },
};
use serde_json::Value;

use crate::support::{
    cookie_of, free_addr, host_agent, leased, remains, replies_to_guest, run_dhcpfix_ok, samples, scrape,
    tcx_programs, wait_until, Sandbox, AGENT_STARTUP,
};

const LEASE_TIMEOUT: Duration = Duration::from_secs(8);
const NO_LEASE_TIMEOUT: Duration = Duration::from_secs(4);

pub(crate) fn pod(vmi: &str, netns: PodNetns) -> Lab {
    Lab::with_host(
        LabOptions::new(Offload::On, GuestKind::Legacy),
        Host::Pod(Pod {
            vmi: vmi.into(),
            netns,
        }),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs dhclient in every pod at once.
pub(crate) fn dhclient_in(pods: &[&Lab], timeout: Duration) -> Vec<ClientOutcome> {
    std::thread::scope(|s| {
        let runs: Vec<_> = pods
            .iter()
            .map(|p| s.spawn(move || p.run_dhclient(timeout).unwrap_or_else(|e| panic!("{e}"))))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    })
}

/// The programs on the egress of `iface` in the pod.
fn programs(pod: &Lab, iface: &str) -> Vec<String> {
    tcx_programs(&pod.host_netns_path(), iface)
        .unwrap_or_else(|| panic!("no {iface} in {}", pod.host_netns()))
}

pub(crate) fn attached(pod: &Lab) -> bool {
    tcx_programs(&pod.host_netns_path(), POD_TAP).is_some_and(|p| p == ["dhcpfix"])
}

/// `dhcpfix status --json` from the host's namespace.
fn status(pins: &Path) -> Value {
    serde_json::from_str(&run_dhcpfix_ok(
        Command::new(crate::support::BIN),
        pins,
        &["status", "--json"],
    ))
    .unwrap()
}

/// The interfaces of `status` in the namespace with `cookie`.
fn status_in(status: &Value, cookie: u64) -> Vec<String> {
    status["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["netns"]["cookie"] == cookie)
        .map(|i| format!("{}:{}", i["name"].as_str().unwrap(), i["attached"]))
        .collect()
}

/// The replies a pod's guest got, and how many failed its checksum check,
/// from relay record number `from` on.
pub(crate) fn dhcp_since(pod: &Lab, from: usize) -> (u64, u64) {
    let (got, _, bad) = replies_to_guest(pod, from);
    (got, bad)
}

#[test]
fn agent_covers_kubevirt_pods_as_they_come_and_go() {
    if !privileged("agent_covers_kubevirt_pods_as_they_come_and_go") {
        return;
    }
    // The agent sees every namespace of the host: no other lab may run.
    let _alone = gate::exclusive().unwrap_or_else(|e| panic!("{e}"));
    let started = std::time::Instant::now();
    let pinned = pod("vmi-alpine", PodNetns::Pinned);
    let held = pod("vmi-fedora", PodNetns::Process);
    assert!(pinned.host_netns().starts_with("cni-"), "{pinned:?}");
    assert!(held.host_netns().starts_with("/proc/"), "{held:?}");
    for p in [&pinned, &held] {
        assert_eq!(p.tap_name(), POD_TAP);
        assert_eq!(p.bridge(), POD_BRIDGE);
    }

    // Without dhcpfix: the server's replies reach the guests unfinished.
    for out in dhclient_in(&[&pinned, &held], NO_LEASE_TIMEOUT) {
        assert_eq!(out.lease, None, "a lease without dhcpfix:\n{}", out.log);
        assert!(out.bad_checksum_logged, "{}", out.log);
    }
    for p in [&pinned, &held] {
        let (got, bad) = dhcp_since(p, 0);
        assert!(got > 0 && bad == got, "{got} replies, {bad} bad");
        assert!(p.dhcpd_stats().unwrap().offers > 0);
    }

    let sb = Sandbox::new();
    let pins = sb.pin_dir();
    let addr = free_addr();
    let mut agent = host_agent(
        &sb.dir,
        &pins,
        &["--netns", "all", "--iface", "tap*", "--metrics-addr", &addr],
    );
    agent.wait_running(AGENT_STARTUP);
    assert!(
        wait_until(Duration::from_secs(10), || attached(&pinned) && attached(&held)),
        "tap0 not attached in both pods:\n{}",
        agent.log()
    );
    // Only the guest's tap: the bridge, the CNI port and eth0 are left alone.
    for p in [&pinned, &held] {
        for other in [POD_BRIDGE, POD_NIC, POD_ETH] {
            assert_eq!(
                programs(p, other),
                Vec::<String>::new(),
                "{other} in {}",
                p.host_netns()
            );
        }
    }
    let guest_side = tcx_programs(&pinned.guest_netns_path(), GUEST_TAP);
    assert_eq!(
        guest_side,
        Some(vec![]),
        "the guest's own eth0 matches no pattern"
    );

    // With it: leases, every reply the guests got verifies.
    let before = [pinned.dhcp_frames().len(), held.dhcp_frames().len()];
    for (p, out) in [&pinned, &held]
        .into_iter()
        .zip(dhclient_in(&[&pinned, &held], LEASE_TIMEOUT))
    {
        assert!(
            leased(p, &out),
            "no lease in {} with the agent:\n{}",
            p.host_netns(),
            out.log
        );
    }
    let cookies = [
        cookie_of(&pinned.host_netns_path()),
        cookie_of(&held.host_netns_path()),
    ];
    let page = scrape(&addr).expect("/metrics");
    let series = samples(&page);
    for ((p, before), (cookie, (netns, vmi))) in
        [&pinned, &held]
            .into_iter()
            .zip(before)
            .zip(cookies.into_iter().zip([
                (pinned.host_netns().to_owned(), "vmi-alpine"),
                (format!("#{}", cookies[1]), "vmi-fedora"),
            ]))
    {
        let (got, bad) = dhcp_since(p, before);
        assert!(
            got >= 2 && bad == 0,
            "{}: {got} replies, {bad} bad",
            p.host_netns()
        );
        let filled: Vec<_> = series
            .iter()
            .filter(|s| s.name == "dhcpfix_checksums_filled_total" && s.label("netns") == netns)
            .collect();
        assert_eq!(filled.len(), 1, "one filled series for {netns}:\n{page}");
        let s = filled[0];
        assert_eq!((s.label("interface"), s.label("pod")), (POD_TAP, vmi), "{s:?}");
        assert_eq!(s.value as u64, got, "{netns}: filled = the replies its guest got");
        assert_eq!(status_in(&status(&pins), cookie), ["tap0:true"]);
    }

    // A pod that comes while the agent runs is covered.
    let late = pod("vmi-late", PodNetns::Pinned);
    assert!(
        wait_until(Duration::from_secs(10), || attached(&late)),
        "the new pod's tap0 was not attached:\n{}",
        agent.log()
    );
    let out = &dhclient_in(&[&late], LEASE_TIMEOUT)[0];
    assert!(leased(&late, out), "no lease in the new pod:\n{}", out.log);
    // Its namespace was pinned before its processes started, as a CRI
    // runtime does: the pod label follows (the agent looks every 2 s).
    let labelled = |page: &str| {
        samples(page).iter().any(|s| {
            s.name == "dhcpfix_checksums_filled_total"
                && s.label("netns") == late.host_netns()
                && s.label("pod") == "vmi-late"
        })
    };
    assert!(
        wait_until(Duration::from_secs(5), || scrape(&addr)
            .is_some_and(|p| labelled(&p))),
        "no pod label for the new pod:\n{}",
        scrape(&addr).unwrap_or_default()
    );

    // Pods that go leave nothing: no link pin, no map entry, no series.
    pinned.destroy().unwrap_or_else(|e| panic!("{e}"));
    held.destroy().unwrap_or_else(|e| panic!("{e}"));
    for cookie in cookies {
        let gone = wait_until(Duration::from_secs(10), || remains(&pins, cookie).is_empty());
        assert!(
            gone,
            "namespace {cookie}: {:?} left\n{}",
            remains(&pins, cookie),
            agent.log()
        );
        assert_eq!(status_in(&status(&pins), cookie), Vec::<String>::new());
    }
    let page = scrape(&addr).expect("/metrics");
    let left: Vec<_> = samples(&page)
        .into_iter()
        .filter(|s| s.name == "dhcpfix_checksums_filled_total")
        .map(|s| (s.label("netns").to_owned(), s.label("pod").to_owned()))
        .collect();
    assert_eq!(left, [(late.host_netns().to_owned(), "vmi-late".to_owned())]);

    let (status, _, log) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
    assert!(!log.contains(" ERROR "), "the agent logged errors:\n{log}");
    drop(late);
    eprintln!("kubevirt pods: {:.1?}", started.elapsed());
}
