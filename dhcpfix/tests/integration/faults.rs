//! Faults: each ends in a clear one-line message and a defined state, never
//! a panic, and never a guest left unprotected without saying so.
//!
//! - `attach` and the agent SIGKILLed at random points: a re-run converges
//!   to exactly one attachment per interface.
//! - The hook (`attach`) and the agent attaching the same new tap at once.
//! - A tap deleted and re-created under the same name.
//! - bpffs unmounted under a running agent: it mounts a new one and attaches
//!   again, or (without CAP_SYS_ADMIN) exits 1 with one line.
//! - A pin directory that cannot be written; a kernel BTF without
//!   `sk_buff.ip_summed`.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use dhcpfix_lab::kit::{netns::command_in, privileged, reference::Rng, unmount_below};
use serde_json::Value;

use crate::support::{
    assert_one_line, is_bpffs, link_pin, mount_bpffs, pinned_link_ifindex, wait_until, Sandbox,
    AGENT_STARTUP, BIN,
};

const SETTLE: Duration = Duration::from_secs(3);

/// Exactly one dhcpfix program on each of `taps`, each pinned link
/// attached to the tap's current ifindex, and `status --json` listing
/// exactly these, attached.
fn assert_covered(sb: &Sandbox, pins: &Path, taps: &[&str]) {
    for tap in taps {
        let progs = sb.wait_programs(tap, &["dhcpfix"], SETTLE);
        assert_eq!(progs, ["dhcpfix"], "{tap}: programs at egress");
        // The agent hooks the ingress a moment after the egress.
        assert_eq!(
            sb.wait_ingress_programs(tap, &["dhcpfix_ingress"], SETTLE),
            ["dhcpfix_ingress"],
            "{tap}: programs at ingress"
        );
        let key = sb.key(tap).expect("tap exists");
        assert_eq!(
            pinned_link_ifindex(pins, &key),
            Some(key.ifindex),
            "{tap}: the pinned link is not the tap's"
        );
    }
    let status: Value = serde_json::from_str(&sb.dhcpfix_ok(pins, &["status", "--json"])).unwrap();
    assert_eq!(status["program_loaded"], true, "{status}");
    let mut listed: Vec<(String, bool)> = status["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        // Attached, and configured (the classifier ignores an interface
        // without configuration).
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_owned(),
                i["attached"] == true && i["mode"] == "fill",
            )
        })
        .collect();
    listed.sort();
    let mut want: Vec<(String, bool)> = taps.iter().map(|t| (t.to_string(), true)).collect();
    want.sort();
    assert_eq!(listed, want, "status --json: {status}");
}

/// Runs `dhcpfix attach NAME` in network namespace `ns` until it succeeds
/// (3 s at most); until the tap exists it must fail with "not found" and
/// nothing else. Returns the successful run's output.
fn hook_until_attached(ns: &Path, pins: &Path, name: &str) -> String {
    let start = Instant::now();
    loop {
        let out = command_in(ns, BIN)
            .arg("--pin-dir")
            .arg(pins)
            .args(["attach", name])
            .output()
            .expect("run dhcpfix attach");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            stderr.contains("not found in this network namespace; nothing was attached"),
            "{name}: attach failed while the agent attached it: {stderr}"
        );
        assert!(start.elapsed() < SETTLE, "{name}: never appeared");
    }
}

/// Spawns `dhcpfix ARGS` in the sandbox with captured output.
fn spawn(sb: &Sandbox, pins: &Path, args: &[&str]) -> Child {
    sb.dhcpfix_cmd(pins, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dhcpfix")
}

fn kill_after(mut child: Child, delay: Duration) -> (bool, String) {
    thread::sleep(delay);
    let _ = child.kill();
    let out = child.wait_with_output().expect("wait for dhcpfix");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "dhcpfix panicked: {stderr}");
    (out.status.success(), stderr)
}

