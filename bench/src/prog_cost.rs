//! Per-packet cost in the kernel: `BPF_PROG_TEST_RUN` with a large repeat
//! count, every case interleaved within each repetition.
//!
//! What is measured is the program exactly as attached: a real
//! `dhcpfix attach` of a tap in a bench-owned namespace loads and pins the
//! classifier, and the bench opens that pin (the program on the tap's tcx
//! egress hook, checked by id) and runs it with the skb's device set to the
//! tap, so it finds the tap's configuration in its own pinned maps. The floor
//! is the empty classifier of the same object, loaded the same way (the
//! running kernel's layout, test mode off, the pin directory's maps), pinned
//! next to it and run the same way. The same frames also go through
//! `bpftool prog run pinned`, in the same rotation, as an independent check.
//!
//! Only the fill path cannot run on the attached program: a test run's skb is
//! never `CHECKSUM_PARTIAL` on an offloading device. Those cases run on the
//! classifier loaded in test mode (`dhcpfix::testrun`, skb state from
//! `skb->mark`) and are labelled so.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    programs::{tc::TcAttachType, SchedClassifier},
    EbpfLoader,
};
use dhcpfix::{
    pins::{self, maps::Maps, PinDir},
    program::{LayoutSource, CLASSIFIER_OBJECT, PINNED_MAPS},
    testrun::{self, TestProgram, EMPTY_PROGRAM, TEST_MARK_OFFLOAD, TEST_MARK_PARTIAL},
};
use dhcpfix_common::{
    config::{IfaceConfig, DEFAULT_PORTS, MODE_FILL},
    counters::Counters,
    guest::GuestState,
    key::IfaceKey,
    LAYOUT_GLOBAL, PROGRAM_NAME, TEST_MODE_GLOBAL,
};
use dhcpfix_lab::kit::{find_tool, netns, process};
use serde::{Deserialize, Serialize};

use crate::{
    dhcpfix_cli::Dhcpfix,
    error::{BenchError, Result},
    frames,
    sandbox::Sandbox,
    stats::Stat,
};

/// `TCX_NEXT`: the only verdict either program may return.
const TC_NEXT: i32 = -1;
/// The tap dhcpfix is attached to, in the bench's namespace.
pub const TAP: &str = "dfb-tap0";
const BPFTOOL_LIMIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Runs per `BPF_PROG_TEST_RUN` call (the kernel reports their mean).
    pub repeat: u32,
    /// Calls per case, interleaved.
    pub repetitions: usize,
}

/// Which program a case runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Program {
    /// The classifier as `dhcpfix attach` loaded, pinned and attached it,
    /// run with the skb's device set to the tap it is attached to.
    Attached,
    /// Its twin on the tap's tcx ingress hook (what the guest sends: the
    /// guest's DHCP requests are recorded for `dhcpfix leases`), pinned and
    /// run the same way.
    Ingress,
    /// The empty classifier, loaded, pinned and run the same way.
    Floor,
    /// The classifier loaded in test mode (skb state from `skb->mark`, its
    /// own unpinned maps configured for loopback): the fill path only.
    TestMode,
}

impl Program {
    pub fn describe(self) -> &'static str {
        match self {
            Program::Attached => "attached",
            Program::Ingress => "attached (ingress)",
            Program::Floor => "floor",
            Program::TestMode => "test mode",
        }
    }
}

/// One measured case.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaseResult {
    pub key: String,
    pub label: String,
    pub program: Program,
    /// Kernel id of the program run (`bpftool prog show id N`).
    pub program_id: u32,
    pub frame_bytes: usize,
    /// Mean ns per run as the kernel measured it (whole ns), one sample per
    /// repetition.
    pub ns: Stat,
    /// `ns / empty ns` of the same repetition.
    pub ratio_to_empty: Stat,
    /// `ns - empty ns` of the same repetition: what dhcpfix itself adds.
    pub extra_ns: Stat,
    /// `min(ns) - min(empty ns)` over all repetitions: the difference of the
    /// two best calls, unpaired (how "min of N rounds" comparisons are made).
    pub extra_of_minima_ns: f64,
}

