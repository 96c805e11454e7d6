//! What the tests share beyond the kit (`dhcpfix_lab::kit`): running the
//! `dhcpfix` binary itself (in the lab or in a [`Sandbox`]), reading its
//! reports, and the agent (`dhcpfix run`) as a child process.

use std::{
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use dhcpfix_common::key::IfaceKey;
use dhcpfix_lab::{
    kit::{self, netns, poll, Place},
    lab::{ClientOutcome, GuestKind, Lab, LabOptions, Offload},
};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_dhcpfix");
/// How long an agent in a [`Sandbox`] may take to start (its first full
/// pass).
pub const AGENT_STARTUP: Duration = Duration::from_secs(15);

/// Echoes a finished command: `$ WHAT -> STATUS`, then its output.
pub fn show(what: &str, out: &Output) {
    eprintln!(
        "$ {what} -> {:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `dhcpfix --pin-dir PINS ARGS` from `cmd` (a command for [`BIN`]
/// that enters some namespace), echoing its output.
pub fn run_dhcpfix(mut cmd: Command, pins: &Path, args: &[&str]) -> Output {
    let out = cmd
        .arg("--pin-dir")
        .arg(pins)
        .args(args)
        .output()
        .expect("run dhcpfix");
    show(&format!("dhcpfix {}", args.join(" ")), &out);
    out
}

/// Like [`run_dhcpfix`]; the run must succeed. Returns its stdout.
pub fn run_dhcpfix_ok(cmd: Command, pins: &Path, args: &[&str]) -> String {
    let out = run_dhcpfix(cmd, pins, args);
    assert!(
        out.status.success(),
        "dhcpfix {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A lab (its sandbox removes it on ^C too).
pub fn lab(offload: Offload, guest: GuestKind) -> Lab {
    Lab::create(LabOptions::new(offload, guest)).unwrap_or_else(|e| panic!("{e}"))
}

/// `dhcpfix --pin-dir PINS ARGS` in the lab's host namespace, echoed.
pub fn dhcpfix_at(lab: &Lab, pins: &Path, args: &[&str]) -> Output {
    run_dhcpfix(lab.host_command(BIN), pins, args)
}

/// Like [`dhcpfix_at`]; the run must succeed. Returns its stdout.
pub fn dhcpfix_ok_at(lab: &Lab, pins: &Path, args: &[&str]) -> String {
    run_dhcpfix_ok(lab.host_command(BIN), pins, args)
}

/// `dhcpfix ARGS` with the lab's pin directory, in its host namespace.
pub fn dhcpfix(lab: &Lab, args: &[&str]) -> Output {
    dhcpfix_at(lab, &lab.pin_dir(), args)
}

/// Like [`dhcpfix`]; the run must succeed. Returns its stdout.
pub fn dhcpfix_ok(lab: &Lab, args: &[&str]) -> String {
    dhcpfix_ok_at(lab, &lab.pin_dir(), args)
}

/// The entry of `iface` in `dhcpfix stats --json IFACE`.
pub fn stats(lab: &Lab, pins: &Path, iface: &str) -> Value {
    let stats: Value = serde_json::from_str(&dhcpfix_ok_at(lab, pins, &["stats", "--json", iface])).unwrap();
    let s = &stats["interfaces"][0];
    assert_eq!(s["name"], iface);
    s.clone()
}

/// The interfaces `dhcpfix status --json` lists as attached.
pub fn attached_interfaces(lab: &Lab) -> Vec<Value> {
    let status: Value = serde_json::from_str(&dhcpfix_ok(lab, &["status", "--json"])).unwrap();
    status["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["attached"] == true)
        .cloned()
        .collect()
}

/// Names of the interfaces in a `status --json` report, in its order.
pub fn interface_names(status: &Value) -> Vec<&str> {
    status["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect()
}

/// The DHCPv4 replies that reached a lab's guest among its relay's
/// records from number `from` on ([`Lab::dhcp_frames`]): how many, how many
/// had `NEEDS_CSUM`, and how many failed the guest's checksum check.
pub fn replies_to_guest(lab: &Lab, from: usize) -> (u64, u64, u64) {
    let frames = lab.dhcp_frames();
    let replies: Vec<_> = frames
        .iter()
        .skip(from)
        .filter(|f| f.to_guest && f.family == 4)
        .collect();
    let count = |p: fn(&&dhcpfix_lab::lab::DhcpFrame) -> bool| replies.iter().filter(|f| p(f)).count() as u64;
    (
        replies.len() as u64,
        count(|f| f.needs_csum),
        count(|f| !f.checksum_ok),
    )
}

/// Whether the client got a lease in the lab's subnet.
pub fn in_subnet(lab: &Lab, out: &ClientOutcome) -> bool {
    out.lease
        .is_some_and(|ip| ip.octets()[..3] == lab.subnet().octets()[..3])
}

/// [`in_subnet`], saying what the client got.
pub fn leased(lab: &Lab, out: &ClientOutcome) -> bool {
    eprintln!("{}: lease {:?} in {:.2?}", out.client, out.lease, out.elapsed);
    in_subnet(lab, out)
}

/// `ip ARGS`, which must succeed.
pub fn ip(args: &[&str]) {
    netns::ip(args).unwrap_or_else(|e| panic!("{e}"));
}

/// `ip -n NS ARGS`, which must succeed.
pub fn ip_in(ns: &str, args: &[&str]) {
    netns::ip_in(ns, args).unwrap_or_else(|e| panic!("{e}"));
}

/// Mounts a fresh bpffs at `dir` with the kernel's default root mode, as
/// systemd has one at /sys/fs/bpf.
pub fn mount_bpffs(dir: &Path) {
    kit::mount_bpffs(dir, kit::mounts::BPFFS_DEFAULT_MODE).unwrap_or_else(|e| panic!("{e}"));
}

/// Runs `f` on a thread inside the network namespace at `ns`.
pub fn in_netns<T: Send>(ns: &Path, f: impl FnOnce() -> T + Send) -> T {
    netns::in_netns(ns, f).unwrap_or_else(|e| panic!("{e}"))
}

/// Names of the tcx programs at the egress of `iface` in the namespace
/// `ns`, as the kernel lists them; `None` if the interface does not exist.
pub fn tcx_programs(ns: &Path, iface: &str) -> Option<Vec<String>> {
    tcx_programs_at(ns, iface, TcAttachType::Egress)
}

/// Names of the tcx programs at the ingress of `iface` in the namespace
/// `ns` (dhcpfix's is `dhcpfix_ingress`, beside a tcx egress link); `None`
/// if the interface does not exist.
pub fn tcx_ingress_programs(ns: &Path, iface: &str) -> Option<Vec<String>> {
    tcx_programs_at(ns, iface, TcAttachType::Ingress)
}

fn tcx_programs_at(ns: &Path, iface: &str, hook: TcAttachType) -> Option<Vec<String>> {
    in_netns(ns, || {
        dhcpfix::netdev::ifindex(iface)?;
        let (_, progs) = SchedClassifier::query_tcx(iface, hook).ok()?;
        Some(
            progs
                .iter()
                .map(|p| p.name_as_str().unwrap_or("?").to_owned())
                .collect(),
        )
    })
}

/// Waits (up to `timeout`) until `iface` in the namespace `ns` has exactly
/// the tcx programs `want` on `hook`; returns the last ones seen.
pub fn wait_tcx_programs(
    ns: &Path,
    iface: &str,
    hook: TcAttachType,
    want: &[&str],
    timeout: Duration,
) -> Vec<String> {
    let mut now = Vec::new();
    poll(timeout, Duration::from_millis(10), || {
        now = tcx_programs_at(ns, iface, hook).unwrap_or_default();
        now == want
    });
    now
}

/// The key dhcpfix files `iface` under: the cookie of the network
/// namespace at `ns` and the interface's ifindex there; `None` if there is
/// no such interface. Keep it to find what a deleted interface left.
pub fn iface_key(ns: &Path, iface: &str) -> Option<IfaceKey> {
    in_netns(ns, || {
        let cookie = dhcpfix::netns::current_cookie().expect("SO_NETNS_COOKIE");
        dhcpfix::netdev::ifindex(iface).map(|ifindex| IfaceKey::new(cookie, ifindex))
    })
}

/// Where the pin directory `pins` keeps the egress link of `key`
/// (`abi-N/links/<netns cookie>/<ifindex>`).
pub fn link_pin(pins: &Path, key: &IfaceKey) -> PathBuf {
    pins.join(dhcpfix::pins::link_rel(key))
}

/// Where the pin directory `pins` keeps the ingress link of `key`.
pub fn ingress_link_pin(pins: &Path, key: &IfaceKey) -> PathBuf {
    pins.join(dhcpfix::pins::ingress_link_rel(key))
}

/// Whether `iface` (in the namespace at `ns`) has its egress link pinned.
pub fn is_pinned(ns: &Path, pins: &Path, iface: &str) -> bool {
    iface_key(ns, iface).is_some_and(|key| link_pin(pins, &key).exists())
}

/// The interface the link pinned for `key` is attached to (0: its
/// interface is gone); `None` if there is no such pin.
pub fn pinned_link_ifindex(pins: &Path, key: &IfaceKey) -> Option<u32> {
    let dir = dhcpfix::pins::PinDir::open(pins).ok().flatten()?;
    dhcpfix::pins::links::target(&dir, key)
}

/// The kernel's id of the link pinned for `key`.
pub fn pinned_link_id(pins: &Path, key: &IfaceKey) -> Option<u32> {
    let fd = dhcpfix::sys::obj_get(&link_pin(pins, key)).ok()?;
    dhcpfix::sys::link_info(&fd).ok().map(|i| i.id)
}

/// Whether `dir` is a pin directory on a bpffs.
pub fn is_bpffs(dir: &Path) -> bool {
    dhcpfix::pins::PinDir::open(dir).is_ok_and(|d| d.is_some())
}

/// Polls `done` every 5 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, done: impl FnMut() -> bool) -> bool {
    poll(timeout, Duration::from_millis(5), done).is_some()
}

/// Asserts `stderr` is one line, with no panic in it.
pub fn assert_one_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr).into_owned();
    assert!(!text.contains("panicked"), "dhcpfix panicked: {text}");
    assert_eq!(text.trim_end().lines().count(), 1, "not one line: {text:?}");
    text.trim_end().to_owned()
}

/// Where the robustness tests' sandboxes live: `dfxr-<pid>-<n>`, work
/// directories a user without privileges can enter (`not_root_...`).
const ROBUST: Place = Place {
    prefix: "dfxr",
    run_dir: "/run/dhcpfix-robust",
    mode: 0o755,
};

/// A bare network namespace and a work directory for the robustness
/// tests (`datapath_kernel`, `faults`, `security`, `macvtap`): no DHCP
/// server, no relay, just what each test builds in it. Removed on drop, on
/// ^C, and (if the test process was killed) by the next test run.
pub struct Sandbox {
    /// The namespace's name (`ip -n`).
    pub name: String,
    /// The work directory (mode 0755).
    pub dir: PathBuf,
    /// Dropped before the work directory.
    ns: kit::Netns,
    _sandbox: kit::Sandbox,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let sandbox = kit::Sandbox::create(&ROBUST).unwrap_or_else(|e| panic!("{e}"));
        let ns = sandbox.netns("n").unwrap_or_else(|e| panic!("{e}"));
        Sandbox {
            name: ns.name().to_owned(),
            dir: sandbox.dir().to_path_buf(),
            ns,
            _sandbox: sandbox,
        }
    }

    /// Another namespace of this sandbox, named [`Sandbox::netns_name`].
    pub fn netns(&self, suffix: &str) -> kit::Netns {
        self._sandbox.netns(suffix).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The name [`Sandbox::netns`] gives a namespace: `<sandbox>-<suffix>`
    /// (a glob `suffix` makes a pattern for `dhcpfix run --netns`).
    pub fn netns_name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self._sandbox.name())
    }

    pub fn ns_path(&self) -> PathBuf {
        self.ns.path().to_path_buf()
    }

    /// A pin directory for dhcpfix (bpffs is mounted there by dhcpfix).
    pub fn pin_dir(&self) -> PathBuf {
        self.dir.join("bpf")
    }

    /// `ip -n <sandbox> ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        self.ns.ip(args).unwrap_or_else(|e| panic!("{e}"));
    }

    /// A persistent tap (no process holds it; enough to attach to).
    pub fn add_tap(&self, name: &str) {
        self.ip(&["tuntap", "add", "dev", name, "mode", "tap"]);
    }

    pub fn del_link(&self, name: &str) {
        self.ip(&["link", "del", name]);
    }

    /// A command whose child enters the sandbox's network namespace right
    /// before exec, keeping this process's mount namespace (so bpffs
    /// mounts it makes stay visible to the test).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        self.ns.command(program)
    }

    /// `dhcpfix --pin-dir PINS ARGS` in the sandbox.
    pub fn dhcpfix_cmd(&self, pins: &Path, args: &[&str]) -> Command {
        let mut cmd = self.command(BIN);
        cmd.arg("--pin-dir").arg(pins).args(args);
        cmd
    }

    /// Runs `dhcpfix --pin-dir PINS ARGS`, echoing its output.
    pub fn dhcpfix(&self, pins: &Path, args: &[&str]) -> Output {
        run_dhcpfix(self.command(BIN), pins, args)
    }

    pub fn dhcpfix_ok(&self, pins: &Path, args: &[&str]) -> String {
        run_dhcpfix_ok(self.command(BIN), pins, args)
    }

    /// Runs `f` on a thread that has entered the sandbox's network
    /// namespace (sockets, tap fds and ioctls made there belong to it).
    pub fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(self.ns.path(), f)
    }

    /// The key dhcpfix files `iface` of the sandbox under.
    pub fn key(&self, iface: &str) -> Option<IfaceKey> {
        iface_key(self.ns.path(), iface)
    }

    /// Names of the tcx programs at the egress of `iface`, as the kernel
    /// lists them; `None` if the interface does not exist.
    pub fn tcx_programs(&self, iface: &str) -> Option<Vec<String>> {
        tcx_programs(self.ns.path(), iface)
    }

    /// Waits (up to `timeout`) until `iface` has exactly the programs
    /// `want` at egress (a pin removal releases a link a moment later).
    pub fn wait_programs(&self, iface: &str, want: &[&str], timeout: Duration) -> Vec<String> {
        wait_tcx_programs(self.ns.path(), iface, TcAttachType::Egress, want, timeout)
    }

    /// Like [`Sandbox::wait_programs`], at ingress (`attach` hooks the
    /// ingress program right after the egress link).
    pub fn wait_ingress_programs(&self, iface: &str, want: &[&str], timeout: Duration) -> Vec<String> {
        wait_tcx_programs(self.ns.path(), iface, TcAttachType::Ingress, want, timeout)
    }

    /// Starts `dhcpfix --pin-dir PINS run ARGS` in the sandbox, behind
    /// `wrapper` (e.g. setpriv or strace) if given.
    pub fn agent(&self, pins: &Path, args: &[&str], wrapper: &[&str]) -> Agent {
        Agent::start(|p| self.command(p), &self.dir, pins, args, wrapper)
    }
}

