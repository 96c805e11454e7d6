//! A real libvirtd for tests: Debian's libvirt-daemon-system run without
//! systemd, its `default` network (virbr0, dnsmasq, libvirt's own iptables
//! rules), diskless guests under TCG (a Linux guest booted from a small
//! initramfs built here, and an iPXE guest), and a recorder of every qemu
//! hook call.
//!
//! Self-contained on purpose (std, libc, serde_json): it knows nothing about
//! dhcpfix, so it can move into a lab crate of its own.
//!
//! Everything it changes on the host is undone when [`Libvirt`] is shut
//! down or dropped (also on panic): guests destroyed, the network stopped
//! (and undefined if it defined it), libvirtd stopped, no libvirtd, QEMU or
//! dnsmasq process left, qemu.conf and hook files restored, libvirt's
//! iptables chains and `net.ipv4.ip_forward` put back as they were.
#![allow(dead_code)]

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, fs,
    io::{self, Write},
    os::{
        fd::AsRawFd,
        unix::fs::{OpenOptionsExt, PermissionsExt},
    },
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// libvirt's system connection.
pub const URI: &str = "qemu:///system";
const QEMU_CONF: &str = "/etc/libvirt/qemu.conf";
const HOOKS_DIR: &str = "/etc/libvirt/hooks";
const QEMU_HOOKS_DIR: &str = "/etc/libvirt/hooks/qemu.d";
/// Hook scripts run in alphabetical order: the recorder sees every call
/// first, with the XML libvirt hands to the others.
const RECORDER_HOOK: &str = "00-dhcpfix-test-recorder";
const DEFAULT_NETWORK_XML: &str = "/usr/share/libvirt/networks/default.xml";
const LIBVIRTD_PIDFILE: &str = "/run/libvirtd.pid";
const LIBVIRT_RUN_DIR: &str = "/run/libvirt";
const DNSMASQ_PIDFILE: &str = "/run/libvirt/network/default.pid";
const DNSMASQ_CONF: &str = "/var/lib/libvirt/dnsmasq/default.conf";
/// Where libvirt's lease helper keeps the default network's leases (JSON).
pub const LEASE_FILE: &str = "/var/lib/libvirt/dnsmasq/virbr0.status";
const QEMU_LOG_DIR: &str = "/var/log/libvirt/qemu";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// Serializes users of this harness across processes (two test runs on one
/// machine would otherwise fight over the one system libvirtd).
const LOCK_FILE: &str = "/run/lock/dhcpfix-libvirt-real.lock";
/// What each live harness must undo, rewritten at every change
/// (`<pid>.json`): a run killed before its teardown (SIGKILL, Ctrl-C) is
/// undone by the next one. Not under /run: qemu.conf and the hooks outlive
/// a reboot, so must their record.
const STATE_DIR: &str = "/var/lib/dhcpfix-test-libvirt";
/// Work directories: `<temp dir>/<prefix><pid>-<n>`.
const WORK_PREFIX: &str = "dhcpfix-libvirt-";
const LOCK_TIMEOUT: Duration = Duration::from_secs(900);
/// The first start probes QEMU's capabilities (about 9 s here).
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(90);
/// libvirt's rule in `mangle`/`LIBVIRT_PRT` that completes DHCP checksums
/// towards guests on virbr0 (iptables `CHECKSUM --checksum-fill`).
pub const CHECKSUM_RULE: &str = "-o virbr0 -p udp -m udp --dport 68 -j CHECKSUM --checksum-fill";
/// The qemu.conf libvirtd runs with here: no systemd, no cgroups, no mount
/// namespace, no security driver, no virtlogd.
const QEMU_CONF_TEXT: &str = "# Written by the dhcpfix tests (tests/support/libvirt_real.rs); the\n\
# original is restored when they end.\n\
user = \"root\"\n\
group = \"root\"\n\
security_driver = \"none\"\n\
namespaces = [ ]\n\
cgroup_controllers = [ ]\n\
stdio_handler = \"file\"\n";

pub type Result<T> = std::result::Result<T, String>;

// ---- Small process and file helpers ----

fn shown(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` (stdin closed), whatever its exit status.
fn output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", shown(cmd)))
}

/// Runs `cmd`; it must succeed. Returns its stdout.
fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    if !out.status.success() {
        return Err(format!(
            "{} -> {}: {}{}",
            shown(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn virsh_cmd(args: &[&str]) -> Command {
    let mut c = Command::new("virsh");
    c.args(["-q", "-c", URI]).args(args);
    c
}

/// `virsh -c qemu:///system ARGS`; it must succeed.
pub fn virsh(args: &[&str]) -> Result<String> {
    run_ok(&mut virsh_cmd(args))
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_owned()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

fn write_executable(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

fn unique_suffix() -> String {
    static COUNTER: Mutex<u32> = Mutex::new(0);
    let mut n = COUNTER.lock().unwrap_or_else(|e| e.into_inner());
    *n += 1;
    format!("{}-{}", std::process::id(), *n)
}

/// A running process, from /proc (zombies left out).
#[derive(Clone, Debug)]
pub struct Process {
    pub pid: i32,
    pub comm: String,
    pub cmdline: String,
}

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} ({})", self.pid, self.cmdline)
    }
}

/// Live processes whose `comm` starts with `comm_prefix`.
pub fn processes(comm_prefix: &str) -> Vec<Process> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let base = entry.path();
        let Ok(stat) = fs::read_to_string(base.join("stat")) else {
            continue;
        };
        // "pid (comm) S ...": the state follows the last ')'.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        if state == Some("Z") || state == Some("X") {
            continue;
        }
        let comm = fs::read_to_string(base.join("comm"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        if !comm.starts_with(comm_prefix) {
            continue;
        }
        let cmdline = fs::read(base.join("cmdline"))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .split('\0')
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        out.push(Process { pid, comm, cmdline });
    }
    out
}

fn alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 sends nothing; it only checks the pid.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0 && !is_zombie(pid)
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(|st| st == "Z"))
        })
        .unwrap_or(true)
}

fn signal(pid: i32, sig: libc::c_int) {
    if pid > 0 {
        // SAFETY: kill(2) on a pid this harness started (libvirtd) or found
        // by its command line as one of its own leftovers.
        unsafe { libc::kill(pid, sig) };
    }
}

/// SIGTERM, then SIGKILL after `grace`. Returns whether it is gone.
fn terminate(pid: i32, grace: Duration) -> bool {
    signal(pid, libc::SIGTERM);
    if wait_until(grace, Duration::from_millis(50), || !alive(pid)) {
        return true;
    }
    signal(pid, libc::SIGKILL);
    wait_until(Duration::from_secs(5), Duration::from_millis(50), || !alive(pid))
}

/// Polls `done` until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, every: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if done() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        thread::sleep(every);
    }
}

fn read_pidfile(path: &str) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

// ---- Versions ----

/// What this libvirt is made of.
#[derive(Clone, Debug)]
pub struct Versions {
    /// `libvirtd --version`.
    pub libvirtd: String,
    /// `virsh version` (library, API, hypervisor), on one line.
    pub virsh: String,
    /// `qemu-system-x86_64 --version`, first line.
    pub qemu: String,
}

