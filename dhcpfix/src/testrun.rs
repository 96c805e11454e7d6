//! Running the classifier on chosen frames with `BPF_PROG_TEST_RUN`.
//!
//! A test run cannot produce a `CHECKSUM_PARTIAL` skb on an offloading
//! device, so programs loaded here set the read-only global
//! `DHCPFIX_TEST_MODE` and take the skb state from `skb->mark`
//! ([`TEST_MARK_PARTIAL`], [`TEST_MARK_OFFLOAD`]). Programs attached to
//! interfaces are always loaded with it cleared, and the verifier removes the
//! branch. Test runs execute on the loopback device (ifindex 1).

use std::time::Duration;

use aya::{
    maps::{Array, HashMap, PerCpuHashMap},
    programs::{SchedClassifier, TestRun, TestRunOptions},
    Ebpf, EbpfLoader,
};
pub use dhcpfix_common::layout::{TEST_MARK_OFFLOAD, TEST_MARK_PARTIAL};
use dhcpfix_common::{
    config::{port_bit, IfaceConfig},
    counters::Counters,
    key::IfaceKey,
    CONFIG_MAP, COUNTERS_MAP, LAYOUT_GLOBAL, PORTS_MAP, PROGRAM_NAME, TEST_MODE_GLOBAL,
};

use crate::program::{LoadError, CLASSIFIER_OBJECT};

/// The interface a test run executes on: loopback.
pub const TEST_IFINDEX: u32 = 1;
/// The classifier that does nothing, the floor for benchmarks.
pub const EMPTY_PROGRAM: &str = "dhcpfix_empty";
/// `sizeof(struct __sk_buff)`.
const SKB_CTX_SIZE: usize = 192;
/// Offset of `mark` in `struct __sk_buff`.
const SKB_CTX_MARK: usize = 8;
/// Offset of `ifindex` in `struct __sk_buff`.
const SKB_CTX_IFINDEX: usize = 40;

