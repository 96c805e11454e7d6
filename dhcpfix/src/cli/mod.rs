//! The `dhcpfix` command line: one module per subcommand.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::bpffs::DEFAULT_PIN_DIR;

mod attach;
mod demo;
mod detach;
mod output;
mod stats;
mod status;

/// Completes the UDP checksum of DHCP packets on KVM guests' taps, so guests
/// whose DHCP client reads raw frames get their leases.
#[derive(Debug, Parser)]
#[command(name = "dhcpfix", version, about, long_about = None)]
pub struct Cli {
    /// bpffs directory holding the program, its maps and one link per
    /// interface (mounted there if needed).
    #[arg(long, global = true, env = "DHCPFIX_PIN_DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to the egress of one or more interfaces (idempotent).
    Attach(attach::Args),
    /// Detach from one or more interfaces.
    Detach(detach::Args),
    /// Show where dhcpfix is attached and how.
    Status(status::Args),
    /// Show per-interface counters.
    Stats(stats::Args),
    /// Build a lab in network namespaces and show the fix at work.
    Demo(demo::Args),
}

/// Runs the parsed command. Errors are meant to be printed on one line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Attach(args) => attach::run(&cli.pin_dir, args),
        Command::Detach(args) => detach::run(&cli.pin_dir, args),
        Command::Status(args) => status::run(&cli.pin_dir, args),
        Command::Stats(args) => stats::run(&cli.pin_dir, args),
        Command::Demo(args) => demo::run(args),
    }
}
