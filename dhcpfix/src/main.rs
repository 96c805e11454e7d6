//! The `dhcpfix` command: parses the command line and runs the
//! subcommand (`cli/`, one file each) on the library. Errors are printed
//! once, on one line; the exit status is a value each subcommand returns
//! (0, or 2 when `doctor` finds something that needs action), 1 on error.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(cli.default_log_filter()))
        .init();
    match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dhcpfix: error: {}", cli::one_line(&e));
            ExitCode::FAILURE
        }
    }
}
