//! End to end: `dhcpfix run`, the host agent, in the lab's host namespace:
//! it attaches to taps as they appear (timed), a guest behind it gets its
//! lease, its metrics match the counters, a SIGKILL and restart leaves the
//! attachment and the counters alone, deleted taps leave no pins, SIGTERM
//! leaves attachments (and --detach-on-exit removes them), `clean` and
//! `clean --all` remove what they should, and the systemd unit's
//! capabilities are exactly enough.

use std::{
    fs,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use aya::programs::TcAttachType;
use dhcpfix::pins::{maps::Maps, PinDir};
use dhcpfix_common::key::IfaceKey;
use dhcpfix_lab::{
    kit::{poll, privileged},
    lab::{self, GuestKind, Lab, Offload},
};
use serde_json::Value;

use crate::support::{
    dhcpfix_ok_at, iface_key, interface_names, is_pinned, leased, link_pin, mount_bpffs, pinned_link_id,
    stats, Agent,
};

const OK_TIMEOUT: Duration = Duration::from_secs(8);
/// The brief: attached within 100 ms of the interface's appearance.
const ATTACH_DEADLINE: Duration = Duration::from_millis(100);
const METRICS: &str = "127.0.0.1:9788";
/// How long the agent may take to start (its first full pass).
const STARTUP: Duration = Duration::from_secs(10);

fn lab(offload: Offload) -> Lab {
    crate::support::lab(offload, GuestKind::Legacy)
}

/// `ip -n <lab host netns> ARGS`.
fn ip(lab: &Lab, args: &[&str]) {
    crate::support::ip_in(lab.host_netns(), args);
}

fn add_tap(lab: &Lab, name: &str) {
    ip(lab, &["tuntap", "add", "dev", name, "mode", "tap"]);
}

fn del_link(lab: &Lab, name: &str) {
    ip(lab, &["link", "del", name]);
}

/// Polls `done` every millisecond until it holds or `timeout` passes;
/// returns how long it took.
fn wait_until(timeout: Duration, done: impl FnMut() -> bool) -> Option<Duration> {
    poll(timeout, Duration::from_millis(1), done)
}

/// `dhcpfix --pin-dir PINS run ARGS` in the lab's host namespace, behind
/// `wrapper` (setpriv) if given, its log in the lab's work directory.
fn start_agent(lab: &Lab, pins: &Path, args: &[&str], wrapper: &[String]) -> Agent {
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    Agent::start(|p| lab.host_command(p), lab.work_dir(), pins, args, &wrapper)
}

/// The key dhcpfix files the lab's interface `name` under (its host
/// namespace's cookie and the ifindex); `None` if there is no such
/// interface.
fn key(lab: &Lab, name: &str) -> Option<IfaceKey> {
    iface_key(&lab.host_netns_path(), name)
}

/// Whether the lab's interface `name` has its link pinned.
fn pinned(lab: &Lab, pins: &Path, name: &str) -> bool {
    is_pinned(&lab.host_netns_path(), pins, name)
}

/// The kernel's id of the link pinned for the lab's interface `name`.
fn link_id(lab: &Lab, pins: &Path, name: &str) -> Option<u32> {
    pinned_link_id(pins, &key(lab, name)?)
}

/// The names `dhcpfix status --json` lists.
fn status_names(lab: &Lab, pins: &Path) -> Vec<String> {
    let status: Value = serde_json::from_str(&dhcpfix_ok_at(lab, pins, &["status", "--json"])).unwrap();
    interface_names(&status).into_iter().map(str::to_owned).collect()
}

/// Names of the programs attached (tcx) to the egress of `iface` in the
/// lab's host namespace, as the kernel lists them.
fn tcx_programs(lab: &Lab, iface: &str) -> Vec<String> {
    crate::support::tcx_programs(&lab.host_netns_path(), iface).expect("query tcx")
}

/// Names of the programs attached (tcx) to the ingress of `iface` in the
/// lab's host namespace (dhcpfix's own there is `dhcpfix_ingress`).
fn tcx_ingress_programs(lab: &Lab, iface: &str) -> Vec<String> {
    crate::support::tcx_ingress_programs(&lab.host_netns_path(), iface).expect("query tcx")
}

/// Whether `iface` has no tcx program, at egress or ingress, within a
/// second. Removing a link's last pin releases the link from a kernel work
/// queue, a moment later.
fn detached(lab: &Lab, iface: &str) -> bool {
    wait_until(Duration::from_secs(1), || {
        tcx_programs(lab, iface).is_empty() && tcx_ingress_programs(lab, iface).is_empty()
    })
    .is_some()
}

fn filled(lab: &Lab, pins: &Path, iface: &str) -> u64 {
    stats(lab, pins, iface)["counters"]["filled"].as_u64().unwrap()
}

/// `name{interface="iface",netns="NETNS",pod=""} VALUE` from a Prometheus
/// text page (an interface of the lab's host namespace, in no pod).
fn sample(lab: &Lab, page: &str, name: &str, iface: &str) -> Option<u64> {
    let prefix = format!(
        "{name}{{interface=\"{iface}\",netns=\"{}\",pod=\"\"}} ",
        lab.host_netns()
    );
    page.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// GET http://127.0.0.1:9788/metrics with curl, inside the lab: the page,
/// or curl's complaint.
fn scrape(lab: &Lab) -> Result<String, String> {
    let out = lab
        .host_command("curl")
        .args(["-sS", "--fail", "--max-time", "5"])
        .arg(format!("http://{METRICS}/metrics"))
        .output()
        .expect("run curl (Debian package curl)");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "curl: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The metrics page, once the endpoint answers (within 10 s: the agent
/// serves it once started, but a loaded machine may be slow to answer).
fn metrics_page(lab: &Lab, agent: &Agent) -> String {
    let mut last = Err(String::new());
    wait_until(Duration::from_secs(10), || {
        last = scrape(lab);
        last.is_ok()
    });
    last.unwrap_or_else(|e| panic!("metrics endpoint: {e}\n{}", agent.log()))
}

fn guest_mac(lab: &Lab) -> String {
    let out = Command::new("ip")
        .args(["-j", "-n", lab.guest_netns(), "link", "show", lab::GUEST_TAP])
        .output()
        .expect("ip link show");
    let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    v[0]["address"].as_str().expect("guest MAC").to_owned()
}

#[test]
fn agent_attaches_new_taps_within_100ms_and_guests_get_leases() {
    if !privileged("agent_attaches_new_taps_within_100ms_and_guests_get_leases") {
        return;
    }
    let lab = lab(Offload::On);
    let pins = lab.pin_dir();
    let mut agent = start_agent(&lab, &pins, &["--iface", "vnet*", "--metrics-addr", METRICS], &[]);
    agent.wait_running(STARTUP);
    // vnet0 existed before the agent.
    assert!(pinned(&lab, &pins, "vnet0"), "{}", agent.log());

    // A guest behind it gets its lease, and each fill is logged with the
    // guest's MAC, the message type and the transaction id.
    let dhclient = lab.run_dhclient(OK_TIMEOUT).unwrap();
    assert!(leased(&lab, &dhclient), "dhclient: {}", dhclient.log);
    let mac = guest_mac(&lab);
    let logged = |log: &str| {
        log.lines()
            .filter(|l| l.contains("filled vnet0: ") && l.contains(&format!(" for {mac} ")))
            .count() as u64
    };
    // Late replies (a retransmitted ACK) may still be on their way: wait
    // until the counter holds still and every fill has its line.
    let mut filled_now = 0;
    let settled = wait_until(Duration::from_secs(5), || {
        let before = filled(&lab, &pins, "vnet0");
        thread::sleep(Duration::from_millis(300));
        filled_now = filled(&lab, &pins, "vnet0");
        before == filled_now && logged(&agent.log()) == filled_now
    });
    let log = agent.log();
    assert!(
        settled.is_some(),
        "{} fill lines for {mac}, filled = {filled_now}:\n{log}",
        logged(&log)
    );
    assert!(filled_now >= 2, "OFFER and ACK: filled = {filled_now}");
    assert!(log.contains("filled vnet0: DHCPOFFER xid 0x"), "{log}");
    assert!(log.contains("filled vnet0: DHCPACK xid 0x"), "{log}");

    // /metrics (a real HTTP client) says what `stats --json` says.
    let page = metrics_page(&lab, &agent);
    let c = &stats(&lab, &pins, "vnet0")["counters"];
    for (metric, counter) in [
        ("dhcpfix_checksums_filled_total", "filled"),
        ("dhcpfix_packets_seen_total", "seen"),
        ("dhcpfix_checksums_valid_total", "valid"),
        ("dhcpfix_checksums_deferred_total", "deferred"),
        ("dhcpfix_packets_skipped_total", "skipped"),
        ("dhcpfix_errors_total", "errors"),
        ("dhcpfix_checksums_would_fill_total", "would_fill"),
    ] {
        assert_eq!(
            sample(&lab, &page, metric, "vnet0"),
            c[counter].as_u64(),
            "{metric}:\n{page}"
        );
    }
    assert!(page.contains("dhcpfix_attached_interfaces 1\n"), "{page}");
    assert!(page.contains("dhcpfix_build_info{"), "{page}");
    // `stats --format prometheus` prints the same text.
    let textfile = dhcpfix_ok_at(&lab, &pins, &["stats", "--format", "prometheus"]);
    assert_eq!(textfile, page);

    // New taps: attached within 100 ms of their creation; others ignored.
    let mut latencies = Vec::new();
    for i in 0..5 {
        add_tap(&lab, &format!("other{i}"));
        let name = format!("vnet1{i}");
        add_tap(&lab, &name);
        let added = Instant::now();
        let tap = key(&lab, &name).expect("the new tap");
        let took =
            wait_until(Duration::from_secs(2), || link_pin(&pins, &tap).exists()).map(|_| added.elapsed());
        latencies.push(took.unwrap_or_else(|| panic!("{name} was not attached:\n{}", agent.log())));
        assert!(!pinned(&lab, &pins, &format!("other{i}")));
        assert_eq!(tcx_programs(&lab, &name), ["dhcpfix"]);
        // The ingress link follows the egress one, in the same attach.
        let ingress = crate::support::wait_tcx_programs(
            &lab.host_netns_path(),
            &name,
            TcAttachType::Ingress,
            &["dhcpfix_ingress"],
            Duration::from_secs(2),
        );
        assert_eq!(ingress, ["dhcpfix_ingress"], "{name}");
    }
    eprintln!("attach latency after `ip tuntap add` returned: {latencies:?}");
    for (i, took) in latencies.iter().enumerate() {
        assert!(*took < ATTACH_DEADLINE, "vnet1{i} attached after {took:?}");
    }

    // A tap deleted while the agent runs leaves no pin.
    let vnet10 = key(&lab, "vnet10").unwrap();
    del_link(&lab, "vnet10");
    let gone = wait_until(Duration::from_secs(2), || !link_pin(&pins, &vnet10).exists());
    eprintln!("pin of deleted vnet10 removed after {gone:?}");
    assert!(gone.is_some(), "{}", agent.log());

    // A renamed tap keeps exactly one attachment (the same link: links are
    // pinned by ifindex), recorded under its new name if that still
    // matches; none if it does not.
    let (vnet11, vnet12) = (key(&lab, "vnet11").unwrap(), key(&lab, "vnet12").unwrap());
    let vnet11_link = pinned_link_id(&pins, &vnet11).expect("link of vnet11");
    ip(&lab, &["link", "set", "dev", "vnet11", "name", "vnet91"]);
    ip(&lab, &["link", "set", "dev", "vnet12", "name", "other12"]);
    let renamed = wait_until(Duration::from_secs(2), || {
        let names = status_names(&lab, &pins);
        link_pin(&pins, &vnet11).exists()
            && !link_pin(&pins, &vnet12).exists()
            && names.iter().any(|n| n == "vnet91")
            && !names
                .iter()
                .any(|n| ["vnet11", "vnet12", "other12"].contains(&n.as_str()))
    });
    assert!(renamed.is_some(), "{}", agent.log());
    assert_eq!(pinned_link_id(&pins, &vnet11), Some(vnet11_link));
    assert_eq!(tcx_programs(&lab, "vnet91"), ["dhcpfix"]);
    assert!(detached(&lab, "other12"));

    // `watch --once` shows the counters and rates from the pinned maps.
    let table = dhcpfix_ok_at(&lab, &pins, &["watch", "--once", "--interval", "0.2"]);
    let row = table
        .lines()
        .find(|l| l.trim_start().starts_with("vnet0 "))
        .expect("vnet0 row");
    assert!(row.contains(&format!("{filled_now} (0.0/s)")), "{table}");

    let (status, took, log) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{status}");
    eprintln!("SIGTERM to exit: {took:?}");
    assert!(log.contains("attached vnet11 "), "{log}");
    assert!(
        log.contains("detached vnet10: the interface was deleted"),
        "{log}"
    );
    lab.destroy().unwrap();
}

#[test]
fn agent_restart_keeps_attachment_and_counters_and_forgets_deleted_taps() {
    if !privileged("agent_restart_keeps_attachment_and_counters_and_forgets_deleted_taps") {
        return;
    }
    let lab = lab(Offload::On);
    let pins = lab.pin_dir();
    add_tap(&lab, "vnet1");
    let args = ["--iface", "vnet*", "--metrics-addr", "none"];
    let mut agent = start_agent(&lab, &pins, &args, &[]);
    agent.wait_running(STARTUP);
    assert!(pinned(&lab, &pins, "vnet0") && pinned(&lab, &pins, "vnet1"));
    assert!(leased(&lab, &lab.run_udhcpc(OK_TIMEOUT).unwrap()));
    let before = filled(&lab, &pins, "vnet0");
    assert!(before >= 2, "filled = {before}");
    let id = link_id(&lab, &pins, "vnet0").expect("link of vnet0");

    // SIGKILL: no chance to clean up. The attachment stays all along.
    let (status, _, _) = agent.stop(libc::SIGKILL);
    assert!(!status.success());
    assert_eq!(
        link_id(&lab, &pins, "vnet0"),
        Some(id),
        "link changed while the agent was dead"
    );
    assert_eq!(tcx_programs(&lab, "vnet0"), ["dhcpfix"]);
    // Guests stay covered without the agent, and counting goes on.
    assert!(leased(&lab, &lab.run_udhcpc(OK_TIMEOUT).unwrap()));
    let while_dead = filled(&lab, &pins, "vnet0");
    assert!(while_dead > before, "{while_dead} <= {before}");
    // A tap deleted while the agent is down leaves a dead pin behind...
    let vnet1 = key(&lab, "vnet1").unwrap();
    del_link(&lab, "vnet1");
    assert!(link_pin(&pins, &vnet1).exists());

    // ...which the restarted agent removes; vnet0 keeps its one link and
    // its counters.
    let mut agent = start_agent(&lab, &pins, &args, &[]);
    agent.wait_running(STARTUP);
    assert!(!link_pin(&pins, &vnet1).exists(), "{}", agent.log());
    assert_eq!(link_id(&lab, &pins, "vnet0"), Some(id));
    assert_eq!(tcx_programs(&lab, "vnet0"), ["dhcpfix"]);
    assert_eq!(filled(&lab, &pins, "vnet0"), while_dead);
    let status: Value = serde_json::from_str(&dhcpfix_ok_at(&lab, &pins, &["status", "--json"])).unwrap();
    let names = interface_names(&status);
    assert_eq!(names, ["vnet0"], "{status}");

    // SIGTERM: a clean exit that leaves the attachment in place.
    let (status, took, log) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(log.contains("kept vnet0 (ifindex"), "{log}");
    assert!(log.contains("detached vnet1: the interface is gone"), "{log}");
    assert_eq!(link_id(&lab, &pins, "vnet0"), Some(id));
    assert_eq!(tcx_programs(&lab, "vnet0"), ["dhcpfix"]);

    // --detach-on-exit: SIGTERM removes the attachments it covers.
    let mut agent = start_agent(
        &lab,
        &pins,
        &["--iface", "vnet*", "--metrics-addr", "none", "--detach-on-exit"],
        &[],
    );
    agent.wait_running(STARTUP);
    let (status, _, _) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{status}");
    assert!(!pinned(&lab, &pins, "vnet0"));
    // Started again at once (while the kernel may still be releasing the
    // old link), it attaches again.
    let mut agent = start_agent(&lab, &pins, &args, &[]);
    agent.wait_running(STARTUP);
    assert!(pinned(&lab, &pins, "vnet0"), "{}", agent.log());
    assert_eq!(tcx_programs(&lab, "vnet0"), ["dhcpfix"]);
    agent.stop(libc::SIGTERM);
    lab.destroy().unwrap();
}

/// Defect 14: a tap leaving its bridge (`ip link set vnet0 nomaster`) makes
/// the bridge send an AF_BRIDGE RTM_DELLINK for its port. The tap lives on,
/// and so does its attachment: no "detached" line, the same link, still
/// followed (a rename afterwards moves its pin).
#[test]
fn tap_leaving_its_bridge_stays_attached() {
    if !privileged("tap_leaving_its_bridge_stays_attached") {
        return;
    }
    let lab = lab(Offload::On);
    let pins = lab.pin_dir();
    let mut agent = start_agent(&lab, &pins, &["--iface", "vnet*", "--metrics-addr", "none"], &[]);
    agent.wait_running(STARTUP);
    let id = link_id(&lab, &pins, "vnet0").expect("vnet0 attached at start");

    ip(&lab, &["link", "set", "vnet0", "nomaster"]);
    ip(&lab, &["link", "set", "vnet0", "master", lab::BRIDGE]);
    ip(&lab, &["link", "set", "vnet0", "nomaster"]);
    // Time for the agent to act on the events, wrongly or not.
    thread::sleep(Duration::from_millis(500));
    assert_eq!(link_id(&lab, &pins, "vnet0"), Some(id), "{}", agent.log());
    assert_eq!(tcx_programs(&lab, "vnet0"), ["dhcpfix"]);
    assert!(!agent.log().contains("detached vnet0"), "{}", agent.log());

    // Still the agent's: renamed, its record follows (the link stays).
    ip(&lab, &["link", "set", "dev", "vnet0", "name", "vnet5"]);
    let followed = wait_until(Duration::from_secs(2), || {
        pinned(&lab, &pins, "vnet5") && status_names(&lab, &pins) == ["vnet5"]
    });
    assert!(followed.is_some(), "{}", agent.log());
    assert_eq!(link_id(&lab, &pins, "vnet5"), Some(id));

    let (status, _, log) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{status}");
    assert!(
        log.contains("vnet0 was renamed to vnet5; its attachment follows"),
        "{log}"
    );
    assert!(!log.contains("detached vnet0"), "{log}");
    lab.destroy().unwrap();
}

#[test]
fn clean_removes_dead_pins_and_clean_all_removes_everything() {
    if !privileged("clean_removes_dead_pins_and_clean_all_removes_everything") {
        return;
    }
    let lab = lab(Offload::On);
    let pins = lab.pin_dir();
    add_tap(&lab, "vnet1");
    add_tap(&lab, "vnet2");
    dhcpfix_ok_at(&lab, &pins, &["attach", "vnet0", "vnet1", "vnet2"]);
    let vnet2 = key(&lab, "vnet2").unwrap();
    let entries = |key: &IfaceKey| {
        let dir = PinDir::open(&pins).unwrap().expect("the pin directory");
        let maps = Maps::open(&dir).unwrap();
        (maps.config(key).is_some(), maps.counter_keys().contains(key))
    };
    assert_eq!(entries(&vnet2), (true, true));
    del_link(&lab, "vnet2");
    assert!(link_pin(&pins, &vnet2).exists());

    let out = dhcpfix_ok_at(&lab, &pins, &["clean"]);
    assert!(
        out.contains("vnet2: the interface is gone; removed its pin"),
        "{out}"
    );
    // Its configuration and counters entries went with it.
    assert_eq!(entries(&vnet2), (false, false));
    assert!(!link_pin(&pins, &vnet2).exists());
    assert!(pinned(&lab, &pins, "vnet0") && pinned(&lab, &pins, "vnet1"));
    assert_eq!(entries(&key(&lab, "vnet1").unwrap()), (true, true));
    assert_eq!(tcx_programs(&lab, "vnet1"), ["dhcpfix"]);
    assert_eq!(dhcpfix_ok_at(&lab, &pins, &["clean"]).trim(), "nothing to clean");

    let out = dhcpfix_ok_at(&lab, &pins, &["clean", "--all"]);
    assert!(
        out.contains("vnet0: detached") && out.contains("vnet1: detached"),
        "{out}"
    );
    for iface in ["vnet0", "vnet1"] {
        assert!(detached(&lab, iface), "{iface}");
    }
    // Only bpffs's own files (maps.debug, progs.debug) are left.
    let left: Vec<String> = fs::read_dir(&pins)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".debug"))
        .collect();
    assert!(left.is_empty(), "left in the pin directory: {left:?}");
    let status: Value = serde_json::from_str(&dhcpfix_ok_at(&lab, &pins, &["status", "--json"])).unwrap();
    assert_eq!(status["program_loaded"], false, "{status}");
    lab.destroy().unwrap();
}

#[test]
fn audit_mode_logs_what_would_be_filled() {
    if !privileged("audit_mode_logs_what_would_be_filled") {
        return;
    }
    let lab = lab(Offload::On);
    let pins = lab.pin_dir();
    let mut agent = start_agent(
        &lab,
        &pins,
        &["--iface", "vnet*", "--audit", "--metrics-addr", "none"],
        &[],
    );
    agent.wait_running(STARTUP);
    // Nothing is fixed, so no lease; the OFFERs are counted and logged.
    let out = lab.run_udhcpc(Duration::from_secs(2)).unwrap();
    assert!(!leased(&lab, &out), "audit mode fixed something");
    let c = stats(&lab, &pins, "vnet0")["counters"].clone();
    let would_fill = c["would_fill"].as_u64().unwrap();
    assert!(would_fill >= 1 && c["filled"] == 0, "{c}");
    let lines = |log: &str| log.matches("would fill vnet0: DHCPOFFER xid 0x").count() as u64;
    wait_until(Duration::from_secs(2), || lines(&agent.log()) >= would_fill);
    let (_, _, log) = agent.stop(libc::SIGTERM);
    assert!(lines(&log) >= would_fill, "{would_fill} would_fill, log:\n{log}");
    assert!(!log.contains("] filled "), "{log}");
    lab.destroy().unwrap();
}

/// The capabilities and `NoNewPrivileges=` of contrib/systemd/dhcpfix.service.
fn unit_privileges() -> (Vec<String>, bool) {
    let unit = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../contrib/systemd/dhcpfix.service"
    ))
    .expect("read the systemd unit");
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in the unit"))
            .trim()
            .to_owned()
    };
    let caps = value("CapabilityBoundingSet=")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    (caps, value("NoNewPrivileges=") == "yes")
}

