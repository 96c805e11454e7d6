//! The real DHCP programs of the lab: dnsmasq (server, host namespace),
//! ISC dhclient and busybox udhcpc (clients, guest namespace).

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::{Lab, LabError, Server, BRIDGE, GUEST_TAP};
use crate::kit::{find_tool, one_line, process, KitError};

/// Result of one DHCP client run in the guest namespace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClientOutcome {
    /// `"dhclient"` or `"udhcpc"`.
    pub client: &'static str,
    /// The address the client reported as bound/obtained, if any.
    pub lease: Option<Ipv4Addr>,
    /// The client complained about bad UDP checksums (only ISC dhclient
    /// logs this; Debian's busybox is built without udhcp debug output).
    pub bad_checksum_logged: bool,
    /// Everything the client printed (stdout and stderr, in arrival order),
    /// followed by one `[lab] ...` line describing how the run ended.
    pub log: String,
    /// Wall time from spawn until the lease was seen or the run ended.
    pub elapsed: Duration,
}

pub(crate) const NOOP_SCRIPT: &str = "noop-script.sh";

pub(crate) fn write_noop_script(dir: &Path) -> Result<(), LabError> {
    let p = dir.join(NOOP_SCRIPT);
    fs::write(&p, "#!/bin/sh\nexit 0\n").map_err(KitError::io("write", &p))?;
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).map_err(KitError::io("chmod", &p))?;
    Ok(())
}

/// Starts the lab's DHCP server in the host namespace and waits until it
/// has bound its ports.
pub(crate) fn start_server(lab: &Lab) -> Result<Child, LabError> {
    match lab.options().server {
        Server::Dnsmasq => start_dnsmasq(lab),
        Server::Udhcpd => start_udhcpd(lab),
    }
}

/// dnsmasq, DHCP only (`--port=0`): DHCPv4 on the lab's /24, and with
/// [`LabOptions::dhcpv6`](super::LabOptions::dhcpv6) stateful DHCPv6 on its /64.
fn start_dnsmasq(lab: &Lab) -> Result<Child, LabError> {
    let dnsmasq = find_tool("dnsmasq", "dnsmasq-base")?;
    let dir = lab.work_dir();
    let opts = lab.options();
    let net = lab.subnet().octets();
    let host = |last: u8| Ipv4Addr::new(net[0], net[1], net[2], last).to_string();
    let lease = opts.lease.as_secs();
    let log_path = dir.join("dnsmasq.log");
    let stderr_path = dir.join("dnsmasq.stderr");
    let stderr = fs::File::create(&stderr_path).map_err(KitError::io("create", &stderr_path))?;

    let mut cmd = lab.host_command(&dnsmasq);
    cmd.arg("--keep-in-foreground")
        .arg("--conf-file=/dev/null")
        .arg("--no-hosts")
        .arg("--no-resolv")
        .arg("--port=0")
        .arg(format!("--interface={BRIDGE}"))
        .arg("--bind-interfaces")
        .arg(format!(
            "--dhcp-range={},{},255.255.255.0,{lease}",
            host(50),
            host(150)
        ))
        .arg("--dhcp-authoritative")
        // No ICMP probe of an address before offering it: the probe makes
        // dnsmasq ignore DISCOVERs for ~3 s on a fresh lab.
        .arg("--no-ping")
        .arg(format!(
            "--dhcp-leasefile={}",
            dir.join("dnsmasq.leases").display()
        ))
        .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
        .arg(format!("--log-facility={}", log_path.display()))
        .arg("--log-dhcp")
        // Stay root: the lease/log files live in a root-only directory.
        .arg("--user=root")
        .arg("--group=root")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    if let Some(t1) = opts.renew {
        cmd.arg(format!("--dhcp-option=option:T1,{}", t1.as_secs()));
    }
    if let Some(t2) = opts.rebind {
        cmd.arg(format!("--dhcp-option=option:T2,{}", t2.as_secs()));
    }
    let mut ports = vec![(67, false)];
    if opts.dhcpv6 {
        // Stateful: addresses from ::100 to ::1ff, a /64, the same lease.
        cmd.arg(format!(
            "--dhcp-range={},{},64,{lease}",
            lab.v6_host(0x100),
            lab.v6_host(0x1ff)
        ));
        ports.push((547, true));
    }
    let tail = || {
        let mut s = fs::read_to_string(&stderr_path).unwrap_or_default();
        s.push('\n');
        s.push_str(&fs::read_to_string(&log_path).unwrap_or_default());
        one_line(&s)
    };
    let child = process::spawn(&mut cmd)?;
    wait_bound(lab, child, "dnsmasq", &ports, tail)
}

