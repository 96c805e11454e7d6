//! The path bulk traffic and DHCP replies take: a veth pair between two
//! bench-owned namespaces, standing in for a host and a guest's tap. The
//! sending side's device (`dfb-a`) is where dhcpfix, `ethtool -K tx off`
//! or the iptables rule go. Plus iperf3 on both ends.

use std::{
    fs,
    process::Child,
    thread,
    time::{Duration, Instant},
};

use dhcpfix_lab::kit::{find_tool, process, KitError};

use crate::{
    error::{BenchError, Result},
    sandbox::{Netns, Sandbox},
};

/// The sending device, in the sender namespace.
pub const SENDER_IF: &str = "dfb-a";
/// Its peer, in the receiver namespace.
pub const RECEIVER_IF: &str = "dfb-b";
pub const SENDER_IP: &str = "10.231.0.1";
pub const RECEIVER_IP: &str = "10.231.0.2";
const SENDER_MAC: &str = "02:df:b0:00:00:01";
const RECEIVER_MAC: &str = "02:df:b0:00:00:02";
const IPERF_PORT: u16 = 5201;

/// Two namespaces joined by a veth pair, addressed, up, with permanent
/// neighbour entries (no ARP queueing: every datagram sent reaches the
/// device at once).
pub struct VethPair {
    pub sender: Netns,
    pub receiver: Netns,
}

impl VethPair {
    pub fn create(sb: &Sandbox) -> Result<VethPair> {
        let pair = VethPair {
            sender: sb.netns("a")?,
            receiver: sb.netns("b")?,
        };
        let (a, b) = (&pair.sender, &pair.receiver);
        a.ip(&[
            "link",
            "add",
            SENDER_IF,
            "address",
            SENDER_MAC,
            "type",
            "veth",
            "peer",
            "name",
            RECEIVER_IF,
            "address",
            RECEIVER_MAC,
            "netns",
            b.name(),
        ])?;
        a.ip(&["addr", "add", &format!("{SENDER_IP}/24"), "dev", SENDER_IF])?;
        b.ip(&["addr", "add", &format!("{RECEIVER_IP}/24"), "dev", RECEIVER_IF])?;
        a.ip(&["link", "set", SENDER_IF, "up"])?;
        b.ip(&["link", "set", RECEIVER_IF, "up"])?;
        a.ip(&[
            "neigh",
            "replace",
            RECEIVER_IP,
            "lladdr",
            RECEIVER_MAC,
            "dev",
            SENDER_IF,
            "nud",
            "permanent",
        ])?;
        b.ip(&[
            "neigh",
            "replace",
            SENDER_IP,
            "lladdr",
            SENDER_MAC,
            "dev",
            RECEIVER_IF,
            "nud",
            "permanent",
        ])?;
        Ok(pair)
    }
}

/// A one-off iperf3 server in the receiver namespace.
pub struct IperfServer {
    child: Child,
}

impl IperfServer {
    /// Starts `iperf3 -s -1` and waits until it listens.
    pub fn start(ns: &Netns) -> Result<IperfServer> {
        let iperf = find_tool("iperf3", "iperf3")?;
        let mut cmd = ns.command(iperf);
        cmd.args(["-s", "-1", "-B", RECEIVER_IP, "-p", &IPERF_PORT.to_string()]);
        let mut server = IperfServer {
            child: process::start(&mut cmd)?,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !listening(server.child.id(), IPERF_PORT) {
            if Instant::now() > deadline {
                return Err(KitError::Timeout {
                    command: process::shown(&cmd),
                    limit: Duration::from_secs(10),
                }
                .into());
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(KitError::Command {
                    command: process::shown(&cmd),
                    status: status.to_string(),
                    stderr: "exited before listening".into(),
                }
                .into());
            }
            thread::sleep(Duration::from_millis(5));
        }
        Ok(server)
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = process::stop(&mut self.child, Duration::from_secs(2));
    }
}

/// Whether process `pid` sees a TCP socket listening on `port` (its
/// namespace's `/proc/net/tcp`).
fn listening(pid: u32, port: u16) -> bool {
    let wanted = format!(":{port:04X}");
    ["tcp", "tcp6"].iter().any(|f| {
        fs::read_to_string(format!("/proc/{pid}/net/{f}")).is_ok_and(|t| {
            t.lines().skip(1).any(|l| {
                let mut cols = l.split_whitespace();
                let local = cols.nth(1).unwrap_or("");
                let state = cols.nth(1).unwrap_or("");
                local.ends_with(&wanted) && state == "0A"
            })
        })
    })
}

/// The iperf3 client command for a `secs`-second bulk TCP test.
pub fn iperf_client(ns: &Netns, secs: f64) -> Result<std::process::Command> {
    let iperf = find_tool("iperf3", "iperf3")?;
    let mut cmd = ns.command(iperf);
    cmd.args([
        "-c",
        RECEIVER_IP,
        "-p",
        &IPERF_PORT.to_string(),
        "-t",
        &format!("{secs}"),
        "-J",
        "--connect-timeout",
        "3000",
    ]);
    Ok(cmd)
}

/// Runs a bulk TCP test of `secs` seconds; returns the receiver's Gbit/s.
pub fn bulk_tcp(pair: &VethPair, secs: f64) -> Result<f64> {
    let _server = IperfServer::start(&pair.receiver)?;
    let mut cmd = iperf_client(&pair.sender, secs)?;
    let limit = Duration::from_secs_f64(secs + 20.0);
    let out = process::run_unchecked(&mut cmd, None, limit)?;
    parse_iperf(&out.stdout, &process::shown(&cmd))
}

/// Gbit/s received, from iperf3's `-J` output.
pub fn parse_iperf(stdout: &[u8], command: &str) -> Result<f64> {
    let parse_err = |detail: String| BenchError::Parse {
        what: command.into(),
        detail,
    };
    let v: serde_json::Value =
        serde_json::from_slice(stdout).map_err(|e| parse_err(format!("not JSON ({e})")))?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        return Err(parse_err(err.into()));
    }
    v.pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .filter(|bps| *bps > 0.0)
        .map(|bps| bps / 1e9)
        .ok_or_else(|| parse_err("no end.sum_received.bits_per_second".into()))
}
