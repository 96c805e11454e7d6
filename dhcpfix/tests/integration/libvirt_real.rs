//! dhcpfix's libvirt hook under a real libvirtd (Debian 12's libvirt 9.0,
//! QEMU 7.2 with TCG; `cargo xtask setup` installs them): the contrib
//! wrapper installed as /etc/libvirt/hooks/qemu.d/dhcpfix, calling this
//! build's binary with a pin directory on a bpffs of its own, and real
//! guests started and destroyed with `virsh create` / `virsh destroy`.
//!
//! Issue 12: at `stopped` and `release`, libvirt 9.0 hands the hook domain
//! XML whose `<interface>` has no `<target dev='vnetN'/>` any more (it
//! clears generated names before calling the hook; `<mac>` stays). The
//! hook finds the guest's attachments by that MAC instead, so
//! `linux_guest_attached_filled_and_detached_at_stop` checks that nothing
//! of the guest is left after `virsh destroy`; alone:
//!
//! ```sh
//! cargo test -p dhcpfix --test integration -- --exact \
//!     libvirt_real::linux_guest_attached_filled_and_detached_at_stop --nocapture
//! ```
//!
//! Each test starts its own libvirtd (a few seconds) and tears it down;
//! the tests of this file run one at a time (a mutex), and the harness
//! takes a machine-wide lock too.

pub(crate) mod harness;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use dhcpfix_lab::kit::{self, privileged, Place};
use harness::{
    eth0_feature, leases, marker, Boot, Domain, GuestKernel, GuestSpec, Initramfs, Libvirt,
    VIRTIO_NET_F_GUEST_CSUM,
};
use serde_json::Value;

use crate::support::{run_dhcpfix, BIN};

/// Fixed MACs (libvirt's 52:54:00 prefix), one per guest kind.
const LINUX_MAC: &str = "52:54:00:d4:cf:01";
const IPXE_MAC: &str = "52:54:00:d4:cf:02";
/// TCG: the kernel reaches /init in about 3 s; the DHCP exchange adds a
/// few more. Generous, for a machine shared with other builds.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
const LEASE_TIMEOUT: Duration = Duration::from_secs(60);

/// The tests of this file share one system libvirtd: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// One at a time, and with a shared turn of the sandboxes' gate: libvirt's
/// taps (`vnetN`) live in the host's namespace, where a test acting on
/// every namespace would attach to them.
fn one_at_a_time() -> (dhcpfix_lab::kit::gate::Shared, std::sync::MutexGuard<'static, ()>) {
    let turn = dhcpfix_lab::kit::gate::shared().unwrap_or_else(|e| panic!("{e}"));
    (turn, ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner()))
}

/// The guest kernel and the initramfs, built once per test run under
/// cargo's temporary directory for integration tests.
fn guest_boot_files() -> &'static (GuestKernel, Initramfs) {
    static FILES: OnceLock<Result<(GuestKernel, Initramfs), String>> = OnceLock::new();
    let files = FILES.get_or_init(|| {
        let kernel = GuestKernel::find()?;
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("libvirt-real-guest");
        let started = Instant::now();
        let initramfs = harness::build_initramfs(&kernel, &out)?;
        eprintln!(
            "guest: kernel {} ({}), initramfs {} ({} bytes, modules {:?}, raw probe: {}) built in {:.1?}",
            kernel.release,
            kernel.vmlinuz.display(),
            initramfs.path.display(),
            fs::metadata(&initramfs.path).map(|m| m.len()).unwrap_or(0),
            initramfs.modules,
            initramfs.raw_probe,
            started.elapsed()
        );
        Ok((kernel, initramfs))
    });
    files.as_ref().unwrap_or_else(|e| panic!("{e}"))
}

/// Where the tests' bpffs live: a sandbox per test, so a bpffs is
/// unmounted and its directory removed on drop, on ^C, and (if the test
/// process was killed) by the next run.
const PLACE: Place = Place {
    prefix: "dfxv",
    run_dir: "/run/dhcpfix-libvirt-real",
    mode: 0o700,
};

/// A bpffs of the test's own (never /sys/fs/bpf), unmounted on drop.
struct Bpffs {
    dir: PathBuf,
    _sandbox: kit::Sandbox,
}

impl Bpffs {
    fn mount() -> Self {
        let sandbox = kit::Sandbox::create(&PLACE).unwrap_or_else(|e| panic!("{e}"));
        let dir = sandbox.dir().join("bpffs");
        crate::support::mount_bpffs(&dir);
        Self {
            dir,
            _sandbox: sandbox,
        }
    }
}

