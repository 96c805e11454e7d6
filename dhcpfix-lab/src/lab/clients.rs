//! The real DHCP programs of the lab: dnsmasq (server, host namespace),
//! ISC dhclient and busybox udhcpc (clients, guest namespace).

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::{Lab, LabError, GUEST_TAP};
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

/// Starts dnsmasq (DHCP only) in the host namespace and waits until it has
/// bound UDP port 67.
pub(crate) fn start_dnsmasq(lab: &Lab) -> Result<Child, LabError> {
    let dnsmasq = find_tool("dnsmasq", "dnsmasq-base")?;
    let dir = lab.work_dir();
    let net = lab.subnet().octets();
    let host = |last: u8| Ipv4Addr::new(net[0], net[1], net[2], last).to_string();
    let log_path = dir.join("dnsmasq.log");
    let stderr_path = dir.join("dnsmasq.stderr");
    let stderr = fs::File::create(&stderr_path).map_err(KitError::io("create", &stderr_path))?;

    let mut cmd = lab.host_command(&dnsmasq);
    cmd.arg("--keep-in-foreground")
        .arg("--conf-file=/dev/null")
        .arg("--no-hosts")
        .arg("--no-resolv")
        .arg("--port=0")
        .arg(format!("--interface={}", lab.bridge()))
        .arg("--bind-interfaces")
        .arg(format!(
            "--dhcp-range={},{},255.255.255.0,10m",
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
    let mut child = process::spawn(&mut cmd)?;

    let tail = || {
        let mut s = fs::read_to_string(&stderr_path).unwrap_or_default();
        s.push('\n');
        s.push_str(&fs::read_to_string(&log_path).unwrap_or_default());
        one_line(&s)
    };
    let waited = Duration::from_secs(5);
    let deadline = Instant::now() + waited;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return Err(LabError::DnsmasqExited {
                    netns: lab.host_netns().to_owned(),
                    status: status.to_string(),
                    log: tail(),
                })
            }
            Ok(None) => {}
            Err(source) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(KitError::sys("waitpid dnsmasq")(source).into());
            }
        }
        if udp_port_bound(child.id(), 67) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(LabError::DnsmasqNotReady {
                netns: lab.host_netns().to_owned(),
                waited,
                log: tail(),
            });
        }
        thread::sleep(Duration::from_millis(25));
    }
}

/// Whether the network namespace of `pid` has a UDP socket bound to `port`
/// (read through `/proc/<pid>/net/udp`, which shows that process's netns).
fn udp_port_bound(pid: u32, port: u16) -> bool {
    let needle = format!(":{port:04X}");
    fs::read_to_string(format!("/proc/{pid}/net/udp"))
        .map(|t| {
            t.lines().skip(1).any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|local| local.ends_with(&needle))
            })
        })
        .unwrap_or(false)
}

pub(crate) fn run_dhclient(lab: &Lab, timeout: Duration) -> Result<ClientOutcome, LabError> {
    let dhclient = find_tool("dhclient", "isc-dhcp-client")?;
    let dir = lab.work_dir();
    let run = lab.next_run();
    let conf = dir.join(format!("dhclient-{run}.conf"));
    let leases = dir.join(format!("dhclient-{run}.leases"));
    let pidf = dir.join(format!("dhclient-{run}.pid"));
    // dhclient gives up on its own one second before we would kill it.
    let give_up = timeout.as_secs().saturating_sub(1).max(1);
    // Retransmit DISCOVER about every second (backoff-cutoff 1 keeps the
    // interval at 0-1 s) so that a failing run still sees enough OFFERs for
    // dhclient's "N bad udp checksums in M packets" message, which it prints
    // only once more than 4 packets were seen and at least half were bad.
    let conf_text = format!(
        "timeout {give_up};\nretry 1;\ninitial-interval 1;\nbackoff-cutoff 1;\nselect-timeout 0;\nreboot 0;\n"
    );
    fs::write(&conf, conf_text).map_err(KitError::io("write", &conf))?;
    let _ = fs::remove_file(&leases);

    let mut cmd = lab.guest_command(&dhclient);
    cmd.args(["-4", "-d", "-1", "-v"])
        .arg("-cf")
        .arg(&conf)
        .arg("-lf")
        .arg(&leases)
        .arg("-pf")
        .arg(&pidf)
        .arg("-sf")
        .arg(dir.join(NOOP_SCRIPT))
        .arg(GUEST_TAP);
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

/// Parses the IPv4 address that directly follows `marker` in `line`.
fn ip_after(line: &str, marker: &str) -> Option<Ipv4Addr> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let token: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    token.parse().ok()
}

/// Spawns a client, streams its output, stops at the first lease line or at
/// `timeout` (SIGKILL: nothing is ever released), and collects the outcome.
fn run_client(
    mut cmd: Command,
    client: &'static str,
    timeout: Duration,
    lease_in: impl Fn(&str) -> Option<Ipv4Addr>,
) -> Result<ClientOutcome, LabError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = process::spawn(&mut cmd)?;
    let (tx, rx) = mpsc::channel::<String>();
    if let Some(out) = child.stdout.take() {
        forward_lines(out, tx.clone());
    }
    if let Some(err) = child.stderr.take() {
        forward_lines(err, tx.clone());
    }
    drop(tx);

    let deadline = start + timeout;
    let mut log = String::new();
    let mut lease = None;
    let mut elapsed = None;
    let mut timed_out = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            timed_out = true;
            break;
        }
        match rx.recv_timeout(deadline - now) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
                if let Some(ip) = lease_in(&line) {
                    lease = Some(ip);
                    elapsed = Some(start.elapsed());
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
            // Both pipes closed: the client exited.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let elapsed = elapsed.unwrap_or_else(|| start.elapsed());

    let (status, killed) = match finish(&mut child) {
        Ok((s, k)) => (s.to_string(), k),
        Err(e) => (format!("wait failed: {e}"), false),
    };
    // Collect what is still buffered, without waiting on grandchildren that
    // might hold the pipes open.
    let drain_until = Instant::now() + Duration::from_millis(500);
    while let Some(left) = drain_until.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
            }
            Err(_) => break,
        }
    }
    let how = match (lease, timed_out) {
        (Some(ip), _) => format!("lease {ip} after {elapsed:.1?}"),
        (None, true) => format!("no lease within {timeout:?}"),
        (None, false) => format!("no lease, client gave up after {elapsed:.1?}"),
    };
    let end = if killed { "killed by lab" } else { "exited" };
    log.push_str(&format!("[lab] {client}: {how}; {end} ({status})\n"));

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

fn forward_lines(pipe: impl Read + Send + 'static, tx: mpsc::Sender<String>) {
    let spawned = thread::Builder::new()
        .name("lab-client-output".into())
        .spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                        if tx.send(line).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("lab: cannot spawn client output reader: {e}");
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
