//! Per-packet cost in the kernel: `BPF_PROG_TEST_RUN` with a large repeat
//! count, the empty classifier as the floor, every case interleaved within
//! each repetition.

use dhcpfix::testrun::{TestProgram, EMPTY_PROGRAM, TEST_MARK_OFFLOAD, TEST_MARK_PARTIAL};
use dhcpfix_common::{
    config::{IfaceConfig, DEFAULT_PORTS, MODE_FILL},
    PROGRAM_NAME,
};
use serde::{Deserialize, Serialize};

use crate::{
    error::{BenchError, Result},
    frames,
    stats::Stat,
};

/// `TCX_NEXT`: the only verdict either program may return.
const TC_NEXT: i32 = -1;

#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Runs per `BPF_PROG_TEST_RUN` call (the kernel reports their mean).
    pub repeat: u32,
    /// Calls per case, interleaved.
    pub repetitions: usize,
}

/// One measured case.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaseResult {
    pub key: String,
    pub label: String,
    pub frame_bytes: usize,
    /// Mean ns per run as the kernel measured it, one sample per repetition.
    pub ns: Stat,
    /// `ns / empty ns` of the same repetition.
    pub ratio_to_empty: Stat,
    /// `ns - empty ns` of the same repetition: what dhcpfix itself adds.
    pub extra_ns: Stat,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProgCost {
    pub repeat: u32,
    pub repetitions: usize,
    pub cases: Vec<CaseResult>,
}

struct Case {
    key: &'static str,
    label: &'static str,
    program: &'static str,
    frame: Vec<u8>,
    mark: u32,
    fills: bool,
    /// Whether the test interface has a configuration (attached taps do).
    configured: bool,
}

/// The key of the floor case.
pub const EMPTY: &str = "empty";
/// Keys of the cases every bulk packet takes.
pub const FAST_PATH: [&str; 4] = ["tcp_ipv4", "udp_ipv4", "tcp_ipv6", "arp"];
/// Diagnostic: non-DHCP UDP on an interface without configuration, so only
/// the config lookup runs (splits the UDP fast path into lookup and parse).
pub const UDP_LOOKUP_ONLY: &str = "udp_ipv4_lookup_only";
/// DHCP payload sizes of the fill-path cases.
pub const FILL_SIZES: [usize; 3] = [300, 576, 1472];

fn cases() -> Vec<Case> {
    let fast = |key, label, frame| Case {
        key,
        label,
        program: PROGRAM_NAME,
        frame,
        mark: 0,
        fills: false,
        configured: true,
    };
    let mut cases = vec![
        Case {
            key: EMPTY,
            label: "empty classifier (floor)",
            program: EMPTY_PROGRAM,
            frame: frames::tcp_ipv4(),
            mark: 0,
            fills: false,
            configured: true,
        },
        fast("tcp_ipv4", "dhcpfix, IPv4 TCP", frames::tcp_ipv4()),
        fast(
            "udp_ipv4",
            "dhcpfix, IPv4 UDP to port 4789",
            frames::udp(40000, 4789, 1472, false),
        ),
        fast("tcp_ipv6", "dhcpfix, IPv6 TCP", frames::tcp_ipv6()),
        fast("arp", "dhcpfix, ARP", frames::arp()),
        Case {
            configured: false,
            ..fast(
                UDP_LOOKUP_ONLY,
                "dhcpfix, IPv4 UDP, interface not configured (lookup only)",
                frames::udp(40000, 4789, 1472, false),
            )
        },
    ];
    let fill_keys = ["dhcp_fill_300", "dhcp_fill_576", "dhcp_fill_1472"];
    let fill_labels = [
        "dhcpfix fill, DHCP 300 B",
        "dhcpfix fill, DHCP 576 B",
        "dhcpfix fill, DHCP 1472 B",
    ];
    for ((key, label), size) in fill_keys.into_iter().zip(fill_labels).zip(FILL_SIZES) {
        cases.push(Case {
            key,
            label,
            program: PROGRAM_NAME,
            frame: frames::dhcp_reply(size),
            mark: TEST_MARK_PARTIAL | TEST_MARK_OFFLOAD,
            fills: true,
            configured: true,
        });
    }
    cases
}

/// Runs every case `repetitions` times, in a rotated order per repetition,
/// checking each run's verdict, output frame and counters.
pub fn run(cfg: Config) -> Result<ProgCost> {
    let mut prog = TestProgram::load()?;
    // Configured like an attached tap, so non-DHCP UDP goes through the
    // config lookup and the parser, as it does in production.
    let config = IfaceConfig::new(MODE_FILL, &DEFAULT_PORTS);
    prog.configure(config)?;
    let cases = cases();
    let mut samples = vec![Vec::with_capacity(cfg.repetitions); cases.len()];
    for rep in 0..cfg.repetitions {
        for k in 0..cases.len() {
            let i = (k + rep) % cases.len();
            let case = &cases[i];
            if !case.configured {
                prog.unconfigure()?;
            }
            let ns = measure(&prog, case, cfg.repeat);
            if !case.configured {
                prog.configure(config)?;
            }
            samples[i].push(ns?);
        }
    }
    let empty = samples[0].clone();
    Ok(ProgCost {
        repeat: cfg.repeat,
        repetitions: cfg.repetitions,
        cases: cases
            .iter()
            .zip(&samples)
            .map(|(case, ns)| CaseResult {
                key: case.key.into(),
                label: case.label.into(),
                frame_bytes: case.frame.len(),
                ns: Stat::of(ns),
                ratio_to_empty: Stat::ratio(ns, &empty),
                extra_ns: Stat::difference(ns, &empty),
            })
            .collect(),
    })
}

fn measure(prog: &TestProgram, case: &Case, repeat: u32) -> Result<f64> {
    let before = prog.counters()?;
    let run = prog.run_program(case.program, &case.frame, case.mark, repeat)?;
    let after = prog.counters()?;
    let fail = |what: String| Err(BenchError::Check(format!("{}: {what}", case.label)));
    if run.verdict != TC_NEXT {
        return fail(format!("verdict {} instead of TCX_NEXT", run.verdict));
    }
    if case.fills {
        let filled = after.filled - before.filled;
        if filled != u64::from(repeat) || after.errors != before.errors {
            return fail(format!(
                "filled {filled} of {repeat} runs, errors {}",
                after.errors
            ));
        }
        let view = frames::udp_view(&run.frame);
        if !view.as_ref().is_some_and(frames::udp_checksum_ok) {
            return fail("the filled checksum does not verify".into());
        }
    } else {
        if after != before {
            return fail(format!("counters moved on a non-DHCP frame: {after:?}"));
        }
        if run.frame != case.frame {
            return fail("a non-DHCP frame was modified".into());
        }
    }
    Ok(run.duration.as_nanos() as f64)
}