/// A program the bench ran, as the kernel describes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MeasuredProgram {
    pub program: Program,
    pub id: u32,
    /// Where it is pinned (empty for the unpinned test-mode program).
    pub pin: String,
    pub xlated_bytes: u32,
    pub jited_bytes: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProgCost {
    pub repeat: u32,
    pub repetitions: usize,
    /// The tap `dhcpfix attach` attached to, and its ifindex in the bench's
    /// namespace (the test runs' device).
    pub interface: String,
    pub ifindex: u32,
    /// Program ids on the tap's tcx egress hook before the measurement.
    pub tcx_egress_ids: Vec<u32>,
    /// Whether the attached program took a partial skb on an offloading
    /// device from `skb->mark` (test mode) in a probe run. Must be false.
    pub attached_test_mode: bool,
    pub programs: Vec<MeasuredProgram>,
    /// The bench's own `BPF_PROG_TEST_RUN` calls.
    pub cases: Vec<CaseResult>,
    /// `bpftool prog run pinned PIN data_in FRAME repeat N` on the same pins
    /// and frames, in the same rotation (differences against bpftool's own
    /// floor runs).
    pub bpftool: Vec<CaseResult>,
    pub bpftool_version: String,
}

impl ProgCost {
    pub fn case(&self, key: &str) -> Option<&CaseResult> {
        self.cases.iter().find(|c| c.key == key)
    }

    pub fn bpftool_case(&self, key: &str) -> Option<&CaseResult> {
        self.bpftool.iter().find(|c| c.key == key)
    }

    pub fn program(&self, program: Program) -> Option<&MeasuredProgram> {
        self.programs.iter().find(|p| p.program == program)
    }
}

/// What a case must do to the frame and the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Frame unchanged, counters unchanged (not a watched packet).
    Untouched,
    /// Frame unchanged, `valid` up by the repeat count.
    Valid,
    /// As `Valid`, and the reply recorded: the guest's (of this IP family)
    /// last ACK is newer than before the call.
    ValidRecorded(u8),
    /// Frame unchanged, counters unchanged, and the guest's (of this IP
    /// family) requests up by the repeat count: each run recorded it.
    RequestRecorded(u8),
    /// Checksum filled and correct, `filled` up by the repeat count.
    Filled,
}

/// How a case is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    /// The bench's own `BPF_PROG_TEST_RUN`.
    Bench,
    /// `bpftool prog run pinned`.
    Bpftool,
}

struct Case {
    key: &'static str,
    label: &'static str,
    program: Program,
    tool: Tool,
    frame: Vec<u8>,
    /// The frame as a file, for bpftool.
    file: PathBuf,
    mark: u32,
    expect: Expect,
}

