//! Hardening (issue 12, items 7 to 11): what a local user without
//! privileges, a guest, or plain time can do to dhcpfix, each tried for
//! real against the binary.
//!
//! - 7: a bpffs mounted without `mode=` is world-writable: a user's pin
//!   directory, symlinks planted on the way, a held lock; and the advice
//!   to mount a bpffs, followed as given.
//! - 8: the agent's metrics endpoint under an endless request head and
//!   600 idle connections, with few file descriptors.
//! - 9: a guest flooding partial DHCP broadcasts: the agent's log stays
//!   short, and new taps are still attached at once.
//! - 10: thousands of taps created, attached and deleted without an agent.
//! - 11: `ip netns exec NS dhcpfix attach` (pins private to a mount
//!   namespace that dies with the command) is refused.

use std::{
    fs,
    os::fd::AsRawFd,
    os::unix::{fs::MetadataExt, net::UnixDatagram},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use dhcpfix::pins::HOOK_LOCK_TIMEOUT;
use dhcpfix_lab::kit::{self, privileged, process, user};
use serde_json::Value;

use crate::support::{
    assert_one_line, run_dhcpfix, run_dhcpfix_ok, show, tcx_programs, wait_until, Sandbox, BIN,
};

/// `setpriv` arguments that run a command as nobody (uid and gid 65534, no
/// groups), as any local user could.
const AS_NOBODY: [&str; 5] = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--",
];

/// Runs `ARGS` as nobody; it must succeed.
fn as_nobody(args: &[&str]) {
    let mut cmd = Command::new(AS_NOBODY[0]);
    cmd.args(&AS_NOBODY[1..]).args(args);
    process::run(&mut cmd, None, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
}

/// Whether something is mounted exactly at `path`.
fn is_mount_point(path: &Path) -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|p| Path::new(p) == path)
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A bpffs as hosts (and older advice) mount it, without `mode=`: its
/// root is world-writable and sticky (1777), like /sys/fs/bpf on many
/// hosts. Unmounted with the sandbox.
fn world_writable_bpffs(sb: &Sandbox) -> PathBuf {
    let dir = sb.dir.join("bpffs");
    crate::support::mount_bpffs(&dir);
    assert_eq!(
        fs::metadata(&dir).unwrap().mode() & 0o7777,
        0o1777,
        "{}",
        dir.display()
    );
    dir
}

/// A failed `dhcpfix` run: one line on stderr, no panic; the line.
fn refused(out: &Output) -> String {
    assert!(!out.status.success(), "dhcpfix succeeded");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_one_line(&out.stderr)
}

fn nothing_on(sb: &Sandbox, iface: &str) {
    assert_eq!(
        sb.tcx_programs(iface).unwrap(),
        Vec::<String>::new(),
        "{iface} has a program"
    );
}

/// Item 7a: a pin directory a user made beforehand on a world-writable
/// bpffs is refused with one line and left as it was; the bpffs root
/// itself is refused with the advice to mount it 0700; a directory root
/// makes below it is root's alone.
#[test]
fn pin_directory_made_by_a_user_is_refused_and_left_alone() {
    if !privileged("pin_directory_made_by_a_user_is_refused_and_left_alone") {
        return;
    }
    let sb = Sandbox::new();
    sb.add_tap("vnet0");
    let bpffs = world_writable_bpffs(&sb);
    let pins = bpffs.join("dhcpfix");
    as_nobody(&["mkdir", "-m", "0755", pins.to_str().unwrap()]);

    for args in [
        &["attach", "vnet0"][..],
        &["run", "--iface", "vnet*", "--metrics-addr", "none"],
    ] {
        let line = refused(&sb.dhcpfix(&pins, args));
        assert!(
            line.contains("is not safe to use") && line.contains("belongs to uid 65534"),
            "{line}"
        );
        assert_eq!(
            names(&pins),
            Vec::<String>::new(),
            "dhcpfix wrote into the user's directory"
        );
        assert_eq!(fs::metadata(&pins).unwrap().uid(), 65534);
        assert!(
            !is_mount_point(&pins),
            "a bpffs was mounted on the user's directory"
        );
        nothing_on(&sb, "vnet0");
    }

    // The world-writable root itself: refused, with the advice.
    let line = refused(&sb.dhcpfix(&bpffs, &["attach", "vnet0"]));
    assert!(
        line.contains("others may write to it (mode 1777)") && line.contains("`-o mode=0700`"),
        "{line}"
    );
    nothing_on(&sb, "vnet0");

    // Once the user's directory is gone, root's own is made: root's alone.
    fs::remove_dir(&pins).unwrap();
    sb.dhcpfix_ok(&pins, &["attach", "vnet0"]);
    let meta = fs::metadata(&pins).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o700));
    assert_eq!(sb.tcx_programs("vnet0").unwrap(), ["dhcpfix"]);
    // And nobody can look inside, let alone lock it.
    let opened = user::as_nobody(None, || fs::File::open(&pins).map(drop)).unwrap();
    assert_eq!(
        opened.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::PermissionDenied),
        "nobody can open root's pin directory"
    );
}