impl Versions {
    fn probe() -> Result<Self> {
        let libvirtd = first_line(&run_ok(Command::new("libvirtd").arg("--version"))?);
        let virsh = virsh(&["version"])?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        let qemu = first_line(&run_ok(Command::new("qemu-system-x86_64").arg("--version"))?);
        Ok(Self {
            libvirtd,
            virsh,
            qemu,
        })
    }
}

impl fmt::Display for Versions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} | {} | {}", self.libvirtd, self.virsh, self.qemu)
    }
}

// ---- Hook calls ----

/// One qemu hook call, as the recorder hook saw it.
#[derive(Clone, Debug)]
pub struct HookCall {
    /// Nanoseconds since the epoch when the recorder ran.
    pub at_ns: u128,
    pub domain: String,
    pub operation: String,
    pub sub_operation: String,
    pub extra: String,
    /// The domain XML libvirt passed on stdin.
    pub xml: String,
    /// Network devices that existed while the hook ran.
    pub links: BTreeSet<String>,
}

impl HookCall {
    /// `<target dev=.../>` of each `<interface>` in the XML.
    pub fn interface_targets(&self) -> Vec<String> {
        interface_blocks(&self.xml)
            .iter()
            .filter_map(|b| attr_of(b, "<target ", "dev"))
            .collect()
    }

    /// `<mac address=.../>` of each `<interface>` in the XML.
    pub fn interface_macs(&self) -> Vec<String> {
        interface_blocks(&self.xml)
            .iter()
            .filter_map(|b| attr_of(b, "<mac ", "address"))
            .collect()
    }

    /// The `<interface>` elements of the XML, as text.
    pub fn interfaces_xml(&self) -> Vec<String> {
        interface_blocks(&self.xml)
    }
}

impl fmt::Display for HookCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}: interface targets {:?}, MACs {:?}",
            self.domain,
            self.operation,
            self.sub_operation,
            self.extra,
            self.interface_targets(),
            self.interface_macs()
        )
    }
}

/// The `<interface ...>...</interface>` elements of a domain XML.
fn interface_blocks(xml: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<interface ") {
        let from = &rest[start..];
        let end = from
            .find("</interface>")
            .map_or(from.len(), |e| e + "</interface>".len());
        out.push(from[..end].to_owned());
        rest = &from[end..];
    }
    out
}

/// The value of `attr` in the first element starting with `element` in
/// `xml` (quotes ' or ").
fn attr_of(xml: &str, element: &str, attr: &str) -> Option<String> {
    let el = &xml[xml.find(element)?..];
    let el = &el[..el.find('>')?];
    let at = el.find(&format!("{attr}="))? + attr.len() + 1;
    let quote = el[at..].chars().next()?;
    let value = &el[at + 1..];
    Some(value[..value.find(quote)?].to_owned())
}

fn recorder_script(dir: &Path) -> String {
    format!(
        "#!/bin/sh\n\
         # Installed by the dhcpfix tests (tests/support/libvirt_real.rs) and\n\
         # removed when they end: records each qemu hook call (arguments,\n\
         # domain XML on stdin, network devices present).\n\
         dir='{dir}'\n\
         n=$(date +%s%N)\n\
         printf '%s\\n' \"$@\" > \"$dir/$n.args\"\n\
         ls /sys/class/net > \"$dir/$n.links\"\n\
         cat > \"$dir/$n.xml.part\"\n\
         mv \"$dir/$n.xml.part\" \"$dir/$n.xml\"\n\
         exit 0\n",
        dir = dir.display()
    )
}

// ---- Leases ----

/// One lease in libvirt's lease file for virbr0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub ip: String,
    pub mac: String,
    pub expiry: u64,
}

/// The default network's leases (empty if there is no lease file yet).
pub fn leases() -> Vec<Lease> {
    let Ok(text) = fs::read_to_string(LEASE_FILE) else {
        return Vec::new();
    };
    let Ok(serde_json::Value::Array(items)) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|i| {
            Some(Lease {
                ip: i["ip-address"].as_str()?.to_owned(),
                mac: i["mac-address"].as_str()?.to_ascii_lowercase(),
                expiry: i["expiry-time"].as_u64().unwrap_or(0),
            })
        })
        .collect()
}

// ---- iptables snapshot ----

const IPTABLES: [&str; 2] = ["iptables", "ip6tables"];
const TABLES: [&str; 3] = ["filter", "nat", "mangle"];

/// `-S` of every table libvirt touches, per (binary, table).
fn iptables_snapshot() -> BTreeMap<(&'static str, &'static str), BTreeSet<String>> {
    let mut snap = BTreeMap::new();
    for bin in IPTABLES {
        for table in TABLES {
            let rules = output(Command::new(bin).args(["-w", "-t", table, "-S"]))
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            snap.insert((bin, table), rules);
        }
    }
    snap
}

// ---- The daemon ----

/// What to undo, newest last.
enum Undo {
    /// Put the file back (`None`: it did not exist).
    RestoreFile {
        path: PathBuf,
        content: Option<(Vec<u8>, u32)>,
    },
    /// Remove a directory this harness created (if empty).
    RemoveDir(PathBuf),
    /// Remove a tree this harness created (a libvirt run directory).
    RemoveTree(PathBuf),
    StopDaemon,
    DestroyNetwork,
    UndefineNetwork,
    WriteFile {
        path: PathBuf,
        content: String,
    },
    /// Remove LIBVIRT_* chains and jumps that were not there before.
    Iptables(BTreeMap<(&'static str, &'static str), BTreeSet<String>>),
}

