//! Security: what dhcpfix creates is root's alone, the metrics listen on
//! loopback unless told otherwise, and interface names (which may hold any
//! byte but '/', ':' and white space) never reach a shell or a path outside
//! the pin directory; and the capabilities dhcpfix needs are the ones
//! its model says (measured).

use std::{
    fs,
    os::unix::{
        fs::{MetadataExt, PermissionsExt},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use dhcpfix::netdev::caps::{Capabilities, Capability, Operation, MEASURED_COLD_TCX};
use dhcpfix_lab::kit::privileged;

use crate::support::{
    assert_one_line, ingress_link_pin, link_pin, mount_bpffs, pinned_link_ifindex, wait_until, Sandbox,
    AGENT_STARTUP, BIN,
};

/// Every directory and file under `root` (and `root`): owned by root, no
/// access for group or others; directories 0700 (bpffs adds the sticky
/// bit to its root), pins 0600, bpffs's own `*.debug` files 0400.
fn assert_root_only(root: &Path) -> usize {
    let mut seen = 0;
    let mut todo = vec![root.to_path_buf()];
    while let Some(path) = todo.pop() {
        let meta = fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        seen += 1;
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{}", path.display());
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{} is {mode:o}", path.display());
            todo.extend(fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            let want = if path.extension().is_some_and(|e| e == "debug") {
                0o400
            } else {
                0o600
            };
            assert!(meta.file_type().is_file(), "{} is not a file", path.display());
            assert_eq!(mode, want, "{} is {mode:o}", path.display());
        }
    }
    seen
}

#[test]
fn pins_and_directories_are_root_only_even_with_umask_0() {
    if !privileged("pins_and_directories_are_root_only_even_with_umask_0") {
        return;
    }
    let sb = Sandbox::new();
    sb.add_tap("vnet0");
    sb.add_tap("vnet1");
    let pins = sb.pin_dir();
    // A careless environment: umask 0.
    let mut cmd = sb.dhcpfix_cmd(&pins, &["attach", "vnet0"]);
    // SAFETY: umask(2) is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let n = assert_root_only(&pins);
    let vnet0 = sb.key("vnet0").unwrap();
    assert!(pins.join(dhcpfix::pins::program_rel()).exists() && link_pin(&pins, &vnet0).exists());
    assert!(ingress_link_pin(&pins, &vnet0).exists());
    eprintln!("after attach: {n} entries, all root-only");

    // And what the agent creates, in a pin directory of its own.
    let agent_pins = sb.dir.join("agent-bpf");
    let mut agent = sb.agent(&agent_pins, &["--iface", "vnet*", "--metrics-addr", "none"], &[]);
    agent.wait_running(AGENT_STARTUP);
    let n = assert_root_only(&agent_pins);
    assert!(
        link_pin(&agent_pins, &sb.key("vnet1").unwrap()).exists()
            && agent_pins
                .join(dhcpfix::pins::map_rel(dhcpfix_common::EVENTS_MAP))
                .exists()
    );
    eprintln!("after run: {n} entries, all root-only");
    let (status, _, _) = agent.stop(libc::SIGTERM);
    assert!(status.success());
}

/// Listening TCP sockets (local address as in /proc/net/tcp) of process `pid`'s
/// network namespace.
fn listeners(pid: u32, table: &str) -> Vec<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // sl local_address rem_address st ...; 0A = LISTEN.
            (f.get(3) == Some(&"0A")).then(|| f[1].to_owned())
        })
        .collect()
}

