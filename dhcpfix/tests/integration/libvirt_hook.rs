//! `dhcpfix libvirt-hook`, run as libvirt runs it: the real binary (and the
//! contrib wrapper) in the lab's host namespace, libvirt's arguments, the
//! domain XML on stdin. Whatever the input: exit 0, nothing on stdout, no
//! command run; the right taps attached and detached.

use std::{
    collections::BTreeSet,
    ffi::OsString,
    io::Write,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use dhcpfix_lab::{
    kit::privileged,
    lab::{GuestKind, Lab, Offload},
};
use serde_json::Value;

use crate::support::{attached_interfaces, dhcpfix_ok, interface_names, ip, BIN};
/// The domain MAC in the fixtures; libvirt gives the tap the same MAC with
/// the first byte 0xfe.
const TAP_MAC: &str = "fe:54:00:12:34:56";
const VNET1_MAC: &str = "fe:54:00:12:34:57";
/// What the hostile fixture and arguments try to create.
const MARKER: &str = "/tmp/dhcpfix-libvirt-hook-pwned";
/// Far longer than any hook run takes.
const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/libvirt")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn wrapper() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/libvirt/qemu.d/dhcpfix")
}

/// A lab whose tap carries the MAC libvirt would give it, plus a second tap
/// `vnet1` on the bridge, and a syslog socket to collect the hook's reports.
struct Fixture {
    lab: Lab,
    syslog: UnixDatagram,
    syslog_path: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let lab = crate::support::lab(Offload::On, GuestKind::Legacy);
        let ns = lab.host_netns().to_owned();
        ip(&["-n", &ns, "link", "set", "vnet0", "address", TAP_MAC]);
        ip(&["-n", &ns, "tuntap", "add", "vnet1", "mode", "tap"]);
        ip(&["-n", &ns, "link", "set", "vnet1", "address", VNET1_MAC]);
        ip(&["-n", &ns, "link", "set", "vnet1", "master", "br0"]);
        let syslog_path = lab.work_dir().join("syslog.sock");
        let syslog = UnixDatagram::bind(&syslog_path).expect("bind syslog socket");
        syslog.set_nonblocking(true).unwrap();
        Self {
            lab,
            syslog,
            syslog_path,
        }
    }

    /// Runs `dhcpfix --pin-dir P libvirt-hook ARGS` (no `--`), as the brief
    /// of a hand-written hook would.
    fn hook(&self, args: &[&str], stdin: &[u8]) -> HookRun {
        let mut cmd = self.lab.host_command(BIN);
        cmd.arg("--pin-dir")
            .arg(self.lab.pin_dir())
            .arg("libvirt-hook")
            .args(args);
        self.run(cmd, stdin)
    }

    /// Runs the contrib wrapper with libvirt's arguments.
    fn wrapped(&self, args: &[OsString], stdin: &[u8]) -> HookRun {
        let mut cmd = self.lab.host_command(wrapper());
        cmd.env("DHCPFIX_BIN", BIN)
            .env("DHCPFIX_PIN_DIR", self.lab.pin_dir())
            .args(args);
        self.run(cmd, stdin)
    }

    fn run(&self, mut cmd: Command, stdin: &[u8]) -> HookRun {
        // Earlier reports out of the way: syslog() then returns this run's.
        self.syslog();
        if !cmd.get_envs().any(|(k, _)| k == "DHCPFIX_SYSLOG_SOCKET") {
            cmd.env("DHCPFIX_SYSLOG_SOCKET", &self.syslog_path);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn hook");
        let mut pipe = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        // Written from a thread, like libvirt's event loop: the hook must
        // take all of it (or a write fails with EPIPE).
        let writer = std::thread::spawn(move || pipe.write_all(&data).map_err(|e| e.kind()));
        // A hook that hangs would hang libvirt: kill it and fail.
        let pid = child.id() as libc::pid_t;
        let done = Arc::new(AtomicBool::new(false));
        let watchdog = {
            let done = done.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                while start.elapsed() < HOOK_TIMEOUT {
                    if done.load(Ordering::SeqCst) {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                // SAFETY: kill(2) on our own child, which has not been reaped.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                true
            })
        };
        let out = child.wait_with_output().expect("wait for hook");
        done.store(true, Ordering::SeqCst);
        assert!(!watchdog.join().unwrap(), "hook hung for {HOOK_TIMEOUT:?}");
        let stdin_ok = writer.join().unwrap().is_ok();
        let run = HookRun {
            status: out.status,
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            stdin_ok,
        };
        eprintln!("hook -> {:?}\n{}", run.status, run.stderr);
        run.assert_libvirt_safe();
        run
    }

    fn dhcpfix(&self, args: &[&str]) -> String {
        dhcpfix_ok(&self.lab, args)
    }

    /// Interfaces dhcpfix is attached to, with their mode.
    fn attached(&self) -> BTreeSet<String> {
        attached_interfaces(&self.lab)
            .iter()
            .map(|i| {
                format!(
                    "{}:{}",
                    i["name"].as_str().unwrap(),
                    i["mode"].as_str().unwrap_or("?")
                )
            })
            .collect()
    }

    fn reset(&self) {
        self.dhcpfix(&["detach", "vnet0", "vnet1"]);
        assert!(self.attached().is_empty());
    }

    /// Syslog datagrams received since the last call.
    fn syslog(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.syslog.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| format!("{n}:fill")).collect()
}