/// busybox udhcpd (DHCPv4): any lease time, no ARP probe before an offer.
fn start_udhcpd(lab: &Lab) -> Result<Child, LabError> {
    let busybox = find_tool("busybox", "busybox")?;
    let dir = lab.work_dir();
    let opts = lab.options();
    let net = lab.subnet().octets();
    let host = |last: u8| Ipv4Addr::new(net[0], net[1], net[2], last).to_string();
    let lease = opts.lease.as_secs();
    let conf = dir.join("udhcpd.conf");
    let leases = dir.join("udhcpd.leases");
    if !leases.exists() {
        fs::write(&leases, b"").map_err(KitError::io("create", &leases))?;
    }
    let text = format!(
        "start {}\nend {}\ninterface {BRIDGE}\nmax_leases 101\nmin_lease {lease}\noption lease {lease}\n\
         option subnet 255.255.255.0\nlease_file {}\npidfile {}\n",
        host(50),
        host(150),
        leases.display(),
        dir.join("udhcpd.pid").display()
    );
    fs::write(&conf, text).map_err(KitError::io("write", &conf))?;
    let stderr_path = dir.join("udhcpd.stderr");
    let stderr = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&stderr_path)
        .map_err(KitError::io("open", &stderr_path))?;
    let mut cmd = lab.host_command(&busybox);
    cmd.args(["udhcpd", "-f", "-a", "0"])
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    let tail = || one_line(&fs::read_to_string(&stderr_path).unwrap_or_default());
    let child = process::spawn(&mut cmd)?;
    wait_bound(lab, child, "udhcpd", &[(67, false)], tail)
}

/// Waits until `child` has bound each of `ports` (UDP; `true`: over IPv6).
fn wait_bound(
    lab: &Lab,
    mut child: Child,
    server: &'static str,
    ports: &[(u16, bool)],
    tail: impl Fn() -> String,
) -> Result<Child, LabError> {
    let waited = Duration::from_secs(5);
    let deadline = Instant::now() + waited;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return Err(LabError::DnsmasqExited {
                    server,
                    netns: lab.host_netns().to_owned(),
                    status: status.to_string(),
                    log: tail(),
                })
            }
            Ok(None) => {}
            Err(source) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(KitError::sys("waitpid of the DHCP server")(source).into());
            }
        }
        let missing = ports
            .iter()
            .find(|(port, v6)| !udp_port_bound(child.id(), *port, *v6));
        let Some(&(port, _)) = missing else {
            return Ok(child);
        };
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(LabError::DnsmasqNotReady {
                server,
                netns: lab.host_netns().to_owned(),
                port,
                waited,
                log: tail(),
            });
        }
        thread::sleep(Duration::from_millis(25));
    }
}

/// Whether the network namespace of `pid` has a UDP (`v6`: UDPv6) socket
/// bound to `port` (read through `/proc/<pid>/net/udp`, which shows that
/// process's netns).
fn udp_port_bound(pid: u32, port: u16, v6: bool) -> bool {
    let needle = format!(":{port:04X}");
    let table = if v6 { "udp6" } else { "udp" };
    fs::read_to_string(format!("/proc/{pid}/net/{table}"))
        .map(|t| {
            t.lines().skip(1).any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|local| local.ends_with(&needle))
            })
        })
        .unwrap_or(false)
}

