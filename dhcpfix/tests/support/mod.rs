//! Test support: frame builders, an independent reference model of what the
//! classifier must do, a deterministic PRNG, and the privilege gate.
//!
//! The reference is written separately from `dhcpfix-common` on purpose
//! (different structure, different arithmetic), so a bug shared by the
//! datapath and the common code cannot hide.
#![allow(dead_code)]

/// xorshift64*: deterministic, so a failing case can be replayed by seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Reference RFC 1071 sum: 32-bit accumulator over bytes, high byte first,
/// carries folded at the end.
pub fn ref_sum(chunks: &[&[u8]]) -> u16 {
    let mut acc: u32 = 0;
    for chunk in chunks {
        for (i, b) in chunk.iter().enumerate() {
            acc += if i % 2 == 0 {
                u32::from(*b) << 8
            } else {
                u32::from(*b)
            };
            if acc > 0x00ff_ffff {
                acc = (acc & 0xffff) + (acc >> 16);
            }
        }
        assert!(
            chunk.len() % 2 == 0 || std::ptr::eq(*chunk, *chunks.last().unwrap()),
            "odd chunk must be last"
        );
    }
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

fn pseudo(src: &[u8], dst: &[u8], udp_len: usize) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[..4].copy_from_slice(src);
    p[4..8].copy_from_slice(dst);
    p[9] = 17;
    p[10..12].copy_from_slice(&(udp_len as u16).to_be_bytes());
    p
}

/// The correct UDP checksum of `udp` (its check field ignored).
pub fn ref_udp_checksum(src: &[u8], dst: &[u8], udp: &[u8]) -> u16 {
    let mut zeroed = udp.to_vec();
    zeroed[6] = 0;
    zeroed[7] = 0;
    let c = !ref_sum(&[&pseudo(src, dst, udp.len()), &zeroed]);
    if c == 0 {
        0xffff
    } else {
        c
    }
}

/// Whether `udp` verifies as a receiver checks it.
pub fn ref_verifies(src: &[u8], dst: &[u8], udp: &[u8]) -> bool {
    if udp[6] == 0 && udp[7] == 0 {
        return true;
    }
    ref_sum(&[&pseudo(src, dst, udp.len()), udp]) == 0xffff
}

/// The pseudo-header sum a `CHECKSUM_PARTIAL` skb carries in the check field.
pub fn ref_partial_seed(src: &[u8], dst: &[u8], udp_len: usize) -> u16 {
    ref_sum(&[&pseudo(src, dst, udp_len)])
}

/// Where the reference finds a fillable DHCP packet: (l3, l4, udp_len).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefVerdict {
    /// Not IPv4 UDP to a watched port.
    Other,
    /// Watched port, but must be left alone.
    Skip,
    /// Fillable at these offsets.
    Dhcp { l3: usize, l4: usize, udp_len: usize },
}

/// Reference classification, written from the spec in the issue.
pub fn ref_classify(f: &[u8], ports: &[u16], max_udp: usize) -> RefVerdict {
    let be16 = |at: usize| -> Option<u16> { Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?])) };
    let mut l3 = 14;
    let mut ethertype = match be16(12) {
        Some(t) => t,
        None => return RefVerdict::Other,
    };
    for _ in 0..2 {
        if ethertype == 0x8100 || ethertype == 0x88a8 {
            ethertype = match be16(l3 + 2) {
                Some(t) => t,
                None => return RefVerdict::Other,
            };
            l3 += 4;
        }
    }
    if ethertype != 0x0800 || f.len() < l3 + 20 {
        return RefVerdict::Other;
    }
    let vihl = f[l3];
    let ihl = usize::from(vihl & 15) * 4;
    if vihl >> 4 != 4 || ihl < 20 || f[l3 + 9] != 17 {
        return RefVerdict::Other;
    }
    let flags_frag = be16(l3 + 6).unwrap();
    if flags_frag & 0x1fff != 0 {
        return RefVerdict::Other;
    }
    let l4 = l3 + ihl;
    if f.len() < l4 + 8 {
        return RefVerdict::Other;
    }
    let dport = be16(l4 + 2).unwrap();
    if !ports.contains(&dport) || dport == 0 {
        return RefVerdict::Other;
    }
    if flags_frag & 0x2000 != 0 {
        return RefVerdict::Skip;
    }
    let total = usize::from(be16(l3 + 2).unwrap());
    let udp_len = usize::from(be16(l4 + 4).unwrap());
    if total < ihl + 8 || udp_len != total - ihl || l3 + total > f.len() || udp_len > max_udp {
        return RefVerdict::Skip;
    }
    RefVerdict::Dhcp { l3, l4, udp_len }
}

/// Builds an Ethernet frame carrying IPv4/UDP.
#[derive(Clone, Debug)]
pub struct FrameSpec {
    pub vlans: Vec<u16>,
    pub ip_options: usize,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub payload: Vec<u8>,
    pub more_fragments: bool,
    pub frag_offset: u16,
    /// Ethernet padding after the IP packet.
    pub trailer: usize,
}

impl FrameSpec {
    /// A DHCP reply (server 67 -> client 68) with `payload_len` bytes of payload.
    pub fn dhcp_reply(payload_len: usize, rng: &mut Rng) -> Self {
        Self {
            vlans: vec![],
            ip_options: 0,
            src: [10, 199, 0, 1],
            dst: [255, 255, 255, 255],
            sport: 67,
            dport: 68,
            payload: rng.bytes(payload_len),
            more_fragments: false,
            frag_offset: 0,
            trailer: 0,
        }
    }