struct HookRun {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
    /// Whether the hook took all of stdin.
    stdin_ok: bool,
}

impl HookRun {
    /// What libvirt needs from every hook run.
    fn assert_libvirt_safe(&self) {
        assert_eq!(
            self.status.code(),
            Some(0),
            "hook must always exit 0: {}",
            self.stderr
        );
        assert!(
            self.stdout.is_empty(),
            "hook wrote to stdout: {:?}",
            String::from_utf8_lossy(&self.stdout)
        );
        assert!(!Path::new(MARKER).exists(), "a command ran: {MARKER} exists");
    }
}

#[test]
fn attaches_at_start_and_detaches_at_stop() {
    if !privileged("attaches_at_start_and_detaches_at_stop") {
        return;
    }
    let fx = Fixture::new();
    let xml = fixture("network.xml");

    for op in ["start", "started", "reconnect"] {
        fx.reset();
        let run = fx.hook(&["web1", op, "begin", "-"], &xml);
        assert!(run.stdin_ok);
        assert_eq!(fx.attached(), set(&["vnet0"]), "after {op}");
        assert!(
            run.stderr.contains("vnet0 attached (tcx, fill)"),
            "{}",
            run.stderr
        );
        let logged = fx.syslog();
        assert!(
            logged.iter().any(|l| l.starts_with("<30>dhcpfix-libvirt-hook[")
                && l.contains(&format!("domain \"web1\" {op}: vnet0 attached"))),
            "{logged:?}"
        );
    }
    // Attaching again (started after start) is harmless.
    let run = fx.hook(&["web1", "started", "begin", "-"], &xml);
    assert!(run.stderr.contains("already attached"), "{}", run.stderr);

    for op in ["stopped", "release"] {
        fx.dhcpfix(&["attach", "vnet0"]);
        let run = fx.hook(&["web1", op, "end", "-"], &xml);
        assert!(run.stdin_ok);
        assert!(fx.attached().is_empty(), "after {op}: {:?}", fx.attached());
        assert!(run.stderr.contains("vnet0 detached"), "{}", run.stderr);
    }

    // Every other operation leaves everything alone, and still takes stdin.
    fx.reset();
    for op in ["prepare", "migrate", "restore", "attach", "shutdown", "", "bogus"] {
        let run = fx.hook(&["web1", op, "begin", "-"], &xml);
        assert!(run.stdin_ok, "{op}: stdin not drained");
        assert!(fx.attached().is_empty(), "after {op:?}");
    }
    fx.dhcpfix(&["attach", "vnet0"]);
    fx.hook(&["web1", "prepare", "begin", "-"], &xml);
    fx.hook(&["web1", "migrate", "begin", "-"], &xml);
    assert_eq!(fx.attached(), set(&["vnet0"]), "migrate/prepare must not detach");

    // The hook's attachment is the real fix: the old client gets its lease.
    fx.reset();
    let before = fx.lab.run_udhcpc(Duration::from_secs(5)).unwrap();
    assert!(
        before.lease.is_none(),
        "the lab must reproduce the bug: {}",
        before.log
    );
    fx.hook(&["web1", "started", "begin", "-"], &xml);
    let after = fx.lab.run_udhcpc(Duration::from_secs(8)).unwrap();
    assert!(
        after.lease.is_some(),
        "no lease after the hook attached: {}",
        after.log
    );
    fx.lab.destroy().unwrap();
}

