//! `dhcpfix-bench`: parses arguments and runs the benchmarks.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use dhcpfix_bench::{Options, Section};

/// What dhcpfix costs, against the workarounds, on one host and at 1000 taps.
/// Needs root; writes BENCHMARKS.md, bench.json and bench.svg.
#[derive(Debug, Parser)]
#[command(name = "dhcpfix-bench", version, about)]
struct Args {
    /// Tiny repeat counts, 10 taps, 1 s runs: a smoke run, not a benchmark.
    #[arg(long)]
    quick: bool,
    /// Directory for BENCHMARKS.md, bench.json and bench.svg.
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: PathBuf,
    /// The dhcpfix binary to measure (release build).
    #[arg(long, value_name = "PATH", default_value = "target/release/dhcpfix")]
    dhcpfix: PathBuf,
    /// Run only these sections (repeatable; all by default). The others
    /// are kept from the bench.json already in --out, marked as such.
    #[arg(long, value_name = "NAME", value_enum)]
    only: Vec<Section>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let opts = Options {
        quick: args.quick,
        out: args.out,
        dhcpfix: args.dhcpfix,
        only: args.only,
    };
    match dhcpfix_bench::run(&opts) {
        Ok(report) => {
            for t in &report.targets {
                let met = match t.met {
                    Some(true) => "met",
                    Some(false) => "NOT met",
                    None => "n/a",
                };
                println!("{}: {} (goal {}): {met}", t.name, t.observed, t.goal);
            }
            println!(
                "wrote {} in {:.1} s",
                opts.out.join(dhcpfix_bench::report::MARKDOWN_FILE).display(),
                report.wall_time_s
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dhcpfix-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}