#[test]
fn metrics_listen_on_loopback_only_unless_told_otherwise() {
    if !privileged("metrics_listen_on_loopback_only_unless_told_otherwise") {
        return;
    }
    let sb = Sandbox::new();
    sb.add_tap("vnet0");
    for (args, want) in [
        // Defaults: 127.0.0.1:9788 (0x263c), little-endian hex in /proc.
        (vec!["--iface", "vnet*"], "0100007F:263C"),
        (
            vec!["--iface", "vnet*", "--metrics-addr", "0.0.0.0:9788"],
            "00000000:263C",
        ),
    ] {
        let pins = sb.dir.join(format!("bpf-{}", want.replace(':', "-")));
        let mut agent = sb.agent(&pins, &args, &[]);
        agent.wait_running(AGENT_STARTUP);
        let pid = agent.child.id();
        assert!(
            wait_until(Duration::from_secs(3), || !listeners(pid, "tcp").is_empty()),
            "no listener:\n{}",
            agent.log()
        );
        assert_eq!(listeners(pid, "tcp"), [want], "{args:?}");
        assert_eq!(listeners(pid, "tcp6"), Vec::<String>::new(), "{args:?}");
        let (status, _, _) = agent.stop(libc::SIGTERM);
        assert!(status.success());
    }
}

/// Taps whose names a shell would act on; all valid for the kernel.
const HOSTILE: [&str; 8] = ["v$(id)", "v;id", "v|sh", "v`id`", "v&&id", "v'\"x", "-v", "v*"];

/// Every program `strace -f -e trace=execve` saw started.
fn execs(trace: &Path) -> Vec<String> {
    fs::read_to_string(trace)
        .unwrap()
        .lines()
        .filter(|l| l.contains("execve(") && !l.contains("= -1 ENOENT"))
        .map(|l| {
            let from = l.find("execve(\"").unwrap() + 8;
            l[from..from + l[from..].find('"').unwrap()].to_owned()
        })
        .collect()
}

fn strace(trace: &Path) -> Vec<String> {
    [
        "strace",
        "-f",
        "-qq",
        "-e",
        "trace=execve",
        "-o",
        trace.to_str().unwrap(),
        "--",
    ]
    .map(str::to_owned)
    .to_vec()
}

#[test]
fn hostile_interface_names_never_reach_a_shell() {
    if !privileged("hostile_interface_names_never_reach_a_shell") {
        return;
    }
    let sb = Sandbox::new();
    for name in HOSTILE {
        sb.add_tap(name);
    }
    let bin = fs::canonicalize(BIN).unwrap();
    let only_dhcpfix = |trace: &Path| {
        let execs = execs(trace);
        assert!(!execs.is_empty(), "strace saw nothing");
        for e in &execs {
            assert_eq!(
                fs::canonicalize(e).ok().as_deref(),
                Some(bin.as_path()),
                "executed {e}"
            );
        }
    };

    // The agent, matching them all.
    let pins = sb.pin_dir();
    let trace = sb.dir.join("agent.strace");
    let wrapper = strace(&trace);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let mut agent = sb.agent(
        &pins,
        &["--iface", "v*", "--iface=-*", "--metrics-addr", "none"],
        &wrapper,
    );
    agent.wait_running(AGENT_STARTUP);
    for name in HOSTILE {
        let key = sb.key(name).unwrap();
        assert_eq!(
            pinned_link_ifindex(&pins, &key),
            Some(key.ifindex),
            "{name}:\n{}",
            agent.log()
        );
        assert_eq!(sb.tcx_programs(name).unwrap(), ["dhcpfix"], "{name}");
    }
    let (status, _, log) = agent.stop_wrapped(libc::SIGTERM);
    assert!(status.success(), "{log}");
    only_dhcpfix(&trace);
    sb.dhcpfix_ok(&pins, &["clean", "--all"]);

    // The commands a hook or an operator runs.
    let pins = sb.dir.join("bpf-cli");
    let mut names = vec!["--"];
    names.extend(HOSTILE);
    for (i, args) in [
        [vec!["attach"], names.clone()].concat(),
        vec!["status", "--json"],
        vec!["stats", "--format", "prometheus"],
        [vec!["detach"], names.clone()].concat(),
    ]
    .into_iter()
    .enumerate()
    {
        let trace = sb.dir.join(format!("cli-{i}.strace"));
        let out = sb
            .command(wrapper[0])
            .args(&strace(&trace)[1..])
            .arg(BIN)
            .arg("--pin-dir")
            .arg(&pins)
            .args(&args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        only_dhcpfix(&trace);
        if args[0] == "status" {
            let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
            let mut listed = crate::support::interface_names(&v);
            listed.sort();
            let mut want = HOSTILE.to_vec();
            want.sort();
            assert_eq!(listed, want);
        }
    }
    for name in HOSTILE {
        assert!(
            sb.wait_programs(name, &[], Duration::from_secs(2)).is_empty(),
            "{name}"
        );
    }
}

#[test]
fn names_that_are_paths_are_refused_before_touching_anything() {
    if !privileged("names_that_are_paths_are_refused_before_touching_anything") {
        return;
    }
    let sb = Sandbox::new();
    sb.add_tap("vnet0");
    let pins = sb.pin_dir();
    sb.dhcpfix_ok(&pins, &["attach", "vnet0"]);
    let before = tree(&sb.dir);
    for name in [
        "..",
        ".",
        "../links",
        "links/vnet0",
        "a/b",
        "",
        "vnet0:1",
        "v net",
        "waytoolongname0123",
    ] {
        for cmd in ["attach", "detach"] {
            let out = sb.dhcpfix(&pins, &[cmd, name]);
            assert_eq!(out.status.code(), Some(1), "{cmd} {name:?}");
            let line = assert_one_line(&out.stderr);
            assert!(line.contains("is not a valid interface name"), "{line}");
        }
    }
    for pattern in ["../*", "a/b*", "v net*", ""] {
        let out = sb.dhcpfix(&pins, &["run", "--iface", pattern]);
        assert_eq!(out.status.code(), Some(1), "run --iface {pattern:?}");
        let line = assert_one_line(&out.stderr);
        assert!(line.contains("interface pattern"), "{line}");
    }
    assert_eq!(tree(&sb.dir), before, "something was created or removed");
    assert_eq!(sb.tcx_programs("vnet0").unwrap(), ["dhcpfix"]);
}

/// Every path below `dir`, sorted.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        if p.is_dir() {
            todo.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
        out.push(p);
    }
    out.sort();
    out
}

