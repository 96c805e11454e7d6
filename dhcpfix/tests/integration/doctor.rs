//! `dhcpfix doctor` in the lab's host namespace: a real dnsmasq on br0, the
//! emulated vhost-net tap vnet0 on it. The verdicts are checked against what
//! really happens to a guest's DHCP client.
//!
//! Exit status contract: 2 when something needs action (a tap at risk), 0
//! otherwise (warnings included), 1 when doctor itself fails.

use std::time::Duration;

use dhcpfix_lab::{
    kit::{checksum_fill_rule, privileged},
    lab::{GuestKind, Lab, Offload},
};
use serde_json::Value;

use crate::support::{dhcpfix, ip_in, leased};

const OK_TIMEOUT: Duration = Duration::from_secs(8);
const FAIL_TIMEOUT: Duration = Duration::from_secs(5);

fn lab(offload: Offload) -> Lab {
    crate::support::lab(offload, GuestKind::Legacy)
}

/// `doctor --json`: the report and the exit status.
fn doctor(lab: &Lab) -> (Value, i32) {
    let out = dhcpfix(lab, &["doctor", "--json"]);
    let code = out.status.code().expect("doctor killed by a signal");
    let report =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e})"));
    (report, code)
}

fn tap<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing from {report:#}"))
}