impl Undo {
    fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let path = |p: &Path| p.to_string_lossy().into_owned();
        match self {
            Undo::RestoreFile { path: p, content } => json!({
                "restore_file": path(p),
                "content_hex": content.as_ref().map(|(b, _)| hex(b)),
                "mode": content.as_ref().map(|(_, m)| *m),
            }),
            Undo::RemoveDir(p) => json!({ "remove_dir": path(p) }),
            Undo::RemoveTree(p) => json!({ "remove_tree": path(p) }),
            Undo::StopDaemon => json!({ "stop_daemon": true }),
            Undo::DestroyNetwork => json!({ "destroy_network": true }),
            Undo::UndefineNetwork => json!({ "undefine_network": true }),
            Undo::WriteFile { path: p, content } => json!({ "write_file": path(p), "content": content }),
            Undo::Iptables(snap) => json!({
                "iptables": snap
                    .iter()
                    .map(|((bin, table), rules)| (format!("{bin} {table}"), json!(rules)))
                    .collect::<serde_json::Map<_, _>>()
            }),
        }
    }

    /// Only steps this harness can have recorded: a record is never a way
    /// to remove or write anything else.
    fn from_json(v: &serde_json::Value) -> Option<Self> {
        Self::parse(v).filter(Undo::is_ours)
    }

    fn is_ours(&self) -> bool {
        let tmp = std::env::temp_dir();
        match self {
            Undo::RestoreFile { path, .. } => {
                path == Path::new(QEMU_CONF) || path.parent() == Some(Path::new(QEMU_HOOKS_DIR))
            }
            Undo::RemoveDir(p) => p == Path::new(HOOKS_DIR) || p == Path::new(QEMU_HOOKS_DIR),
            Undo::RemoveTree(p) => {
                p == Path::new(LIBVIRT_RUN_DIR)
                    || (p.parent() == Some(tmp.as_path())
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with(WORK_PREFIX)))
            }
            Undo::WriteFile { path, .. } => path == Path::new(IP_FORWARD),
            Undo::StopDaemon | Undo::DestroyNetwork | Undo::UndefineNetwork | Undo::Iptables(_) => true,
        }
    }

    fn parse(v: &serde_json::Value) -> Option<Self> {
        let path = |key: &str| v[key].as_str().map(PathBuf::from);
        if let Some(p) = path("restore_file") {
            let content = match (v["content_hex"].as_str(), v["mode"].as_u64()) {
                (Some(h), Some(m)) => Some((unhex(h)?, u32::try_from(m).ok()?)),
                _ => None,
            };
            return Some(Undo::RestoreFile { path: p, content });
        }
        if let Some(p) = path("remove_dir") {
            return Some(Undo::RemoveDir(p));
        }
        if let Some(p) = path("remove_tree") {
            return Some(Undo::RemoveTree(p));
        }
        if let Some(p) = path("write_file") {
            return Some(Undo::WriteFile {
                path: p,
                content: v["content"].as_str()?.to_owned(),
            });
        }
        if v["stop_daemon"] == true {
            return Some(Undo::StopDaemon);
        }
        if v["destroy_network"] == true {
            return Some(Undo::DestroyNetwork);
        }
        if v["undefine_network"] == true {
            return Some(Undo::UndefineNetwork);
        }
        let mut snap = BTreeMap::new();
        for (key, rules) in v["iptables"].as_object()? {
            let (bin, table) = key.split_once(' ')?;
            let bin = *IPTABLES.iter().find(|b| **b == bin)?;
            let table = *TABLES.iter().find(|t| **t == table)?;
            let rules = rules
                .as_array()?
                .iter()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect();
            snap.insert((bin, table), rules);
        }
        Some(Undo::Iptables(snap))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A libvirtd this harness started (see the module comment). Drop tears
/// everything down; [`Libvirt::shutdown`] does too and says what went wrong.
pub struct Libvirt {
    work: PathBuf,
    /// This run's record in [`STATE_DIR`].
    state: Option<PathBuf>,
    hook_calls_dir: PathBuf,
    undo: Vec<Undo>,
    daemon_pid: Option<i32>,
    versions: Option<Versions>,
    /// Domains created here (destroyed at teardown if still running).
    domains: Mutex<Vec<String>>,
    checksum_rule_removed: bool,
    torn_down: bool,
    lock: Option<fs::File>,
}

impl Libvirt {
    /// Takes the machine-wide lock, checks that no libvirtd runs, makes a
    /// work directory and writes qemu.conf. Hooks go in next
    /// ([`Libvirt::install_hook`]), then [`Libvirt::start_daemon`].
    pub fn new() -> Result<Self> {
        let lock = take_lock()?;
        recover_stale_runs();
        let running = processes("libvirtd");
        if let Some(p) = running.first() {
            return Err(format!(
                "a libvirtd is already running ({p}); these tests start their own: stop it first"
            ));
        }
        for tool in ["libvirtd", "virsh", "qemu-system-x86_64"] {
            if output(Command::new("sh").args(["-c", &format!("command -v {tool}")]))
                .map(|o| !o.status.success())
                .unwrap_or(true)
            {
                return Err(format!(
                    "{tool} not found: run `cargo xtask setup` (Debian packages \
                     libvirt-daemon-system, qemu-system-x86)"
                ));
            }
        }
        let work = std::env::temp_dir().join(format!("{WORK_PREFIX}{}", unique_suffix()));
        fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;
        let hook_calls_dir = work.join("hook-calls");
        fs::create_dir_all(STATE_DIR).map_err(|e| format!("creating {STATE_DIR}: {e}"))?;
        let mut lv = Self {
            state: Some(Path::new(STATE_DIR).join(format!("{}.json", std::process::id()))),
            work: work.clone(),
            hook_calls_dir: hook_calls_dir.clone(),
            undo: vec![Undo::RemoveTree(work)],
            daemon_pid: None,
            versions: None,
            domains: Mutex::new(Vec::new()),
            checksum_rule_removed: false,
            torn_down: false,
            lock: Some(lock),
        };
        lv.persist()?;
        fs::create_dir(&hook_calls_dir).map_err(|e| format!("creating {}: {e}", hook_calls_dir.display()))?;
        if !Path::new(LIBVIRT_RUN_DIR).exists() {
            lv.push(Undo::RemoveTree(LIBVIRT_RUN_DIR.into()))?;
        }
        lv.replace_file(Path::new(QEMU_CONF), QEMU_CONF_TEXT, 0o600)?;
        lv.install_hook(RECORDER_HOOK, &recorder_script(&hook_calls_dir))?;
        Ok(lv)
    }

    /// A directory for this run's files (removed at teardown).
    pub fn work_dir(&self) -> &Path {
        &self.work
    }

    /// Writes `path` (backing up what was there), to be restored at teardown.
    fn replace_file(&mut self, path: &Path, text: &str, mode: u32) -> Result<()> {
        let content = match fs::read(path) {
            Ok(bytes) => {
                let mode = fs::metadata(path)
                    .map(|m| m.permissions().mode())
                    .unwrap_or(0o644);
                Some((bytes, mode))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        };
        self.push(Undo::RestoreFile {
            path: path.to_owned(),
            content,
        })?;
        fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {}: {e}", path.display()))
    }

    fn ensure_dir(&mut self, dir: &str) -> Result<()> {
        if !Path::new(dir).is_dir() {
            fs::create_dir(dir).map_err(|e| format!("creating {dir}: {e}"))?;
            self.push(Undo::RemoveDir(dir.into()))?;
        }
        Ok(())
    }

    /// Installs `/etc/libvirt/hooks/qemu.d/NAME` (mode 0755) until teardown.
    /// libvirtd finds hooks when it starts: call this before
    /// [`Libvirt::start_daemon`].
    pub fn install_hook(&mut self, name: &str, script: &str) -> Result<()> {
        if self.daemon_pid.is_some() {
            return Err("install hooks before starting libvirtd (it reads them at start)".into());
        }
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(format!("bad hook name {name:?}"));
        }
        self.ensure_dir(HOOKS_DIR)?;
        self.ensure_dir(QEMU_HOOKS_DIR)?;
        self.replace_file(&Path::new(QEMU_HOOKS_DIR).join(name), script, 0o755)
    }

    /// `libvirtd -d`, then waits until `virsh version` answers; records the
    /// versions.
    pub fn start_daemon(&mut self) -> Result<&Versions> {
        if self.daemon_pid.is_some() {
            return Err("libvirtd already started".into());
        }
        self.push(Undo::StopDaemon)?;
        let log = self.work.join("libvirtd.log");
        let started = Instant::now();
        run_ok(
            Command::new("libvirtd")
                .arg("-d")
                .env("LIBVIRT_LOG_OUTPUTS", format!("3:file:{}", log.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        )?;
        // Known as soon as it forked: stop it even if it never answers.
        wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            read_pidfile(LIBVIRTD_PIDFILE).is_some_and(alive)
        });
        self.daemon_pid = read_pidfile(LIBVIRTD_PIDFILE).filter(|p| alive(*p));
        let ready = wait_until(DAEMON_START_TIMEOUT, Duration::from_millis(100), || {
            output(&mut virsh_cmd(&["version"])).is_ok_and(|o| o.status.success())
        });
        if !ready {
            return Err(format!(
                "libvirtd did not answer within {DAEMON_START_TIMEOUT:?}; its log: {}",
                fs::read_to_string(&log).unwrap_or_default()
            ));
        }
        if self.daemon_pid.is_none() {
            self.daemon_pid = read_pidfile(LIBVIRTD_PIDFILE);
        }
        self.persist()?;
        eprintln!(
            "libvirtd (pid {:?}) answered after {:.1?}",
            self.daemon_pid,
            started.elapsed()
        );
        self.versions = Some(Versions::probe()?);
        Ok(self.versions.as_ref().expect("just set"))
    }

    pub fn versions(&self) -> Option<&Versions> {
        self.versions.as_ref()
    }

    /// Starts the `default` network from libvirt's own XML (defining it
    /// first unless the package already did): virbr0 192.168.122.1/24,
    /// dnsmasq, libvirt's iptables rules. With `remove_checksum_rule`,
    /// then deletes libvirt's `CHECKSUM --checksum-fill` rule for virbr0
    /// (see [`Libvirt::checksum_rule_removed`]).
    pub fn start_default_network(&mut self, remove_checksum_rule: bool) -> Result<()> {
        if self.daemon_pid.is_none() {
            return Err("start libvirtd first".into());
        }
        // Undone after the network is destroyed (the list is undone newest
        // first): libvirt leaves its chains and ip_forward=1 behind.
        self.push(Undo::Iptables(iptables_snapshot()))?;
        if let Ok(v) = fs::read_to_string(IP_FORWARD) {
            self.push(Undo::WriteFile {
                path: IP_FORWARD.into(),
                content: v,
            })?;
        }
        if output(&mut virsh_cmd(&["net-info", "default"]))?.status.success() {
            eprintln!("network default: already defined (by the package)");
        } else {
            virsh(&["net-define", DEFAULT_NETWORK_XML])?;
            self.push(Undo::UndefineNetwork)?;
        }
        // Whoever started it, it runs under the libvirtd started here: stop it.
        self.push(Undo::DestroyNetwork)?;
        let info = virsh(&["net-info", "default"])?;
        let active = info
            .lines()
            .any(|l| l.starts_with("Active:") && l.trim_end().ends_with("yes"));
        if !active {
            virsh(&["net-start", "default"])?;
        }
        if remove_checksum_rule {
            let mut check = Command::new("iptables");
            check
                .args(["-w", "-t", "mangle", "-C", "LIBVIRT_PRT"])
                .args(CHECKSUM_RULE.split_whitespace());
            if output(&mut check)?.status.success() {
                run_ok(
                    Command::new("iptables")
                        .args(["-w", "-t", "mangle", "-D", "LIBVIRT_PRT"])
                        .args(CHECKSUM_RULE.split_whitespace()),
                )?;
                self.checksum_rule_removed = true;
            }
        }
        Ok(())
    }

    /// Whether [`Libvirt::start_default_network`] found and removed
    /// libvirt's CHECKSUM rule.
    pub fn checksum_rule_removed(&self) -> bool {
        self.checksum_rule_removed
    }

    /// dnsmasq of the default network, if it runs.
    pub fn dnsmasq_pid(&self) -> Option<i32> {
        read_pidfile(DNSMASQ_PIDFILE).filter(|p| alive(*p))
    }

    /// Every hook call recorded so far, oldest first.
    pub fn hook_calls(&self) -> Vec<HookCall> {
        let Ok(dir) = fs::read_dir(&self.hook_calls_dir) else {
            return Vec::new();
        };
        let mut stamps: Vec<String> = dir
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".xml"))
                    .map(str::to_owned)
            })
            .collect();
        stamps.sort_by_key(|s| (s.len(), s.clone()));
        stamps
            .iter()
            .filter_map(|stamp| {
                let read = |ext: &str| fs::read_to_string(self.hook_calls_dir.join(format!("{stamp}.{ext}")));
                let args = read("args").ok()?;
                let mut args = args.lines().map(str::to_owned);
                Some(HookCall {
                    at_ns: stamp.parse().unwrap_or(0),
                    domain: args.next().unwrap_or_default(),
                    operation: args.next().unwrap_or_default(),
                    sub_operation: args.next().unwrap_or_default(),
                    extra: args.next().unwrap_or_default(),
                    xml: read("xml").unwrap_or_default(),
                    links: read("links")
                        .unwrap_or_default()
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect(),
                })
            })
            .collect()
    }

    /// `virsh create` of `spec` (a transient domain). The [`Domain`] guard
    /// destroys it when dropped.
    pub fn create(&self, spec: &GuestSpec) -> Result<Domain<'_>> {
        if self.daemon_pid.is_none() {
            return Err("start libvirtd first".into());
        }
        let serial = self.work.join(format!("{}.serial", spec.name));
        let xml_path = self.work.join(format!("{}.xml", spec.name));
        fs::write(&xml_path, spec.to_xml(&serial))
            .map_err(|e| format!("writing {}: {e}", xml_path.display()))?;
        self.domains
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(spec.name.clone());
        self.persist()?;
        let started = Instant::now();
        virsh(&["create", &xml_path.to_string_lossy()])?;
        eprintln!("virsh create {} took {:.2?}", spec.name, started.elapsed());
        Ok(Domain {
            name: spec.name.clone(),
            serial,
            created: started,
            _lv: self,
        })
    }

    /// Tears everything down (see the module comment); returns what could
    /// not be undone or was left behind.
    pub fn shutdown(mut self) -> Result<()> {
        let errors = self.teardown();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    fn teardown(&mut self) -> Vec<String> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        let mut errors = Vec::new();
        let domains: Vec<String> =
            std::mem::take(&mut *self.domains.lock().unwrap_or_else(|e| e.into_inner()));
        if self.daemon_pid.is_some() {
            for name in &domains {
                let running = output(&mut virsh_cmd(&["domstate", name])).is_ok_and(|o| o.status.success());
                if running {
                    if let Err(e) = virsh(&["destroy", name]) {
                        errors.push(e);
                    }
                }
            }
        }
        while let Some(step) = self.undo.pop() {
            if let Err(e) = self.undo_step(step, &domains) {
                errors.push(e);
            }
        }
        if let Some(state) = self.state.take() {
            if let Err(e) = fs::remove_file(&state) {
                errors.push(format!("removing {}: {e}", state.display()));
            }
            // Empty once no run is live; left if another record is there.
            let _ = fs::remove_dir(STATE_DIR);
        }
        self.lock = None;
        errors
    }

    fn push(&mut self, step: Undo) -> Result<()> {
        self.undo.push(step);
        self.persist()
    }

    /// Rewrites this run's record (write, then rename).
    fn persist(&self) -> Result<()> {
        let Some(path) = &self.state else {
            return Ok(());
        };
        let record = serde_json::json!({
            "pid": std::process::id(),
            "work": self.work.to_string_lossy(),
            "daemon_pid": self.daemon_pid,
            "domains": *self.domains.lock().unwrap_or_else(|e| e.into_inner()),
            "undo": self.undo.iter().map(Undo::to_json).collect::<Vec<_>>(),
        });
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, record.to_string()).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        fs::rename(&tmp, path).map_err(|e| format!("renaming {}: {e}", tmp.display()))
    }

    fn undo_step(&mut self, step: Undo, domains: &[String]) -> Result<()> {
        match step {
            Undo::RestoreFile { path, content } => match content {
                Some((bytes, mode)) => {
                    fs::write(&path, bytes).map_err(|e| format!("restoring {}: {e}", path.display()))?;
                    fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                        .map_err(|e| format!("chmod {}: {e}", path.display()))
                }
                None => match fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        Err(format!("removing {}: {e}", path.display()))
                    }
                    _ => Ok(()),
                },
            },
            Undo::RemoveDir(dir) => {
                fs::remove_dir(&dir).map_err(|e| format!("removing {}: {e}", dir.display()))
            }
            Undo::RemoveTree(dir) => match fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    Err(format!("removing {}: {e}", dir.display()))
                }
                _ => Ok(()),
            },
            Undo::WriteFile { path, content } => {
                fs::write(&path, content).map_err(|e| format!("restoring {}: {e}", path.display()))
            }
            Undo::UndefineNetwork => virsh(&["net-undefine", "default"]).map(drop),
            Undo::DestroyNetwork => {
                let dnsmasq = self.dnsmasq_pid();
                let out = output(&mut virsh_cmd(&["net-destroy", "default"]))?;
                let msg = String::from_utf8_lossy(&out.stderr);
                if !out.status.success() && !msg.contains("not active") {
                    return Err(format!("virsh net-destroy default: {}", msg.trim()));
                }
                if let Some(pid) = dnsmasq {
                    if !wait_until(Duration::from_secs(5), Duration::from_millis(50), || !alive(pid)) {
                        terminate(pid, Duration::from_secs(2));
                        return Err(format!("dnsmasq pid {pid} outlived net-destroy (killed)"));
                    }
                }
                Ok(())
            }
            Undo::StopDaemon => self.stop_daemon(domains),
            Undo::Iptables(before) => {
                let mut errors = Vec::new();
                let now = iptables_snapshot();
                for ((bin, table), rules) in &now {
                    let old = before.get(&(*bin, *table)).cloned().unwrap_or_default();
                    let new: Vec<&String> = rules.iter().filter(|r| !old.contains(*r)).collect();
                    // Jumps into libvirt's chains first, then the chains.
                    for rule in new
                        .iter()
                        .filter(|r| r.starts_with("-A ") && r.contains(" -j LIBVIRT_"))
                    {
                        let mut args: Vec<&str> = vec!["-w", "-t", table, "-D"];
                        args.extend(rule.split_whitespace().skip(1));
                        if let Err(e) = run_ok(Command::new(bin).args(&args)) {
                            errors.push(e);
                        }
                    }
                    for rule in new.iter().filter(|r| r.starts_with("-N LIBVIRT_")) {
                        let chain = rule.split_whitespace().nth(1).unwrap_or_default();
                        for op in ["-F", "-X"] {
                            if let Err(e) = run_ok(Command::new(bin).args(["-w", "-t", table, op, chain])) {
                                errors.push(e);
                            }
                        }
                    }
                }
                if errors.is_empty() {
                    Ok(())
                } else {
                    Err(errors.join("; "))
                }
            }
        }
    }

    /// SIGTERM to libvirtd; then no libvirtd, no QEMU of ours and no
    /// dnsmasq of the default network may remain (leftovers are killed and
    /// reported). Removes our domains' QEMU logs.
    fn stop_daemon(&mut self, domains: &[String]) -> Result<()> {
        let mut left = Vec::new();
        if let Some(pid) = self.daemon_pid.take() {
            if !terminate(pid, Duration::from_secs(15)) {
                left.push(format!("libvirtd pid {pid} survived SIGKILL"));
            }
        }
        let ours = |p: &Process| match p.comm.as_str() {
            c if c.starts_with("libvirtd") => true,
            c if c.starts_with("qemu-system") => {
                domains.iter().any(|d| p.cmdline.contains(&format!("guest={d},")))
            }
            c if c.starts_with("dnsmasq") => p.cmdline.contains(DNSMASQ_CONF),
            _ => false,
        };
        for p in ["libvirtd", "qemu-system", "dnsmasq"]
            .iter()
            .flat_map(|c| processes(c))
            .filter(ours)
        {
            terminate(p.pid, Duration::from_secs(2));
            left.push(format!("left behind and killed: {p}"));
        }
        for d in domains {
            let _ = fs::remove_file(Path::new(QEMU_LOG_DIR).join(format!("{d}.log")));
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(left.join("; "))
        }
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        for e in self.teardown() {
            eprintln!("libvirt teardown: {e}");
        }
    }
}