#[test]
fn sigkilled_attach_at_random_points_then_a_rerun_converges() {
    if !privileged("sigkilled_attach_at_random_points_then_a_rerun_converges") {
        return;
    }
    let sb = Sandbox::new();
    let pins = sb.pin_dir();
    let taps = ["vnet0", "vnet1", "vnet2", "vnet3"];
    for tap in taps {
        sb.add_tap(tap);
    }
    let mut rng = Rng::new(0x5191);
    // How long a first attach (BTF, verifier, pinning) takes here; later
    // ones only take a link (a few ms).
    let t = Instant::now();
    sb.dhcpfix_ok(&pins, &["attach", "vnet0"]);
    let load_ms = t.elapsed().as_millis() as u64;
    sb.dhcpfix_ok(&pins, &["clean", "--all"]);
    let (mut finished, mut killed, mut killed_loading) = (0, 0, 0);
    for round in 0..24u64 {
        if round % 8 == 0 && round > 0 {
            // Start over, so that kills land in loading the program again.
            sb.dhcpfix_ok(&pins, &["clean", "--all"]);
        }
        let mut args = vec!["attach"];
        args.extend(taps.iter().filter(|_| rng.chance(60)));
        if args.len() == 1 {
            args.push(taps[round as usize % taps.len()]);
        }
        // 0-30 ms once the program is loaded (taking links, pinning them);
        // anywhere in the first load while it is not, and right after a
        // reset surely within it.
        let loading = !pins.join(dhcpfix::pins::program_rel()).exists();
        let delay = match (loading, round % 8) {
            (true, 0) => rng.below(load_ms / 2),
            (true, _) => rng.below(load_ms * 6 / 5),
            (false, _) => rng.below(31),
        };
        let (ok, _) = kill_after(spawn(&sb, &pins, &args), Duration::from_millis(delay));
        if ok {
            finished += 1;
        } else {
            killed += 1;
            killed_loading += u64::from(loading);
        }
    }
    eprintln!("a first attach took {load_ms} ms; {killed_loading} of the kills landed while loading");
    eprintln!("{killed} attach runs killed, {finished} finished before the kill");
    assert!(killed >= 8, "too few runs were actually killed: {killed}");
    assert!(
        killed_loading > 0 && killed > killed_loading,
        "kills did not land in both phases"
    );
    // A re-run converges: every tap attached exactly once.
    let mut args = vec!["attach"];
    args.extend(taps);
    sb.dhcpfix_ok(&pins, &args);
    assert_covered(&sb, &pins, &taps);
    // Exactly the taps' links (egress and ingress), all in the sandbox's
    // namespace: nothing a killed run left half-made.
    let links = pins.join(dhcpfix::pins::links_rel());
    let mut found: Vec<String> = Vec::new();
    for netns in fs::read_dir(&links).unwrap() {
        let netns = netns.unwrap();
        for link in fs::read_dir(netns.path()).unwrap() {
            let link = link.unwrap().file_name().to_string_lossy().into_owned();
            found.push(format!("{}/{link}", netns.file_name().to_string_lossy()));
        }
    }
    found.sort();
    let mut want: Vec<String> = taps
        .iter()
        .map(|t| sb.key(t).unwrap())
        .flat_map(|k| {
            [
                format!("{}/{}", k.netns, k.ifindex),
                format!("{}/{}-in", k.netns, k.ifindex),
            ]
        })
        .collect();
    want.sort();
    assert_eq!(found, want, "links below {}", links.display());
}

#[test]
fn sigkilled_agent_during_startup_then_a_restart_converges() {
    if !privileged("sigkilled_agent_during_startup_then_a_restart_converges") {
        return;
    }
    let sb = Sandbox::new();
    let pins = sb.pin_dir();
    let taps = ["vnet0", "vnet1", "vnet2", "vnet3", "vnet4"];
    for tap in taps {
        sb.add_tap(tap);
    }
    let args = ["--iface", "vnet*", "--metrics-addr", "none"];
    let mut rng = Rng::new(0xa6e7);
    for round in 0..10u64 {
        match round % 5 {
            // A tap re-created while the agent is down.
            2 => {
                sb.del_link("vnet2");
                sb.add_tap("vnet2");
            }
            // Nothing loaded: the kill lands in loading the program.
            4 => {
                sb.dhcpfix_ok(&pins, &["clean", "--all"]);
            }
            _ => {}
        }
        let agent = sb.agent(&pins, &args, &[]);
        thread::sleep(Duration::from_millis(rng.below(200)));
        let (status, _, log) = agent.stop(libc::SIGKILL);
        assert!(!status.success());
        assert!(!log.contains(" ERROR "), "round {round}:\n{log}");
    }
    let mut agent = sb.agent(&pins, &args, &[]);
    agent.wait_running(AGENT_STARTUP);
    assert_covered(&sb, &pins, &taps);
    let (status, _, log) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{status}\n{log}");
    assert!(!log.contains(" ERROR "), "{log}");
}