/// A running `dhcpfix run`, its stderr (the log) going to a file.
pub struct Agent {
    pub child: Child,
    pub log: PathBuf,
}

impl Agent {
    /// Starts `dhcpfix --pin-dir PINS run ARGS`, behind `wrapper` (e.g.
    /// setpriv or strace) if not empty, its log in a new file in `dir`.
    /// `command` makes the command for a program (in some namespace).
    pub fn start(
        command: impl Fn(&str) -> Command,
        dir: &Path,
        pins: &Path,
        args: &[&str],
        wrapper: &[&str],
    ) -> Agent {
        Agent::start_bin(Path::new(BIN), command, dir, pins, args, wrapper)
    }

    /// [`Agent::start`] of another dhcpfix binary (a newer one).
    pub fn start_bin(
        bin: &Path,
        command: impl Fn(&str) -> Command,
        dir: &Path,
        pins: &Path,
        args: &[&str],
        wrapper: &[&str],
    ) -> Agent {
        let bin = bin.to_str().expect("a UTF-8 path");
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = dir.join(format!("agent-{n}.log"));
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = command(program);
                c.args(rest).arg(bin);
                c
            }
            None => command(bin),
        };
        let child = cmd
            .env("RUST_LOG", "info")
            .arg("--pin-dir")
            .arg(pins)
            .arg("run")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("agent log file"))
            .spawn()
            .expect("start dhcpfix run");
        Agent { child, log }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait for the agent")
    }

    /// Waits (up to `within`) for the end of start-up (the first full pass).
    pub fn wait_running(&mut self, within: Duration) {
        let up = wait_until(within, || {
            self.log().contains("running: ") || self.child.try_wait().ok().flatten().is_some()
        });
        assert!(
            up && self.exited().is_none(),
            "the agent did not start:\n{}",
            self.log()
        );
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Sends `sig`, waits (up to 5 s) for the exit; returns the status, how
    /// long it took and the log, which must not show a panic.
    pub fn stop(self, sig: libc::c_int) -> (ExitStatus, Duration, String) {
        let start = Instant::now();
        self.signal(sig);
        self.wait_exit(sig, start)
    }

    /// Like [`Agent::stop`] for an agent started behind a wrapper (strace):
    /// signals the wrapper's child, the agent itself.
    pub fn stop_wrapped(self, sig: libc::c_int) -> (ExitStatus, Duration, String) {
        let start = Instant::now();
        let pid = self.child.id();
        let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let inner: i32 = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the wrapper has no child");
        // SAFETY: kill(2) on a process this test started (through the wrapper).
        assert_eq!(unsafe { libc::kill(inner, sig) }, 0);
        self.wait_exit(sig, start)
    }

    fn wait_exit(mut self, sig: libc::c_int, start: Instant) -> (ExitStatus, Duration, String) {
        let mut status = None;
        wait_until(Duration::from_secs(5), || {
            status = self.exited();
            status.is_some()
        });
        let took = start.elapsed();
        let log = self.log();
        eprintln!("--- agent log ---\n{log}--- end ---");
        let Some(status) = status else {
            panic!("the agent did not exit within 5 s of signal {sig}:\n{log}");
        };
        assert!(!log.contains("panicked"), "the agent panicked:\n{log}");
        (status, took, log)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ------------------------------------------- the agent for every namespace

/// Starts `dhcpfix --pin-dir PINS run ARGS` in this process's own network
/// namespace, the host's (as the systemd unit and the DaemonSet run it),
/// its log in a new file in `dir`. With `--netns all` it sees every lab and
/// sandbox of the machine: hold `dhcpfix_lab::kit::gate::exclusive()`.
pub fn host_agent(dir: &Path, pins: &Path, args: &[&str]) -> Agent {
    Agent::start(|p| Command::new(p), dir, pins, args, &[])
}

/// `127.0.0.1:PORT` with a port that was free a moment ago.
pub fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").to_string()
}

/// `GET http://ADDR/metrics` (in this process's namespace); the body of a
/// 200 answer.
pub fn scrape(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        conn,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// One sample of a Prometheus text page.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// The samples of a Prometheus text page (label values without escapes,
/// as dhcpfix's are).
pub fn samples(page: &str) -> Vec<Sample> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|kv| !kv.is_empty())
                .filter_map(|kv| {
                    let (k, v) = kv.split_once("=\"")?;
                    Some((k.to_owned(), v.trim_end_matches('"').to_owned()))
                })
                .collect();
            Some(Sample {
                name: name.to_owned(),
                labels,
                value: value.parse().ok()?,
            })
        })
        .collect()
}