/// The contrib wrapper, verbatim, after a preamble that points it at this
/// build's binary and the test's pin directory: libvirt runs hooks with an
/// almost empty environment, so these cannot come from the test process.
/// The hook's stderr (dhcpfix's reports) goes to `log`, not to syslog.
fn hook_script(pins: &Path, log: &Path, no_syslog: &Path) -> String {
    let wrapper_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/libvirt/qemu.d/dhcpfix");
    let wrapper =
        fs::read_to_string(&wrapper_path).unwrap_or_else(|e| panic!("{}: {e}", wrapper_path.display()));
    let (shebang, body) = wrapper.split_once('\n').expect("the wrapper has a #! line");
    let quote = |p: &Path| {
        let s = p.to_string_lossy();
        assert!(!s.contains('\''), "{s}");
        format!("'{s}'")
    };
    format!(
        "{shebang}\n\
         # tests/libvirt_real.rs: contrib/libvirt/qemu.d/dhcpfix follows, verbatim.\n\
         DHCPFIX_BIN={bin}\n\
         DHCPFIX_PIN_DIR={pins}\n\
         DHCPFIX_SYSLOG_SOCKET={no_syslog}\n\
         export DHCPFIX_PIN_DIR DHCPFIX_SYSLOG_SOCKET\n\
         exec 2>>{log}\n\
         echo \"--- $(date +%T.%N) hook called: $*\" >&2\n\
         {body}",
        bin = quote(Path::new(BIN)),
        pins = quote(pins),
        no_syslog = quote(no_syslog),
        log = quote(log),
    )
}

/// One test's libvirt: the hook installed, libvirtd and the default
/// network running. Fields drop in order: libvirt first (the hook still
/// finds its pin directory while guests are destroyed), then the bpffs.
struct Env {
    lv: Libvirt,
    bpffs: Bpffs,
    pins: PathBuf,
    hook_log: PathBuf,
}

impl Env {
    fn start() -> Self {
        let bpffs = Bpffs::mount();
        let pins = bpffs.dir.join("dhcpfix");
        let mut lv = Libvirt::new().unwrap_or_else(|e| panic!("{e}"));
        let hook_log = lv.work_dir().join("dhcpfix-hook.log");
        let no_syslog = lv.work_dir().join("no-syslog");
        lv.install_hook("dhcpfix", &hook_script(&pins, &hook_log, &no_syslog))
            .unwrap_or_else(|e| panic!("{e}"));
        let versions = lv.start_daemon().unwrap_or_else(|e| panic!("{e}"));
        eprintln!("versions: {versions}");
        // libvirt's iptables backend adds `-A LIBVIRT_PRT -o virbr0 -p udp
        // --dport 68 -j CHECKSUM --checksum-fill`: with it, the kernel
        // completes the DHCP checksum before the skb reaches the tap, and
        // dhcpfix only counts `valid`. The tests remove that one rule after
        // net-start so that dhcpfix is what fills (as on a host whose
        // libvirt uses nftables, which has no such rule).
        lv.start_default_network(true).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            lv.checksum_rule_removed(),
            "libvirt added no CHECKSUM rule for virbr0 to remove (iptables -t mangle -S LIBVIRT_PRT)"
        );
        Self {
            lv,
            bpffs,
            pins,
            hook_log,
        }
    }

    fn dhcpfix(&self, args: &[&str]) -> std::process::Output {
        run_dhcpfix(Command::new(BIN), &self.pins, args)
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.dhcpfix(args);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "dhcpfix {args:?} -> {}: not JSON ({e}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// `dhcpfix status --json`.
    fn status(&self) -> Value {
        self.json(&["status", "--json"])
    }

    /// `dhcpfix stats --json TAP`, the tap's entry.
    fn stats(&self, tap: &str) -> Value {
        self.json(&["stats", "--json", tap])["interfaces"][0].clone()
    }

    fn hook_log(&self) -> String {
        fs::read_to_string(&self.hook_log).unwrap_or_default()
    }

    /// The links directory of the pin directory (`abi-N/links`).
    fn links_dir(&self) -> PathBuf {
        self.pins.join(dhcpfix::pins::links_rel())
    }

    /// Link pins under the links directory, as `<netns cookie>/<name>`.
    fn link_pins(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for netns in fs::read_dir(self.links_dir()).into_iter().flatten().flatten() {
            for link in fs::read_dir(netns.path()).into_iter().flatten().flatten() {
                names.push(format!(
                    "{}/{}",
                    netns.file_name().to_string_lossy(),
                    link.file_name().to_string_lossy()
                ));
            }
        }
        names.sort();
        names
    }

    /// Tears libvirt down; what went wrong, if anything.
    fn finish(self) -> Result<(), String> {
        let Env { lv, bpffs, .. } = self;
        let result = lv.shutdown();
        drop(bpffs);
        result
    }

    /// The hook calls for `domain`, with what they saw, one per line.
    fn describe_hook_calls(&self, domain: &str) -> String {
        self.lv
            .hook_calls()
            .iter()
            .filter(|c| c.domain == domain)
            .map(|c| format!("  {c}; devices present: {:?}", c.links))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The tap libvirt made for the NIC with `mac`, from `virsh domiflist`.
fn tap_of(dom: &Domain<'_>, mac: &str) -> String {
    let ifaces = dom.interfaces().unwrap_or_else(|e| panic!("{e}"));
    let iface = ifaces.iter().find(|i| i.mac == mac).unwrap_or_else(|| {
        panic!(
            "virsh domiflist {}: no NIC with MAC {mac}: {ifaces:?}",
            dom.name()
        )
    });
    assert!(iface.target.starts_with("vnet"), "{iface:?}");
    iface.target.clone()
}

/// `ethtool -k TAP`: whether tx checksum offload (`tx-checksum-ip-generic`,
/// what tun sets from TUN_F_CSUM) is on.
fn tap_tx_csum(tap: &str) -> Option<bool> {
    let out = Command::new("ethtool").args(["-k", tap]).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("tx-checksum-ip-generic:"))
        .map(|v| v.trim().starts_with("on"))
}

/// The entry for `tap` in a `status --json` report.
fn status_entry<'a>(status: &'a Value, tap: &str) -> Option<&'a Value> {
    status["interfaces"].as_array()?.iter().find(|i| i["name"] == tap)
}