#[test]
fn hook_and_agent_attaching_the_same_new_tap_at_once_leave_one_attachment() {
    if !privileged("hook_and_agent_attaching_the_same_new_tap_at_once_leave_one_attachment") {
        return;
    }
    let sb = Sandbox::new();
    let pins = sb.pin_dir();
    let mut agent = sb.agent(&pins, &["--iface", "vnet*", "--metrics-addr", "none"], &[]);
    agent.wait_running(AGENT_STARTUP);
    let names: Vec<String> = (0..12).map(|i| format!("vnet{i}")).collect();
    let mut rng = Rng::new(0x400c);
    let (mut new_by_hook, mut kept_by_hook) = (0, 0);
    for (i, name) in names.iter().enumerate() {
        // The hook is already trying when the tap appears (as libvirt's
        // hook runs while the tap is made): it runs attach again and again
        // until the tap exists, so it and the agent attach at the same
        // moment. Every third time two hooks at once.
        let hooks: Vec<thread::JoinHandle<String>> = (0..1 + usize::from(i % 3 == 0))
            .map(|_| {
                let (cmd_pins, name) = (pins.clone(), name.clone());
                let ns = sb.ns_path();
                thread::spawn(move || hook_until_attached(&ns, &cmd_pins, &name))
            })
            .collect();
        thread::sleep(Duration::from_millis(rng.below(10)));
        sb.add_tap(name);
        for hook in hooks {
            let stdout = hook.join().expect("hook thread");
            if stdout.contains(": attached") {
                new_by_hook += 1;
            } else {
                assert!(stdout.contains("already attached"), "{stdout}");
                kept_by_hook += 1;
            }
        }
    }
    eprintln!("the hook attached {new_by_hook} taps first; {kept_by_hook} times the agent (or the other hook) was first");
    let taps: Vec<&str> = names.iter().map(String::as_str).collect();
    assert!(
        wait_until(SETTLE, || {
            let log = agent.log();
            taps.iter()
                .all(|t| log.contains(&format!("attached {t} ")) || log.contains(&format!("kept {t} ")))
        }),
        "the agent did not cover every tap:\n{}",
        agent.log()
    );
    assert_covered(&sb, &pins, &taps);
    let (status, _, log) = agent.stop(libc::SIGTERM);
    assert!(status.success());
    assert!(!log.contains(" ERROR "), "{log}");
}