/// Item 7b: symlinks a user plants where the pin directory or one of its
/// parents goes are never followed: nothing is mounted or made at their
/// target, and `clean --all` through one removes nothing there.
#[test]
fn symlinks_planted_by_a_user_are_never_followed() {
    if !privileged("symlinks_planted_by_a_user_are_never_followed") {
        return;
    }
    let sb = Sandbox::new();
    sb.add_tap("vnet0");
    sb.add_tap("vnet1");
    let bpffs = world_writable_bpffs(&sb);
    // A directory of root's the user would like dhcpfix to mount over or
    // write into...
    let victim = sb.dir.join("victim");
    fs::create_dir(&victim).unwrap();
    fs::write(victim.join("keep"), "root's\n").unwrap();
    // ...and a real pin directory with an attachment, which `clean --all`
    // would empty.
    let real = sb.dir.join("real");
    sb.dhcpfix_ok(&real, &["attach", "vnet1"]);
    let real_pins = names(&real.join(dhcpfix::pins::abi_dir()));

    let link = |name: &str, target: &Path| {
        let path = bpffs.join(name);
        as_nobody(&["ln", "-s", target.to_str().unwrap(), path.to_str().unwrap()]);
        path
    };
    let at_victim = link("pins", &victim);
    let through = link("parent", &victim);
    let at_real = link("real", &real);

    for pins in [at_victim.clone(), through.join("dhcpfix")] {
        for args in [&["attach", "vnet0"][..], &["clean", "--all"], &["status"]] {
            let line = refused(&sb.dhcpfix(&pins, args));
            assert!(line.contains("symlink"), "{line}");
        }
        assert!(
            !is_mount_point(&victim),
            "a bpffs was mounted over the link's target"
        );
        assert_eq!(names(&victim), ["keep"], "dhcpfix wrote through the link");
        nothing_on(&sb, "vnet0");
    }
    let line = refused(&sb.dhcpfix(&at_real, &["clean", "--all"]));
    assert!(line.contains("symlink"), "{line}");
    assert_eq!(names(&real.join(dhcpfix::pins::abi_dir())), real_pins);
    assert_eq!(sb.tcx_programs("vnet1").unwrap(), ["dhcpfix"]);
    // The links are still the user's links, pointing where they did.
    for (path, target) in [(&at_victim, &victim), (&through, &victim), (&at_real, &real)] {
        assert_eq!(&fs::read_link(path).unwrap(), target);
    }
}