/// The key of the floor case.
pub const EMPTY: &str = "empty";
/// Keys of the cases every bulk packet takes, on the egress hook and on
/// the ingress hook.
pub const FAST_PATH: [&str; 8] = [
    "tcp_ipv4",
    "udp_ipv4",
    "tcp_ipv6",
    "arp",
    INGRESS_TCP_IPV4,
    "ingress_udp_ipv4",
    "ingress_tcp_ipv6",
    "ingress_arp",
];
/// The ingress program on a full-size IPv4 TCP segment.
pub const INGRESS_TCP_IPV4: &str = "ingress_tcp_ipv4";
/// What following the guests costs per DHCP packet: the egress program
/// recording a reply (DHCPv4 ACK, DHCPv6 REPLY, checksums complete, so
/// nothing is filled), the ingress program recording a request.
pub const DHCPV6_VALID: &str = "dhcpv6_reply_valid";
pub const INGRESS_REQUEST: &str = "ingress_dhcp_request";
pub const INGRESS_SOLICIT: &str = "ingress_dhcpv6_solicit";
/// The frames also run through bpftool (with the floor).
pub const BPFTOOL_FRAMES: [&str; 2] = ["tcp_ipv4", "udp_ipv4"];
/// A DHCP reply whose checksum is already complete, on the attached
/// program: the whole parse and decision, including the kernel read of
/// `skb->ip_summed`, no fill (what DHCP from a server without offload costs).
pub const DHCP_VALID: &str = "dhcp_valid_300";
/// The same frame on the test-mode program, which takes the skb state from
/// `skb->mark` instead of reading it: the difference to [`DHCP_VALID`] is
/// what the fill cases leave out.
pub const DHCP_VALID_TEST_MODE: &str = "dhcp_valid_300_test_mode";
/// Keys and DHCP payload sizes of the fill-path cases (test mode).
pub const FILL_KEYS: [&str; 3] = ["dhcp_fill_300", "dhcp_fill_576", "dhcp_fill_1472"];
pub const FILL_SIZES: [usize; 3] = [300, 576, 1472];

fn cases(sb: &Sandbox) -> Result<Vec<Case>> {
    let mut cases = Vec::new();
    let mut add = |key: &'static str,
                   label: &'static str,
                   program: Program,
                   frame: Vec<u8>,
                   mark: u32,
                   expect: Expect|
     -> Result<()> {
        let file = sb.file(&format!("{key}.frame"));
        fs::write(&file, &frame).map_err(BenchError::io("write", &file))?;
        cases.push(Case {
            key,
            label,
            program,
            tool: Tool::Bench,
            frame,
            file,
            mark,
            expect,
        });
        Ok(())
    };
    use Expect::*;
    use Program::*;
    add(
        EMPTY,
        "empty classifier (floor)",
        Floor,
        frames::tcp_ipv4(),
        0,
        Untouched,
    )?;
    add("tcp_ipv4", "IPv4 TCP", Attached, frames::tcp_ipv4(), 0, Untouched)?;
    add(
        "udp_ipv4",
        "IPv4 UDP to port 4789",
        Attached,
        frames::udp(40000, 4789, 1472, false),
        0,
        Untouched,
    )?;
    add("tcp_ipv6", "IPv6 TCP", Attached, frames::tcp_ipv6(), 0, Untouched)?;
    add("arp", "ARP", Attached, frames::arp(), 0, Untouched)?;
    add(
        DHCP_VALID,
        "DHCP ACK 300 B, checksum already complete (recorded)",
        Attached,
        frames::dhcp_reply_complete(300),
        0,
        ValidRecorded(4),
    )?;
    add(
        DHCPV6_VALID,
        "DHCPv6 REPLY 200 B, checksum already complete (recorded)",
        Attached,
        frames::dhcpv6_reply(200),
        0,
        ValidRecorded(6),
    )?;
    add(
        INGRESS_TCP_IPV4,
        "IPv4 TCP",
        Ingress,
        frames::tcp_ipv4(),
        0,
        Untouched,
    )?;
    add(
        "ingress_udp_ipv4",
        "IPv4 UDP to port 4789",
        Ingress,
        frames::udp(40000, 4789, 1472, false),
        0,
        Untouched,
    )?;
    add(
        "ingress_tcp_ipv6",
        "IPv6 TCP",
        Ingress,
        frames::tcp_ipv6(),
        0,
        Untouched,
    )?;
    add("ingress_arp", "ARP", Ingress, frames::arp(), 0, Untouched)?;
    add(
        INGRESS_REQUEST,
        "DHCP REQUEST 300 B (recorded)",
        Ingress,
        frames::dhcp_request(300),
        0,
        RequestRecorded(4),
    )?;
    add(
        INGRESS_SOLICIT,
        "DHCPv6 SOLICIT 100 B (recorded)",
        Ingress,
        frames::dhcpv6_solicit(100),
        0,
        RequestRecorded(6),
    )?;
    add(
        DHCP_VALID_TEST_MODE,
        "DHCP ACK 300 B, checksum already complete",
        TestMode,
        frames::dhcp_reply_complete(300),
        0,
        Valid,
    )?;
    let fill_labels = ["fill, DHCP 300 B", "fill, DHCP 576 B", "fill, DHCP 1472 B"];
    for ((key, label), size) in FILL_KEYS.into_iter().zip(fill_labels).zip(FILL_SIZES) {
        add(
            key,
            label,
            TestMode,
            frames::dhcp_reply(size),
            TEST_MARK_PARTIAL | TEST_MARK_OFFLOAD,
            Filled,
        )?;
    }
    // bpftool runs the floor and the two fast-path frames from the same files.
    let via_bpftool: Vec<Case> = cases
        .iter()
        .filter(|c| c.key == EMPTY || BPFTOOL_FRAMES.contains(&c.key))
        .map(|c| Case {
            tool: Tool::Bpftool,
            frame: c.frame.clone(),
            file: c.file.clone(),
            ..*c
        })
        .collect();
    cases.extend(via_bpftool);
    Ok(cases)
}