/// How to run ISC dhclient in the guest ([`Lab::start_dhclient`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dhclient {
    /// DHCPv6 (`dhclient -6`: SOLICIT, REQUEST, RENEW over UDP sockets)
    /// instead of DHCPv4 (raw sockets).
    pub v6: bool,
    /// `send host-name` (DHCPv4 option 12; DHCPv6: `send fqdn.fqdn`,
    /// the client FQDN option).
    pub hostname: Option<String>,
    /// `send vendor-class-identifier` (DHCPv4 option 60).
    pub vendor_class: Option<String>,
}

/// Writes a dhclient configuration and returns the command that runs
/// dhclient in the guest with it (its own lease and pid files, the script
/// `script`), in the foreground and verbose; `extra` goes before the
/// interface.
fn dhclient_command(
    lab: &Lab,
    opts: &Dhclient,
    conf_text: &str,
    script: &Path,
    extra: &[&str],
) -> Result<Command, LabError> {
    let dhclient = find_tool("dhclient", "isc-dhcp-client")?;
    let dir = lab.work_dir();
    let run = lab.next_run();
    let conf = dir.join(format!("dhclient-{run}.conf"));
    let leases = dir.join(format!("dhclient-{run}.leases"));
    let pidf = dir.join(format!("dhclient-{run}.pid"));
    let mut text = conf_text.to_owned();
    if let Some(name) = &opts.hostname {
        if opts.v6 {
            text.push_str(&format!("send fqdn.fqdn \"{name}\";\n"));
        } else {
            text.push_str(&format!("send host-name \"{name}\";\n"));
        }
    }
    if let Some(class) = &opts.vendor_class {
        text.push_str(&format!("send vendor-class-identifier \"{class}\";\n"));
    }
    fs::write(&conf, text).map_err(KitError::io("write", &conf))?;
    let _ = fs::remove_file(&leases);
    let mut cmd = lab.guest_command(&dhclient);
    cmd.arg(if opts.v6 { "-6" } else { "-4" })
        .args(["-d", "-v"])
        .args(extra)
        .arg("-cf")
        .arg(&conf)
        .arg("-lf")
        .arg(&leases)
        .arg("-pf")
        .arg(&pidf)
        .arg("-sf")
        .arg(script)
        .arg(GUEST_TAP);
    Ok(cmd)
}

pub(crate) fn run_dhclient(lab: &Lab, timeout: Duration) -> Result<ClientOutcome, LabError> {
    // dhclient gives up on its own one second before we would kill it.
    let give_up = timeout.as_secs().saturating_sub(1).max(1);
    // Retransmit DISCOVER about every second (backoff-cutoff 1 keeps the
    // interval at 0-1 s) so that a failing run still sees enough OFFERs for
    // dhclient's "N bad udp checksums in M packets" message, which it prints
    // only once more than 4 packets were seen and at least half were bad.
    let conf_text = format!(
        "timeout {give_up};\nretry 1;\ninitial-interval 1;\nbackoff-cutoff 1;\nselect-timeout 0;\nreboot 0;\n"
    );
    let cmd = dhclient_command(
        lab,
        &Dhclient::default(),
        &conf_text,
        &lab.work_dir().join(NOOP_SCRIPT),
        &["-1"],
    )?;
    run_client(cmd, "dhclient", timeout, |line| ip_after(line, "bound to ")).map(|mut out| {
        // A DHCPACK without the "bound to" line still means a lease was granted.
        if out.lease.is_none() {
            out.lease = out.log.lines().find_map(|l| ip_after(l, "DHCPACK of "));
        }
        out
    })
}