fn assert_attached(env: &Env, tap: &str) {
    let status = env.status();
    let entry = status_entry(&status, tap);
    assert!(
        entry.is_some_and(|e| e["attached"] == true && e["method"] == "tcx" && e["mode"] == "fill"),
        "after virsh create, dhcpfix status --json should list {tap} attached (tcx, fill); it says {status}\n\
         hook log:\n{}",
        env.hook_log()
    );
}

fn counter(stats: &Value, name: &str) -> u64 {
    stats["counters"][name].as_u64().unwrap_or(0)
}

/// What `dhcpfix doctor --json` (with the test's pin directory) says about
/// `tap`'s attachment: its entry among the taps (`None`: not listed), and
/// every finding that the doctor could not read the pin directory or that
/// an attachment's interface is gone.
fn doctor_on(env: &Env, tap: &str) -> (Option<Value>, Vec<String>) {
    let doctor = env.json(&["doctor", "--json"]);
    let entry = doctor["interfaces"]
        .as_array()
        .and_then(|l| l.iter().find(|i| i["name"] == tap))
        .cloned();
    let pins = env.pins.display().to_string();
    let findings = ["kernel", "notes"]
        .iter()
        .flat_map(|part| doctor[*part].as_array().cloned().unwrap_or_default())
        .filter(|c| {
            let item = c["item"].as_str().unwrap_or("");
            let detail = c["detail"].as_str().unwrap_or("");
            detail.contains("pinned but")
                || item.contains(tap)
                || (item == "pin directory" && c["level"] != "ok")
                || (item == "dhcpfix attachments" && detail.contains(&pins))
        })
        .map(|c| format!("{}: {} ({})", c["item"], c["detail"], c["level"]))
        .collect();
    (entry, findings)
}