/// Attaches dhcpfix to a tap in a fresh namespace with the `dhcpfix` binary
/// under test, pins the floor next to it, and runs every case (bench and
/// bpftool) `repetitions` times, in a rotated order per repetition,
/// checking each run's verdict, output frame and counters.
pub fn run(sb: &Sandbox, dhcpfix: &Dhcpfix, cfg: Config) -> Result<ProgCost> {
    let bpftool = find_tool("bpftool", "bpftool")?;
    let bpftool_version = bpftool_version(&bpftool)?;
    let ns = sb.netns("cost")?;
    ns.ip(&["tuntap", "add", "dev", TAP, "mode", "tap"])?;
    ns.ip(&["link", "set", TAP, "up"])?;
    let pin_dir = sb.pin_dir("cost");
    // A real `dhcpfix attach`: fill mode, the default ports.
    dhcpfix.attach(&ns, &pin_dir, &[TAP.to_string()])?;
    // A file on the bench's bpffs, next to the pin directory.
    let floor_pin = sb.pin_dir("floor");
    pin_floor(&pin_dir, &floor_pin)?;
    let cases = cases(sb)?;
    let ns_path = ns.path().to_path_buf();
    let measured = netns::in_netns(ns.path(), move || {
        let rig = Rig::open(&pin_dir, &floor_pin, &ns_path, bpftool)?;
        let samples = rig.measure_all(&cases, cfg)?;
        Ok::<_, BenchError>((rig.describe(), cases, samples))
    });
    drop(ns);
    let (rig, cases, samples) = measured??;
    let results = |tool: Tool| -> Vec<CaseResult> {
        let picked: Vec<(&Case, &Vec<f64>)> = cases
            .iter()
            .zip(&samples)
            .filter(|(c, _)| c.tool == tool)
            .collect();
        let Some(floor) = picked.iter().find(|(c, _)| c.key == EMPTY).map(|(_, s)| *s) else {
            return Vec::new();
        };
        let floor_min = Stat::of(floor).min;
        picked
            .iter()
            .map(|(case, ns)| {
                let ns_stat = Stat::of(ns);
                CaseResult {
                    key: case.key.into(),
                    label: case.label.into(),
                    program: case.program,
                    program_id: rig.id_of(case.program),
                    frame_bytes: case.frame.len(),
                    extra_of_minima_ns: ns_stat.min - floor_min,
                    ns: ns_stat,
                    ratio_to_empty: Stat::ratio(ns, floor),
                    extra_ns: Stat::difference(ns, floor),
                }
            })
            .collect()
    };
    Ok(ProgCost {
        repeat: cfg.repeat,
        repetitions: cfg.repetitions,
        interface: TAP.into(),
        ifindex: rig.ifindex,
        tcx_egress_ids: rig.tcx_egress_ids.clone(),
        attached_test_mode: rig.attached_test_mode,
        programs: rig.programs.clone(),
        cases: results(Tool::Bench),
        bpftool: results(Tool::Bpftool),
        bpftool_version,
    })
}

