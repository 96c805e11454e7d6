//! `dhcpfix-bench`: what dhcpfix costs, against the workarounds, on one host
//! and at 1000 taps. Run by `cargo xtask bench`; writes `BENCHMARKS.md`,
//! `bench.json` and `bench.svg`.
//!
//! Every figure is a median over repetitions with its spread, and every
//! comparison is a ratio taken within one repetition, with the variants
//! interleaved: the machines this runs on are shared and noisy.

pub mod chart;
pub mod container;
pub mod dhcpfix_cli;
pub mod error;
pub mod frames;
pub mod kernel_memory;
pub mod machine;
pub mod namespaces;
pub mod prog_cost;
pub mod report;
pub mod sandbox;
pub mod scale;
pub mod stats;
pub mod storm;
pub mod throughput;
pub mod topology;

use std::{path::PathBuf, time::Instant};

pub use error::{BenchError, Result};
use report::Report;

/// The benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    /// Per-packet cost in the kernel (BPF_PROG_TEST_RUN on the attached program).
    ProgCost,
    /// Bulk TCP throughput against the workarounds.
    Throughput,
    /// 1000 taps: attach times, agent, kernel memory.
    Scale,
    /// DHCP reply storm under bulk traffic.
    Storm,
    /// Every namespace: `dhcpfix run --netns all` over 200 namespaces of 5
    /// taps, as they come and go.
    Namespaces,
}

#[derive(Clone, Debug)]
pub struct Options {
    /// Tiny repeat counts, 10 taps, 1 s runs: a smoke run, not a benchmark.
    pub quick: bool,
    /// Where BENCHMARKS.md, bench.json and bench.svg go.
    pub out: PathBuf,
    /// The dhcpfix binary under test.
    pub dhcpfix: PathBuf,
    /// Run only these sections (all when empty); the others are kept from
    /// the report already in `out`.
    pub only: Vec<Section>,
}

/// Sizes of one run.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub prog_cost: prog_cost::Config,
    pub throughput: throughput::Config,
    pub scale: scale::Config,
    pub storm: storm::Config,
    pub namespaces: namespaces::Config,
}

impl Plan {
    pub fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                prog_cost: prog_cost::Config {
                    repeat: 10_000,
                    repetitions: 3,
                },
                throughput: throughput::Config {
                    secs: 1.0,
                    repetitions: 1,
                },
                scale: scale::Config {
                    taps: 10,
                    repetitions: 2,
                },
                storm: storm::Config {
                    secs: 1.0,
                    rate: 20_000,
                    repetitions: 1,
                    dhcp_bytes: 300,
                },
                namespaces: namespaces::Config {
                    namespaces: 10,
                    taps_per_namespace: 2,
                    churn: 10,
                    churn_per_s: 10.0,
                    idle_s: 1.0,
                },
            }
        } else {
            Plan {
                prog_cost: prog_cost::Config {
                    repeat: 1_000_000,
                    repetitions: 15,
                },
                throughput: throughput::Config {
                    secs: 2.5,
                    repetitions: 8,
                },
                scale: scale::Config {
                    taps: 1000,
                    repetitions: 3,
                },
                storm: storm::Config {
                    secs: 3.0,
                    rate: 100_000,
                    repetitions: 3,
                    dhcp_bytes: 300,
                },
                // 2 namespaces (10 taps) a second: about half of what the
                // agent attaches per second here (each tcx attach waits
                // for an RCU grace period), so new taps do not queue for
                // long.
                namespaces: namespaces::Config {
                    namespaces: 200,
                    taps_per_namespace: 5,
                    churn: 100,
                    churn_per_s: 2.0,
                    idle_s: 10.0,
                },
            }
        }
    }
}

/// Runs the selected benchmarks and writes the report files.
pub fn run(opts: &Options) -> Result<Report> {
    let started = Instant::now();
    let plan = Plan::new(opts.quick);
    let wants = |s: Section| opts.only.is_empty() || opts.only.contains(&s);
    let mut machine = machine::Machine::probe();
    let generated_utc = machine::utc_now();
    let sb = sandbox::Sandbox::create()?;
    let needs_binary = wants(Section::ProgCost)
        || wants(Section::Throughput)
        || wants(Section::Scale)
        || wants(Section::Storm)
        || wants(Section::Namespaces);
    let dhcpfix = if needs_binary {
        Some(dhcpfix_cli::Dhcpfix::new(&opts.dhcpfix)?)
    } else {
        None
    };
    let binary = || {
        dhcpfix
            .as_ref()
            .ok_or_else(|| BenchError::NoBinary(opts.dhcpfix.clone()))
    };

    let prog_cost = if wants(Section::ProgCost) {
        eprintln!("dhcpfix-bench: per-packet cost (BPF_PROG_TEST_RUN on the attached program)");
        Some(prog_cost::run(&sb, binary()?, plan.prog_cost)?)
    } else {
        None
    };
    let throughput = if wants(Section::Throughput) {
        eprintln!("dhcpfix-bench: bulk TCP throughput");
        Some(throughput::run(&sb, binary()?, plan.throughput)?)
    } else {
        None
    };
    let scale = if wants(Section::Scale) {
        eprintln!("dhcpfix-bench: {} taps", plan.scale.taps);
        Some(scale::run(&sb, binary()?, plan.scale)?)
    } else {
        None
    };
    let storm = if wants(Section::Storm) {
        eprintln!("dhcpfix-bench: DHCP storm");
        Some(storm::run(&sb, binary()?, plan.storm)?)
    } else {
        None
    };
    let namespaces = if wants(Section::Namespaces) {
        let c = plan.namespaces;
        eprintln!(
            "dhcpfix-bench: every namespace ({} namespaces x {} taps, {} replaced)",
            c.namespaces, c.taps_per_namespace, c.churn
        );
        Some(namespaces::run(&sb, binary()?, c)?)
    } else {
        None
    };
    drop(sb);
    machine.load_end = machine::load_average();

    let mut report = Report {
        schema: report::SCHEMA,
        generated_utc,
        quick: opts.quick,
        wall_time_s: started.elapsed().as_secs_f64(),
        machine,
        dhcpfix_binary: opts.dhcpfix.display().to_string(),
        prog_cost,
        throughput,
        scale,
        storm,
        namespaces,
        targets: Vec::new(),
        kept: Vec::new(),
    };
    // With --only, the other sections stay as the report in --out has them.
    if !opts.only.is_empty() {
        if let Some(earlier) = Report::read(&opts.out) {
            report.keep_from(earlier);
        }
    }
    let report = report.evaluated();
    report.write(&opts.out)?;
    Ok(report)
}