/// Reports sent to the hook's syslog socket, one per datagram.
fn syslog_lines(socket: &UnixDatagram) -> Vec<String> {
    let mut lines = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(n) = socket.recv(&mut buf) {
        lines.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    lines
}

/// Starts `dhcpfix --pin-dir PINS libvirt-hook -- db1 start begin -` in the
/// sandbox, the fixture's domain XML (tap vnet0) on stdin, its reports
/// going to `syslog`.
fn start_hook(sb: &Sandbox, pins: &Path, syslog: &Path) -> Child {
    let xml = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/libvirt/bridge.xml");
    sb.dhcpfix_cmd(pins, &["libvirt-hook", "--", "db1", "start", "begin", "-"])
        .env("DHCPFIX_SYSLOG_SOCKET", syslog)
        .stdin(fs::File::open(xml).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the hook")
}

/// Waits (up to `limit`) for a hook; its output and how long it ran.
fn finish(child: Child, started: Instant, limit: Duration) -> (Output, Duration) {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => {
            let out = out.expect("wait for the hook");
            let took = started.elapsed();
            show(&format!("libvirt-hook ({took:.1?})"), &out);
            (out, took)
        }
        Err(_) => {
            // SAFETY: kill(2) on our own child; the thread above reaps it.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("the hook still ran after {limit:?}: a guest's start would hang");
        }
    }
}

/// Item 7c: a held pin directory lock never hangs the libvirt hook. A
/// user's directory (which a user can lock) is refused at once; root's
/// (which only root can lock: a stuck dhcpfix) is waited for
/// HOOK_LOCK_TIMEOUT, then the hook gives up, exits 0 and says why, while a
/// command (60 s, `pins::LOCK_TIMEOUT`, not configurable: its expiry is
/// not waited for here) keeps waiting and attaches once the lock is free.
#[test]
fn held_lock_never_hangs_the_libvirt_hook() {
    if !privileged("held_lock_never_hangs_the_libvirt_hook") {
        return;
    }
    let sb = Sandbox::new();
    sb.add_tap("vnet0");
    let syslog_path = sb.dir.join("syslog.sock");
    let syslog = UnixDatagram::bind(&syslog_path).unwrap();
    syslog.set_nonblocking(true).unwrap();
    let bpffs = world_writable_bpffs(&sb);

    // The user's own directory, locked by the user for as long as it likes.
    let users = bpffs.join("dhcpfix");
    as_nobody(&["mkdir", users.to_str().unwrap()]);
    let held = user::as_nobody(None, || lock(&users)).unwrap();
    assert!(is_locked(&users));
    let started = Instant::now();
    let (out, took) = finish(
        start_hook(&sb, &users, &syslog_path),
        started,
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "the hook failed a guest's start");
    assert!(took < Duration::from_secs(2), "the hook took {took:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("belongs to uid 65534") && said.contains("nothing attached"),
        "{said}"
    );
    let logged = syslog_lines(&syslog);
    assert!(
        logged.iter().any(|l| l.contains("belongs to uid 65534")),
        "syslog: {logged:?}"
    );
    assert_eq!(
        names(&users),
        Vec::<String>::new(),
        "the hook wrote into the user's directory"
    );
    nothing_on(&sb, "vnet0");
    drop(held);

    // Root's directory, held by a stuck root process.
    let pins = sb.dir.join("bpf");
    sb.dhcpfix_ok(&pins, &["attach", "--audit", "vnet0"]);
    sb.dhcpfix_ok(&pins, &["detach", "vnet0"]);
    let stuck = lock(&pins);
    assert!(is_locked(&pins));
    let started = Instant::now();
    let hook = start_hook(&sb, &pins, &syslog_path);
    let command = sb
        .dhcpfix_cmd(&pins, &["attach", "vnet0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (out, took) = finish(hook, started, HOOK_LOCK_TIMEOUT + Duration::from_secs(20));
    assert!(out.status.success(), "the hook failed a guest's start");
    assert!(
        took >= HOOK_LOCK_TIMEOUT - Duration::from_millis(500)
            && took < HOOK_LOCK_TIMEOUT + Duration::from_secs(4),
        "the hook gave up after {took:?}, not after {HOOK_LOCK_TIMEOUT:?}"
    );
    let said = String::from_utf8_lossy(&out.stderr);
    let why = format!(
        "stayed locked by another dhcpfix for {} s",
        HOOK_LOCK_TIMEOUT.as_secs()
    );
    assert!(said.contains(&why) && said.contains("vnet0"), "{said}");
    assert!(
        syslog_lines(&syslog).iter().any(|l| l.contains(&why)),
        "not in syslog"
    );
    nothing_on(&sb, "vnet0");
    // The command waits on (a minute), and goes on once the lock is free.
    let mut command = command;
    assert!(
        command.try_wait().unwrap().is_none(),
        "attach did not wait for the lock"
    );
    drop(stuck);
    let (out, _) = finish(command, Instant::now(), Duration::from_secs(10));
    assert!(out.status.success());
    assert_eq!(sb.tcx_programs("vnet0").unwrap(), ["dhcpfix"]);
}

/// Takes the lock dhcpfix takes on a pin directory (flock(2), exclusive,
/// on the directory itself), as whoever calls it; held until dropped.
fn lock(dir: &Path) -> fs::File {
    let f = fs::File::open(dir).unwrap_or_else(|e| panic!("open {}: {e}", dir.display()));
    // SAFETY: flock(2) on a descriptor that stays open with `f`.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(
        rc,
        0,
        "flock {}: {}",
        dir.display(),
        std::io::Error::last_os_error()
    );
    f
}

/// Whether someone holds a flock on `dir` (a non-blocking attempt fails).
fn is_locked(dir: &Path) -> bool {
    let Ok(f) = fs::File::open(dir) else {
        return false;
    };
    // SAFETY: flock(2) on a descriptor open for the call; closing it drops
    // a lock taken here.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
}

/// The advice dhcpfix gives to mount a bpffs, run exactly as given: it
/// works and makes a bpffs only root may use. From the doctor (run as a
/// user who cannot mount), for a directory that does not exist yet and one
/// that does, and from `attach` without CAP_SYS_ADMIN.
#[test]
fn advice_to_mount_a_bpffs_works_as_given() {
    if !privileged("advice_to_mount_a_bpffs_works_as_given") {
        return;
    }
    let sb = Sandbox::new();
    sb.add_tap("vnet0");
    let doctor_as_nobody = |pins: &Path| -> String {
        let mut cmd = Command::new(AS_NOBODY[0]);
        cmd.args(&AS_NOBODY[1..])
            .arg(BIN)
            .arg("--pin-dir")
            .arg(pins)
            .args(["doctor", "--json"]);
        let out = process::run_unchecked(&mut cmd, None, Duration::from_secs(60)).unwrap();
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("doctor --json: {e}: {}", String::from_utf8_lossy(&out.stderr)));
        let check = report["kernel"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["item"] == "pin directory")
            .unwrap_or_else(|| panic!("no pin directory check: {report}"))
            .clone();
        format!(
            "{}: {}",
            check["level"].as_str().unwrap(),
            check["detail"].as_str().unwrap()
        )
    };
    let missing = sb.dir.join("missing");
    let empty = sb.dir.join("empty");
    fs::create_dir(&empty).unwrap();
    for pins in [&missing, &empty] {
        let said = doctor_as_nobody(pins);
        let command = advice(&said);
        assert!(command.contains("mount -t bpf -o mode=0700 bpf"), "{said}");
        let run = Command::new("sh").args(["-c", &command]).output().unwrap();
        show(&command, &run);
        assert!(run.status.success(), "the doctor's advice failed: {command}");
        // Now root's alone: nobody's doctor cannot look inside any more.
        let said = doctor_as_nobody(pins);
        assert!(
            said.contains("permission denied; the pin directory is root's"),
            "{said}"
        );
        root_only_pin_dir(&sb, pins);
    }

    // attach without CAP_SYS_ADMIN (as under systemd) cannot mount.
    let pins = sb.dir.join("bpf");
    let mut cmd = sb.command("setpriv");
    cmd.args(["--bounding-set=-sys_admin", "--inh-caps=-all", "--"])
        .arg(BIN)
        .arg("--pin-dir")
        .arg(&pins)
        .args(["attach", "vnet0"]);
    let out = cmd.output().unwrap();
    show("attach without CAP_SYS_ADMIN", &out);
    let line = refused(&out);
    let command = line
        .split_once("mount one there: ")
        .map(|(_, c)| c.trim().to_owned())
        .unwrap_or_else(|| panic!("no advice: {line}"));
    let run = Command::new("sh").args(["-c", &command]).output().unwrap();
    show(&command, &run);
    assert!(run.status.success(), "the advice failed: {command}");
    let mut cmd = sb.command("setpriv");
    cmd.args(["--bounding-set=-sys_admin", "--inh-caps=-all", "--"])
        .arg(BIN);
    run_dhcpfix_ok(cmd, &pins, &["attach", "vnet0"]);
    root_only_pin_dir(&sb, &pins);
}

/// The command inside the last `(...)` of an advice.
fn advice(said: &str) -> String {
    said.rsplit_once('(')
        .and_then(|(_, rest)| rest.rsplit_once(')'))
        .map(|(c, _)| c.to_owned())
        .unwrap_or_else(|| panic!("no command in: {said}"))
}

/// `pins` is a bpffs root of mode 0700 (bpffs adds the sticky bit to its
/// root), root's, and dhcpfix attaches there.
fn root_only_pin_dir(sb: &Sandbox, pins: &Path) {
    let meta = fs::metadata(pins).unwrap();
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (0, 0o700),
        "{}",
        pins.display()
    );
    assert!(is_mount_point(pins));
    sb.dhcpfix_ok(pins, &["attach", "vnet0"]);
    assert_eq!(sb.tcx_programs("vnet0").unwrap(), ["dhcpfix"]);
    sb.dhcpfix_ok(pins, &["clean", "--all"]);
}