/// The agent holds the pin directory's lock only while it changes
/// something: the commands a hook or an operator runs beside it (each
/// waiting up to a minute for the lock) go through at once.
#[test]
fn commands_run_beside_a_running_agent() {
    if !privileged("commands_run_beside_a_running_agent") {
        return;
    }
    let sb = Sandbox::new();
    let pins = sb.pin_dir();
    sb.add_tap("vnet0");
    sb.add_tap("hook0");
    let mut agent = sb.agent(&pins, &["--iface", "vnet*", "--metrics-addr", "none"], &[]);
    agent.wait_running(AGENT_STARTUP);
    for (args, want) in [
        (["attach", "hook0"], &["dhcpfix"][..]),
        (["detach", "hook0"], &[]),
        (["attach", "hook0"], &["dhcpfix"]),
    ] {
        let start = Instant::now();
        let out = sb.dhcpfix(&pins, &args);
        let took = start.elapsed();
        assert!(
            out.status.success(),
            "dhcpfix {args:?} beside the agent: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(took < SETTLE, "dhcpfix {args:?} took {took:?} beside the agent");
        assert_eq!(sb.wait_programs("hook0", want, SETTLE), want, "after {args:?}");
    }
    assert!(sb.dhcpfix_ok(&pins, &["clean"]).contains("nothing to clean"));
    assert_covered(&sb, &pins, &["vnet0", "hook0"]);
    let (status, _, log) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{log}");
    assert!(!log.contains(" ERROR "), "{log}");
}

/// An agent that follows other namespaces (`--netns PATTERN`) covers a
/// namespace created after it started: it gives the namespace an id (its
/// link events name it by that id), attaches its taps, and still stops at
/// once on SIGTERM.
#[test]
fn agent_covers_a_namespace_that_appears_later() {
    if !privileged("agent_covers_a_namespace_that_appears_later") {
        return;
    }
    let sb = Sandbox::new();
    let pins = sb.pin_dir();
    let pattern = sb.netns_name("late*");
    let mut agent = sb.agent(
        &pins,
        &["--iface", "vnet*", "--netns", &pattern, "--metrics-addr", "none"],
        &[],
    );
    agent.wait_running(AGENT_STARTUP);
    let late = sb.netns("late0");
    late.ip(&["tuntap", "add", "dev", "vnet7", "mode", "tap"])
        .unwrap();
    let covered = |status: &Value| {
        status["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "vnet7" && i["netns"]["name"] == late.name() && i["attached"] == true)
    };
    let mut status = Value::Null;
    let attached = wait_until(SETTLE, || {
        status = serde_json::from_str(&sb.dhcpfix_ok(&pins, &["status", "--json"])).unwrap();
        covered(&status)
    });
    assert!(
        attached,
        "vnet7 in {} not attached: {status}\n{}",
        late.name(),
        agent.log()
    );
    assert_eq!(
        crate::support::tcx_programs(late.path(), "vnet7").unwrap(),
        ["dhcpfix"]
    );
    let (status, took, log) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{log}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(
        log.contains(&format!("attached vnet7 in network namespace {}", late.name())),
        "{log}"
    );
    assert!(!log.contains(" ERROR "), "{log}");
}

#[test]
fn tap_recreated_under_the_same_name_is_protected_again() {
    if !privileged("tap_recreated_under_the_same_name_is_protected_again") {
        return;
    }
    let sb = Sandbox::new();
    // Without the agent: a re-run of attach replaces the stale pin.
    let pins = sb.dir.join("bpf-hook");
    sb.add_tap("hook0");
    sb.dhcpfix_ok(&pins, &["attach", "hook0"]);
    let old = sb.key("hook0").unwrap();
    sb.del_link("hook0");
    sb.add_tap("hook0");
    let new = sb.key("hook0").unwrap();
    assert_ne!(old, new);
    // The old pin is dead now, and the new tap unprotected until...
    assert_eq!(pinned_link_ifindex(&pins, &old), Some(0));
    assert!(!link_pin(&pins, &new).exists());
    assert_eq!(sb.tcx_programs("hook0").unwrap(), Vec::<String>::new());
    // ...attach runs again (as the hook does when the guest restarts),
    // which replaces the old pin.
    let out = sb.dhcpfix_ok(&pins, &["attach", "hook0"]);
    assert!(out.contains("hook0: attached"), "{out}");
    assert!(
        !link_pin(&pins, &old).exists(),
        "the dead pin of the old hook0 is left"
    );
    assert_covered(&sb, &pins, &["hook0"]);

    // With the agent: deleted and re-created, 40 times in a row without a
    // pause (the agent races each deletion), then once more after a pause.
    let pins = sb.pin_dir();
    sb.add_tap("vnet0");
    let mut agent = sb.agent(&pins, &["--iface", "vnet*", "--metrics-addr", "none"], &[]);
    agent.wait_running(AGENT_STARTUP);
    assert_covered(&sb, &pins, &["vnet0"]);
    for _ in 0..40 {
        sb.del_link("vnet0");
        sb.add_tap("vnet0");
    }
    let start = Instant::now();
    let key = sb.key("vnet0").unwrap();
    assert!(
        wait_until(SETTLE, || pinned_link_ifindex(&pins, &key) == Some(key.ifindex)),
        "the agent did not attach the re-created vnet0:\n{}",
        agent.log()
    );
    eprintln!(
        "re-created vnet0 covered {:?} after the last re-creation",
        start.elapsed()
    );
    assert_covered(&sb, &pins, &["vnet0"]);
    sb.del_link("vnet0");
    thread::sleep(Duration::from_millis(100));
    sb.add_tap("vnet0");
    let key = sb.key("vnet0").unwrap();
    assert!(wait_until(SETTLE, || pinned_link_ifindex(&pins, &key) == Some(key.ifindex)));
    assert_covered(&sb, &pins, &["vnet0"]);
    let (status, _, log) = agent.stop(libc::SIGTERM);
    assert!(status.success());
    assert!(log.contains("detached vnet0: the interface was deleted"), "{log}");
    assert!(!log.contains(" ERROR "), "{log}");
}

fn unmount(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    assert_eq!(
        rc,
        0,
        "umount {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Defined behaviour: an agent that may mount (CAP_SYS_ADMIN) notices at
/// its next event or full pass (`--resync`), mounts a new bpffs, loads the
/// program and attaches every interface again; without CAP_SYS_ADMIN
/// (the systemd unit) it exits 1 with one line.
#[test]
fn bpffs_unmounted_under_the_agent_is_mounted_again_or_the_agent_exits() {
    if !privileged("bpffs_unmounted_under_the_agent_is_mounted_again_or_the_agent_exits") {
        return;
    }
    let sb = Sandbox::new();
    let pins = sb.pin_dir();
    let taps = ["vnet0", "vnet1"];
    for tap in taps {
        sb.add_tap(tap);
    }
    let mut agent = sb.agent(
        &pins,
        &["--iface", "vnet*", "--metrics-addr", "none", "--resync", "1"],
        &[],
    );
    agent.wait_running(AGENT_STARTUP);
    assert_covered(&sb, &pins, &taps);
    unmount(&pins);
    let start = Instant::now();
    assert!(!is_bpffs(&pins));
    // The links went with the mount: the taps are unprotected for now.
    let gone = wait_until(SETTLE, || sb.tcx_programs("vnet0").unwrap().is_empty());
    eprintln!("after umount: links released: {gone}");
    let back = wait_until(Duration::from_secs(5), || {
        is_bpffs(&pins)
            && taps.iter().all(|t| {
                let key = sb.key(t).unwrap();
                pinned_link_ifindex(&pins, &key) == Some(key.ifindex)
            })
    });
    assert!(back, "the agent did not recover:\n{}", agent.log());
    eprintln!("covered again {:?} after the umount", start.elapsed());
    assert_covered(&sb, &pins, &taps);
    assert!(agent.exited().is_none());
    let (status, _, log) = agent.stop(libc::SIGTERM);
    assert!(status.success());
    assert!(log.contains("is no longer on a bpffs (unmounted?)"), "{log}");
    sb.dhcpfix_ok(&pins, &["clean", "--all"]);
    for tap in taps {
        assert!(sb.wait_programs(tap, &[], SETTLE).is_empty());
    }

    // As under systemd: CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON only, the pin
    // directory inside a bpffs mounted beforehand.
    let bpffs = sb.dir.join("bpffs");
    mount_bpffs(&bpffs);
    let pins = bpffs.join("dhcpfix");
    let setpriv = [
        "setpriv",
        "--bounding-set",
        "-all,+bpf,+net_admin,+perfmon",
        "--inh-caps",
        "-all",
        "--",
    ];
    let mut agent = sb.agent(
        &pins,
        &["--iface", "vnet*", "--metrics-addr", "none", "--resync", "1"],
        &setpriv,
    );
    agent.wait_running(AGENT_STARTUP);
    assert_covered(&sb, &pins, &taps);
    unmount(&bpffs);
    let mut status = None;
    wait_until(Duration::from_secs(5), || {
        status = agent.exited();
        status.is_some()
    });
    let log = agent.log();
    let status = status.unwrap_or_else(|| panic!("the agent kept running without its pins:\n{log}"));
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    let error = log.lines().last().unwrap_or_default();
    assert!(
        error.starts_with("dhcpfix: error: pin directory ") && error.contains("is no longer on a bpffs"),
        "{log}"
    );
    assert!(
        error.contains("mount(2) of a bpffs") && error.contains("CAP_SYS_ADMIN"),
        "{error}"
    );
    eprintln!("without CAP_SYS_ADMIN the agent exits 1: {error}");
}

#[test]
fn unwritable_pin_directory_fails_with_one_line_and_attaches_nothing() {
    if !privileged("unwritable_pin_directory_fails_with_one_line_and_attaches_nothing") {
        return;
    }
    let sb = Sandbox::new();
    sb.add_tap("vnet0");
    // A regular file where the directory should be, or above it.
    let file = sb.dir.join("file");
    fs::write(&file, "not a directory").unwrap();
    // A read-only bind mount.
    let ro = sb.dir.join("ro");
    fs::create_dir(&ro).unwrap();
    for args in [
        vec!["--bind", ro.to_str().unwrap(), ro.to_str().unwrap()],
        vec!["-o", "remount,ro,bind", ro.to_str().unwrap()],
    ] {
        assert!(std::process::Command::new("mount")
            .args(&args)
            .status()
            .unwrap()
            .success());
    }
    // A read-only bpffs (mode 0700: one others may write to is refused
    // before anything is tried).
    let robpf = sb.dir.join("robpf");
    fs::create_dir(&robpf).unwrap();
    assert!(std::process::Command::new("mount")
        .args(["-t", "bpf", "-o", "ro,mode=0700", "bpf"])
        .arg(&robpf)
        .status()
        .unwrap()
        .success());
    // (pin directory, what the error says, the path it names)
    let not_a_dir = "is not safe to use: it is a symlink or not a directory";
    let cases = [
        (file.clone(), not_a_dir, file.clone()),
        (file.join("bpf"), not_a_dir, file.clone()),
        (ro.join("bpf"), "Read-only file system", ro.join("bpf")),
        (robpf.clone(), "Read-only file system", robpf.clone()),
    ];
    for (pins, says, names) in cases {
        let out = sb.dhcpfix(&pins, &["attach", "vnet0"]);
        assert_eq!(out.status.code(), Some(1), "{}", pins.display());
        let line = assert_one_line(&out.stderr);
        assert!(line.starts_with("dhcpfix: error: "), "{line}");
        assert!(
            line.contains(says) && line.contains(names.to_str().unwrap()),
            "{line}"
        );
        assert_eq!(sb.tcx_programs("vnet0").unwrap(), Vec::<String>::new());
    }
    // The file is untouched.
    assert_eq!(fs::read_to_string(&file).unwrap(), "not a directory");
    unmount_below(&ro);
}

#[test]
fn btf_without_ip_summed_fails_naming_the_member() {
    if !privileged("btf_without_ip_summed_fails_naming_the_member") {
        return;
    }
    let vmlinux = Path::new(dhcpfix::kernel_layout::VMLINUX_BTF);
    if !vmlinux.exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{} missing under CI",
            vmlinux.display()
        );
        eprintln!("skipped: no {}", vmlinux.display());
        return;
    }
    let sb = Sandbox::new();
    sb.add_tap("vnet0");
    // The running kernel's BTF with the member name "ip_summed" renamed in
    // the string table: a kernel whose sk_buff lacks the member.
    let mut btf = fs::read(vmlinux).unwrap();
    let needle = b"\0ip_summed\0";
    let at = btf
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("ip_summed in the string table");
    btf[at + 1..at + 10].copy_from_slice(b"ip_sumXed");
    assert_eq!(btf.windows(needle.len()).filter(|w| w == needle).count(), 0);
    let file = sb.dir.join("vmlinux-no-ip_summed");
    fs::write(&file, &btf).unwrap();
    let file = file.to_str().unwrap();
    let pins = sb.pin_dir();
    for args in [
        vec!["attach", "--btf", file, "vnet0"],
        vec!["run", "--btf", file, "--iface", "vnet*", "--metrics-addr", "none"],
    ] {
        let out = sb.dhcpfix(&pins, &args);
        assert_eq!(out.status.code(), Some(1));
        let line = assert_one_line(&out.stderr);
        assert!(
            line.contains("sk_buff.ip_summed") && line.contains("--kernel-layout"),
            "{line}"
        );
        assert_eq!(sb.tcx_programs("vnet0").unwrap(), Vec::<String>::new());
        assert!(
            !pins.join(dhcpfix::pins::program_rel()).exists(),
            "a program was loaded"
        );
    }
    // The override the message suggests works.
    let layout = dhcpfix::kernel_layout::resolve_from(None).unwrap();
    let spec = dhcpfix::kernel_layout::LayoutSpec(layout).to_string();
    sb.dhcpfix_ok(&pins, &["attach", "--kernel-layout", &spec, "vnet0"]);
    assert_covered(&sb, &pins, &["vnet0"]);
}

#[test]
fn not_root_fails_with_one_line_naming_the_privilege() {
    if !privileged("not_root_fails_with_one_line_naming_the_privilege") {
        return;
    }
    let sb = Sandbox::new();
    sb.add_tap("vnet0");
    let pins = sb.pin_dir();
    let nobody = |args: &[&str]| {
        let mut cmd = sb.command("setpriv");
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
            BIN,
            "--pin-dir",
        ])
        .arg(&pins)
        .args(args);
        let out = cmd.output().expect("run setpriv (Debian package util-linux)");
        eprintln!(
            "$ (nobody) dhcpfix {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    // Before anything exists, and once root has attached.
    for root_attached in [false, true] {
        if root_attached {
            sb.dhcpfix_ok(&pins, &["attach", "vnet0"]);
        }
        let mut commands = vec![vec!["attach", "vnet0"]];
        if root_attached {
            commands.extend([
                vec!["stats"],
                vec!["stats", "--json"],
                vec!["status"],
                vec!["detach", "vnet0"],
            ]);
        }
        for args in commands {
            let out = nobody(&args);
            assert_eq!(out.status.code(), Some(1), "{args:?} as nobody");
            let line = assert_one_line(&out.stderr);
            assert!(line.contains("permission denied"), "{line}");
            assert!(
                line.contains("run dhcpfix as root") && line.contains("CAP_BPF"),
                "{line}"
            );
            assert!(out.stdout.is_empty(), "{args:?} printed something");
        }
        let want: &[&str] = if root_attached { &["dhcpfix"] } else { &[] };
        assert_eq!(sb.tcx_programs("vnet0").unwrap(), want);
    }
    let out = nobody(&["run", "--iface", "vnet*"]);
    assert_eq!(out.status.code(), Some(1));
    let line = assert_one_line(&out.stderr);
    assert!(
        line.contains("missing capability CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON"),
        "{line}"
    );
    // Root's pin directory stays root's.
    let mode = fs::metadata(&pins).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

/// Records of a dhcpfix this one does not know (a newer one's `abi-N`
/// next to ours, simulated by making its directory) are refused with one
/// line that says what to do, and `clean --all` clears the way for a fresh
/// attach.
#[test]
fn program_pinned_by_another_version_is_refused_with_advice() {
    if !privileged("program_pinned_by_another_version_is_refused_with_advice") {
        return;
    }
    let lab = crate::support::lab(dhcpfix_lab::lab::Offload::On, dhcpfix_lab::lab::GuestKind::Legacy);
    crate::support::dhcpfix_ok(&lab, &["attach", lab.tap_name()]);
    let ours = lab.pin_dir().join(dhcpfix::pins::abi_dir());
    assert!(ours.is_dir(), "no {}", ours.display());
    let newer = format!("abi-{}", dhcpfix_common::PIN_ABI + 1);
    std::fs::create_dir(lab.pin_dir().join(&newer)).unwrap();

    for args in [
        vec!["attach", "--method", "netlink", "vnet0"],
        vec!["attach", "vnet0"],
    ] {
        let out = crate::support::dhcpfix(&lab, &args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains("does not know") && err.contains(&newer) && err.contains("clean --all"),
            "{err}"
        );
    }

    crate::support::dhcpfix_ok(&lab, &["clean", "--all"]);
    let left: Vec<_> = std::fs::read_dir(lab.pin_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.iter().all(|n| n.to_string_lossy().ends_with(".debug")),
        "left behind: {left:?}"
    );
    crate::support::dhcpfix_ok(&lab, &["attach", lab.tap_name()]);
    assert!(ours.is_dir());
    lab.destroy().unwrap();
}