#[test]
fn every_interface_shape() {
    if !privileged("every_interface_shape") {
        return;
    }
    let fx = Fixture::new();
    // (fixture, attached after `started`, text expected on stderr)
    let cases: [(&str, &[&str], &[&str]); 11] = [
        ("network.xml", &["vnet0"], &[]),
        ("bridge.xml", &["vnet0"], &[]),
        ("ethernet.xml", &["vnet0"], &[]),
        (
            "several.xml",
            &["vnet0", "vnet1"],
            &["type=\"user\"", "is a macvtap device"],
        ),
        ("no-target.xml", &[], &["no <target dev"]),
        ("direct.xml", &[], &["type='direct' is a macvtap device"]),
        ("hostdev.xml", &[], &["type='hostdev'"]),
        ("vhostuser.xml", &[], &["type='vhostuser'"]),
        ("malformed.xml", &[], &["does not parse", "no interface touched"]),
        ("entity-bomb.xml", &[], &["does not parse"]),
        (
            "hostile-name.xml",
            &[],
            &["is not a valid interface name", "\"$(touch)\" not found"],
        ),
    ];
    for (name, expect, messages) in cases {
        fx.reset();
        let run = fx.hook(&["guest", "started", "begin", "-"], &fixture(name));
        assert_eq!(fx.attached(), set(expect), "{name}");
        for m in messages {
            assert!(run.stderr.contains(m), "{name}: expected {m:?} in {}", run.stderr);
        }
        // One report line per message: no raw newline from the XML.
        for l in fx.syslog() {
            assert!(!l.contains('\n'), "{name}: multi-line syslog message {l:?}");
        }
    }

    // `stopped` detaches every tap of the domain.
    fx.hook(&["router", "started", "begin", "-"], &fixture("several.xml"));
    assert_eq!(fx.attached(), set(&["vnet0", "vnet1"]));
    fx.hook(&["router", "stopped", "end", "-"], &fixture("several.xml"));
    assert!(fx.attached().is_empty(), "{:?}", fx.attached());

    // A tap name now used by another guest (different MAC) is left alone.
    fx.dhcpfix(&["attach", "vnet0"]);
    let other = String::from_utf8(fixture("network.xml"))
        .unwrap()
        .replace("52:54:00:12:34:56", "52:54:00:99:88:77");
    let run = fx.hook(&["web1", "release", "end", "-"], other.as_bytes());
    assert!(run.stderr.contains("belongs to another guest"), "{}", run.stderr);
    assert_eq!(fx.attached(), set(&["vnet0"]));

    // A tap whose guest is gone: its dead link is cleaned at `release`.
    fx.dhcpfix(&["attach", "vnet1"]);
    ip(&["-n", fx.lab.host_netns(), "link", "del", "vnet1"]);
    fx.hook(&["router", "release", "end", "-"], &fixture("several.xml"));
    let status: Value = serde_json::from_str(&fx.dhcpfix(&["status", "--json"])).unwrap();
    let names = interface_names(&status);
    assert!(!names.contains(&"vnet1"), "dead vnet1 pin left: {status}");

    // Audit mode and ports pass through the wrapper's options.
    fx.reset();
    let mut cmd = fx.lab.host_command(BIN);
    cmd.arg("--pin-dir").arg(fx.lab.pin_dir()).args([
        "libvirt-hook",
        "--audit",
        "--ports",
        "68",
        "--",
        "web1",
        "started",
        "begin",
        "-",
    ]);
    fx.run(cmd, &fixture("network.xml"));
    assert_eq!(fx.attached(), BTreeSet::from(["vnet0:audit".to_owned()]));

    // A syslog daemon that reads nothing (its queue full) must not stall
    // the hook: 5 runs of 4 reports each overflow its queue of 10.
    let stuck_path = fx.lab.work_dir().join("stuck.sock");
    let _stuck = UnixDatagram::bind(&stuck_path).unwrap();
    for _ in 0..5 {
        let mut cmd = fx.lab.host_command(BIN);
        cmd.arg("--pin-dir")
            .arg(fx.lab.pin_dir())
            .env("DHCPFIX_SYSLOG_SOCKET", &stuck_path)
            .args(["libvirt-hook", "--", "router", "started", "begin", "-"]);
        fx.run(cmd, &fixture("several.xml"));
    }
    fx.lab.destroy().unwrap();
}

