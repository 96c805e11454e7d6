//! `dhcpfix stats [--format table|json|prometheus] [--json] [--netns NS] [IFACE...]`

use std::path::Path;

use serde::Serialize;

use super::{netns_arg::NetnsArg, output};
use dhcpfix::{
    counters::{self, InterfaceStats},
    leases, netns,
    pins::{maps::Maps, PinDir},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only these interfaces (default: all attached).
    #[arg(value_name = "IFACE")]
    pub interfaces: Vec<String>,
    /// Print JSON instead of a table (same as --format json).
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// Output format; prometheus prints the same text as `dhcpfix run`'s
    /// /metrics (for the node exporter's textfile collector).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    #[command(flatten)]
    pub netns: NetnsArg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Prometheus,
}

#[derive(Serialize)]
struct Stats {
    interfaces: Vec<InterfaceStats>,
}

/// The counters of the attachments `netns` selects (and `only` names).
pub fn collect(pin_dir: &Path, netns: &NetnsArg, only: &[String]) -> anyhow::Result<Vec<InterfaceStats>> {
    let Some(pins) = PinDir::open(pin_dir)? else {
        return Ok(Vec::new());
    };
    let (namespaces, cookie) = netns.scope()?;
    Ok(counters::collect(&pins, &namespaces, only)?
        .into_iter()
        .filter(|s| cookie.is_none_or(|c| s.attachment.netns.cookie == c))
        .collect())
}

pub fn run(pin_dir: &Path, args: Args) -> anyhow::Result<()> {
    let stats = Stats {
        interfaces: collect(pin_dir, &args.netns, &args.interfaces)?,
    };
    if let Some(missing) = args
        .interfaces
        .iter()
        .find(|name| !stats.interfaces.iter().any(|s| &s.attachment.name == *name))
    {
        anyhow::bail!("{missing}: dhcpfix is not attached there; see `dhcpfix status`");
    }
    if args.json || args.format == Format::Json {
        return output::json(&stats);
    }
    if args.format == Format::Prometheus {
        let attachments: Vec<_> = stats.interfaces.iter().map(|s| s.attachment.clone()).collect();
        let guests = match PinDir::open(pin_dir)? {
            Some(pins) if !attachments.is_empty() => {
                leases::of(&Maps::open(&pins)?, &attachments, leases::boottime_ns())
            }
            _ => Vec::new(),
        };
        let ctx = dhcpfix::metrics::Context {
            host: netns::host_cookie(),
            guests: &guests,
            per_guest: true,
            ..Default::default()
        };
        print!("{}", dhcpfix::metrics::encode(&stats.interfaces, &ctx)?);
        return Ok(());
    }
    if stats.interfaces.is_empty() {
        println!(
            "dhcpfix is attached nowhere (pin directory {})",
            pin_dir.display()
        );
        return Ok(());
    }
    let host = netns::host_cookie();
    let rows = stats
        .interfaces
        .iter()
        .map(|s| {
            let mut row = vec![
                s.attachment.name.clone(),
                s.attachment.netns.label(host),
                s.attachment.mode.map_or("-".into(), |m| m.to_string()),
            ];
            row.extend(s.counters.values().map(|v| v.to_string()));
            row
        })
        .collect();
    println!("{}", output::table(&output::counters_header(), rows, 3));
    Ok(())
}
