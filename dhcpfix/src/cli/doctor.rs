//! `dhcpfix doctor [--json]`: which guests are at risk, and what covers the
//! others. Exit status: 0 when nothing needs action, 2 when something does
//! (the report says what), 1 when the doctor itself failed.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use super::{netns_arg::NetnsArg, output};
use dhcpfix::{
    doctor::{self, Check, Level, Options, Report},
    netns::Netns,
};

/// Exit status when an item needs action.
pub const EXIT_ACTION: u8 = 2;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Read the kernel layout from this BTF file instead of
    /// /sys/kernel/btf/vmlinux.
    #[arg(long, value_name = "FILE")]
    pub btf: Option<PathBuf>,
    #[command(flatten)]
    pub netns: NetnsArg,
}

pub fn run(pin_dir: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let netns = match &args.netns.netns {
        Some(spec) => Some(Netns::open(spec)?),
        None => None,
    };
    let report = doctor::examine(&Options {
        pin_dir: pin_dir.to_owned(),
        btf: args.btf,
        netns,
    })?;
    if args.json {
        output::json(&report)?;
    } else {
        print_tables(&report);
    }
    Ok(if report.verdict == Level::Action {
        ExitCode::from(EXIT_ACTION)
    } else {
        ExitCode::SUCCESS
    })
}

fn check_rows(checks: &[Check]) -> Vec<Vec<String>> {
    checks
        .iter()
        .map(|c| vec![c.item.clone(), c.level.to_string(), c.detail.clone()])
        .collect()
}

fn print_tables(report: &Report) {
    println!("Kernel and pin directory");
    println!(
        "{}\n",
        output::table(&["item", "level", "detail"], check_rows(&report.kernel), 99)
    );

    if !report.interfaces.is_empty() {
        let rows = report
            .interfaces
            .iter()
            .map(|t| {
                vec![
                    t.name.clone(),
                    t.bridge.clone().unwrap_or_else(|| "-".into()),
                    match t.tx_checksum_offload {
                        Some(true) => "on".into(),
                        Some(false) => "off".into(),
                        None => "?".into(),
                    },
                    t.dhcpfix
                        .as_ref()
                        .map_or("-".into(), |d| d.mode.map_or("?".into(), |m| m.to_string())),
                    t.verdict.to_string(),
                    t.verdict.level().to_string(),
                    t.verdict.detail(),
                ]
            })
            .collect();
        println!(
            "Guest taps (network namespace {})",
            report.netns.label(dhcpfix::netns::host_cookie())
        );
        println!(
            "{}\n",
            output::table(
                &[
                    "interface",
                    "bridge",
                    "tx-csum",
                    "dhcpfix",
                    "verdict",
                    "level",
                    "detail"
                ],
                rows,
                99
            )
        );
    }

    if !report.dhcp_servers.is_empty() {
        let rows = report
            .dhcp_servers
            .iter()
            .map(|s| {
                let addr = match &s.bound_device {
                    Some(dev) => format!("{}%{dev}:67", s.address),
                    None => format!("{}:67", s.address),
                };
                vec![
                    addr,
                    if s.processes.is_empty() {
                        "?".into()
                    } else {
                        s.processes.join(",")
                    },
                    if s.serves.is_empty() {
                        "-".into()
                    } else {
                        s.serves.join(",")
                    },
                ]
            })
            .collect();
        println!("DHCP servers on this host");
        println!("{}\n", output::table(&["socket", "process", "serves"], rows, 99));
    }

    if !report.other_fixes.is_empty() {
        let rows = report
            .other_fixes
            .iter()
            .map(|f| vec![f.kind.to_string(), f.applies_to.clone(), f.rule.clone()])
            .collect();
        println!("Other checksum fixes");
        println!("{}\n", output::table(&["kind", "applies to", "rule"], rows, 99));
    }

    let guests: Vec<Vec<String>> = report
        .interfaces
        .iter()
        .flat_map(|t| t.guests.iter().map(|g| vec![g.clone()]))
        .collect();
    if !guests.is_empty() {
        println!("Guests dhcpfix saw (`dhcpfix leases` has the details)");
        println!("{}\n", output::table(&["guest"], guests, 99));
    }

    if !report.notes.is_empty() {
        println!("Notes");
        println!(
            "{}\n",
            output::table(&["item", "level", "detail"], check_rows(&report.notes), 99)
        );
    }

    match report.verdict {
        Level::Action => {
            println!("Verdict: ACTION needed");
            for a in &report.actions {
                println!("  {a}");
            }
        }
        Level::Warn => println!("Verdict: ok, with warnings"),
        Level::Ok => println!("Verdict: ok"),
    }
}