#[test]
fn hostile_input_is_harmless() {
    if !privileged("hostile_input_is_harmless") {
        return;
    }
    let _ = std::fs::remove_file(MARKER);
    let fx = Fixture::new();
    let xml = fixture("network.xml");
    let pwn = format!("$(touch {MARKER})");
    let tick = format!("`touch {MARKER}`");
    let names: Vec<String> = vec![
        pwn.clone(),
        tick.clone(),
        format!("a'b\"c; touch {MARKER}"),
        "line one\nline two".into(),
        String::new(),
        "-".into(),
        "--help".into(),
        "--version".into(),
        "--pin-dir".into(),
        "-rf /".into(),
        "x".repeat(5000),
    ];

    // Through the contrib wrapper, as libvirt runs it: every name is only
    // data, and `started` attaches the domain's tap.
    for name in &names {
        fx.reset();
        let args: Vec<OsString> = [name.as_str(), "started", "begin", "-"]
            .iter()
            .map(OsString::from)
            .collect();
        let run = fx.wrapped(&args, &xml);
        assert!(run.stdin_ok);
        assert_eq!(fx.attached(), set(&["vnet0"]), "domain name {name:?}");
        assert!(
            !run.stderr.contains("line one\nline two"),
            "raw newline in report"
        );
        for l in fx.syslog() {
            assert!(!l.contains('\n'), "multi-line syslog message {l:?}");
        }
    }
    // Invalid UTF-8 in the domain name.
    fx.reset();
    use std::os::unix::ffi::OsStringExt;
    let args = vec![
        OsString::from_vec(vec![0xff, 0xfe, b'$', b'(']),
        "started".into(),
        "begin".into(),
        "-".into(),
    ];
    fx.wrapped(&args, &xml);
    assert_eq!(fx.attached(), set(&["vnet0"]));

    // Hostile operations and argument counts: nothing happens.
    fx.reset();
    let arg_sets: Vec<Vec<String>> = vec![
        vec![],
        vec!["web1".into()],
        vec![pwn.clone(), pwn.clone(), pwn.clone(), pwn.clone()],
        vec!["web1".into(), tick.clone(), "begin".into(), "-".into()],
        vec!["web1".into(), "started\n".into(), "begin".into(), "-".into()],
        vec!["web1".into(), "STARTED".into()],
    ];
    for args in &arg_sets {
        let os: Vec<OsString> = args.iter().map(OsString::from).collect();
        let run = fx.wrapped(&os, &xml);
        assert!(run.stdin_ok);
        assert!(fx.attached().is_empty(), "{args:?}");
    }
    // Missing sub-operation and extra are fine; more arguments too.
    for args in [
        vec!["web1", "started"],
        vec!["web1", "started", "begin", "-", "extra", "--", "--help"],
    ] {
        fx.reset();
        let os: Vec<OsString> = args.iter().map(OsString::from).collect();
        fx.wrapped(&os, &xml);
        assert_eq!(fx.attached(), set(&["vnet0"]), "{args:?}");
    }

    // The binary called directly, without `--`: still exit 0, no stdout.
    for name in &names {
        fx.hook(&[name, "started", "begin", "-"], &xml);
    }
    fx.hook(&[], &[]);

    // stdin: empty, binary garbage, a huge document.
    fx.reset();
    let run = fx.hook(&["web1", "started", "begin", "-"], b"");
    assert!(run.stderr.contains("domain XML is empty"), "{}", run.stderr);
    let run = fx.hook(&["web1", "started", "begin", "-"], &[0xff, 0x00, 0xfe, 0x3c]);
    assert!(run.stderr.contains("not UTF-8"), "{}", run.stderr);
    let mut huge = b"<domain><name>big</name><devices><interface type='bridge'><target dev='vnet0'/></interface></devices><!--".to_vec();
    huge.resize(17 << 20, b'x');
    huge.extend_from_slice(b"--></domain>");
    let run = fx.hook(&["big", "started", "begin", "-"], &huge);
    assert!(
        run.stdin_ok,
        "the hook must take a huge document without breaking the pipe"
    );
    assert!(run.stderr.contains("larger than 16 MiB"), "{}", run.stderr);
    let run = fx.hook(&["big", "migrate", "begin", "-"], &huge);
    assert!(run.stdin_ok);
    assert!(fx.attached().is_empty());

    // The same huge document just under the limit is read and acted on.
    let mut big = b"<domain><name>big</name><devices><interface type='bridge'><target dev='vnet0'/></interface></devices><!--".to_vec();
    big.resize((16 << 20) - 100, b'x');
    big.extend_from_slice(b"--></domain>");
    fx.hook(&["big", "started", "begin", "-"], &big);
    assert_eq!(fx.attached(), set(&["vnet0"]));

    assert!(!Path::new(MARKER).exists());
    fx.lab.destroy().unwrap();
}

#[test]
fn wrapper_survives_a_missing_binary() {
    // No root, no lab needed: the wrapper must exit 0, print nothing on stdout and
    // take its stdin even when dhcpfix is not installed.
    let mut child = Command::new(wrapper())
        .env("DHCPFIX_BIN", "/nonexistent/dhcpfix")
        .args(["web1", "started", "begin", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wrapper");
    let mut pipe = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || pipe.write_all(&vec![b'x'; 1 << 20]).is_ok());
    let out = child.wait_with_output().unwrap();
    assert!(writer.join().unwrap());
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}