    /// Builds the frame; the check field holds `check`.
    pub fn build(&self, check: Check) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        for (i, tpid) in self.vlans.iter().enumerate() {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&(100 + i as u16).to_be_bytes());
        }
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let ihl = 20 + self.ip_options;
        let udp_len = 8 + self.payload.len();
        let total = ihl + udp_len;
        let mut ip = vec![0u8; ihl];
        ip[0] = 0x40 | (ihl / 4) as u8;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        let frag = (if self.more_fragments { 0x2000 } else { 0 }) | (self.frag_offset & 0x1fff);
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&self.src);
        ip[16..20].copy_from_slice(&self.dst);
        for (i, b) in ip[20..].iter_mut().enumerate() {
            *b = if i + 1 == self.ip_options { 0 } else { 1 }; // NOPs, then EOL
        }
        let hsum = !ref_sum(&[&ip]);
        ip[10..12].copy_from_slice(&hsum.to_be_bytes());
        f.extend_from_slice(&ip);
        let mut udp = vec![0u8; 8];
        udp[0..2].copy_from_slice(&self.sport.to_be_bytes());
        udp[2..4].copy_from_slice(&self.dport.to_be_bytes());
        udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        udp.extend_from_slice(&self.payload);
        let check = match check {
            Check::Partial => ref_partial_seed(&self.src, &self.dst, udp_len),
            Check::Complete => ref_udp_checksum(&self.src, &self.dst, &udp),
            Check::Zero => 0,
            Check::Value(v) => v,
        };
        udp[6..8].copy_from_slice(&check.to_be_bytes());
        f.extend_from_slice(&udp);
        f.extend(std::iter::repeat_n(0u8, self.trailer));
        f
    }
}

/// What the check field holds when the frame is built.
#[derive(Clone, Copy, Debug)]
pub enum Check {
    /// The pseudo-header seed of a `CHECKSUM_PARTIAL` skb.
    Partial,
    /// The correct full checksum.
    Complete,
    /// Zero ("no checksum").
    Zero,
    /// An arbitrary value.
    Value(u16),
}

/// Whether privileged tests should run. Not root: skip with a message,
/// unless CI=true, where skipping is a failure.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: needs root, and CI=true forbids skipping");
    }
    eprintln!("skipped {test}: needs root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON)");
    false
}

// ---- Running the dhcpfix binary, the lab, namespaces ----

use std::{
    fs, io,
    os::fd::AsRawFd,
    path::Path,
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use dhcpfix_lab::lab::{self, ClientOutcome, GuestKind, Lab, LabOptions, Offload};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_dhcpfix");

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

/// A lab (signal cleanup installed first, so ^C removes it).
pub fn lab(offload: Offload, guest: GuestKind) -> Lab {
    lab::install_interrupt_cleanup().expect("install signal cleanup");
    Lab::create(LabOptions { offload, guest }).unwrap_or_else(|e| panic!("{e}"))
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

/// `ip ARGS`, whatever its outcome.
pub fn ip_output(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ip (Debian package iproute2)")
}

/// `ip ARGS`, which must succeed.
pub fn ip(args: &[&str]) {
    let out = ip_output(args);
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ip -n NS ARGS`, which must succeed.
pub fn ip_in(ns: &str, args: &[&str]) {
    ip(&[&["-n", ns], args].concat());
}

/// Mounts a fresh bpffs at `dir` (created here), as systemd has one at
/// /sys/fs/bpf.
pub fn mount_bpffs(dir: &Path) {
    fs::create_dir(dir).unwrap();
    let out = Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Runs `f` on a thread that has entered the network namespace at `ns`
/// (sockets, tap fds and ioctls made there belong to it).
pub fn in_netns<T: Send>(ns: &Path, f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|s| {
        s.spawn(|| {
            let file = fs::File::open(ns).unwrap_or_else(|e| panic!("open {}: {e}", ns.display()));
            // SAFETY: setns on a valid namespace fd; it affects this thread
            // only, which ends when `f` returns.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {}: {}", ns.display(), io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread panicked")
    })
}

/// Names of the tcx programs at the egress of `iface` in the namespace
/// `ns`, as the kernel lists them; `None` if the interface does not exist.
pub fn tcx_programs(ns: &Path, iface: &str) -> Option<Vec<String>> {
    in_netns(ns, || {
        dhcpfix::sys::ifindex(iface)?;
        let (_, progs) = SchedClassifier::query_tcx(iface, TcAttachType::Egress).ok()?;
        Some(
            progs
                .iter()
                .map(|p| p.name_as_str().unwrap_or("?").to_owned())
                .collect(),
        )
    })
}

/// Polls `done` every `every` until it holds or `timeout` passes; returns
/// how long it took.
pub fn poll(timeout: Duration, every: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if done() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        thread::sleep(every);
    }
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

/// Starts `dhcpfix --pin-dir PINS run ARGS`, behind `wrapper` (e.g.
/// setpriv or strace) if not empty, its stderr (the log) going to `log`.
/// `command` makes the command for a program (in some namespace).
pub fn spawn_agent(
    command: impl Fn(&str) -> Command,
    wrapper: &[&str],
    pins: &Path,
    args: &[&str],
    log: &Path,
) -> std::process::Child {
    let mut cmd = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = command(program);
            c.args(rest).arg(BIN);
            c
        }
        None => command(BIN),
    };
    cmd.env("RUST_LOG", "info")
        .arg("--pin-dir")
        .arg(pins)
        .arg("run")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(log).expect("agent log file"))
        .spawn()
        .expect("start dhcpfix run")
}