/// Undoes what runs that died before their teardown left behind (their
/// records in [`STATE_DIR`]). Called with the machine-wide lock held, so
/// every record there belongs to a dead run.
fn recover_stale_runs() {
    let Ok(dir) = fs::read_dir(STATE_DIR) else {
        return;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            let _ = fs::remove_file(&path);
            continue;
        }
        let record: serde_json::Value = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let undo: Vec<Undo> = record["undo"]
            .as_array()
            .map(|a| a.iter().filter_map(Undo::from_json).collect())
            .unwrap_or_default();
        let daemon_pid = record["daemon_pid"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .filter(|p| {
                alive(*p)
                    && fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.starts_with("libvirtd"))
            });
        let domains: Vec<String> = record["domains"]
            .as_array()
            .map(|a| a.iter().filter_map(|d| d.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        eprintln!(
            "undoing what an earlier run (pid {}) left behind: {} step(s), domains {domains:?}",
            record["pid"],
            undo.len()
        );
        let mut stale = Libvirt {
            work: PathBuf::from(record["work"].as_str().unwrap_or_default()),
            state: Some(path),
            hook_calls_dir: PathBuf::new(),
            undo,
            daemon_pid,
            versions: None,
            domains: Mutex::new(domains),
            checksum_rule_removed: false,
            torn_down: false,
            lock: None,
        };
        for e in stale.teardown() {
            eprintln!("  {e}");
        }
    }
}

/// Waits (at most [`LOCK_TIMEOUT`]) for the machine-wide lock. [`Libvirt`]
/// holds it for its life; so does any test that changes what it changes
/// (the Debian package test installs a hook at the same path), so that
/// they never run at once, in this process or in two.
pub fn take_lock() -> Result<fs::File> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(LOCK_FILE)
        .map_err(|e| format!("opening {LOCK_FILE}: {e}"))?;
    let start = Instant::now();
    let mut said = false;
    loop {
        // SAFETY: flock(2) on an fd this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        if start.elapsed() > LOCK_TIMEOUT {
            return Err(format!("{LOCK_FILE} still locked after {LOCK_TIMEOUT:?}"));
        }
        if !said {
            eprintln!("waiting for {LOCK_FILE} (another libvirt test run holds it)");
            said = true;
        }
        thread::sleep(Duration::from_millis(500));
    }
}