pub(crate) fn run_udhcpc(lab: &Lab, timeout: Duration) -> Result<ClientOutcome, LabError> {
    let busybox = find_tool("busybox", "busybox")?;
    let dir = lab.work_dir();
    // One DISCOVER per second, ending a second before our deadline (1..=5).
    let tries = timeout.as_secs().saturating_sub(1).clamp(1, 5).to_string();
    let mut cmd = lab.guest_command(&busybox);
    cmd.args([
        "udhcpc", "-i", GUEST_TAP, "-f", "-q", "-n", "-t", &tries, "-T", "1", "-s",
    ])
    .arg(dir.join(NOOP_SCRIPT));
    run_client(cmd, "udhcpc", timeout, |line| {
        let lower = line.to_ascii_lowercase();
        if lower.contains("obtained") {
            ip_after(&lower, "lease of ")
        } else {
            None
        }
    })
}

/// The script of long-running clients: it configures what the client got
/// on the guest's interface (so that renewals go out from that address, as
/// on a real guest) and prints one `[script] REASON name=value ...` line
/// per event with everything dhclient passed about the old and new lease.
pub(crate) const CONFIGURE_SCRIPT: &str = "configure-script.sh";

pub(crate) fn write_configure_script(dir: &Path) -> Result<(), LabError> {
    let ip = find_tool("ip", "iproute2")?;
    let ip = ip.display();
    let text = format!(
        r#"#!/bin/sh
# The lab's dhclient script (guest namespace): report, then configure.
echo "[script] $reason $(env | grep -E '^(new|old)_' | sort | tr '\n' ' ')"
case "$reason" in
BOUND|RENEW|REBIND|REBOOT)
    {ip} -4 addr replace "$new_ip_address/${{new_subnet_mask:-255.255.255.0}}" dev "$interface" ;;
EXPIRE|FAIL|RELEASE|STOP)
    [ -n "$old_ip_address" ] && {ip} -4 addr flush dev "$interface" ;;
BOUND6|RENEW6|REBIND6)
    [ -n "$new_ip6_address" ] && {ip} -6 addr replace "$new_ip6_address/$new_ip6_prefixlen" dev "$interface" nodad ;;
EXPIRE6|RELEASE6|STOP6)
    [ -n "$old_ip6_address" ] && {ip} -6 addr del "$old_ip6_address/$old_ip6_prefixlen" dev "$interface" ;;
esac
exit 0
"#
    );
    let p = dir.join(CONFIGURE_SCRIPT);
    fs::write(&p, text).map_err(KitError::io("write", &p))?;
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).map_err(KitError::io("chmod", &p))?;
    Ok(())
}

/// Starts dhclient in the guest and leaves it running (no `-1`: it keeps
/// asking, renews at T1, rebinds at T2, starts over when the lease runs
/// out), retransmitting every one or two seconds. (Not `backoff-cutoff 1`:
/// past the cutoff dhclient waits `cutoff / 2 + random() % cutoff`, which
/// is 0 for 1, and its retransmissions then cross the replies.)
pub(crate) fn start_dhclient(lab: &Lab, opts: &Dhclient) -> Result<Client, LabError> {
    let conf_text =
        "timeout 3600;\nretry 1;\ninitial-interval 1;\nbackoff-cutoff 2;\nselect-timeout 0;\nreboot 0;\n";
    let mut cmd = dhclient_command(lab, opts, conf_text, &lab.work_dir().join(CONFIGURE_SCRIPT), &[])?;
    Client::start(&mut cmd, if opts.v6 { "dhclient -6" } else { "dhclient" })
}

/// One event of a long-running dhclient, from its script's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptEvent {
    /// When the line arrived, since the client started.
    pub at: Duration,
    /// `BOUND`, `RENEW`, `BOUND6`, `EXPIRE`...
    pub reason: String,
    /// What dhclient passed, e.g. `new_ip_address`, `new_dhcp_lease_time`.
    pub vars: BTreeMap<String, String>,
}