fn bpftool_version(bpftool: &Path) -> Result<String> {
    let mut cmd = std::process::Command::new(bpftool);
    cmd.arg("version");
    let out = process::run(&mut cmd, None, BPFTOOL_LIMIT)?;
    // "/usr/sbin/bpftool v7.1.0" -> "bpftool v7.1.0"
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or_default().trim();
    Ok(first.rsplit('/').next().unwrap_or(first).to_string())
}

/// Loads the empty classifier as `dhcpfix::program::load_or_open` loads the
/// classifier (the running kernel's layout, test mode off, the maps pinned
/// in the pin directory `pin_dir`) and pins it at `pin`.
fn pin_floor(pin_dir: &Path, pin: &Path) -> Result<()> {
    let check = |what: &str, e: &dyn std::fmt::Display| BenchError::Check(format!("the floor: {what}: {e}"));
    let layout = LayoutSource::Kernel
        .resolve()
        .map_err(|e| check("kernel layout", &e))?;
    let mut loader = EbpfLoader::new();
    loader
        .override_global(LAYOUT_GLOBAL, &layout, true)
        .override_global(TEST_MODE_GLOBAL, &0u32, true);
    for name in PINNED_MAPS {
        loader.map_pin_path(name, pin_dir.join(pins::map_rel(name)));
    }
    let mut ebpf = loader
        .load(CLASSIFIER_OBJECT)
        .map_err(|e| check("loading the object", &e))?;
    let prog: &mut SchedClassifier = ebpf
        .program_mut(EMPTY_PROGRAM)
        .ok_or_else(|| BenchError::Check("the object has no empty classifier".into()))?
        .try_into()
        .map_err(|e| check("program type", &e))?;
    prog.load().map_err(|e| check("BPF_PROG_LOAD", &e))?;
    prog.pin(pin).map_err(|e| check("pinning", &e))
}

/// What a finished measurement says about its programs.
struct RigDescription {
    ifindex: u32,
    tcx_egress_ids: Vec<u32>,
    attached_test_mode: bool,
    programs: Vec<MeasuredProgram>,
}

impl RigDescription {
    fn id_of(&self, program: Program) -> u32 {
        self.programs
            .iter()
            .find(|p| p.program == program)
            .map_or(0, |p| p.id)
    }
}

/// Everything a case runs on, opened inside the tap's namespace.
struct Rig {
    attached: SchedClassifier,
    attached_pin: PathBuf,
    ingress: SchedClassifier,
    ingress_pin: PathBuf,
    floor: SchedClassifier,
    floor_pin: PathBuf,
    test: TestProgram,
    maps: Maps,
    /// The tap's key in the maps (the namespace's cookie and its ifindex).
    key: IfaceKey,
    ifindex: u32,
    tcx_egress_ids: Vec<u32>,
    attached_test_mode: bool,
    ns_path: PathBuf,
    bpftool: PathBuf,
}

fn prog_info(prog: &SchedClassifier, what: &str) -> Result<aya::programs::ProgramInfo> {
    prog.info()
        .map_err(|e| BenchError::Check(format!("BPF_OBJ_GET_INFO_BY_FD on the {what} program: {e}")))
}