// ---- Guests ----

/// How a guest boots.
#[derive(Clone, Debug)]
pub enum Boot {
    /// Direct kernel boot (`<kernel>`, `<initrd>`, `<cmdline>`).
    Linux {
        kernel: PathBuf,
        initrd: PathBuf,
        cmdline: String,
    },
    /// `<boot dev='network'/>`: SeaBIOS runs iPXE's ROM for virtio-net.
    Network,
}

/// A diskless TCG guest with one virtio NIC on the default network.
#[derive(Clone, Debug)]
pub struct GuestSpec {
    pub name: String,
    pub mac: String,
    pub memory_mib: u32,
    pub boot: Boot,
}

impl GuestSpec {
    /// A name unique to this process, starting with `prefix`.
    pub fn unique_name(prefix: &str) -> String {
        format!("{prefix}-{}", unique_suffix())
    }

    /// The domain XML; the serial console goes to `serial`.
    ///
    /// `type='qemu'` (TCG): /dev/kvm exists on these machines, but a KVM
    /// guest hangs at "Booting from ROM..." (nested virtualization), while
    /// TCG boots the kernel in about 3 s. `<driver name='qemu'/>`: no
    /// vhost-net here. For network boot, `<bios useserial='yes'/>` (QEMU's
    /// `-machine graphics=off`) makes SeaBIOS, and iPXE through it, print
    /// to the serial port as well.
    pub fn to_xml(&self, serial: &Path) -> String {
        let (os, on_reboot) = match &self.boot {
            Boot::Linux {
                kernel,
                initrd,
                cmdline,
            } => (
                format!(
                    "    <kernel>{}</kernel>\n    <initrd>{}</initrd>\n    <cmdline>{}</cmdline>\n",
                    xml_escape(&kernel.to_string_lossy()),
                    xml_escape(&initrd.to_string_lossy()),
                    xml_escape(cmdline)
                ),
                // panic=-1 reboots: end the domain instead of looping.
                "destroy",
            ),
            // SeaBIOS retries the boot (a reset) when iPXE finds nothing.
            Boot::Network => (
                "    <boot dev='network'/>\n    <bios useserial='yes'/>\n".to_owned(),
                "restart",
            ),
        };
        format!(
            "<domain type='qemu'>\n  <name>{name}</name>\n  <memory unit='MiB'>{mem}</memory>\n  \
             <vcpu>1</vcpu>\n  <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n{os}  </os>\n  \
             <features><acpi/></features>\n  <on_poweroff>destroy</on_poweroff>\n  \
             <on_reboot>{on_reboot}</on_reboot>\n  <on_crash>destroy</on_crash>\n  <devices>\n    \
             <interface type='network'>\n      <mac address='{mac}'/>\n      \
             <source network='default'/>\n      <model type='virtio'/>\n      \
             <driver name='qemu'/>\n    </interface>\n    <serial type='file'>\n      \
             <source path='{serial}'/>\n      <target port='0'/>\n    </serial>\n    \
             <memballoon model='none'/>\n  </devices>\n</domain>\n",
            name = xml_escape(&self.name),
            mem = self.memory_mib,
            mac = xml_escape(&self.mac),
            serial = xml_escape(&serial.to_string_lossy()),
        )
    }
}