/// `setpriv` arguments that leave a root process exactly `caps` (its
/// permitted and effective sets after exec are its bounding set).
fn only_caps(caps: &[Capability]) -> Vec<String> {
    let set: String = caps
        .iter()
        .map(|c| format!(",+{}", c.name().to_lowercase().trim_start_matches("cap_")))
        .collect();
    [
        "--inh-caps=-all",
        "--ambient-caps=-all",
        &format!("--bounding-set=-all{set}"),
        "--",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The measurement behind netdev::caps (its module docs): `dhcpfix attach`
/// as root with only some capabilities, from nothing loaded (and with the
/// program loaded, netlink, and mounting bpffs), against what the model
/// says; and the agent's start-up check agreeing with it.
#[test]
fn capability_sets_match_the_model() {
    if !privileged("capability_sets_match_the_model") {
        return;
    }
    use Capability::*;
    let sb = Sandbox::new();
    sb.add_tap("vnet0");
    let mut n = 0;
    // `dhcpfix attach [--method M] vnet0` with `caps` into a fresh pin
    // directory: on a bpffs mounted beforehand unless `mount`, after root
    // loaded the program there if `preload`. Returns whether it attached,
    // after checking the kernel agrees; vnet0 is clean again afterwards.
    let mut attach = |caps: &[Capability], method: &str, preload: bool, mount: bool| -> bool {
        n += 1;
        let bpffs = sb.dir.join(format!("caps-{n}"));
        let pins = if mount {
            sb.dir.join(format!("caps-{n}-unmounted"))
        } else {
            mount_bpffs(&bpffs);
            bpffs.join("dhcpfix")
        };
        if preload {
            sb.dhcpfix_ok(&pins, &["attach", "vnet0"]);
            sb.dhcpfix_ok(&pins, &["detach", "vnet0"]);
            assert!(sb.wait_programs("vnet0", &[], Duration::from_secs(2)).is_empty());
        }
        let out = sb
            .command("setpriv")
            .args(only_caps(caps))
            .arg(BIN)
            .arg("--pin-dir")
            .arg(&pins)
            .args(["attach", "--method", method, "vnet0"])
            .output()
            .unwrap();
        let ok = out.status.success();
        let what = format!(
            "{caps:?} {method} preload={preload} mount={mount}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{what}");
        if !ok {
            assert_one_line(&out.stderr);
        }
        let tc = sb
            .command("tc")
            .args(["filter", "show", "dev", "vnet0", "egress"])
            .output()
            .unwrap();
        let filter = String::from_utf8_lossy(&tc.stdout).contains("dhcpfix");
        let tcx = sb.tcx_programs("vnet0").unwrap();
        match (ok, method) {
            (true, "tcx") => assert_eq!(tcx, ["dhcpfix"], "{what}"),
            (true, _) => assert!(filter && tcx.is_empty(), "{what}"),
            (false, _) => assert!(!filter && tcx.is_empty(), "{what}"),
        }
        // Clean for the next case: a new tap (a filter goes with the old).
        sb.del_link("vnet0");
        sb.add_tap("vnet0");
        ok
    };
    let model = |caps: &[Capability], ops: &[Operation]| Capabilities::of(caps).missing(ops).is_empty();

    // Cold: loading and a tcx link.
    for &(caps, measured) in MEASURED_COLD_TCX {
        assert_eq!(attach(caps, "tcx", false, false), measured, "{caps:?}");
        assert_eq!(
            model(caps, &[Operation::Load, Operation::AttachTcx]),
            measured,
            "{caps:?}"
        );
    }
    // The program loaded already: a tcx link needs nothing.
    for caps in [&[][..], &[Bpf], &[NetAdmin], &[Perfmon]] {
        assert!(attach(caps, "tcx", true, false), "{caps:?}");
        assert!(model(caps, &[Operation::AttachTcx]), "{caps:?}");
    }
    // netlink: CAP_NET_ADMIN itself; CAP_SYS_ADMIN does not stand in.
    for (caps, measured) in [
        (&[SysAdmin][..], false),
        (&[SysAdmin, NetAdmin], true),
        (&[Bpf, NetAdmin, Perfmon], true),
    ] {
        assert_eq!(attach(caps, "netlink", false, false), measured, "{caps:?}");
        assert_eq!(
            model(caps, &[Operation::Load, Operation::AttachNetlink]),
            measured,
            "{caps:?}"
        );
    }
    assert!(!attach(&[], "netlink", true, false));
    assert!(attach(&[NetAdmin], "netlink", true, false));
    // No bpffs at the pin directory: attach mounts one, with CAP_SYS_ADMIN.
    for (caps, measured) in [(&[Bpf, NetAdmin, Perfmon][..], false), (&[SysAdmin], true)] {
        assert_eq!(attach(caps, "tcx", false, true), measured, "{caps:?}");
        let ops = [Operation::Load, Operation::AttachTcx, Operation::MountBpffs];
        assert_eq!(model(caps, &ops), measured, "{caps:?}");
    }

    // The agent checks the same model before it starts: CAP_SYS_ADMIN
    // alone runs it (tcx), and is refused with --method netlink.
    let bpffs = sb.dir.join("caps-agent");
    mount_bpffs(&bpffs);
    let pins = bpffs.join("dhcpfix");
    let wrapper = [vec!["setpriv".to_owned()], only_caps(&[SysAdmin])].concat();
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let mut agent = sb.agent(&pins, &["--iface", "vnet*", "--metrics-addr", "none"], &wrapper);
    agent.wait_running(AGENT_STARTUP);
    assert_eq!(sb.tcx_programs("vnet0").unwrap(), ["dhcpfix"], "{}", agent.log());
    let (status, _, log) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{log}");
    let args = [
        "--iface",
        "vnet*",
        "--metrics-addr",
        "none",
        "--method",
        "netlink",
    ];
    let mut agent = sb.agent(&pins, &args, &wrapper);
    assert!(wait_until(Duration::from_secs(10), || agent.exited().is_some()));
    let log = agent.log();
    assert!(!agent.exited().unwrap().success());
    assert_eq!(log.trim().lines().count(), 1, "{log}");
    assert!(
        log.contains("missing capability CAP_NET_ADMIN: a netlink attachment needs CAP_NET_ADMIN"),
        "{log}"
    );
}
