//! End to end: real dnsmasq, real ISC dhclient and busybox udhcpc, the
//! emulated vhost-net tap, and the `dhcpfix` binary attached to it.

use std::time::Duration;

use dhcpfix_lab::{
    kit::privileged,
    lab::{GuestKind, Lab, Offload},
};
use serde_json::Value;

use crate::support::{dhcpfix, dhcpfix_ok, lab, leased, stats};

const OK_TIMEOUT: Duration = Duration::from_secs(8);
const FAIL_TIMEOUT: Duration = Duration::from_secs(6);

/// The tap's counters from `dhcpfix stats --json`.
fn counters(lab: &Lab) -> Value {
    let iface = stats(lab, &lab.pin_dir(), lab.tap_name());
    assert_eq!(iface["attached"], true);
    iface["counters"].clone()
}

fn count(c: &Value, name: &str) -> u64 {
    c[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {c}"))
}

/// Every examined packet lands in exactly one outcome.
fn assert_consistent(c: &Value) {
    let sum: u64 = ["filled", "would_fill", "valid", "deferred", "skipped", "errors"]
        .iter()
        .map(|n| count(c, n))
        .sum();
    assert_eq!(count(c, "seen"), sum, "{c}");
    assert_eq!(count(c, "errors"), 0, "{c}");
    assert_eq!(count(c, "skipped"), 0, "{c}");
}

#[test]
fn offload_guest_gets_lease_only_with_dhcpfix() {
    if !privileged("offload_guest_gets_lease_only_with_dhcpfix") {
        return;
    }
    let lab = lab(Offload::On, GuestKind::Legacy);
    // Without the fix the bug is real.
    let before = lab.run_dhclient(FAIL_TIMEOUT).unwrap();
    assert!(
        !leased(&lab, &before),
        "dhclient got a lease without dhcpfix: the lab does not reproduce the bug"
    );
    assert!(before.bad_checksum_logged, "{}", before.log);

    let out = dhcpfix_ok(&lab, &["attach", lab.tap_name()]);
    assert!(out.contains("attached"), "{out}");
    let relay_before = lab.relay_stats().host_to_guest_needs_csum;
    let dhclient = lab.run_dhclient(OK_TIMEOUT).unwrap();
    assert!(leased(&lab, &dhclient), "dhclient: {}", dhclient.log);
    assert!(!dhclient.bad_checksum_logged, "{}", dhclient.log);
    let udhcpc = lab.run_udhcpc(OK_TIMEOUT).unwrap();
    assert!(leased(&lab, &udhcpc), "udhcpc: {}", udhcpc.log);

    // Every partial DHCP frame that reached the guest was filled by dhcpfix:
    // the relay saw exactly as many NEEDS_CSUM frames as dhcpfix filled.
    let c = counters(&lab);
    assert_consistent(&c);
    let needs_csum = lab.relay_stats().host_to_guest_needs_csum - relay_before;
    assert!(
        needs_csum >= 4,
        "expected OFFER+ACK for two clients, relay saw {needs_csum}"
    );
    assert_eq!(count(&c, "filled"), needs_csum, "{c}");
    assert_eq!(count(&c, "deferred"), 0, "{c}");

    // Status shows the attachment and its mode.
    let status: Value = serde_json::from_str(&dhcpfix_ok(&lab, &["status", "--json"])).unwrap();
    assert_eq!(status["interfaces"][0]["name"], lab.tap_name());
    assert_eq!(status["interfaces"][0]["mode"], "fill");

    // Detach restores the old behaviour.
    assert!(dhcpfix_ok(&lab, &["detach", lab.tap_name()]).contains("detached"));
    let after = lab.run_dhclient(FAIL_TIMEOUT).unwrap();
    assert!(!leased(&lab, &after), "dhclient got a lease after detach");
    lab.destroy().unwrap();
}

#[test]
fn no_offload_guest_gets_lease_with_and_without_dhcpfix() {
    if !privileged("no_offload_guest_gets_lease_with_and_without_dhcpfix") {
        return;
    }
    let lab = lab(Offload::Off, GuestKind::Legacy);
    assert!(leased(&lab, &lab.run_dhclient(OK_TIMEOUT).unwrap()));
    assert!(leased(&lab, &lab.run_udhcpc(OK_TIMEOUT).unwrap()));

    dhcpfix_ok(&lab, &["attach", lab.tap_name()]);
    // Attaching twice is harmless.
    assert!(dhcpfix_ok(&lab, &["attach", lab.tap_name()]).contains("already attached"));
    let dhclient = lab.run_dhclient(OK_TIMEOUT).unwrap();
    assert!(leased(&lab, &dhclient), "dhclient: {}", dhclient.log);
    let udhcpc = lab.run_udhcpc(OK_TIMEOUT).unwrap();
    assert!(leased(&lab, &udhcpc), "udhcpc: {}", udhcpc.log);

    // The tap has no offload: dhcpfix must have left every reply to the kernel.
    let c = counters(&lab);
    assert_consistent(&c);
    assert_eq!(count(&c, "filled"), 0, "{c}");
    assert!(count(&c, "deferred") >= 4, "{c}");
    lab.destroy().unwrap();
}

#[test]
fn audit_mode_counts_but_changes_nothing() {
    if !privileged("audit_mode_counts_but_changes_nothing") {
        return;
    }
    let lab = lab(Offload::On, GuestKind::Legacy);
    dhcpfix_ok(&lab, &["attach", "--audit", lab.tap_name()]);
    let out = lab.run_udhcpc(FAIL_TIMEOUT).unwrap();
    assert!(!leased(&lab, &out), "audit mode must not fix anything");
    let c = counters(&lab);
    assert_consistent(&c);
    assert_eq!(count(&c, "filled"), 0, "{c}");
    assert!(count(&c, "would_fill") >= 1, "{c}");
    // Switching the same attachment to fill mode fixes it.
    assert!(dhcpfix_ok(&lab, &["attach", lab.tap_name()]).contains("now fill"));
    assert!(leased(&lab, &lab.run_udhcpc(OK_TIMEOUT).unwrap()));
    lab.destroy().unwrap();
}

#[test]
fn modern_guest_keeps_working_with_dhcpfix() {
    if !privileged("modern_guest_keeps_working_with_dhcpfix") {
        return;
    }
    let lab = lab(Offload::On, GuestKind::Modern);
    dhcpfix_ok(&lab, &["attach", lab.tap_name()]);
    assert!(leased(&lab, &lab.run_dhclient(OK_TIMEOUT).unwrap()));
    assert!(leased(&lab, &lab.run_udhcpc(OK_TIMEOUT).unwrap()));
    let c = counters(&lab);
    assert_consistent(&c);
    assert!(count(&c, "filled") >= 4, "{c}");
    lab.destroy().unwrap();
}

#[test]
fn operator_errors_are_one_line_and_change_nothing() {
    if !privileged("operator_errors_are_one_line_and_change_nothing") {
        return;
    }
    let lab = lab(Offload::On, GuestKind::Legacy);
    let out = dhcpfix(&lab, &["attach", lab.tap_name(), "vnet-missing"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("vnet-missing") && err.contains("not found"), "{err}");
    // All or nothing: the existing tap was not attached either.
    let status: Value = serde_json::from_str(&dhcpfix_ok(&lab, &["status", "--json"])).unwrap();
    assert_eq!(
        status["interfaces"].as_array().map(Vec::len).unwrap_or(0),
        0,
        "{status}"
    );

    // A kernel layout that cannot be resolved fails with a clear message.
    let bogus = lab.work_dir().join("not-btf");
    std::fs::write(&bogus, b"this is not BTF").unwrap();
    let out = dhcpfix(
        &lab,
        &["attach", "--btf", bogus.to_str().unwrap(), lab.tap_name()],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("BTF") && err.trim().lines().count() == 1, "{err}");
    lab.destroy().unwrap();
}

/// `dhcpfix demo` (what `cargo xtask demo` runs) goes as it says.
#[test]
fn demo_shows_the_bug_and_the_fix() {
    if !privileged("demo_shows_the_bug_and_the_fix") {
        return;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dhcpfix"))
        .args(["demo", "--fail-timeout", "5"])
        .output()
        .expect("run dhcpfix demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    assert!(stdout.contains("All as expected"), "{stdout}");
    assert!(!stdout.contains('✗'), "{stdout}");
}

/// The netlink clsact path (what kernels before 6.6 get) fixes the guest
/// too, and detach removes the filter.
#[test]
fn netlink_clsact_attachment_works_and_detaches() {
    if !privileged("netlink_clsact_attachment_works_and_detaches") {
        return;
    }
    let lab = lab(Offload::On, GuestKind::Legacy);
    assert!(dhcpfix_ok(&lab, &["attach", "--method", "netlink", lab.tap_name()]).contains("netlink"));
    assert!(
        dhcpfix_ok(&lab, &["attach", "--method", "netlink", lab.tap_name()]).contains("already attached")
    );
    let status: Value = serde_json::from_str(&dhcpfix_ok(&lab, &["status", "--json"])).unwrap();
    assert_eq!(status["interfaces"][0]["method"], "netlink", "{status}");
    assert!(leased(&lab, &lab.run_udhcpc(OK_TIMEOUT).unwrap()));
    let c = counters(&lab);
    assert_consistent(&c);
    assert!(count(&c, "filled") >= 2, "{c}");
    assert!(dhcpfix_ok(&lab, &["detach", lab.tap_name()]).contains("detached"));
    assert!(
        !leased(&lab, &lab.run_udhcpc(FAIL_TIMEOUT).unwrap()),
        "filter still there after detach"
    );
    lab.destroy().unwrap();
}