/// One row of `virsh domiflist`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomIface {
    /// The tap (`vnetN`), `-` if none.
    pub target: String,
    pub kind: String,
    pub source: String,
    pub model: String,
    pub mac: String,
}

/// A transient domain; destroyed on drop if still running.
pub struct Domain<'a> {
    name: String,
    serial: PathBuf,
    created: Instant,
    _lv: &'a Libvirt,
}

impl Domain<'_> {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// When `virsh create` was called.
    pub fn created(&self) -> Instant {
        self.created
    }

    /// Whether libvirt still lists it (a transient domain vanishes when it
    /// stops).
    pub fn is_running(&self) -> bool {
        output(&mut virsh_cmd(&["domstate", &self.name]))
            .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("running"))
    }

    /// `virsh domiflist`.
    pub fn interfaces(&self) -> Result<Vec<DomIface>> {
        let out = virsh(&["domiflist", &self.name])?;
        Ok(out
            .lines()
            .map(str::split_whitespace)
            .filter_map(|mut f| {
                Some(DomIface {
                    target: f.next()?.to_owned(),
                    kind: f.next()?.to_owned(),
                    source: f.next()?.to_owned(),
                    model: f.next()?.to_owned(),
                    mac: f.next()?.to_ascii_lowercase(),
                })
            })
            .filter(|i| i.mac.contains(':'))
            .collect())
    }

    /// The serial console so far (carriage returns dropped).
    pub fn serial_text(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.serial).unwrap_or_default()).replace('\r', "")
    }

    /// The last `n` lines of the serial console, for failure messages.
    pub fn serial_tail(&self, n: usize) -> String {
        let text = self.serial_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits for a serial line containing one of `markers`; returns the
    /// index of the marker and the line. Fails on timeout or when the
    /// domain stops, with the end of the console in the message.
    pub fn wait_for_serial(&self, markers: &[&str], timeout: Duration) -> Result<(usize, String)> {
        let start = Instant::now();
        let mut checked_running = Instant::now();
        loop {
            let text = self.serial_text();
            for line in text.lines() {
                if let Some(i) = markers.iter().position(|m| line.contains(m)) {
                    return Ok((i, line.trim().to_owned()));
                }
            }
            if checked_running.elapsed() > Duration::from_secs(2) {
                checked_running = Instant::now();
                if !self.is_running() {
                    return Err(format!(
                        "{} stopped before printing any of {markers:?}; its console ends with:\n{}",
                        self.name,
                        self.serial_tail(40)
                    ));
                }
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "{} printed none of {markers:?} within {timeout:?}; its console ends with:\n{}",
                    self.name,
                    self.serial_tail(40)
                ));
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// `virsh destroy`.
    pub fn destroy(&self) -> Result<()> {
        virsh(&["destroy", &self.name]).map(drop)
    }
}

impl Drop for Domain<'_> {
    fn drop(&mut self) {
        if output(&mut virsh_cmd(&["domstate", &self.name])).is_ok_and(|o| o.status.success()) {
            if let Err(e) = self.destroy() {
                eprintln!("destroying {}: {e}", self.name);
            }
        }
    }
}

// ---- The guest kernel ----