/// The cookie of the network namespace behind the nsfs file `path`.
pub fn cookie_of(path: &Path) -> u64 {
    dhcpfix::netns::Netns::open_path(path, path.display().to_string())
        .unwrap_or_else(|e| panic!("{e}"))
        .cookie()
}

/// What a pin directory holds for one network namespace.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Remains {
    /// Link pins (`links/<cookie>/...`).
    pub links: Vec<String>,
    /// Entries of the configuration, counters and guests maps.
    pub configs: usize,
    pub counters: usize,
    pub guests: usize,
}

impl Remains {
    pub fn is_empty(&self) -> bool {
        *self == Remains::default()
    }
}

/// What the pin directory `pins` (this build's records) holds for the
/// namespace with cookie `cookie`.
pub fn remains(pins: &Path, cookie: u64) -> Remains {
    remains_by_netns(pins).remove(&cookie).unwrap_or_default()
}

/// What the pin directory `pins` (this build's records) holds, by
/// namespace cookie; namespaces with nothing are left out.
pub fn remains_by_netns(pins: &Path) -> std::collections::BTreeMap<u64, Remains> {
    let mut all = std::collections::BTreeMap::<u64, Remains>::new();
    let links = pins.join(dhcpfix::pins::links_rel());
    for dir in fs::read_dir(&links).into_iter().flatten().flatten() {
        let Ok(cookie) = dir.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        let entry = all.entry(cookie).or_default();
        entry.links = fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if entry.links.is_empty() {
            entry.links.push("(empty directory)".into());
        }
    }
    let Some(dir) = dhcpfix::pins::PinDir::open(pins).unwrap_or_else(|e| panic!("{e}")) else {
        return all;
    };
    let maps = dhcpfix::pins::maps::Maps::open(&dir).unwrap_or_else(|e| panic!("{e}"));
    for (key, _) in maps.configs() {
        all.entry(key.netns).or_default().configs += 1;
    }
    for key in maps.counter_keys() {
        all.entry(key.netns).or_default().counters += 1;
    }
    for (key, _) in maps.all_guests() {
        all.entry(key.netns).or_default().guests += 1;
    }
    all
}

