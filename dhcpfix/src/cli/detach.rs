//! `dhcpfix detach [--netns NS] IFACE...`

use std::path::Path;

use super::netns_arg::NetnsArg;
use dhcpfix::{
    attach::{self, Detached},
    pins::{PinDir, LOCK_TIMEOUT},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Interfaces to detach from.
    #[arg(required = true, value_name = "IFACE")]
    pub interfaces: Vec<String>,
    #[command(flatten)]
    pub netns: NetnsArg,
}

pub fn run(pin_dir: &Path, args: Args) -> anyhow::Result<()> {
    let Some(pins) = PinDir::open(pin_dir)? else {
        for iface in &args.interfaces {
            println!("{iface}: not attached");
        }
        return Ok(());
    };
    let netns = args.netns.target()?;
    for iface in &args.interfaces {
        match attach::detach(&pins, &netns, iface, LOCK_TIMEOUT)? {
            Detached::Removed => println!("{iface}: detached"),
            Detached::NotAttached => println!("{iface}: not attached"),
        }
    }
    Ok(())
}