#[test]
fn linux_guest_attached_filled_and_detached_at_stop() {
    const TEST: &str = "linux_guest_attached_filled_and_detached_at_stop";
    if !privileged(TEST) {
        return;
    }
    let _one = one_at_a_time();
    let (kernel, initramfs) = guest_boot_files();
    let env = Env::start();
    let spec = GuestSpec {
        name: GuestSpec::unique_name("dhcpfix-test-linux"),
        mac: LINUX_MAC.into(),
        memory_mib: 256,
        boot: Boot::Linux {
            kernel: kernel.vmlinuz.clone(),
            initrd: initramfs.path.clone(),
            cmdline: "console=ttyS0 quiet panic=-1".into(),
        },
    };
    let dom = env.lv.create(&spec).unwrap_or_else(|e| panic!("{e}"));
    let tap = tap_of(&dom, LINUX_MAC);
    eprintln!(
        "{} runs on {tap}; tx csum offload now: {:?}",
        spec.name,
        tap_tx_csum(&tap)
    );

    // The hook attached at start, and the doctor (reading the test's pin
    // directory) sees it: so that its silence after destroy means something.
    assert_attached(&env, &tap);
    let (entry, findings) = doctor_on(&env, &tap);
    assert!(
        entry.as_ref().is_some_and(|e| e["dhcpfix"]["method"] == "tcx") && findings.is_empty(),
        "while {tap} runs, dhcpfix doctor --json should show it covered by dhcpfix: {entry:?} {findings:?}"
    );

    // The guest boots, loads virtio-net, and gets a lease from libvirt's dnsmasq.
    let (i, eth0) = dom
        .wait_for_serial(&[marker::ETH0, marker::NO_ETH], BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(i, 0, "{eth0}\n{}", dom.serial_tail(40));
    let guest_csum = eth0_feature(&eth0, VIRTIO_NET_F_GUEST_CSUM);
    eprintln!(
        "{:.1?} after create: {eth0} (VIRTIO_NET_F_GUEST_CSUM: {guest_csum:?}); tap tx csum offload: {:?}",
        dom.created().elapsed(),
        tap_tx_csum(&tap)
    );
    let (i, lease) = dom
        .wait_for_serial(&[marker::LEASE, marker::NO_LEASE], LEASE_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(i, 0, "the guest got no lease: {lease}\n{}", dom.serial_tail(40));
    assert!(
        lease.contains(" 192.168.122."),
        "a lease outside libvirt's default network: {lease}"
    );
    eprintln!("{:.1?} after create: {lease}", dom.created().elapsed());
    if initramfs.raw_probe {
        let (_, summary) = dom
            .wait_for_serial(&[marker::RAW_SUMMARY], Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e}"));
        let frames: Vec<String> = dom
            .serial_text()
            .lines()
            .filter(|l| l.contains(marker::RAW) && !l.contains(marker::RAW_SUMMARY))
            .map(str::to_owned)
            .collect();
        eprintln!("raw-socket probe in the guest: {frames:#?}\n{summary}");
        assert!(
            summary.contains(" bad=0") && !summary.contains("good=0"),
            "an old-style raw-socket reader in the guest saw bad checksums: {summary}: {frames:#?}"
        );
    }

    // dhcpfix filled: the guest's driver negotiated checksum offload, so
    // QEMU turned on the tap's, and dnsmasq's replies reach the tap's
    // egress partial.
    let offload = tap_tx_csum(&tap);
    let stats = env.stats(&tap);
    eprintln!("dhcpfix stats for {tap}: {stats}");
    assert!(
        counter(&stats, "filled") > 0,
        "dhcpfix filled nothing on {tap} (tap tx csum offload {offload:?}, guest \
         VIRTIO_NET_F_GUEST_CSUM {guest_csum:?}): {stats}"
    );

    // virsh destroy: the hook runs `stopped` and `release`.
    let destroyed = Instant::now();
    dom.destroy().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("virsh destroy took {:.2?}", destroyed.elapsed());
    let tap_gone = harness::wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        !Path::new("/sys/class/net").join(&tap).exists()
    });
    let calls = env.describe_hook_calls(&spec.name);
    eprintln!("hook calls for {}:\n{calls}", spec.name);
    eprintln!("dhcpfix hook log:\n{}", env.hook_log());
    let recorded = env.lv.hook_calls();
    let stop_calls: Vec<_> = recorded
        .iter()
        .filter(|c| c.domain == spec.name && (c.operation == "stopped" || c.operation == "release"))
        .collect();
    assert!(
        stop_calls.len() >= 2,
        "libvirt should call the hook with `stopped` and `release`; it called:\n{calls}"
    );

    // Nothing of the guest may remain: no attachment, no link pin, no
    // stale-pin warning from the doctor.
    let mut left = Vec::new();
    let status = env.status();
    if let Some(list) = status["interfaces"].as_array().filter(|l| !l.is_empty()) {
        let rows: Vec<String> = list
            .iter()
            .map(|i| {
                format!(
                    "{} ({}, ifindex {})",
                    i["name"].as_str().unwrap_or("?"),
                    if i["attached"] == true { "attached" } else { "gone" },
                    i["ifindex"]
                )
            })
            .collect();
        left.push(format!("`dhcpfix status --json` still lists {}", rows.join(", ")));
    }
    let links = env.link_pins();
    if !links.is_empty() {
        left.push(format!("{} still holds {links:?}", env.links_dir().display()));
    }
    let (entry, stale) = doctor_on(&env, &tap);
    if !stale.is_empty() {
        left.push(format!("`dhcpfix doctor --json` warns: {}", stale.join("; ")));
    }
    if let Some(entry) = entry {
        left.push(format!("`dhcpfix doctor --json` still lists {tap}: {entry}"));
    }
    let targets: Vec<Vec<String>> = stop_calls.iter().map(|c| c.interface_targets()).collect();
    let defect = (!left.is_empty()).then(|| {
        format!(
            "after `virsh destroy {}`, dhcpfix left its pin for {tap} behind (tap gone: {tap_gone}):\n  - {}\n\
             libvirt called the hook with `stopped` and `release`, and the <interface> of the XML it \
             passed had <target dev> {targets:?} and <mac> {:?}: the hook has no tap name to detach.\n\
             hook log:\n{}",
            spec.name,
            left.join("\n  - "),
            stop_calls.first().map(|c| c.interface_macs()).unwrap_or_default(),
            env.hook_log()
        )
    });
    drop(dom);
    let teardown = env.finish();
    match (defect, teardown) {
        (None, Ok(())) => {}
        (Some(d), Ok(())) => panic!("{d}"),
        (d, Err(e)) => panic!("{}teardown: {e}", d.map(|d| format!("{d}\n")).unwrap_or_default()),
    }
}