impl Rig {
    /// Opens the pins, checks that the pinned program is the one on the
    /// tap's egress hook and that it is not in test mode, and loads the
    /// test-mode program for the fill cases. Call inside the namespace.
    fn open(pin_dir: &Path, floor_pin: &Path, ns_path: &Path, bpftool: PathBuf) -> Result<Rig> {
        let pins = PinDir::open(pin_dir)
            .map_err(|e| BenchError::Check(format!("the pin directory: {e}")))?
            .ok_or_else(|| BenchError::Check(format!("no pin directory at {}", pin_dir.display())))?;
        let open = |path: &Path| {
            SchedClassifier::from_pin(path)
                .map_err(|e| BenchError::Check(format!("opening the pinned program {}: {e}", path.display())))
        };
        let attached_pin = pin_dir.join(pins::program_rel());
        let attached = open(&attached_pin)?;
        let ingress_pin = pin_dir.join(pins::ingress_program_rel());
        let ingress = open(&ingress_pin)?;
        let floor = open(floor_pin)?;
        let ifindex =
            dhcpfix::netdev::ifindex(TAP).ok_or_else(|| BenchError::Check(format!("{TAP} not found")))?;
        let cookie = dhcpfix::netns::current_cookie().map_err(BenchError::sys("SO_NETNS_COOKIE"))?;
        let (_, on_hook) = SchedClassifier::query_tcx(TAP, TcAttachType::Egress)
            .map_err(|e| BenchError::Check(format!("BPF_PROG_QUERY on {TAP}: {e}")))?;
        let tcx_egress_ids: Vec<u32> = on_hook.iter().map(|p| p.id()).collect();
        let attached_id = prog_info(&attached, "attached")?.id();
        if tcx_egress_ids != [attached_id] {
            return Err(BenchError::Check(format!(
                "the pinned program (id {attached_id}) is not the one program on {TAP}'s tcx egress hook \
                 (ids {tcx_egress_ids:?})"
            )));
        }
        let (_, on_ingress) = SchedClassifier::query_tcx(TAP, TcAttachType::Ingress)
            .map_err(|e| BenchError::Check(format!("BPF_PROG_QUERY on {TAP} ingress: {e}")))?;
        let ingress_ids: Vec<u32> = on_ingress.iter().map(|p| p.id()).collect();
        let ingress_id = prog_info(&ingress, "ingress")?.id();
        if ingress_ids != [ingress_id] {
            return Err(BenchError::Check(format!(
                "the pinned ingress program (id {ingress_id}) is not the one program on {TAP}'s tcx \
                 ingress hook (ids {ingress_ids:?})"
            )));
        }
        let maps = Maps::open(&pins).map_err(|e| BenchError::Check(format!("the pinned maps: {e}")))?;
        let mut test = TestProgram::load()?;
        test.configure(IfaceConfig::new(MODE_FILL, &DEFAULT_PORTS))?;
        let mut rig = Rig {
            attached,
            attached_pin,
            ingress,
            ingress_pin,
            floor,
            floor_pin: floor_pin.to_path_buf(),
            test,
            maps,
            key: IfaceKey::new(cookie, ifindex),
            ifindex,
            tcx_egress_ids,
            attached_test_mode: true,
            ns_path: ns_path.to_path_buf(),
            bpftool,
        };
        rig.attached_test_mode = rig.probe_test_mode()?;
        if rig.attached_test_mode {
            return Err(BenchError::Check(
                "the attached program takes the skb state from skb->mark (test mode)".into(),
            ));
        }
        Ok(rig)
    }

    /// Runs the attached program once on a partial-looking DHCP reply with
    /// the test marks set. In test mode it would fill (marks say partial
    /// and offloading); attached as in production it reads the test skb's
    /// real state (`CHECKSUM_NONE`) and counts it `valid`.
    fn probe_test_mode(&self) -> Result<bool> {
        let frame = frames::dhcp_reply(300);
        let before = self.attached_counters()?;
        let run = testrun::run_classifier(
            &self.attached,
            &frame,
            TEST_MARK_PARTIAL | TEST_MARK_OFFLOAD,
            self.ifindex,
            1,
        )?;
        let after = self.attached_counters()?;
        let filled = after.filled - before.filled;
        let valid = after.valid - before.valid;
        match (filled, valid) {
            (1, 0) => Ok(true),
            (0, 1) if run.frame == frame => Ok(false),
            _ => Err(BenchError::Check(format!(
                "test-mode probe: filled {filled}, valid {valid}, frame changed: {}",
                run.frame != frame
            ))),
        }
    }

