//! `dhcpfix stats [--format table|json|prometheus] [--json] [IFACE...]`

use std::path::Path;

use serde::Serialize;

use super::output;
use dhcpfix::{
    bpffs::PinDir,
    counters::{self, InterfaceStats},
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

pub fn run(pin_dir: &Path, args: Args) -> anyhow::Result<()> {
    let pins = PinDir::new(pin_dir);
    let stats = Stats {
        interfaces: counters::collect(&pins, &args.interfaces)?,
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
        print!("{}", dhcpfix::metrics::encode(&stats.interfaces)?);
        return Ok(());
    }
    if stats.interfaces.is_empty() {
        println!(
            "dhcpfix is attached nowhere (pin directory {})",
            pin_dir.display()
        );
        return Ok(());
    }
    let rows = stats
        .interfaces
        .iter()
        .map(|s| {
            let mut row = vec![
                s.attachment.name.clone(),
                s.attachment.mode.map_or("-".into(), |m| m.to_string()),
            ];
            row.extend(s.counters.values().map(|v| v.to_string()));
            row
        })
        .collect();
    println!("{}", output::table(&output::counters_header(), rows, 2));
    Ok(())
}