#[test]
fn ipxe_guest_gets_its_lease_and_is_left_alone() {
    const TEST: &str = "ipxe_guest_gets_its_lease_and_is_left_alone";
    if !privileged(TEST) {
        return;
    }
    let _one = one_at_a_time();
    let env = Env::start();
    let before = leases().into_iter().find(|l| l.mac == IPXE_MAC);
    let spec = GuestSpec {
        name: GuestSpec::unique_name("dhcpfix-test-ipxe"),
        mac: IPXE_MAC.into(),
        memory_mib: 128,
        boot: Boot::Network,
    };
    let dom = env.lv.create(&spec).unwrap_or_else(|e| panic!("{e}"));
    let tap = tap_of(&dom, IPXE_MAC);
    assert_attached(&env, &tap);

    // iPXE's DHCP: "Configuring (net0 MAC)... ok", then "net0: IP/MASK gw GW".
    let (i, line) = dom
        .wait_for_serial(&["net0: 192.168.122.", "No more network devices"], BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(i, 0, "iPXE got no DHCP reply: {line}\n{}", dom.serial_tail(30));
    eprintln!("{:.1?} after create, iPXE: {line}", dom.created().elapsed());
    let lease = leases().into_iter().find(|l| l.mac == IPXE_MAC);
    eprintln!("dnsmasq's lease for {IPXE_MAC}: before {before:?}, now {lease:?}");
    assert!(
        lease
            .as_ref()
            .is_some_and(|l| before.as_ref().is_none_or(|b| l.expiry > b.expiry)),
        "dnsmasq recorded no new lease for {IPXE_MAC}: before {before:?}, now {lease:?}"
    );

    // The firmware never negotiates checksum offload: the tap has none,
    // the kernel completes the checksum after the classifier, and dhcpfix
    // must leave the partial skb alone (`deferred`).
    let offload = tap_tx_csum(&tap);
    let stats = env.stats(&tap);
    eprintln!("dhcpfix stats for {tap} (tap tx csum offload {offload:?}): {stats}");
    assert_eq!(offload, Some(false), "iPXE's tap has tx checksum offload on");
    assert!(
        counter(&stats, "deferred") > 0 && counter(&stats, "filled") == 0,
        "on a tap without offload dhcpfix must defer, not fill: {stats}"
    );

    dom.destroy().unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "hook calls for {}:\n{}",
        spec.name,
        env.describe_hook_calls(&spec.name)
    );
    eprintln!(
        "after destroy: links {:?}; dhcpfix hook log:\n{}",
        env.link_pins(),
        env.hook_log()
    );
    drop(dom);
    env.finish().unwrap_or_else(|e| panic!("teardown: {e}"));
}