/// A Debian kernel for the Linux guest, and its modules.
#[derive(Clone, Debug)]
pub struct GuestKernel {
    pub vmlinuz: PathBuf,
    /// `.../lib/modules/<release>`.
    pub modules: PathBuf,
    pub release: String,
}

impl GuestKernel {
    /// Looks in `$DHCPFIX_GUEST_KERNEL_DIR` (a tree with `boot/vmlinuz-*`
    /// and `lib/modules/`), then in the cache `cargo xtask setup` fills
    /// (`$DHCPFIX_CACHE_DIR` or `~/.cache/dhcpfix`, `guest-kernel/*/`),
    /// then in an installed Debian kernel (`/boot`, `/lib/modules`).
    pub fn find() -> Result<Self> {
        let mut roots: Vec<PathBuf> = Vec::new();
        if let Some(dir) = std::env::var_os("DHCPFIX_GUEST_KERNEL_DIR") {
            roots.push(dir.into());
        }
        let cache = std::env::var_os("DHCPFIX_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| "/root".into())
                    .join(".cache/dhcpfix")
            });
        if let Ok(dir) = fs::read_dir(cache.join("guest-kernel")) {
            let mut found: Vec<PathBuf> = dir
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.join("READY").is_file())
                .collect();
            found.sort();
            roots.extend(found.into_iter().rev());
        }
        roots.push("/".into());
        for root in &roots {
            if let Some(k) = Self::in_root(root) {
                return Ok(k);
            }
        }
        Err(format!(
            "no guest kernel with virtio_net found in {roots:?}: run `cargo xtask setup` (it \
             unpacks Debian's linux-image-cloud-amd64 into {}/guest-kernel)",
            cache.display()
        ))
    }

    fn in_root(root: &Path) -> Option<Self> {
        let mut kernels: Vec<String> = fs::read_dir(root.join("boot"))
            .ok()?
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix("vmlinuz-")
                    .map(str::to_owned)
            })
            .collect();
        kernels.sort();
        kernels.into_iter().rev().find_map(|release| {
            let modules = root.join("lib/modules").join(&release);
            let index = module_index(&modules);
            index.contains_key("virtio_net").then(|| Self {
                vmlinuz: root.join("boot").join(format!("vmlinuz-{release}")),
                modules,
                release,
            })
        })
    }

    /// `names` and everything they depend on, dependencies first (modules
    /// built into the kernel left out).
    pub fn modules_in_load_order(&self, names: &[&str]) -> Result<Vec<(String, PathBuf)>> {
        let index = module_index(&self.modules);
        let builtin: BTreeSet<String> = fs::read_to_string(self.modules.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.rsplit('/').next())
            .map(|f| f.trim_end_matches(".ko").replace('-', "_"))
            .collect();
        let mut order: Vec<(String, PathBuf)> = Vec::new();
        fn visit(
            name: &str,
            index: &BTreeMap<String, PathBuf>,
            builtin: &BTreeSet<String>,
            order: &mut Vec<(String, PathBuf)>,
            stack: &mut Vec<String>,
        ) -> Result<()> {
            let name = name.replace('-', "_");
            if builtin.contains(&name) || order.iter().any(|(n, _)| *n == name) {
                return Ok(());
            }
            if stack.contains(&name) || stack.len() > 32 {
                return Err(format!("module dependency loop at {name}: {stack:?}"));
            }
            let path = index
                .get(&name)
                .ok_or_else(|| format!("module {name} not found (needed by {stack:?})"))?;
            stack.push(name.clone());
            for dep in module_depends(path)? {
                visit(&dep, index, builtin, order, stack)?;
            }
            stack.pop();
            order.push((name, path.clone()));
            Ok(())
        }
        for n in names {
            visit(n, &index, &builtin, &mut order, &mut Vec::new())?;
        }
        Ok(order)
    }
}

/// Module name (`-` as `_`) -> its `.ko` under `dir`.
fn module_index(dir: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.join("kernel")];
    while let Some(d) = todo.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p);
            } else if let Some(stem) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".ko"))
            {
                out.insert(stem.replace('-', "_"), p.clone());
            }
        }
    }
    out
}

/// The `depends=` entry of a module's `.modinfo` ELF section.
fn module_depends(ko: &Path) -> Result<Vec<String>> {
    let data = fs::read(ko).map_err(|e| format!("reading {}: {e}", ko.display()))?;
    let modinfo =
        elf_section(&data, ".modinfo").ok_or_else(|| format!("{}: no .modinfo section", ko.display()))?;
    Ok(modinfo
        .split(|b| *b == 0)
        .filter_map(|kv| kv.strip_prefix(b"depends="))
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|d| !d.is_empty())
        .collect())
}

/// The bytes of section `name` of a 64-bit little-endian ELF file.
fn elf_section<'a>(data: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(data.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(data.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(data.get(o..o + 8)?.try_into().ok()?));
    if data.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let shoff = usize::try_from(u64_at(0x28)?).ok()?;
    let shentsize = usize::from(u16_at(0x3a)?);
    let shnum = usize::from(u16_at(0x3c)?);
    let shstrndx = usize::from(u16_at(0x3e)?);
    if shentsize < 0x40 {
        return None;
    }
    let section = |i: usize| -> Option<(u32, &'a [u8])> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        let off = usize::try_from(u64_at(h + 0x18)?).ok()?;
        let size = usize::try_from(u64_at(h + 0x20)?).ok()?;
        Some((u32_at(h)?, data.get(off..off.checked_add(size)?)?))
    };
    let (_, names) = section(shstrndx)?;
    (0..shnum).find_map(|i| {
        let (name_off, bytes) = section(i)?;
        let rest = names.get(name_off as usize..)?;
        let end = rest.iter().position(|b| *b == 0)?;
        (&rest[..end] == name.as_bytes()).then_some(bytes)
    })
}

// ---- The initramfs ----

/// Markers the guest's /init prints on the serial console.
pub mod marker {
    /// /init started (kernel release and uptime follow).
    pub const BOOTED: &str = "DHCPFIX-BOOTED";
    /// `insmod` failed (the module follows).
    pub const INSMOD_FAILED: &str = "DHCPFIX-INSMOD-FAILED";
    /// No eth0 appeared.
    pub const NO_ETH: &str = "DHCPFIX-NOETH";
    /// eth0 is up: MAC and the virtio feature bits the driver negotiated.
    pub const ETH0: &str = "DHCPFIX-ETH0";
    /// udhcpc got a lease (`DHCPFIX-LEASE <ip> server=... router=...`).
    pub const LEASE: &str = "DHCPFIX-LEASE";
    /// udhcpc gave up.
    pub const NO_LEASE: &str = "DHCPFIX-NOLEASE";
    /// The raw-socket probe's per-frame lines and summary.
    pub const RAW: &str = "DHCPFIX-RAW";
    pub const RAW_SUMMARY: &str = "DHCPFIX-RAW-SUMMARY";
    /// /init is done (then it idles, or powers off with `dhcpfix.end=poweroff`).
    pub const DONE: &str = "DHCPFIX-DONE";
}