impl ScriptEvent {
    fn parse(at: Duration, line: &str) -> Option<ScriptEvent> {
        let rest = line.strip_prefix("[script] ")?;
        let mut words = rest.split_whitespace();
        let reason = words.next()?.to_owned();
        let vars = words
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Some(ScriptEvent { at, reason, vars })
    }

    /// A variable dhclient passed.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// The address the event is about (`new_ip_address`, `new_ip6_address`).
    pub fn address(&self) -> Option<IpAddr> {
        self.var("new_ip_address")
            .or_else(|| self.var("new_ip6_address"))
            .and_then(|a| a.parse().ok())
    }
}

#[derive(Default)]
struct Output {
    /// Lines with their arrival time since the start.
    lines: Vec<(Duration, String)>,
    /// Both pipes closed.
    closed: bool,
}

/// A DHCP client running in the guest; its output (stdout and stderr) is
/// collected as it comes. Killed (SIGKILL: it sends nothing on its way
/// out, no RELEASE) by [`Client::stop`] or on drop.
pub struct Client {
    name: &'static str,
    child: Child,
    start: Instant,
    output: Arc<(Mutex<Output>, Condvar)>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

impl Client {
    fn start(cmd: &mut Command, name: &'static str) -> Result<Client, LabError> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = process::spawn(cmd)?;
        let output = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        let pipes = [
            child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
            child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
        ];
        let open = Arc::new(AtomicU32::new(0));
        for pipe in pipes.into_iter().flatten() {
            open.fetch_add(1, Ordering::SeqCst);
            collect_lines(pipe, start, Arc::clone(&output), Arc::clone(&open));
        }
        Ok(Client {
            name,
            child,
            start,
            output,
        })
    }

    /// The client's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How long it has been running.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Everything it printed so far, one line each.
    pub fn log(&self) -> String {
        let out = self.output.0.lock().unwrap_or_else(|p| p.into_inner());
        out.lines.iter().map(|(_, l)| format!("{l}\n")).collect()
    }

    /// Its script's events so far.
    pub fn events(&self) -> Vec<ScriptEvent> {
        let out = self.output.0.lock().unwrap_or_else(|p| p.into_inner());
        out.lines
            .iter()
            .filter_map(|(at, l)| ScriptEvent::parse(*at, l))
            .collect()
    }

