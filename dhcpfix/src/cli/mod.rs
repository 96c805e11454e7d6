//! The `dhcpfix` command line, private to the binary: one module per
//! subcommand, each with its `Args` and a `run` on the library. Output is a
//! table for people or JSON (`output`); the exit status is returned, never
//! decided by `process::exit` deep inside.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use dhcpfix::pins::DEFAULT_PIN_DIR;

mod attach;
mod clean;
mod demo;
mod detach;
mod doctor;
mod generate;
mod layout_args;
mod leases;
mod libvirt_hook;
mod netns_arg;
mod output;
mod run;
mod stats;
mod status;
mod watch;

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
    /// Show each guest's DHCP state: bound, renewing, about to lose its
    /// lease, or throwing replies away.
    Leases(leases::Args),
    /// Build a lab in network namespaces and show the fix at work.
    Demo(demo::Args),
    /// Run the host agent: attach to matching interfaces as they appear,
    /// log fills, serve metrics.
    Run(run::Args),
    /// Show a live per-interface table of the counters and their rates.
    Watch(watch::Args),
    /// Remove pins of deleted interfaces and stale entries (--all: everything).
    Clean(clean::Args),
    /// Check the host: kernel support, each guest tap and what covers it,
    /// host DHCP servers, other checksum fixes. Exits 2 if action is needed.
    Doctor(doctor::Args),
    /// libvirt qemu hook (contrib/libvirt/qemu.d/dhcpfix): domain XML on
    /// stdin, libvirt's arguments after `--`. Always exits 0, prints nothing.
    #[command(disable_help_flag = true, disable_version_flag = true)]
    LibvirtHook(libvirt_hook::Args),
    /// Man pages and shell completions, for packagers.
    #[command(hide = true)]
    Generate(generate::Args),
}

impl Cli {
    /// The log level when RUST_LOG is not set: the agent reports what it
    /// does at info level; one-shot commands only warn.
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Run(_) => "info",
            _ => "warn",
        }
    }
}

/// Runs the parsed command; its exit status, or an error for [`one_line`].
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let done = match cli.command {
        Command::Attach(args) => attach::run(&cli.pin_dir, args),
        Command::Detach(args) => detach::run(&cli.pin_dir, args),
        Command::Status(args) => status::run(&cli.pin_dir, args),
        Command::Stats(args) => stats::run(&cli.pin_dir, args),
        Command::Leases(args) => leases::run(&cli.pin_dir, args),
        Command::Demo(args) => demo::run(args),
        Command::Run(args) => run::run(&cli.pin_dir, args),
        Command::Watch(args) => watch::run(&cli.pin_dir, args),
        Command::Clean(args) => clean::run(&cli.pin_dir, args),
        Command::Doctor(args) => return doctor::run(&cli.pin_dir, args),
        Command::LibvirtHook(args) => libvirt_hook::run(&cli.pin_dir, args),
        Command::Generate(args) => generate::run(args),
    };
    done.map(|()| ExitCode::SUCCESS)
}

/// An error and its causes on one line, each cause once: the library's
/// errors carry their cause in their message already (so the agent's log
/// lines are whole), a context added here does not; so a cause is added
/// only if the line does not say it yet. Line breaks become spaces.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut line = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use std::io;

    use anyhow::Context;

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("mount(2) of bpffs at /x: {source}; run as root")]
    struct Embeds {
        source: io::Error,
    }

    #[test]
    fn each_cause_once_on_one_line() {
        let denied = || io::Error::from_raw_os_error(libc::EPERM);
        // A library error that embeds its cause and also exposes it.
        let err = anyhow::Error::new(Embeds { source: denied() });
        assert_eq!(
            one_line(&err),
            "mount(2) of bpffs at /x: Operation not permitted (os error 1); run as root"
        );
        // A context added in the CLI: its cause follows it.
        let err = Err::<(), _>(denied())
            .context("locating the dhcpfix binary")
            .unwrap_err();
        assert_eq!(
            one_line(&err),
            "locating the dhcpfix binary: Operation not permitted (os error 1)"
        );
        let err = anyhow::anyhow!("the verifier said:\n  R1 invalid\n");
        assert_eq!(one_line(&err), "the verifier said: R1 invalid");
    }
}