/// `/sys/fs/bpf/<name>` for a test; on drop its pins and the directory are
/// removed, and the bpffs at /sys/fs/bpf too if the test's dhcpfix mounted
/// it there (as systemd would have) and nothing else uses it.
struct HostPinDir {
    path: PathBuf,
    host_bpffs_before: bool,
}

const SYS_FS_BPF: &str = "/sys/fs/bpf";

/// Whether `path` is on a bpffs at all (statfs), whatever its mode and owner
/// (`support::is_bpffs` asks whether dhcpfix would use it as a pin directory).
fn statfs_is_bpffs(path: &Path) -> bool {
    // SAFETY: a zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a valid path and `st` writable.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == 0xcafe_4a11 }
}

impl HostPinDir {
    fn new(name: &str) -> HostPinDir {
        HostPinDir {
            path: Path::new(SYS_FS_BPF).join(name),
            host_bpffs_before: statfs_is_bpffs(Path::new(SYS_FS_BPF)),
        }
    }
}

impl Drop for HostPinDir {
    fn drop(&mut self) {
        if self.path.exists() {
            let _ = Command::new(BIN)
                .arg("--pin-dir")
                .arg(&self.path)
                .args(["clean", "--all"])
                .output();
            let _ = kit::unmount_below(&self.path);
            if let Err(e) = fs::remove_dir(&self.path) {
                eprintln!("cleanup: {}: {e}", self.path.display());
            }
        }
        let host = Path::new(SYS_FS_BPF);
        // bpffs's own files are always there.
        let unused = fs::read_dir(host).is_ok_and(|d| {
            d.flatten()
                .all(|e| e.file_name() == "maps.debug" || e.file_name() == "progs.debug")
        });
        if !self.host_bpffs_before && statfs_is_bpffs(host) && unused {
            let _ = Command::new("umount").arg(host).output();
        }
    }
}

