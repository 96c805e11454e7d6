//! `dhcpfix status [--json]`

use std::path::Path;

use serde::Serialize;

use super::output;
use dhcpfix::{
    attach::{self, Attachment},
    bpffs::PinDir,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Status {
    pin_dir: String,
    program_loaded: bool,
    interfaces: Vec<Attachment>,
}

pub fn run(pin_dir: &Path, args: Args) -> anyhow::Result<()> {
    let pins = PinDir::new(pin_dir);
    let status = Status {
        pin_dir: pin_dir.display().to_string(),
        program_loaded: pins.is_ready() && pins.program().exists(),
        interfaces: attach::list(&pins)?,
    };
    if args.json {
        return output::json(&status);
    }
    if !status.program_loaded {
        println!("dhcpfix is not loaded (pin directory {})", status.pin_dir);
        return Ok(());
    }
    if status.interfaces.is_empty() {
        println!(
            "dhcpfix is loaded but attached nowhere (pin directory {})",
            status.pin_dir
        );
        return Ok(());
    }
    let rows = status
        .interfaces
        .iter()
        .map(|a| {
            vec![
                a.name.clone(),
                if a.ifindex == 0 {
                    "-".into()
                } else {
                    a.ifindex.to_string()
                },
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
            &["interface", "ifindex", "state", "mode", "hook", "ports"],
            rows,
            99
        )
    );
    Ok(())
}