#[test]
fn at_risk_before_attach_covered_after() {
    if !privileged("at_risk_before_attach_covered_after") {
        return;
    }
    let lab = lab(Offload::On);
    let (report, code) = doctor(&lab);
    let vnet0 = tap(&report, "vnet0");
    assert_eq!(vnet0["verdict"], "at-risk", "{report:#}");
    assert_eq!(vnet0["level"], "action");
    assert_eq!(vnet0["tx_checksum_offload"], true);
    assert_eq!(vnet0["bridge"], "br0");
    assert_eq!(report["verdict"], "action");
    assert_eq!(code, 2, "action needed must exit 2");
    assert_eq!(report["actions"][0], "dhcpfix attach vnet0");
    // The lab's dnsmasq is found, bound to br0, by pid.
    let dnsmasq = format!("dnsmasq[{}]", lab.dnsmasq_pid().unwrap());
    assert_eq!(vnet0["dhcp_servers"][0], dnsmasq.as_str(), "{report:#}");
    let server = &report["dhcp_servers"][0];
    assert_eq!(server["bound_device"], "br0", "{report:#}");
    assert_eq!(server["serves"][0], "br0");
    // Kernel support is there on this machine.
    for check in report["kernel"].as_array().unwrap() {
        assert_eq!(check["level"], "ok", "{check}");
    }
    // "at risk" is true: the guest's old client gets no lease.
    let before = lab.run_udhcpc(FAIL_TIMEOUT).unwrap();
    assert!(!leased(&lab, &before), "{}", before.log);

    // Audit mode: reported as such, not an action item, still no lease.
    assert!(dhcpfix(&lab, &["attach", "--audit", "vnet0"]).status.success());
    let (report, code) = doctor(&lab);
    assert_eq!(tap(&report, "vnet0")["verdict"], "audit", "{report:#}");
    assert_eq!(tap(&report, "vnet0")["level"], "warn");
    assert_eq!(code, 0);

    // Fill mode: covered, exit 0, and the guest really gets its lease.
    assert!(dhcpfix(&lab, &["attach", "vnet0"]).status.success());
    let (report, code) = doctor(&lab);
    let vnet0 = tap(&report, "vnet0");
    assert_eq!(vnet0["verdict"], "covered", "{report:#}");
    assert_eq!(vnet0["level"], "ok");
    assert_eq!(vnet0["dhcpfix"]["mode"], "fill");
    assert_eq!(report["verdict"], "ok", "{report:#}");
    assert_eq!(code, 0);
    assert!(report["actions"].as_array().unwrap().is_empty());
    let after = lab.run_udhcpc(OK_TIMEOUT).unwrap();
    assert!(leased(&lab, &after), "{}", after.log);

    // The table form says the same.
    let out = dhcpfix(&lab, &["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("vnet0") && text.contains("covered"), "{text}");
    assert!(text.contains("Verdict: ok"), "{text}");
    lab.destroy().unwrap();
}

#[test]
fn no_offload_tap_is_fine_without_dhcpfix() {
    if !privileged("no_offload_tap_is_fine_without_dhcpfix") {
        return;
    }
    let lab = lab(Offload::Off);
    let (report, code) = doctor(&lab);
    let vnet0 = tap(&report, "vnet0");
    assert_eq!(vnet0["verdict"], "no-offload", "{report:#}");
    assert_eq!(vnet0["tx_checksum_offload"], false);
    assert_eq!(code, 0);
    let out = lab.run_udhcpc(OK_TIMEOUT).unwrap();
    assert!(leased(&lab, &out), "{}", out.log);
    lab.destroy().unwrap();
}

#[test]
fn iptables_checksum_rule_counts_as_a_fix() {
    if !privileged("iptables_checksum_rule_counts_as_a_fix") {
        return;
    }
    let lab = lab(Offload::On);
    // The rule libvirt's iptables backend installs, inside the lab only.
    let rule = checksum_fill_rule(Some("br0"));
    let out = lab
        .host_command("iptables")
        .args(rule)
        .output()
        .expect("run iptables");
    if !out.status.success() {
        // xt_CHECKSUM is a kernel module some hosts lack; the rest of the
        // doctor is tested above.
        let why = String::from_utf8_lossy(&out.stderr);
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "iptables CHECKSUM unavailable: {why}"
        );
        eprintln!("skipped: iptables CHECKSUM unavailable: {why}");
        lab.destroy().unwrap();
        return;
    }
    let (report, code) = doctor(&lab);
    let vnet0 = tap(&report, "vnet0");
    assert_eq!(vnet0["verdict"], "covered-by-iptables", "{report:#}");
    assert_eq!(code, 0);
    let fixes = report["other_fixes"].as_array().unwrap();
    assert!(
        fixes
            .iter()
            .any(|f| f["kind"] == "iptables-checksum" && f["applies_to"] == "br0"),
        "{report:#}"
    );
    // True: the rule alone gets the guest its lease.
    let out = lab.run_dhclient(OK_TIMEOUT).unwrap();
    assert!(leased(&lab, &out), "{}", out.log);

    // Both fixes at once: covered, with a note that they overlap.
    assert!(dhcpfix(&lab, &["attach", "vnet0"]).status.success());
    let (report, code) = doctor(&lab);
    assert_eq!(tap(&report, "vnet0")["verdict"], "covered");
    assert_eq!(code, 0);
    assert!(
        report["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["item"] == "overlap on vnet0"),
        "{report:#}"
    );
    lab.destroy().unwrap();
}

#[test]
fn stale_attachment_is_a_warning() {
    if !privileged("stale_attachment_is_a_warning") {
        return;
    }
    let lab = lab(Offload::On);
    assert!(dhcpfix(&lab, &["attach", "vnet0"]).status.success());
    // A second tap, attached, then deleted: its pin is reported as stale.
    let ip = |args: &[&str]| ip_in(lab.host_netns(), args);
    ip(&["tuntap", "add", "vnet9", "mode", "tap"]);
    assert!(dhcpfix(&lab, &["attach", "vnet9"]).status.success());
    ip(&["link", "del", "vnet9"]);
    let (report, code) = doctor(&lab);
    let notes = report["notes"].as_array().unwrap();
    let stale = notes
        .iter()
        .find(|n| n["item"] == "attachment vnet9")
        .unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(stale["level"], "warn");
    assert!(stale["detail"].as_str().unwrap().contains("dhcpfix detach vnet9"));
    assert_eq!(code, 0, "a stale pin is a warning, not an action");
    lab.destroy().unwrap();
}
