//! Baseline behaviour of the lab without any fix: proves the bug is real and
//! that the lab itself is sound. Needs root; skipped otherwise, unless
//! CI=true, where skipping would hide a broken setup and the tests fail.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use dhcpfix_lab::{
    kit::privileged,
    lab::{ClientOutcome, GuestKind, Lab, Offload},
};

use crate::support::in_subnet;

/// Timeout for runs expected to succeed (leases come in well under 1 s).
const OK_TIMEOUT: Duration = Duration::from_secs(8);
/// Timeout for runs expected to fail.
const FAIL_TIMEOUT: Duration = Duration::from_secs(7);

fn lab(offload: Offload, guest: GuestKind) -> Lab {
    let t = Instant::now();
    let lab = crate::support::lab(offload, guest);
    eprintln!(
        "lab {} ({offload:?}, {guest:?}, {}/24) up in {:.2?}",
        lab.name(),
        lab.subnet(),
        t.elapsed()
    );
    lab
}

fn show(lab: &Lab, out: &ClientOutcome) {
    eprintln!(
        "--- {} in {}: lease={:?} bad_checksum_logged={} elapsed={:.2?} relay={:?}\n{}",
        out.client,
        lab.name(),
        out.lease,
        out.bad_checksum_logged,
        out.elapsed,
        lab.relay_stats(),
        out.log
    );
}

#[test]
fn offload_off_legacy_guest_gets_leases() {
    if !privileged("offload_off_legacy_guest_gets_leases") {
        return;
    }
    let lab = lab(Offload::Off, GuestKind::Legacy);

    let d = lab.run_dhclient(OK_TIMEOUT).expect("run dhclient");
    show(&lab, &d);
    let u = lab.run_udhcpc(OK_TIMEOUT).expect("run udhcpc");
    show(&lab, &u);
    let stats = lab.relay_stats();
    let dns_log = lab.dnsmasq_log();

    // On failure the lab is torn down by Drop while unwinding.
    assert!(
        in_subnet(&lab, &d),
        "dhclient got no lease:\n{}\n{dns_log}",
        d.log
    );
    assert!(!d.bad_checksum_logged, "dhclient saw bad checksums:\n{}", d.log);
    assert!(in_subnet(&lab, &u), "udhcpc got no lease:\n{}\n{dns_log}", u.log);
    assert_eq!(
        stats.host_to_guest_needs_csum, 0,
        "offload off, yet NEEDS_CSUM frames: {stats:?}"
    );
    lab.destroy().expect("destroy");
}

#[test]
fn offload_on_legacy_guest_gets_no_lease() {
    if !privileged("offload_on_legacy_guest_gets_no_lease") {
        return;
    }
    let lab = lab(Offload::On, GuestKind::Legacy);

    let d = lab.run_dhclient(FAIL_TIMEOUT).expect("run dhclient");
    show(&lab, &d);
    let u = lab.run_udhcpc(FAIL_TIMEOUT).expect("run udhcpc");
    show(&lab, &u);
    let stats = lab.relay_stats();
    let dns_log = lab.dnsmasq_log();

    assert_eq!(d.lease, None, "dhclient got a lease despite offload:\n{}", d.log);
    assert!(
        d.bad_checksum_logged,
        "dhclient did not log bad udp checksums:\n{}",
        d.log
    );
    assert_eq!(u.lease, None, "udhcpc got a lease despite offload:\n{}", u.log);
    // The replies did reach the guest, flagged NEEDS_CSUM: the failure is
    // the checksum, not connectivity.
    assert!(dns_log.contains("DHCPOFFER"), "dnsmasq never offered:\n{dns_log}");
    assert!(
        stats.host_to_guest_needs_csum > 0,
        "no NEEDS_CSUM frames: {stats:?}"
    );
    lab.destroy().expect("destroy");
}

#[test]
fn offload_on_modern_guest_gets_lease() {
    if !privileged("offload_on_modern_guest_gets_lease") {
        return;
    }
    let lab = lab(Offload::On, GuestKind::Modern);

    let d = lab.run_dhclient(OK_TIMEOUT).expect("run dhclient");
    show(&lab, &d);
    let stats = lab.relay_stats();

    assert!(
        in_subnet(&lab, &d),
        "modern guest: dhclient got no lease:\n{}",
        d.log
    );
    assert!(
        stats.host_to_guest_needs_csum > 0,
        "no NEEDS_CSUM frames: {stats:?}"
    );
    lab.destroy().expect("destroy");
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").expect("read /proc").flatten() {
        let name = e.file_name();
        if name.to_str().and_then(|s| s.parse::<u32>().ok()).is_none() {
            continue;
        }
        if let Ok(raw) = fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(format!("{}: {cmd}", name.to_string_lossy()));
            }
        }
    }
    found
}

#[test]
fn destroy_removes_everything() {
    if !privileged("destroy_removes_everything") {
        return;
    }
    let lab = lab(Offload::Off, GuestKind::Legacy);
    let host = lab.host_netns_path();
    let guest = Path::new("/run/netns").join(lab.guest_netns());
    let dir = lab.work_dir().to_path_buf();
    let dnsmasq_pid = lab.dnsmasq_pid().expect("dnsmasq pid");
    assert!(
        host.exists() && guest.exists(),
        "namespaces missing while lab is up"
    );
    let marker = dir.to_string_lossy().into_owned();
    assert!(
        !processes_mentioning(&marker).is_empty(),
        "dnsmasq {dnsmasq_pid} not visible while lab is up"
    );

    let t = Instant::now();
    lab.destroy().expect("destroy");
    eprintln!("destroy took {:.2?}", t.elapsed());

    assert!(!host.exists(), "{} still exists", host.display());
    assert!(!guest.exists(), "{} still exists", guest.display());
    assert!(!dir.exists(), "{} still exists", dir.display());
    let left = processes_mentioning(&marker);
    assert!(left.is_empty(), "lab processes still running: {left:?}");
    assert!(
        !Path::new(&format!("/proc/{dnsmasq_pid}")).exists()
            || !fs::read_to_string(format!("/proc/{dnsmasq_pid}/cmdline"))
                .unwrap_or_default()
                .contains("dnsmasq"),
        "dnsmasq {dnsmasq_pid} still running"
    );
}