    /// Waits up to `timeout` for the first line (from the `skip`-th on) for
    /// which `found` says something; returns that and the line's index.
    pub fn wait_line<T>(
        &self,
        skip: usize,
        timeout: Duration,
        found: impl Fn(&str) -> Option<T>,
    ) -> Option<(usize, T)> {
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.output;
        let mut out = lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = skip;
        loop {
            while next < out.lines.len() {
                if let Some(t) = found(&out.lines[next].1) {
                    return Some((next, t));
                }
                next += 1;
            }
            let now = Instant::now();
            if now >= deadline || out.closed {
                return None;
            }
            out = cond
                .wait_timeout(out, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Waits up to `timeout` for the first script event (from the
    /// `skip`-th line on) whose reason is one of `reasons`; returns it and
    /// its line's index (pass index + 1 to wait for a later one).
    pub fn wait_event(
        &self,
        skip: usize,
        timeout: Duration,
        reasons: &[&str],
    ) -> Option<(usize, ScriptEvent)> {
        let start = self.start;
        self.wait_line(skip, timeout, |line| {
            ScriptEvent::parse(start.elapsed(), line).filter(|e| reasons.contains(&e.reason.as_str()))
        })
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills it (SIGKILL) and reaps it; returns its whole output followed
    /// by a `[lab] ...` line saying how it ended.
    pub fn stop(mut self) -> String {
        let ran = self.start.elapsed();
        let (mut log, ended) = self.kill();
        log.push_str(&format!("[lab] {}: {ended} after {ran:.1?}\n", self.name));
        log
    }

    /// Kills and reaps it; returns its output and how it ended.
    fn kill(&mut self) -> (String, String) {
        let ended = match finish(&mut self.child) {
            Ok((status, true)) => format!("killed by lab ({status})"),
            Ok((status, false)) => format!("exited ({status})"),
            Err(e) => format!("wait failed: {e}"),
        };
        // What is still buffered, without waiting on grandchildren that
        // might hold the pipes open.
        let _ = self.wait_line(usize::MAX, Duration::from_millis(300), |_| None::<()>);
        (self.log(), ended)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = finish(&mut self.child);
    }
}

/// Parses the IPv4 address that directly follows `marker` in `line`.
fn ip_after(line: &str, marker: &str) -> Option<Ipv4Addr> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let token: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    token.parse().ok()
}

/// Runs a client, stops at the first lease line or at `timeout` (SIGKILL:
/// nothing is ever released), and collects the outcome.
fn run_client(
    mut cmd: Command,
    client: &'static str,
    timeout: Duration,
    lease_in: impl Fn(&str) -> Option<Ipv4Addr>,
) -> Result<ClientOutcome, LabError> {
    let mut running = Client::start(&mut cmd, client)?;
    let found = running.wait_line(0, timeout, &lease_in);
    let elapsed = running.elapsed();
    let gave_up = running.output.0.lock().unwrap_or_else(|p| p.into_inner()).closed;
    let lease = found.map(|(_, ip)| ip);
    let (mut log, ended) = running.kill();
    let how = match (lease, gave_up) {
        (Some(ip), _) => format!("lease {ip} after {elapsed:.1?}"),
        (None, false) => format!("no lease within {timeout:?}"),
        (None, true) => format!("no lease, client gave up after {elapsed:.1?}"),
    };
    log.push_str(&format!("[lab] {client}: {how}; {ended}\n"));
    let bad_checksum_logged = log.to_ascii_lowercase().contains("bad udp checksum");
    Ok(ClientOutcome {
        client,
        lease,
        bad_checksum_logged,
        log,
        elapsed,
    })
}

/// Kills the child if it still runs, then reaps it. Returns the exit status
/// and whether we had to kill it.
fn finish(child: &mut Child) -> std::io::Result<(ExitStatus, bool)> {
    if let Some(status) = child.try_wait()? {
        return Ok((status, false));
    }
    // SIGKILL: a clean exit could send DHCPRELEASE; we never want that.
    child.kill()?;
    Ok((child.wait()?, true))
}

/// Appends each line of `pipe` to `output`, with its time since `start`;
/// marks the output closed when the last pipe ends.
fn collect_lines(
    pipe: Box<dyn Read + Send>,
    start: Instant,
    output: Arc<(Mutex<Output>, Condvar)>,
    open: Arc<AtomicU32>,
) {
    let out = Arc::clone(&output);
    let spawned = thread::Builder::new()
        .name("lab-client-output".into())
        .spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                        let (lock, cond) = &*out;
                        lock.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .lines
                            .push((start.elapsed(), line));
                        cond.notify_all();
                    }
                }
            }
            if open.fetch_sub(1, Ordering::SeqCst) == 1 {
                let (lock, cond) = &*out;
                lock.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
                cond.notify_all();
            }
        });
    if let Err(e) = spawned {
        log::warn!("lab: cannot spawn client output reader: {e}");
        let (lock, cond) = &*output;
        lock.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        cond.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::ip_after;
    use std::net::Ipv4Addr;

    #[test]
    fn parses_lease_lines() {
        assert_eq!(
            ip_after("bound to 10.199.3.77 -- renewal in 250 seconds.", "bound to "),
            Some(Ipv4Addr::new(10, 199, 3, 77))
        );
        assert_eq!(
            ip_after(
                "udhcpc: lease of 10.199.0.61 obtained from 10.199.0.1, lease time 600",
                "lease of "
            ),
            Some(Ipv4Addr::new(10, 199, 0, 61))
        );
        assert_eq!(ip_after("DHCPACK of nothing", "DHCPACK of "), None);
    }
}
