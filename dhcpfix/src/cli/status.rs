//! `dhcpfix status [--json] [--netns NS]`

use std::path::Path;

use serde::Serialize;

use super::{netns_arg::NetnsArg, output};
use dhcpfix::{
    attach::{self, Attachment},
    netns, pins, program,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub netns: NetnsArg,
}

#[derive(Serialize)]
struct Status {
    pin_dir: String,
    program_loaded: bool,
    interfaces: Vec<Attachment>,
}

pub fn run(pin_dir: &Path, args: Args) -> anyhow::Result<()> {
    let pins = pins::PinDir::open(pin_dir)?;
    let (namespaces, only) = args.netns.scope()?;
    let interfaces = match &pins {
        Some(p) => attach::list(p, &namespaces)?
            .into_iter()
            .filter(|a| only.is_none_or(|c| a.netns.cookie == c))
            .collect(),
        None => Vec::new(),
    };
    let status = Status {
        pin_dir: pin_dir.display().to_string(),
        program_loaded: pins.as_ref().is_some_and(program::is_loaded),
        interfaces,
    };
    if args.json {
        return output::json(&status);
    }
    if !status.program_loaded {
        let older = pins.as_ref().map(pins::other_versions).unwrap_or_default();
        if older.is_empty() {
            println!("dhcpfix is not loaded (pin directory {})", status.pin_dir);
        } else {
            println!(
                "pin directory {} holds another dhcpfix version's pins ({}): the next `dhcpfix attach` or `dhcpfix run` of this version moves them here in place",
                status.pin_dir,
                older.join(", ")
            );
        }
        return Ok(());
    }
    if status.interfaces.is_empty() {
        println!(
            "dhcpfix is loaded but attached nowhere (pin directory {})",
            status.pin_dir
        );
        return Ok(());
    }
    let host = netns::host_cookie();
    let rows = status
        .interfaces
        .iter()
        .map(|a| {
            vec![
                a.name.clone(),
                a.netns.label(host),
                a.ifindex.to_string(),
                if a.attached {
                    "attached".into()
                } else {
                    "gone".into()
                },
                a.mode.map_or("-".into(), |m| m.to_string()),
                a.method.to_string(),
                a.ports.iter().map(u16::to_string).collect::<Vec<_>>().join(","),
            ]
        })
        .collect();
    println!(
        "{}",
        output::table(
            &["interface", "netns", "ifindex", "state", "mode", "hook", "ports"],
            rows,
            99
        )
    );
    Ok(())
}