    fn attached_counters(&self) -> Result<Counters> {
        Ok(self.maps.counters(&self.key))
    }

    fn counters(&self, program: Program) -> Result<Counters> {
        match program {
            Program::TestMode => Ok(self.test.counters()?),
            Program::Attached | Program::Ingress | Program::Floor => self.attached_counters(),
        }
    }

    /// The bench's guest of `family` on the tap, as the classifier keeps it.
    fn guest(&self, family: u8) -> Option<GuestState> {
        self.maps
            .guests_of(&self.key)
            .into_iter()
            .map(|(_, g)| g)
            .find(|g| g.mac == frames::GUEST_MAC && g.family == family)
    }

    fn describe(&self) -> RigDescription {
        let describe = |program, prog: &SchedClassifier, pin: &Path| {
            let info = prog.info().ok();
            MeasuredProgram {
                program,
                id: info.as_ref().map_or(0, |i| i.id()),
                pin: pin.display().to_string(),
                xlated_bytes: info.as_ref().and_then(|i| i.size_translated()).unwrap_or(0),
                jited_bytes: info.as_ref().map_or(0, |i| i.size_jitted()),
            }
        };
        let mut programs = vec![
            describe(Program::Attached, &self.attached, &self.attached_pin),
            describe(Program::Ingress, &self.ingress, &self.ingress_pin),
            describe(Program::Floor, &self.floor, &self.floor_pin),
        ];
        if let Ok(test) = self.test.program(PROGRAM_NAME) {
            // Not pinned: its pin is the empty path.
            programs.push(describe(Program::TestMode, test, Path::new("")));
        }
        RigDescription {
            ifindex: self.ifindex,
            tcx_egress_ids: self.tcx_egress_ids.clone(),
            attached_test_mode: self.attached_test_mode,
            programs,
        }
    }

    fn measure_all(&self, cases: &[Case], cfg: Config) -> Result<Vec<Vec<f64>>> {
        let mut samples = vec![Vec::with_capacity(cfg.repetitions); cases.len()];
        for rep in 0..cfg.repetitions {
            for k in 0..cases.len() {
                let i = (k + rep) % cases.len();
                samples[i].push(self.measure(&cases[i], cfg.repeat)?);
            }
        }
        Ok(samples)
    }