/// `setpriv` with the bounding set `caps` (root's capabilities after exec
/// are its bounding set, as under systemd's CapabilityBoundingSet=).
fn setpriv(caps: &[String], no_new_privs: bool) -> Vec<String> {
    let set: Vec<String> = caps
        .iter()
        .map(|c| format!("+{}", c.to_lowercase().trim_start_matches("cap_")))
        .collect();
    let mut w = vec![
        "setpriv".to_owned(),
        "--bounding-set".to_owned(),
        format!("-all,{}", set.join(",")),
        "--inh-caps".to_owned(),
        "-all".to_owned(),
    ];
    if no_new_privs {
        w.push("--no-new-privs".to_owned());
    }
    w.push("--".to_owned());
    w
}

#[test]
fn systemd_unit_capabilities_are_enough_and_each_is_needed() {
    if !privileged("systemd_unit_capabilities_are_enough_and_each_is_needed") {
        return;
    }
    let (caps, nnp) = unit_privileges();
    assert_eq!(caps.len(), 3, "{caps:?}");
    assert!(!caps.iter().any(|c| c == "CAP_SYS_ADMIN"), "{caps:?}");
    let lab = lab(Offload::On);
    // As on a systemd host: a bpffs is mounted already (at /sys/fs/bpf
    // there); the agent only makes its directory inside it.
    let bpffs = lab.work_dir().join("bpffs");
    mount_bpffs(&bpffs);
    let pins = bpffs.join("dhcpfix");
    let args = ["--iface", "vnet*", "--metrics-addr", METRICS];

    // Exactly the unit's capabilities: it attaches, and serves metrics.
    let mut agent = start_agent(&lab, &pins, &args, &setpriv(&caps, nnp));
    agent.wait_running(STARTUP);
    assert!(pinned(&lab, &pins, "vnet0"), "{}", agent.log());
    assert_eq!(tcx_programs(&lab, "vnet0"), ["dhcpfix"]);
    let page = metrics_page(&lab, &agent);
    assert!(page.contains("dhcpfix_attached_interfaces 1\n"), "{page}");
    let status = fs::read_to_string(format!("/proc/{}/status", agent.child.id())).unwrap();
    let eff = status
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .unwrap()
        .to_owned();
    let (status, _, _) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{status}");
    // bpf, net_admin, perfmon = bits 39, 12, 38.
    assert!(eff.ends_with("000000c000001000"), "{eff}");
    dhcpfix_ok_at(&lab, &pins, &["clean", "--all"]);

    // One capability fewer: a clear one-line error naming it, nothing attached.
    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let mut agent = start_agent(&lab, &pins, &args, &setpriv(&fewer, nnp));
        let mut status = None;
        wait_until(Duration::from_secs(10), || {
            status = agent.child.try_wait().unwrap();
            status.is_some()
        });
        let log = agent.log();
        let Some(status) = status else {
            let _ = agent.child.kill();
            panic!("the agent ran without {missing}:\n{log}");
        };
        assert!(!status.success());
        assert_eq!(log.trim().lines().count(), 1, "{log}");
        assert!(log.contains(&format!("missing capability {missing}")), "{log}");
        assert!(!pinned(&lab, &pins, "vnet0"));
        assert!(detached(&lab, "vnet0"));
    }
    lab.destroy().unwrap();
}