/// Errors of a test run.
#[derive(Debug, thiserror::Error)]
pub enum TestRunError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("BPF_PROG_TEST_RUN failed: {0}")]
    Run(#[source] aya::programs::ProgramError),
    #[error("counting possible CPUs: {0}")]
    Cpus(#[source] std::io::Error),
    #[error("map {0}: {1}")]
    Map(&'static str, #[source] aya::maps::MapError),
}

/// The result of running the classifier on one frame.
#[derive(Clone, Debug)]
pub struct Run {
    /// The program's return code.
    pub verdict: i32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// Mean time per run as the kernel measured it.
    pub duration: Duration,
}

/// The classifier (and the empty classifier) loaded for test runs.
pub struct TestProgram {
    ebpf: Ebpf,
    key: IfaceKey,
}

impl TestProgram {
    /// Loads the object in test mode with unpinned maps.
    pub fn load() -> Result<Self, TestRunError> {
        if CLASSIFIER_OBJECT.is_empty() {
            return Err(LoadError::NoObject.into());
        }
        // Test mode takes the skb's checksum state from its mark, but the
        // interface's key (its namespace cookie) is read as in production.
        let layout = crate::kernel_layout::resolve_from(None).map_err(LoadError::Layout)?;
        let mut ebpf = EbpfLoader::new()
            .override_global(LAYOUT_GLOBAL, &layout, true)
            .override_global(TEST_MODE_GLOBAL, &1u32, true)
            .load(CLASSIFIER_OBJECT)
            .map_err(|e| LoadError::Object(e.to_string()))?;
        for name in [PROGRAM_NAME, EMPTY_PROGRAM] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(LoadError::Missing("program"))?
                .try_into()
                .map_err(LoadError::Program)?;
            prog.load().map_err(LoadError::Program)?;
        }
        let key = IfaceKey::new(
            crate::netns::current_cookie().map_err(TestRunError::Cpus)?,
            TEST_IFINDEX,
        );
        Ok(Self { ebpf, key })
    }

    /// The key the test runs' interface (loopback of the caller's network
    /// namespace) has in the maps.
    pub fn key(&self) -> IfaceKey {
        self.key
    }

    /// Sets the configuration of the test interface and zeroes its counters.
    pub fn configure(&mut self, cfg: IfaceConfig) -> Result<(), TestRunError> {
        let mut ports: Array<_, u64> =
            Array::try_from(self.ebpf.map_mut(PORTS_MAP).ok_or(LoadError::Missing("map"))?)
                .map_err(|e| TestRunError::Map(PORTS_MAP, e))?;
        for port in cfg.ports.iter().copied().filter(|p| *p != 0) {
            let (word, bit) = port_bit(port);
            let value = ports.get(&word, 0).map_err(|e| TestRunError::Map(PORTS_MAP, e))?;
            ports
                .set(word, value | bit, 0)
                .map_err(|e| TestRunError::Map(PORTS_MAP, e))?;
        }
        let key = self.key;
        let mut config: HashMap<_, IfaceKey, IfaceConfig> =
            HashMap::try_from(self.ebpf.map_mut(CONFIG_MAP).ok_or(LoadError::Missing("map"))?)
                .map_err(|e| TestRunError::Map(CONFIG_MAP, e))?;
        config
            .insert(key, cfg, 0)
            .map_err(|e| TestRunError::Map(CONFIG_MAP, e))?;
        let mut counters: PerCpuHashMap<_, IfaceKey, Counters> =
            PerCpuHashMap::try_from(self.ebpf.map_mut(COUNTERS_MAP).ok_or(LoadError::Missing("map"))?)
                .map_err(|e| TestRunError::Map(COUNTERS_MAP, e))?;
        let ncpu = aya::util::nr_cpus().map_err(|(_, e)| TestRunError::Cpus(e))?;
        let zeros =
            aya::maps::PerCpuValues::try_from(vec![Counters::default(); ncpu]).map_err(TestRunError::Cpus)?;
        counters
            .insert(key, zeros, 0)
            .map_err(|e| TestRunError::Map(COUNTERS_MAP, e))
    }

    /// Removes the test interface's configuration (the program then ignores
    /// every packet).
    pub fn unconfigure(&mut self) -> Result<(), TestRunError> {
        let key = self.key;
        let mut config: HashMap<_, IfaceKey, IfaceConfig> =
            HashMap::try_from(self.ebpf.map_mut(CONFIG_MAP).ok_or(LoadError::Missing("map"))?)
                .map_err(|e| TestRunError::Map(CONFIG_MAP, e))?;
        match config.remove(&key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(TestRunError::Map(CONFIG_MAP, e)),
        }
    }

    /// The test interface's counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, TestRunError> {
        let counters: PerCpuHashMap<_, IfaceKey, Counters> =
            PerCpuHashMap::try_from(self.ebpf.map(COUNTERS_MAP).ok_or(LoadError::Missing("map"))?)
                .map_err(|e| TestRunError::Map(COUNTERS_MAP, e))?;
        let mut sum = Counters::default();
        match counters.get(&self.key, 0) {
            Ok(per_cpu) => per_cpu.iter().for_each(|c| sum.add(c)),
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(TestRunError::Map(COUNTERS_MAP, e)),
        }
        Ok(sum)
    }

    /// Runs the classifier once on `frame` with `skb->mark = mark`.
    pub fn run(&self, frame: &[u8], mark: u32) -> Result<Run, TestRunError> {
        self.run_program(PROGRAM_NAME, frame, mark, 1)
    }

    /// Runs program `name` `repeat` times on `frame` (for benchmarks).
    pub fn run_program(&self, name: &str, frame: &[u8], mark: u32, repeat: u32) -> Result<Run, TestRunError> {
        run_classifier(self.program(name)?, frame, mark, 0, repeat)
    }

    /// The loaded program `name` ([`PROGRAM_NAME`] or [`EMPTY_PROGRAM`]).
    pub fn program(&self, name: &str) -> Result<&SchedClassifier, TestRunError> {
        self.ebpf
            .program(name)
            .ok_or(LoadError::Missing("program"))?
            .try_into()
            .map_err(|e| TestRunError::Load(LoadError::Program(e)))
    }
}

/// Runs any loaded classifier `repeat` times on `frame` with
/// `skb->mark = mark`. With `ifindex` > 1 the skb's device is that interface
/// of the caller's network namespace (where the program finds its
/// configuration, as on an attached interface); otherwise loopback.
pub fn run_classifier(
    prog: &SchedClassifier,
    frame: &[u8],
    mark: u32,
    ifindex: u32,
    repeat: u32,
) -> Result<Run, TestRunError> {
    let mut ctx = [0u8; SKB_CTX_SIZE];
    ctx[SKB_CTX_MARK..SKB_CTX_MARK + 4].copy_from_slice(&mark.to_ne_bytes());
    ctx[SKB_CTX_IFINDEX..SKB_CTX_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
    // Room for the frame; the program never grows it.
    let mut out = vec![0u8; frame.len() + 256];
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat,
            ..Default::default()
        })
        .map_err(TestRunError::Run)?;
    out.truncate(result.data_size_out as usize);
    Ok(Run {
        verdict: result.return_value as i32,
        frame: out,
        duration: result.duration,
    })
}