    fn measure(&self, case: &Case, repeat: u32) -> Result<f64> {
        let fail = |what: String| {
            let tool = if case.tool == Tool::Bpftool {
                "bpftool: "
            } else {
                ""
            };
            Err(BenchError::Check(format!(
                "{tool}{} ({}): {what}",
                case.label,
                case.program.describe()
            )))
        };
        let before = self.counters(case.program)?;
        let guest_before = match case.expect {
            Expect::ValidRecorded(family) | Expect::RequestRecorded(family) => self.guest(family),
            _ => None,
        };
        let (verdict, frame_out, ns) = match case.tool {
            Tool::Bench => {
                let run = match case.program {
                    Program::Attached => {
                        testrun::run_classifier(&self.attached, &case.frame, case.mark, self.ifindex, repeat)?
                    }
                    Program::Ingress => {
                        testrun::run_classifier(&self.ingress, &case.frame, case.mark, self.ifindex, repeat)?
                    }
                    Program::Floor => {
                        testrun::run_classifier(&self.floor, &case.frame, case.mark, self.ifindex, repeat)?
                    }
                    Program::TestMode => {
                        self.test
                            .run_program(PROGRAM_NAME, &case.frame, case.mark, repeat)?
                    }
                };
                (run.verdict, Some(run.frame), run.duration.as_nanos() as f64)
            }
            Tool::Bpftool => {
                let pin = match case.program {
                    Program::Attached => &self.attached_pin,
                    Program::Ingress => &self.ingress_pin,
                    Program::Floor => &self.floor_pin,
                    Program::TestMode => return fail("bpftool runs only pinned programs".into()),
                };
                let (verdict, ns) = self.bpftool_run(pin, &case.file, repeat)?;
                (verdict, None, ns)
            }
        };
        let after = self.counters(case.program)?;
        if verdict != TC_NEXT {
            return fail(format!("verdict {verdict} instead of TCX_NEXT"));
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
                let view = frame_out.as_deref().and_then(frames::udp_view);
                if !view.as_ref().is_some_and(frames::udp_checksum_ok) {
                    return fail("the filled checksum does not verify".into());
                }
            }
            Expect::Valid | Expect::ValidRecorded(_) | Expect::Untouched | Expect::RequestRecorded(_) => {
                let valid = if matches!(case.expect, Expect::Valid | Expect::ValidRecorded(_)) {
                    runs
                } else {
                    0
                };
                let expected = Counters {
                    seen: before.seen + valid,
                    valid: before.valid + valid,
                    ..before
                };
                if after != expected {
                    return fail(format!("counters {after:?}, expected {expected:?}"));
                }
                if frame_out.is_some_and(|f| f != case.frame) {
                    return fail("the frame was modified".into());
                }
            }
        }
        match case.expect {
            Expect::ValidRecorded(family) => {
                let after = self.guest(family);
                let (was, now) = (
                    guest_before.map_or(0, |g| g.last_ack),
                    after.map_or(0, |g| g.last_ack),
                );
                if now <= was {
                    return fail(format!("the reply was not recorded (last ACK {was} -> {now})"));
                }
            }
            Expect::RequestRecorded(family) => {
                let after = self.guest(family).map_or(0, |g| g.requests);
                let was = guest_before.map_or(0, |g| g.requests);
                if u64::from(after) != u64::from(was) + runs {
                    return fail(format!("requests recorded {was} -> {after}, not {repeat} more"));
                }
            }
            _ => {}
        }
        Ok(ns)
    }

    /// `bpftool -j prog run pinned PIN data_in FILE repeat N`, inside the
    /// namespace; returns the verdict and the mean ns per run.
    fn bpftool_run(&self, pin: &Path, file: &Path, repeat: u32) -> Result<(i32, f64)> {
        let mut cmd = netns::command_in(&self.ns_path, &self.bpftool);
        cmd.args(["-j", "prog", "run", "pinned"])
            .arg(pin)
            .arg("data_in")
            .arg(file)
            .args(["repeat", &repeat.to_string()]);
        let out = process::run(&mut cmd, None, BPFTOOL_LIMIT)?;
        parse_bpftool_run(&out.stdout).ok_or_else(|| BenchError::Parse {
            what: process::shown(&cmd),
            detail: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        })
    }
}

/// `{"retval":4294967295,"duration":38}` (bpftool -j prog run): the verdict
/// as the program returned it and the mean ns per run.
pub fn parse_bpftool_run(stdout: &[u8]) -> Option<(i32, f64)> {
    let v: serde_json::Value = serde_json::from_slice(stdout).ok()?;
    let retval = u32::try_from(v.get("retval")?.as_u64()?).ok()?;
    let duration = v.get("duration")?.as_f64()?;
    Some((retval as i32, duration))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bpftool_json() {
        assert_eq!(
            parse_bpftool_run(br#"{"retval":4294967295,"duration":38}"#),
            Some((TC_NEXT, 38.0))
        );
        assert_eq!(
            parse_bpftool_run(b"Return value: 0, duration (average): 38ns"),
            None
        );
        assert_eq!(parse_bpftool_run(br#"{"retval":0}"#), None);
    }
}