/// Item 11: `ip netns exec` gives its command a mount namespace of its own
/// with a fresh /sys: a bpffs dhcpfix mounted there, and every attachment
/// pinned in it, would vanish with the command. Refused with one line
/// naming the way that works, which then works.
#[test]
fn attach_under_ip_netns_exec_is_refused_and_netns_works() {
    if !privileged("attach_under_ip_netns_exec_is_refused_and_netns_works") {
        return;
    }
    let sb = Sandbox::new();
    sb.add_tap("vnet0");
    let host = HostPinDir::new(&format!("{}-pins", sb.name));
    let pins = host.path.clone();
    let ip = kit::find_tool("ip", "iproute2").unwrap();
    let mut cmd = Command::new(ip);
    cmd.args(["netns", "exec", &sb.name, BIN]);
    let out = run_dhcpfix(cmd, &pins, &["attach", "vnet0"]);
    let line = refused(&out);
    assert!(
        line.contains("private to this mount namespace") && line.contains("--netns"),
        "{line}"
    );
    nothing_on(&sb, "vnet0");
    assert!(!pins.exists(), "{} was made on the host", pins.display());
    assert_eq!(
        statfs_is_bpffs(Path::new(SYS_FS_BPF)),
        host.host_bpffs_before,
        "the refused run changed the host's /sys/fs/bpf"
    );

    // The way that works: from the host's mounts, into the namespace.
    let out = run_dhcpfix_ok(
        Command::new(BIN),
        &pins,
        &["attach", "--netns", &sb.name, "vnet0"],
    );
    assert!(out.contains("vnet0: attached"), "{out}");
    assert_eq!(sb.tcx_programs("vnet0").unwrap(), ["dhcpfix"]);
    let status: Value = serde_json::from_str(&run_dhcpfix_ok(
        Command::new(BIN),
        &pins,
        &["status", "--json", "--netns", &sb.name],
    ))
    .unwrap();
    let listed = &status["interfaces"][0];
    assert_eq!(
        (&listed["name"], &listed["netns"]["name"], &listed["attached"]),
        (
            &Value::from("vnet0"),
            &Value::from(sb.name.as_str()),
            &Value::from(true)
        ),
        "{status}"
    );
    // It outlives the command, as it should.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(tcx_programs(&sb.ns_path(), "vnet0").unwrap(), ["dhcpfix"]);
}

/// Where the agents of the metrics test listen, inside their sandbox's
/// namespace (loopback only; a namespace of their own, so any port does).
const METRICS_PORT: u16 = 9788;

/// `GET PATH` on the sandbox's metrics port, `Connection: close`; the
/// status line and body, or why not within `limit`.
fn http_get(ns: &Path, path: &str, limit: Duration) -> Result<(String, String), String> {
    use std::io::{Read, Write};
    crate::support::in_netns(ns, || {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], METRICS_PORT));
        let mut s =
            std::net::TcpStream::connect_timeout(&addr, limit).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(limit)).unwrap();
        s.set_write_timeout(Some(limit)).unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n").as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).map_err(|e| format!("receive: {e}"))?;
        let reply = String::from_utf8_lossy(&reply).into_owned();
        let (head, body) = reply
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no reply (connection closed): {reply:?}"))?;
        Ok((
            head.lines().next().unwrap_or_default().to_owned(),
            body.to_owned(),
        ))
    })
}

/// `/metrics` answers 200 with dhcpfix's series, within 2 s.
fn scrape(ns: &Path) -> Result<Duration, String> {
    let start = Instant::now();
    let (status, body) = http_get(ns, "/metrics", Duration::from_secs(2))?;
    if !status.contains(" 200 ") || !body.contains("dhcpfix_") {
        return Err(format!("{status}: {body:.200}"));
    }
    Ok(start.elapsed())
}

/// (VmRSS in KiB, open descriptors) of a process.
fn rss_and_fds(pid: u32) -> (u64, usize) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    (rss, fds)
}

/// One connection of nobody's that sends a request head without end, as
/// fast as it can: until the agent closes it or `until`. Returns whether
/// the agent closed it, and the bytes it took.
fn endless_head(until: Instant) -> (bool, usize) {
    use std::io::Write;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], METRICS_PORT));
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return (false, 0);
    };
    s.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut sent = 0;
    if s.write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nX-Endless: ")
        .is_err()
    {
        return (true, sent);
    }
    let chunk = [b'a'; 4096];
    while Instant::now() < until {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
            }
            Err(_) => return (true, sent),
        }
    }
    (false, sent)
}

