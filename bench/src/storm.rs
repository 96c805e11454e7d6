//! The fill path under load: a DHCP reply storm (UDP from port 67 to port
//! 68, sent by a UDP socket in the sending namespace) over the veth with
//! dhcpfix attached, while iperf3 bulk traffic runs through the same device.
//! veth offers checksum offload, so every datagram leaves as a
//! `CHECKSUM_PARTIAL` skb and must be filled: the counters must say exactly
//! that, and a raw packet socket on the receiving side checks the
//! checksums in userspace.

use std::{
    fs, io,
    net::UdpSocket,
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use dhcpfix_lab::kit::{
    dev,
    netns::{in_netns, spawn_in_netns},
    process,
};
use serde::{Deserialize, Serialize};

use crate::{
    dhcpfix_cli::{Counters, Dhcpfix},
    error::{BenchError, Result},
    frames,
    sandbox::Sandbox,
    stats::Stat,
    topology::{self, IperfServer, VethPair, RECEIVER_IF, RECEIVER_IP, SENDER_IF, SENDER_IP},
};

#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// How long the storm lasts.
    pub secs: f64,
    /// Datagrams per second the sender aims for.
    pub rate: u64,
    pub repetitions: usize,
    /// DHCP message size (UDP payload).
    pub dhcp_bytes: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StormRun {
    /// Datagrams the kernel accepted (`send` succeeded).
    pub sent: u64,
    pub send_errors: u64,
    pub elapsed_s: f64,
    pub achieved_rate: f64,
    /// dhcpfix's counters on the sending device afterwards.
    pub counters: Counters,
    /// Datagrams the packet socket captured and checked.
    pub captured: u64,
    pub checksum_ok: u64,
    pub checksum_bad: u64,
    /// iperf3 throughput during the storm.
    pub bulk_gbit_s: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Storm {
    pub target_rate: u64,
    pub secs: f64,
    pub dhcp_bytes: usize,
    pub achieved_rate: Stat,
    pub bulk_gbit_s: Stat,
    /// `filled == sent`, `seen == filled` and `errors == 0` in every run.
    pub counters_exact: bool,
    /// No captured datagram had a bad checksum, and some were captured.
    pub checksums_ok: bool,
    pub runs: Vec<StormRun>,
    /// A short storm without dhcpfix, proving the check catches bad sums.
    pub control: Control,
}

/// The storm without dhcpfix (and without bulk traffic).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Control {
    pub secs: f64,
    pub sent: u64,
    pub captured: u64,
    pub checksum_bad: u64,
}

/// Length of the control storm.
const CONTROL_SECS: f64 = 0.5;

pub fn run(sb: &Sandbox, dhcpfix: &Dhcpfix, cfg: Config) -> Result<Storm> {
    let control = control(sb, cfg)?;
    eprintln!(
        "  storm control without dhcpfix: {} of {} captured datagrams had a bad checksum",
        control.checksum_bad, control.captured
    );
    let mut runs = Vec::with_capacity(cfg.repetitions);
    for rep in 0..cfg.repetitions {
        let r = one(sb, dhcpfix, cfg)?;
        eprintln!(
            "  storm rep {}/{}: {} sent at {:.0}/s, filled {}, errors {}, {} captured, {} bad, bulk {:.2} Gbit/s",
            rep + 1,
            cfg.repetitions,
            r.sent,
            r.achieved_rate,
            r.counters.filled,
            r.counters.errors,
            r.captured,
            r.checksum_bad,
            r.bulk_gbit_s
        );
        runs.push(r);
    }
    let rates: Vec<f64> = runs.iter().map(|r| r.achieved_rate).collect();
    let bulk: Vec<f64> = runs.iter().map(|r| r.bulk_gbit_s).collect();
    Ok(Storm {
        target_rate: cfg.rate,
        secs: cfg.secs,
        dhcp_bytes: cfg.dhcp_bytes,
        achieved_rate: Stat::of(&rates),
        bulk_gbit_s: Stat::of(&bulk),
        counters_exact: runs.iter().all(|r| counters_exact(r.sent, &r.counters)),
        checksums_ok: runs.iter().all(|r| r.checksum_bad == 0 && r.checksum_ok > 0),
        runs,
        control,
    })
}

fn counters_exact(sent: u64, c: &Counters) -> bool {
    c.filled == sent && c.seen == c.filled && c.errors == 0
}

fn one(sb: &Sandbox, dhcpfix: &Dhcpfix, cfg: Config) -> Result<StormRun> {
    let pair = VethPair::create(sb)?;
    let pin_dir = sb.pin_dir("storm");
    let result = (|| {
        dhcpfix.attach(&pair.sender, &pin_dir, &[SENDER_IF.to_string()])?;

        let server = IperfServer::start(&pair.receiver)?;
        let mut client = topology::iperf_client(&pair.sender, cfg.secs + 1.0)?;
        let shown = process::shown(&client);
        let limit = Duration::from_secs_f64(cfg.secs + 25.0);
        let bulk = thread::spawn(move || process::run_unchecked(&mut client, None, limit));
        // Let the bulk transfer get going first.
        thread::sleep(Duration::from_millis(500));
        let storm = storm_over(&pair, cfg.secs, cfg);
        let bulk_out = bulk
            .join()
            .map_err(|_| BenchError::Check("the iperf3 waiter panicked".into()))?;
        drop(server);
        let storm = storm?;
        let bulk_gbit_s = topology::parse_iperf(&bulk_out?.stdout, &shown)?;
        let counters = dhcpfix.counters(&pair.sender, &pin_dir, SENDER_IF)?;
        let run = StormRun {
            sent: storm.sent,
            send_errors: storm.send_errors,
            elapsed_s: storm.elapsed_s,
            achieved_rate: storm.sent as f64 / storm.elapsed_s,
            counters,
            captured: storm.captured.captured,
            checksum_ok: storm.captured.ok,
            checksum_bad: storm.captured.bad,
            bulk_gbit_s,
        };
        if !counters_exact(run.sent, &run.counters) {
            return Err(BenchError::Check(format!(
                "storm: {} datagrams sent, counters {:?}",
                run.sent, run.counters
            )));
        }
        if run.checksum_bad != 0 || run.checksum_ok == 0 {
            return Err(BenchError::Check(format!(
                "storm: {} captured datagrams verified, {} had a bad UDP checksum",
                run.checksum_ok, run.checksum_bad
            )));
        }
        Ok(run)
    })();
    drop(pair);
    if pin_dir.exists() {
        fs::remove_dir_all(&pin_dir).map_err(BenchError::io("remove", &pin_dir))?;
    }
    result
}

/// The same storm, briefly, without dhcpfix: every captured datagram must
/// fail the check, or the check proves nothing.
fn control(sb: &Sandbox, cfg: Config) -> Result<Control> {
    let pair = VethPair::create(sb)?;
    let storm = storm_over(&pair, CONTROL_SECS.min(cfg.secs), cfg)?;
    let c = Control {
        secs: storm.elapsed_s,
        sent: storm.sent,
        captured: storm.captured.captured,
        checksum_bad: storm.captured.bad,
    };
    if c.captured == 0 || c.checksum_bad != c.captured {
        return Err(BenchError::Check(format!(
            "control without dhcpfix: {} of {} captured datagrams had a bad checksum; expected all",
            c.checksum_bad, c.captured
        )));
    }
    Ok(c)
}

struct StormOutcome {
    sent: u64,
    send_errors: u64,
    elapsed_s: f64,
    captured: Captured,
}

/// Sends the storm over `pair` for `secs` seconds while the packet socket
/// on the receiving side checks what arrives.
fn storm_over(pair: &VethPair, secs: f64, cfg: Config) -> Result<StormOutcome> {
    // A socket on port 68 on the receiving side, so the datagrams are
    // delivered (and dropped when its buffer is full), not answered with
    // ICMP port unreachable.
    let sink = in_netns(pair.receiver.path(), || {
        UdpSocket::bind((RECEIVER_IP, 68)).map_err(BenchError::sys("bind UDP port 68"))
    })??;
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let stop_rx = Arc::clone(&stop);
    let capture = spawn_in_netns(pair.receiver.path(), "capture", move || {
        capture(&stop_rx, ready_tx)
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| BenchError::Check("the packet socket did not start".into()))?;

    let (rate, size) = (cfg.rate, cfg.dhcp_bytes);
    let sender = spawn_in_netns(pair.sender.path(), "storm", move || send(secs, rate, size))?;
    let sent = sender
        .join()
        .map_err(|_| BenchError::Check("the storm sender panicked".into()));
    // Let the last datagrams arrive.
    thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let captured = capture
        .join()
        .map_err(|_| BenchError::Check("the packet socket thread panicked".into()))??;
    drop(sink);
    let (sent, send_errors, elapsed_s) = sent??;
    Ok(StormOutcome {
        sent,
        send_errors,
        elapsed_s,
        captured,
    })
}

/// Sends DHCP ACKs from port 67 to port 68 at `rate` per second for `secs`
/// seconds (flat out when it cannot keep up). Returns (accepted, failed,
/// elapsed seconds).
fn send(secs: f64, rate: u64, dhcp_bytes: usize) -> Result<(u64, u64, f64)> {
    let sock = UdpSocket::bind((SENDER_IP, 67)).map_err(BenchError::sys("bind UDP port 67"))?;
    sock.connect((RECEIVER_IP, 68))
        .map_err(BenchError::sys("connect UDP socket"))?;
    let msg = frames::dhcp_ack(dhcp_bytes);
    let (mut sent, mut failed, mut attempts) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    loop {
        let elapsed = start.elapsed().as_secs_f64();
        if elapsed >= secs {
            break;
        }
        let due = (elapsed * rate as f64) as u64;
        if attempts >= due {
            thread::sleep(Duration::from_micros(100));
            continue;
        }
        while attempts < due {
            match sock.send(&msg) {
                Ok(_) => sent += 1,
                Err(_) => failed += 1,
            }
            attempts += 1;
        }
    }
    Ok((sent, failed, start.elapsed().as_secs_f64()))
}

struct Captured {
    captured: u64,
    ok: u64,
    bad: u64,
}

/// Classic BPF for "IPv4, UDP, not a fragment, destination port 68", so
/// the packet socket does not copy the bulk TCP traffic.
fn dhcp_client_filter() -> [libc::sock_filter; 11] {
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    [
        op(0x28, 0, 0, 12),     // ldh [12]          ethertype
        op(0x15, 0, 8, 0x0800), // jeq IPv4, else drop
        op(0x30, 0, 0, 23),     // ldb [23]          protocol
        op(0x15, 0, 6, 17),     // jeq UDP, else drop
        op(0x28, 0, 0, 20),     // ldh [20]          flags + fragment offset
        op(0x45, 4, 0, 0x1fff), // jset offset -> drop
        op(0xb1, 0, 0, 14),     // ldxb 4*([14]&0xf) IP header length
        op(0x48, 0, 0, 16),     // ldh [x+16]        UDP destination port
        op(0x15, 0, 1, 68),     // jeq 68, else drop
        op(0x06, 0, 0, 0xffff), // accept
        op(0x06, 0, 0, 0),      // drop
    ]
}

/// Captures DHCP-client-port datagrams arriving on the receiving device and
/// verifies each UDP checksum, until `stop`.
fn capture(stop: &AtomicBool, ready: mpsc::Sender<()>) -> Result<Captured> {
    let proto = libc::ETH_P_IP as u16;
    let fd = dev::packet_socket(proto).map_err(BenchError::sys("socket(AF_PACKET)"))?;
    let mut filter = dhcp_client_filter();
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    dev::setsockopt(&fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &prog)
        .map_err(BenchError::sys("SO_ATTACH_FILTER"))?;
    dev::setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &(8 << 20))
        .map_err(BenchError::sys("SO_RCVBUFFORCE"))?;
    dev::set_recv_timeout(&fd, Duration::from_millis(100)).map_err(BenchError::sys("SO_RCVTIMEO"))?;
    let ifindex = dhcpfix::netdev::ifindex(RECEIVER_IF)
        .ok_or_else(|| BenchError::Check(format!("{RECEIVER_IF} not found")))?;
    dev::bind_packet(&fd, ifindex, proto).map_err(BenchError::sys("bind(AF_PACKET)"))?;
    let _ = ready.send(());

    let mut buf = vec![0u8; 65536];
    let mut c = Captured {
        captured: 0,
        ok: 0,
        bad: 0,
    };
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `buf` is writable for its full length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => continue,
                _ => return Err(BenchError::sys("recv(AF_PACKET)")(e)),
            }
        }
        let Some(view) = frames::udp_view(&buf[..n as usize]) else {
            continue;
        };
        if view.sport != 67 || view.dport != 68 {
            continue;
        }
        c.captured += 1;
        if frames::udp_checksum_ok(&view) {
            c.ok += 1;
        } else {
            c.bad += 1;
        }
    }
    Ok(c)
}
