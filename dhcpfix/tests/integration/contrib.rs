//! The contrib integrations other than libvirt (tests/libvirt_hook.rs):
//! shellcheck over every shell script, the plain-QEMU ifup helper and the
//! Proxmox hookscript run for real in the lab, and the systemd unit checked
//! by systemd-analyze.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use dhcpfix_lab::{
    kit::privileged,
    lab::{GuestKind, Lab, Offload},
};
use serde_json::Value;

use crate::support::{attached_interfaces, dhcpfix, ip_in, show, BIN};

const MARKER: &str = "/tmp/dhcpfix-contrib-pwned";

fn contrib(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../contrib")
        .join(path)
}

const SCRIPTS: [&str; 3] = [
    "libvirt/qemu.d/dhcpfix",
    "proxmox/dhcpfix-hookscript",
    "qemu/dhcpfix-ifup",
];

/// Skips (or fails under CI) when a tool is missing.
fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", "command -v \"$1\"", "sh", tool])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tool} missing (cargo xtask setup installs it)"
        );
        eprintln!("skipped: {tool} not installed");
    }
    found
}

#[test]
fn shell_scripts_pass_shellcheck_and_are_executable() {
    for script in SCRIPTS {
        let mode = fs::metadata(contrib(script)).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "{script} is not executable");
    }
    if !have("shellcheck") {
        return;
    }
    let out = Command::new("shellcheck")
        .args(["--shell=sh", "--severity=style"])
        .args(SCRIPTS.map(contrib))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shellcheck:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn systemd_unit_and_udev_rule_are_well_formed() {
    let rule = fs::read_to_string(contrib("udev/90-dhcpfix.rules")).unwrap();
    let rule_lines: Vec<&str> = rule
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    assert_eq!(rule_lines.len(), 1);
    for part in [
        "ACTION==\"add\"",
        "SUBSYSTEM==\"net\"",
        "ATTR{tun_flags}==\"?*\"",
        "TAG+=\"systemd\"",
        "ENV{SYSTEMD_WANTS}+=\"dhcpfix-attach@%k.service\"",
    ] {
        assert!(rule_lines[0].contains(part), "{part} missing from the udev rule");
    }
    if !have("systemd-analyze") {
        return;
    }
    // An instance of the template; the only complaint allowed is that
    // dhcpfix is not installed on this machine.
    let dir = std::env::temp_dir().join(format!("dhcpfix-unit-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let unit = dir.join("dhcpfix-attach@vnet0.service");
    fs::copy(contrib("systemd/dhcpfix-attach@.service"), &unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let _ = fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            line.contains("/usr/local/sbin/dhcpfix"),
            "systemd-analyze: {line}"
        );
    }
}

fn lab() -> Lab {
    crate::support::lab(Offload::On, GuestKind::Legacy)
}

fn attached(lab: &Lab) -> BTreeSet<String> {
    attached_interfaces(lab)
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn qemu_ifup_chains_then_attaches() {
    if !privileged("qemu_ifup_chains_then_attaches") {
        return;
    }
    let _ = fs::remove_file(MARKER);
    let lab = lab();
    let ifup = |args: &[&str], chain: Option<&Path>| {
        let mut cmd = lab.host_command(contrib("qemu/dhcpfix-ifup"));
        cmd.env("DHCPFIX_BIN", BIN)
            .env("DHCPFIX_PIN_DIR", lab.pin_dir())
            .env(
                "DHCPFIX_CHAIN_IFUP",
                chain.map_or(PathBuf::new(), Path::to_path_buf),
            )
            .args(args);
        let out = cmd.output().unwrap();
        show(&format!("dhcpfix-ifup {args:?}"), &out);
        out
    };
    // The chained script runs first, with QEMU's argument.
    let seen = lab.work_dir().join("chain-saw");
    let chain = lab.work_dir().join("chain-ok");
    fs::write(
        &chain,
        format!("#!/bin/sh\nprintf '%s' \"$1\" > '{}'\n", seen.display()),
    )
    .unwrap();
    fs::set_permissions(&chain, fs::Permissions::from_mode(0o755)).unwrap();
    let out = ifup(&["vnet0"], Some(&chain));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(fs::read_to_string(&seen).unwrap(), "vnet0");
    assert_eq!(attached(&lab), names(&["vnet0"]));
    // And the guest gets its lease.
    let lease = lab.run_udhcpc(std::time::Duration::from_secs(8)).unwrap();
    assert!(lease.lease.is_some(), "{}", lease.log);

    // A failing chained script fails the netdev (its status), no attach.
    assert!(dhcpfix(&lab, &["detach", "vnet0"]).status.success());
    let failing = lab.work_dir().join("chain-fail");
    fs::write(&failing, "#!/bin/sh\nexit 3\n").unwrap();
    fs::set_permissions(&failing, fs::Permissions::from_mode(0o755)).unwrap();
    let out = ifup(&["vnet0"], Some(&failing));
    assert_eq!(out.status.code(), Some(3));
    assert!(attached(&lab).is_empty());

    // A dhcpfix failure is logged, not fatal.
    for name in ["nosuch0", &format!("$(touch {MARKER})"), "a b"] {
        let out = ifup(&[name], None);
        assert_eq!(out.status.code(), Some(0), "{name}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("the guest runs without it"));
    }
    // No argument is a usage error.
    assert_eq!(ifup(&[], None).status.code(), Some(1));
    assert!(!Path::new(MARKER).exists());
    lab.destroy().unwrap();
}

#[test]
fn proxmox_hookscript_covers_the_vms_taps() {
    if !privileged("proxmox_hookscript_covers_the_vms_taps") {
        return;
    }
    let _ = fs::remove_file(MARKER);
    let lab = lab();
    // Mount the pin directory's bpffs from this mount namespace, so what
    // the hookscript pins under `ip netns exec` (a private mount namespace
    // with the lab's /sys) outlives it.
    assert!(dhcpfix(&lab, &["attach", "vnet0"]).status.success());
    assert!(dhcpfix(&lab, &["detach", "vnet0"]).status.success());
    let ns = lab.host_netns().to_owned();
    let ip = |args: &[&str]| ip_in(&ns, args);
    for tap in ["tap100i0", "tap100i1", "tap1000i0", "tap100ifoo"] {
        ip(&["tuntap", "add", tap, "mode", "tap"]);
    }
    let hook = |vmid: &str, phase: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(contrib("proxmox/dhcpfix-hookscript"))
            .args([vmid, phase])
            .env("DHCPFIX_BIN", BIN)
            .env("DHCPFIX_PIN_DIR", lab.pin_dir())
            .output()
            .unwrap();
        show(&format!("hookscript {vmid:?} {phase}"), &out);
        assert_eq!(out.status.code(), Some(0));
    };

    hook("100", "pre-start");
    assert!(attached(&lab).is_empty());
    hook("100", "post-start");
    assert_eq!(attached(&lab), names(&["tap100i0", "tap100i1"]));
    hook("100", "pre-stop");
    assert!(attached(&lab).is_empty());

    // post-stop: the taps are gone; their dead pins go too.
    hook("100", "post-start");
    ip(&["link", "del", "tap100i0"]);
    hook("100", "post-stop");
    let status: Value = serde_json::from_slice(&dhcpfix(&lab, &["status", "--json"]).stdout).unwrap();
    assert!(status["interfaces"].as_array().unwrap().is_empty(), "{status}");

    // Hostile or odd VM ids and phases do nothing.
    for vmid in ["", "1e2", "100 ", &format!("100;touch {MARKER}"), "../100", "*"] {
        hook(vmid, "post-start");
    }
    hook("100", &format!("$(touch {MARKER})"));
    assert!(attached(&lab).is_empty());
    assert!(!Path::new(MARKER).exists());
    lab.destroy().unwrap();
}