/// One connection of nobody's that trickles a request head, a byte every
/// 200 ms; how long until the agent closed it (`None`: not by `until`).
fn trickled_head(until: Instant) -> Option<Duration> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], METRICS_PORT));
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n");
    let mut buf = [0u8; 512];
    while Instant::now() < until {
        if s.write_all(b"X").is_err() {
            return Some(start.elapsed());
        }
        match s.read(&mut buf) {
            // EOF, or the agent's error reply: it is closing.
            Ok(_) => return Some(start.elapsed()),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
            }
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

/// Item 8: any local user can reach the metrics endpoint. As nobody: an
/// endless request head, a trickled one, then 600 idle connections held
/// open; the agent runs with 1024 descriptors (`prlimit`, a service
/// without LimitNOFILE). Its memory and descriptors stay bounded,
/// `/metrics` keeps answering on the first try, a new tap is attached
/// within 1 s, and when accept(2) does fail (descriptors taken away), the
/// errno is logged and the listener goes on.
#[test]
fn metrics_endpoint_withstands_a_local_user() {
    if !privileged("metrics_endpoint_withstands_a_local_user") {
        return;
    }
    use dhcpfix::agent::http::{HEADER_TIMEOUT, MAX_CONNECTIONS};
    let sb = Sandbox::new();
    let ns = sb.ns_path();
    sb.add_tap("vnet0");
    let pins = sb.pin_dir();
    let addr = format!("127.0.0.1:{METRICS_PORT}");
    let mut agent = sb.agent(
        &pins,
        &["--iface", "vnet*", "--metrics-addr", &addr],
        &["prlimit", "--nofile=1024", "--"],
    );
    agent.wait_running(crate::support::AGENT_STARTUP);
    let pid = agent.child.id();
    assert!(
        fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e.ends_with("dhcpfix")),
        "prlimit did not exec the agent"
    );
    scrape(&ns).unwrap();
    let (rss0, fds0) = rss_and_fds(pid);
    eprintln!("agent: VmRSS {rss0} KiB, {fds0} descriptors");

    // ~10 s of endless and trickled request heads, scraped meanwhile.
    let until = Instant::now() + Duration::from_secs(10);
    let endless = {
        let ns = ns.clone();
        std::thread::spawn(move || {
            user::as_nobody(Some(&ns), || {
                let mut runs = Vec::new();
                while Instant::now() < until {
                    runs.push(endless_head(until));
                }
                runs
            })
            .unwrap()
        })
    };
    let trickled = {
        let ns = ns.clone();
        std::thread::spawn(move || user::as_nobody(Some(&ns), || trickled_head(until)).unwrap())
    };
    let mut scrapes = Vec::new();
    while Instant::now() < until {
        scrapes.push(scrape(&ns).unwrap_or_else(|e| panic!("/metrics under an endless head: {e}")));
        std::thread::sleep(Duration::from_millis(500));
    }
    let runs = endless.join().unwrap();
    let trickle = trickled.join().unwrap();
    let closed = runs.iter().filter(|(closed, _)| *closed).count();
    let most = runs.iter().map(|(_, sent)| *sent).max().unwrap_or(0);
    eprintln!(
        "endless heads: {} connections, {closed} closed by the agent, at most {most} bytes written into one (socket buffers included); trickle closed after {trickle:?}; {} scrapes, slowest {:?}",
        runs.len(),
        scrapes.len(),
        scrapes.iter().max()
    );
    assert!(
        !runs.is_empty() && closed + 1 >= runs.len(),
        "the agent let an endless head go on"
    );
    let trickle = trickle.expect("the agent never closed a trickled head");
    assert!(trickle < HEADER_TIMEOUT + Duration::from_secs(2), "{trickle:?}");
    let (rss1, _) = rss_and_fds(pid);
    eprintln!("agent: VmRSS {rss1} KiB after the heads");
    assert!(rss1 < rss0 + 32 * 1024, "VmRSS grew from {rss0} to {rss1} KiB");

    // 600 idle connections, held.
    let idle = user::as_nobody(Some(&ns), || {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], METRICS_PORT));
        (0..600)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect::<Vec<_>>()
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (_, fds) = rss_and_fds(pid);
    eprintln!("agent: {fds} descriptors with 600 idle connections");
    assert!(
        fds <= fds0 + MAX_CONNECTIONS + 8,
        "{fds} descriptors open ({fds0} before)"
    );
    for _ in 0..5 {
        scrape(&ns).unwrap_or_else(|e| panic!("/metrics with 600 idle connections: {e}"));
    }
    let (status, _) = http_get(&ns, "/healthz", Duration::from_secs(2)).unwrap();
    assert!(status.contains(" 200 "), "{status}");
    let start = Instant::now();
    sb.add_tap("vnet1");
    assert!(
        wait_until(Duration::from_secs(1), || sb
            .tcx_programs("vnet1")
            .is_some_and(|p| p == ["dhcpfix"])),
        "vnet1 not attached within 1 s:\n{}",
        agent.log()
    );
    eprintln!("vnet1 attached after {:?}", start.elapsed());
    drop(idle);

    // Out of descriptors: accept(2) fails, the errno is logged, the
    // listener waits and serves again once there are descriptors.
    assert!(
        wait_until(HEADER_TIMEOUT + Duration::from_secs(2), || rss_and_fds(pid).1
            <= fds0 + 1),
        "the idle connections' descriptors were not released"
    );
    // The soft limit only: raising a hard one takes CAP_SYS_RESOURCE.
    let prlimit = |n: usize| {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--pid={pid}")).arg(format!("--nofile={n}:"));
        process::run(&mut cmd, None, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
    };
    // Descriptors 0-2 are taken: no new one can be made.
    prlimit(3);
    assert!(http_get(&ns, "/metrics", Duration::from_millis(500)).is_err());
    assert!(
        wait_until(Duration::from_secs(3), || agent.log().contains("errno 24")),
        "no accept(2) error logged:\n{}",
        agent.log()
    );
    prlimit(1024);
    assert!(
        wait_until(Duration::from_secs(3), || scrape(&ns).is_ok()),
        "/metrics did not come back:\n{}",
        agent.log()
    );
    let (status, _, log) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{log}");
    let accept_errors = log.lines().filter(|l| l.contains("accept(2)")).count();
    assert!(
        accept_errors <= 2,
        "accept errors logged {accept_errors} times:\n{log}"
    );
}