/// What a process holds: open files, resident memory, threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    pub fds: usize,
    pub rss_kib: u64,
    pub threads: u64,
}

/// [`Footprint`] of process `pid`, from /proc.
pub fn footprint(pid: u32) -> Footprint {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("the agent's /proc status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    Footprint {
        fds: fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count()),
        rss_kib: field("VmRSS:"),
        threads: field("Threads:"),
    }
}

// ------------------------------------------------------- a newer dhcpfix

/// The environment variable `cargo xtask test` names the `next-abi` build
/// in (built beforehand, cached in `target/next-abi`).
pub const NEXT_ABI_VAR: &str = "DHCPFIX_TEST_NEXT_ABI";

/// A "newer dhcpfix": the `next-abi` build (PIN_ABI 3, other records),
/// made to test in-place upgrades from this build's pins. From
/// `DHCPFIX_TEST_NEXT_ABI`, or built here once into `target/next-abi`
/// (about two minutes the first time; cargo keeps it).
pub fn next_abi_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os(NEXT_ABI_VAR).filter(|v| !v.is_empty()) {
            let bin = PathBuf::from(bin);
            return if bin.is_file() {
                Ok(bin)
            } else {
                Err(format!("{NEXT_ABI_VAR}={}: no such file", bin.display()))
            };
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace");
        let target = root.join("target/next-abi");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        eprintln!(
            "building the next-abi dhcpfix into {} ({NEXT_ABI_VAR} not set)",
            target.display()
        );
        let out = Command::new(cargo)
            .current_dir(root)
            .args(["build", "-p", "dhcpfix", "--features", "next-abi", "--target-dir"])
            .arg(&target)
            .output()
            .map_err(|e| format!("running cargo: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cargo build --features next-abi failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(target.join("debug/dhcpfix"))
    })
    .clone()
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Readies the current network namespace for a plain layer-2 bridge: IPv6
/// off (no router solicitations or MLD reports among the frames) and, where
/// br_netfilter is loaded (by anything on the host), its calls off, or the
/// bridge would drop IPv4 frames with bad headers before they reach a tap.
/// Returns whether br_netfilter was loaded. Run it inside the namespace.
pub fn quiet_l2_here() -> bool {
    for conf in ["all", "default"] {
        std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1").expect("disable IPv6");
    }
    let mut br_netfilter = false;
    for call in ["iptables", "ip6tables", "arptables"] {
        let path = format!("/proc/sys/net/bridge/bridge-nf-call-{call}");
        if Path::new(&path).exists() {
            br_netfilter = true;
            std::fs::write(&path, "0").expect("turn off bridge netfilter");
        }
    }
    br_netfilter
}

/// `ip` arguments that add bridge `name` without STP or multicast snooping.
pub fn plain_bridge(name: &str) -> [&str; 9] {
    [
        "link",
        "add",
        name,
        "type",
        "bridge",
        "stp_state",
        "0",
        "mcast_snooping",
        "0",
    ]
}
