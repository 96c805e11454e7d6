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

/// What a case must do to the frame and the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Frame unchanged, counters unchanged (not a watched packet).
    Untouched,
    /// Frame unchanged, `valid` up by the repeat count.
    Valid,
    /// Checksum filled and correct, `filled` up by the repeat count.
    Filled,
}

struct Case {
    key: &'static str,
    label: &'static str,
    program: &'static str,
    frame: Vec<u8>,
    mark: u32,
    expect: Expect,
}

/// The key of the floor case.
pub const EMPTY: &str = "empty";
/// Keys of the cases every bulk packet takes.
pub const FAST_PATH: [&str; 4] = ["tcp_ipv4", "udp_ipv4", "tcp_ipv6", "arp"];
/// A DHCP reply whose checksum is already complete: the whole parse and
/// decision, no fill (what DHCP from a server without offload costs).
pub const DHCP_VALID: &str = "dhcp_valid_300";
/// DHCP payload sizes of the fill-path cases.
pub const FILL_SIZES: [usize; 3] = [300, 576, 1472];

fn cases() -> Vec<Case> {
    let case = |key, label, frame, mark, expect| Case {
        key,
        label,
        program: PROGRAM_NAME,
        frame,
        mark,
        expect,
    };
    let fast = |key, label, frame| case(key, label, frame, 0, Expect::Untouched);
    let mut cases = vec![
        Case {
            program: EMPTY_PROGRAM,
            ..fast(EMPTY, "empty classifier (floor)", frames::tcp_ipv4())
        },
        fast("tcp_ipv4", "dhcpfix, IPv4 TCP", frames::tcp_ipv4()),
        fast(
            "udp_ipv4",
            "dhcpfix, IPv4 UDP to port 4789",
            frames::udp(40000, 4789, 1472, false),
        ),
        fast("tcp_ipv6", "dhcpfix, IPv6 TCP", frames::tcp_ipv6()),
        fast("arp", "dhcpfix, ARP", frames::arp()),
        case(
            DHCP_VALID,
            "dhcpfix, DHCP 300 B, checksum already complete",
            frames::dhcp_reply_complete(300),
            0,
            Expect::Valid,
        ),
    ];
    let fill_keys = ["dhcp_fill_300", "dhcp_fill_576", "dhcp_fill_1472"];
    let fill_labels = [
        "dhcpfix fill, DHCP 300 B",
        "dhcpfix fill, DHCP 576 B",
        "dhcpfix fill, DHCP 1472 B",
    ];
    for ((key, label), size) in fill_keys.into_iter().zip(fill_labels).zip(FILL_SIZES) {
        cases.push(case(
            key,
            label,
            frames::dhcp_reply(size),
            TEST_MARK_PARTIAL | TEST_MARK_OFFLOAD,
            Expect::Filled,
        ));
    }
    cases
}

/// Runs every case `repetitions` times, in a rotated order per repetition,
/// checking each run's verdict, output frame and counters.
pub fn run(cfg: Config) -> Result<ProgCost> {
    let mut prog = TestProgram::load()?;
    // Configured like an attached tap (config entry and watched-ports
    // bitmap), so every path is the one production packets take.
    prog.configure(IfaceConfig::new(MODE_FILL, &DEFAULT_PORTS))?;
    let cases = cases();
    let mut samples = vec![Vec::with_capacity(cfg.repetitions); cases.len()];
    for rep in 0..cfg.repetitions {
        for k in 0..cases.len() {
            let i = (k + rep) % cases.len();
            samples[i].push(measure(&prog, &cases[i], cfg.repeat)?);
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
    let runs = u64::from(repeat);
    match case.expect {
        Expect::Filled => {
            let filled = after.filled - before.filled;
            if filled != runs || after.errors != before.errors {
                return fail(format!(
                    "filled {filled} of {repeat} runs, errors {}",
                    after.errors
                ));
            }
            let view = frames::udp_view(&run.frame);
            if !view.as_ref().is_some_and(frames::udp_checksum_ok) {
                return fail("the filled checksum does not verify".into());
            }
        }
        Expect::Valid | Expect::Untouched => {
            let valid = if case.expect == Expect::Valid { runs } else { 0 };
            let expected = dhcpfix_common::counters::Counters {
                seen: before.seen + valid,
                valid: before.valid + valid,
                ..before
            };
            if after != expected {
                return fail(format!("counters {after:?}, expected {expected:?}"));
            }
            if run.frame != case.frame {
                return fail("the frame was modified".into());
            }
        }
    }
    Ok(run.duration.as_nanos() as f64)
}