/// The client the flooding guest's DHCP replies are for.
const FLOOD_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x0f, 0x10, 0x0d];

/// A tap of the sandbox with a vnet header, on the bridge, up; with
/// checksum offload (a guest that negotiated it) if `offload`.
fn bridged_tap(sb: &Sandbox, name: &str, offload: bool) -> std::os::fd::OwnedFd {
    let fd = sb.in_netns(|| {
        let fd = kit::dev::open_tap(name, true).unwrap_or_else(|e| panic!("tap {name}: {e}"));
        let flags = if offload { libc::TUN_F_CSUM } else { 0 };
        kit::dev::set_tap_offload(&fd, flags).unwrap_or_else(|e| panic!("TUNSETOFFLOAD {name}: {e}"));
        fd
    });
    sb.ip(&["link", "set", name, "master", "br0"]);
    sb.ip(&["link", "set", name, "up"]);
    fd
}

/// Item 9: a guest sends partial DHCP replies to port 68 as broadcasts,
/// as fast as it can, for 3 s; the bridge floods them to every other tap,
/// where dhcpfix fills each one. The agent logs at most 5 fills per 10 s
/// per interface and client MAC, then one line with how many it left out;
/// and a tap created during the flood is attached within 1 s.
#[test]
fn guest_flooding_partial_broadcasts_cannot_flood_the_log() {
    if !privileged("guest_flooding_partial_broadcasts_cannot_flood_the_log") {
        return;
    }
    use dhcpfix::agent::events::LINES_PER_WINDOW;
    use dhcpfix_lab::kit::reference::{dhcp_reply_message, Check, FrameSpec, Rng};
    let sb = Sandbox::new();
    let pins = sb.pin_dir();
    sb.ip(&["link", "add", "br0", "type", "bridge", "stp_state", "0"]);
    sb.ip(&["link", "set", "br0", "up"]);
    let guest = bridged_tap(&sb, "guest0", false);
    let victims = ["vnet0", "vnet1"];
    let _victim_fds: Vec<_> = victims.iter().map(|v| bridged_tap(&sb, v, true)).collect();
    let mut agent = sb.agent(&pins, &["--iface", "vnet*", "--metrics-addr", "none"], &[]);
    agent.wait_running(crate::support::AGENT_STARTUP);

    let mut frame = FrameSpec {
        payload: dhcp_reply_message(2, 0x0f10_0d01, FLOOD_MAC),
        ..FrameSpec::dhcp_reply(0, &mut Rng::new(9))
    }
    .build(Check::Partial);
    frame[..6].fill(0xff);
    // What a guest writes to its tap: the frame and a NEEDS_CSUM header.
    let header = kit::dev::vnet_header(Some((34, 6)));
    let flood_for = Duration::from_secs(3);
    let flood = std::thread::spawn(move || {
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < flood_for {
            for _ in 0..256 {
                if kit::dev::write_with_header(&guest, &header, &frame).is_ok() {
                    sent += 1;
                }
            }
        }
        sent
    });
    std::thread::sleep(Duration::from_secs(1));
    let created = Instant::now();
    sb.add_tap("vnet2");
    let attached = wait_until(Duration::from_secs(1), || {
        sb.tcx_programs("vnet2").is_some_and(|p| p == ["dhcpfix"])
    });
    let took = created.elapsed();
    let sent = flood.join().unwrap();
    assert!(
        attached,
        "vnet2 not attached within 1 s of its creation during the flood:\n{}",
        agent.log()
    );

    let stats: Value = serde_json::from_str(&sb.dhcpfix_ok(&pins, &["stats", "--json"])).unwrap();
    let (status, _, log) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{log}");
    eprintln!("the guest sent {sent} frames in {flood_for:?}; vnet2 attached after {took:?}");
    let lines = log.lines().count();
    for tap in victims {
        let filled = stats["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == tap)
            .and_then(|i| i["counters"]["filled"].as_u64())
            .unwrap_or_else(|| panic!("{tap} in {stats}"));
        let shown = log
            .lines()
            .filter(|l| l.contains(&format!("filled {tap}: DHCPOFFER")))
            .count() as u64;
        let left_out: u64 = log
            .lines()
            .filter_map(|l| {
                l.split_once(&format!("{tap}: "))?
                    .1
                    .split_once(" more fill events for 52:54:00:0f:10:0d")
            })
            .map(|(n, _)| n.parse::<u64>().unwrap())
            .sum();
        eprintln!("{tap}: filled {filled}, {shown} logged, {left_out} left out");
        assert!(filled > 1000, "{tap}: the flood did not happen ({filled} filled)");
        assert!(
            shown >= 1 && shown <= u64::from(LINES_PER_WINDOW),
            "{tap}: {shown} fill lines"
        );
        assert!(
            left_out > 0,
            "{tap}: no 'more fill events ... not logged' line:\n{log}"
        );
        // Events dropped when the ring buffer was full are neither.
        assert!(
            shown + left_out <= filled,
            "{tap}: {shown} + {left_out} > {filled}"
        );
    }
    // Start-up, the fill lines, one "left out" line per tap, vnet2, stop.
    assert!(lines <= 20, "{lines} log lines:\n{log}");
}

/// Item 10: without an agent, 4200 times: a tap is created, attached with
/// `dhcpfix attach`, and deleted. Each deleted tap leaves its entries (and
/// dead link pins) behind, which the configuration map (4096 entries)
/// cannot hold for ever: dhcpfix 0.1 failed at the 4097th. Every attach
/// must succeed, and what is left stays bounded. Every tap has a name of
/// its own, as libvirt's `vnetN` are (it does not reuse them): an attach
/// removes what an earlier interface of its own name left, so reused names
/// would never fill the map.
///
/// A tcx attach and a deletion cost about 30 ms each here (the kernel
/// waits for an RCU grace period each time), so 4200 in that form alone
/// would take over 4 minutes. The first 4000 cycles go through the netlink
/// hook instead (kernels before 6.6, `--method netlink`: same entries,
/// same map), 200 taps per `dhcpfix attach` run, deleted together (`ip link
/// del group`); the last 200, across the 4097th, are the original form:
/// one tap, one `dhcpfix attach` run with the default hook (tcx), one
/// `ip link del`. About 55 s here: each attach looks through every entry
/// for what an earlier interface of its name left, about 18 ms per attach
/// once 4000 are there.
#[test]
fn thousands_of_taps_attached_and_deleted_without_an_agent() {
    if !privileged("thousands_of_taps_attached_and_deleted_without_an_agent") {
        return;
    }
    use dhcpfix_common::MAX_INTERFACES;
    const ROUND: usize = 200;
    const BATCHED: usize = 4000;
    const TOTAL: usize = 4200;
    let sb = Sandbox::new();
    let pins = sb.pin_dir();
    let start = Instant::now();
    let mut cycles = 0;
    while cycles < BATCHED {
        let names: Vec<String> = (1..=ROUND).map(|i| format!("c{}", cycles + i)).collect();
        let create: String = names
            .iter()
            .map(|n| format!("tuntap add dev {n} mode tap\nlink set {n} group 77\n"))
            .collect();
        kit::netns::ip_batch(&sb.name, &create).unwrap_or_else(|e| panic!("{e}"));
        let mut args = vec!["attach", "--method", "netlink"];
        args.extend(names.iter().map(String::as_str));
        let out = sb.dhcpfix_cmd(&pins, &args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.lines().filter(|l| l.contains(": attached")).count() == ROUND,
            "cycles {}-{}: {}",
            cycles + 1,
            cycles + ROUND,
            String::from_utf8_lossy(&out.stderr)
        );
        sb.ip(&["link", "del", "group", "77"]);
        cycles += ROUND;
    }
    let batched = start.elapsed();
    while cycles < TOTAL {
        cycles += 1;
        let tap = format!("t{cycles}");
        sb.add_tap(&tap);
        let out = sb.dhcpfix_cmd(&pins, &["attach", &tap]).output().unwrap();
        assert!(
            out.status.success(),
            "cycle {cycles}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        sb.del_link(&tap);
    }
    eprintln!(
        "{BATCHED} cycles (netlink, {ROUND} per run) in {batched:.1?}, {} more (tcx, one per run) in {:.1?}",
        TOTAL - BATCHED,
        start.elapsed() - batched
    );

    // The map filled up at the 4097th; what the deleted taps left was
    // removed then, and only what came after is left.
    let dir = dhcpfix::pins::PinDir::open(&pins).unwrap().unwrap();
    let maps = dhcpfix::pins::maps::Maps::open(&dir).unwrap();
    let configs = maps.configs().len();
    let counters = maps.counter_keys().len();
    let links = dhcpfix::pins::links::list(&dir).len();
    eprintln!("left: {configs} configuration entries, {counters} counter entries, {links} link pins");
    let after = TOTAL - MAX_INTERFACES as usize;
    assert_eq!((configs, counters, links), (after, after, after));
    assert!(maps.all_guests().is_empty());
    // And `clean` removes those too.
    sb.dhcpfix_ok(&pins, &["clean"]);
    let maps = dhcpfix::pins::maps::Maps::open(&dir).unwrap();
    assert_eq!((maps.configs().len(), maps.counter_keys().len()), (0, 0));
    assert!(dhcpfix::pins::links::list(&dir).is_empty());
}