/// The virtio-net feature bit a guest sets when it accepts partially
/// checksummed packets (`VIRTIO_NET_F_GUEST_CSUM`); QEMU then turns on the
/// tap's tx checksum offload (`TUN_F_CSUM`).
pub const VIRTIO_NET_F_GUEST_CSUM: usize = 1;

/// What the Linux guest boots from.
#[derive(Clone, Debug)]
pub struct Initramfs {
    pub path: PathBuf,
    /// Modules loaded by /init, in order.
    pub modules: Vec<String>,
    /// Whether the raw-socket probe is in (it needs rustc and a static
    /// glibc; without them the guest runs udhcpc only).
    pub raw_probe: bool,
}

const INIT: &str = r#"#!/bin/busybox sh
# /init of the dhcpfix test guest (tests/support/libvirt_real.rs).
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "DHCPFIX-BOOTED $(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)"
for m in $(cat /modules.list); do
    insmod "/lib/modules/$m.ko" || echo "DHCPFIX-INSMOD-FAILED $m"
done
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 100 ]; do
    n=$((n + 1))
    sleep 0.1
done
if [ ! -e /sys/class/net/eth0 ]; then
    echo DHCPFIX-NOETH
else
    ip link set lo up
    ip link set eth0 up
    echo "DHCPFIX-ETH0 $(cat /sys/class/net/eth0/address) features=$(cat /sys/class/net/eth0/device/features) uptime=$(cut -d' ' -f1 /proc/uptime)"
    probe=
    if [ -x /probe ]; then
        /probe eth0 45 &
        probe=$!
        sleep 0.3
    fi
    if ! udhcpc -i eth0 -f -q -n -t 10 -T 3 -s /udhcpc.script; then
        echo "DHCPFIX-NOLEASE uptime=$(cut -d' ' -f1 /proc/uptime)"
    fi
    [ -n "$probe" ] && wait "$probe"
fi
echo "DHCPFIX-DONE uptime=$(cut -d' ' -f1 /proc/uptime)"
case " $(cat /proc/cmdline) " in
*" dhcpfix.end=poweroff "*) poweroff -f ;;
esac
while :; do sleep 3600; done
"#;

const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
# udhcpc's event script in the dhcpfix test guest.
case "$1" in
deconfig)
    ip addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound | renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    echo "DHCPFIX-LEASE $ip server=$serverid router=$router uptime=$(cut -d' ' -f1 /proc/uptime)"
    ;;
leasefail | nak)
    echo "DHCPFIX-UDHCPC-$1"
    ;;
esac
exit 0
"#;

/// Builds `out_dir/initramfs.cpio` (newc, uncompressed): the host's
/// busybox (Debian's dynamic one, which the lab uses too) with the shared
/// libraries `ldd` names, the guest kernel's virtio-net and virtio-pci
/// modules with their dependencies, /init and udhcpc's script, and, if it
/// builds, the raw-socket probe (`guest_probe.rs`).
pub fn build_initramfs(kernel: &GuestKernel, out_dir: &Path) -> Result<Initramfs> {
    fs::create_dir_all(out_dir).map_err(|e| format!("creating {}: {e}", out_dir.display()))?;
    let mut cpio = Cpio::default();
    for d in "bin sbin usr usr/bin usr/sbin lib lib64 lib/modules proc sys dev tmp etc run var root"
        .split_whitespace()
    {
        cpio.dir(d);
    }
    cpio.char_device("dev/console", 0o600, 5, 1);
    let busybox = ["/usr/bin/busybox", "/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .ok_or("busybox not found: run `cargo xtask setup` (Debian package busybox)")?;
    cpio.file("bin/busybox", 0o755, read(busybox)?);
    for lib in shared_libraries(busybox)? {
        let inside = lib.to_string_lossy().trim_start_matches('/').to_owned();
        let mut parent = String::new();
        for part in Path::new(&inside).parent().into_iter().flat_map(Path::components) {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(&part.as_os_str().to_string_lossy());
            cpio.dir(&parent);
        }
        cpio.file(&inside, 0o755, read(&lib)?);
    }
    let modules = kernel.modules_in_load_order(&["virtio_pci", "virtio_net"])?;
    let mut list = String::new();
    for (name, path) in &modules {
        cpio.file(&format!("lib/modules/{name}.ko"), 0o644, read(path)?);
        list.push_str(name);
        list.push('\n');
    }
    cpio.file("modules.list", 0o644, list.into_bytes());
    cpio.file("init", 0o755, INIT.as_bytes().to_vec());
    cpio.file("udhcpc.script", 0o755, UDHCPC_SCRIPT.as_bytes().to_vec());
    let raw_probe = match build_probe(out_dir) {
        Ok(bin) => {
            cpio.file("probe", 0o755, read(&bin)?);
            true
        }
        Err(e) => {
            eprintln!("note: the guest runs without the raw-socket probe: {e}");
            false
        }
    };
    let path = out_dir.join("initramfs.cpio");
    fs::write(&path, cpio.finish()).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(Initramfs {
        path,
        modules: modules.into_iter().map(|(n, _)| n).collect(),
        raw_probe,
    })
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

/// The shared libraries (and the loader) `ldd BINARY` names.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = run_ok(Command::new("ldd").arg(binary))?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Compiles the raw-socket probe, statically, with the rustc on PATH.
fn build_probe(out_dir: &Path) -> Result<PathBuf> {
    let src = out_dir.join("guest_probe.rs");
    fs::write(&src, include_str!("guest_probe.rs")).map_err(|e| format!("writing {}: {e}", src.display()))?;
    let bin = out_dir.join("guest_probe");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    run_ok(
        Command::new(rustc)
            .args(["--edition", "2021", "-O", "-C", "target-feature=+crt-static"])
            .args(["-C", "strip=symbols", "-o"])
            .arg(&bin)
            .arg(&src),
    )?;
    Ok(bin)
}

/// A cpio archive in the "newc" format the kernel unpacks.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
    dirs: BTreeSet<String>,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let mtime = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(0);
        let fields = [
            self.ino,
            mode,
            0,
            0,
            if mode & 0o170000 == 0o040000 { 2 } else { 1 },
            mtime,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        if self.dirs.insert(name.to_owned()) {
            self.entry(name, 0o040755, &[], (0, 0));
        }
    }

    fn file(&mut self, name: &str, perm: u32, data: Vec<u8>) {
        self.entry(name, 0o100000 | perm, &data, (0, 0));
    }

    fn char_device(&mut self, name: &str, perm: u32, major: u32, minor: u32) {
        self.entry(name, 0o020000 | perm, &[], (major, minor));
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.out
    }
}

/// Parses `DHCPFIX-ETH0 <mac> features=<bits> ...`: whether the guest's
/// driver negotiated `bit` (the sysfs string has one character per bit,
/// bit 0 first).
pub fn eth0_feature(line: &str, bit: usize) -> Option<bool> {
    let bits = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("features="))?;
    bits.as_bytes().get(bit).map(|b| *b == b'1')
}

/// Writes `text` to stderr as one block (test output).
pub fn say(text: &str) {
    let _ = writeln!(io::stderr(), "{text}");
}
