//! `dhcpfix detach IFACE...`

use std::path::Path;

use dhcpfix::{
    attach::{self, Detached},
    bpffs::PinDir,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Interfaces to detach from.
    #[arg(required = true, value_name = "IFACE")]
    pub interfaces: Vec<String>,
}

pub fn run(pin_dir: &Path, args: Args) -> anyhow::Result<()> {
    let pins = PinDir::new(pin_dir);
    for iface in &args.interfaces {
        match attach::detach(&pins, iface)? {
            Detached::Removed => println!("{iface}: detached"),
            Detached::NotAttached => println!("{iface}: not attached"),
        }
    }
    Ok(())
}
