//! `dhcpfix demo`: a KVM host in a box, before and after.
//!
//! Builds the lab (network namespaces, bridge, real dnsmasq, an emulated
//! vhost-net tap, real ISC dhclient and busybox udhcpc in a "guest"), shows
//! the failure, attaches dhcpfix with this very binary, and shows the lease
//! and the counters; then shows that a guest without checksum offload works
//! with and without dhcpfix. Exits non-zero if anything did not happen as
//! shown, so it doubles as a smoke test.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context};

use dhcpfix_lab::lab::{self, ClientOutcome, GuestKind, Lab, LabOptions, Offload};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds to wait for a lease that is not expected to come.
    #[arg(long, default_value_t = 5)]
    pub fail_timeout: u64,
}

const OK_TIMEOUT: Duration = Duration::from_secs(8);

pub fn run(args: Args) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo creates network namespaces and taps: run it as root (sudo cargo xtask demo)");
    }
    let exe = std::env::current_exe().context("locating the dhcpfix binary")?;
    lab::install_interrupt_cleanup()?;
    let removed = lab::clean_stale()?;
    if removed > 0 {
        println!("(removed {removed} lab(s) left over by an interrupted run)");
    }
    let fail_timeout = Duration::from_secs(args.fail_timeout);
    let mut ok = true;

    let lab = Lab::create(LabOptions::new(Offload::On, GuestKind::Legacy))?;
    println!("dhcpfix demo: a KVM host in a box, in network namespaces");
    println!(
        "  host  {}: br0 {}/24 served by dnsmasq; {} = the guest's tap (vnet header, like vhost-net)",
        lab.host_netns(),
        lab.gateway(),
        lab.tap_name()
    );
    println!(
        "  guest {}: eth0 with ISC dhclient and busybox udhcpc, which check UDP checksums themselves\n",
        lab.guest_netns()
    );

    println!("1. Guest whose virtio driver negotiated checksum offload, no fix:");
    ok &= expect(&lab.run_dhclient(fail_timeout)?, false);
    ok &= expect(&lab.run_udhcpc(fail_timeout)?, false);

    println!("\n2. With dhcpfix on the tap:");
    ok &= dhcpfix(&exe, &lab, &["attach", lab.tap_name()])?;
    ok &= expect(&lab.run_dhclient(OK_TIMEOUT)?, true);
    ok &= expect(&lab.run_udhcpc(OK_TIMEOUT)?, true);
    ok &= dhcpfix(&exe, &lab, &["stats", lab.tap_name()])?;
    lab.destroy()?;

    let lab = Lab::create(LabOptions::new(Offload::Off, GuestKind::Legacy))?;
    println!(
        "\n3. Guest without checksum offload (firmware, PXE, iPXE): the host kernel completes the checksum"
    );
    println!("   without dhcpfix:");
    ok &= expect(&lab.run_dhclient(OK_TIMEOUT)?, true);
    ok &= expect(&lab.run_udhcpc(OK_TIMEOUT)?, true);
    println!("   with dhcpfix, which must leave these packets alone (counted as deferred):");
    ok &= dhcpfix(&exe, &lab, &["attach", lab.tap_name()])?;
    ok &= expect(&lab.run_dhclient(OK_TIMEOUT)?, true);
    ok &= expect(&lab.run_udhcpc(OK_TIMEOUT)?, true);
    ok &= dhcpfix(&exe, &lab, &["stats", lab.tap_name()])?;
    lab.destroy()?;

    if !ok {
        bail!("the demo did not go as expected; the lines marked ✗ say where");
    }
    println!("\nAll as expected: dhcpfix fixes the offloading guest and leaves the others alone.");
    Ok(())
}

/// Prints a client's outcome; returns whether it was the expected one.
fn expect(out: &ClientOutcome, lease_expected: bool) -> bool {
    let good = out.lease.is_some() == lease_expected;
    let mark = if good { "✓" } else { "✗" };
    match out.lease {
        Some(ip) => println!(
            "   {mark} {:<8}  lease {ip} in {:.2} s",
            out.client,
            out.elapsed.as_secs_f64()
        ),
        None => {
            let why = if out.bad_checksum_logged {
                format!(": \"{}\"", bad_checksum_line(&out.log))
            } else {
                String::new()
            };
            println!(
                "   {mark} {:<8}  no lease after {:.0} s{why}",
                out.client,
                out.elapsed.as_secs_f64()
            );
        }
    }
    good
}

fn bad_checksum_line(log: &str) -> &str {
    log.lines()
        .find(|l| l.contains("bad udp checksums"))
        .map(str::trim)
        .unwrap_or("bad udp checksums")
}

/// Runs this binary inside the lab's host namespace and shows the command.
fn dhcpfix(exe: &Path, lab: &Lab, args: &[&str]) -> anyhow::Result<bool> {
    let pin_dir: PathBuf = lab.pin_dir();
    println!("   $ dhcpfix {}", args.join(" "));
    let out = lab
        .host_command(exe)
        .arg("--pin-dir")
        .arg(&pin_dir)
        .args(args)
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("     {line}");
    }
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        println!("   ✗ {line}");
    }
    Ok(out.status.success())
}
