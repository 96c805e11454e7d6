//! `dhcpfix attach [--netns NS] IFACE...`

use std::path::Path;

use anyhow::bail;

use super::netns_arg::NetnsArg;
use dhcpfix::{
    attach::{self, AttachOptions, Attached, Method, Mode},
    pins::{PinDir, LOCK_TIMEOUT},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Interfaces to attach to (guest taps such as vnet0).
    #[arg(required = true, value_name = "IFACE")]
    pub interfaces: Vec<String>,
    /// Only count what would be filled (`would_fill`); change no packet.
    #[arg(long)]
    pub audit: bool,
    /// UDP destination ports to act on (at most 4).
    #[arg(long, value_delimiter = ',', default_values_t = dhcpfix_common::config::DEFAULT_PORTS)]
    pub ports: Vec<u16>,
    /// How to hook into the interface.
    #[arg(long, value_enum, default_value_t = Method::Auto)]
    pub method: Method,
    #[command(flatten)]
    pub layout: super::layout_args::LayoutArgs,
    #[command(flatten)]
    pub netns: NetnsArg,
}

pub fn run(pin_dir: &Path, args: Args) -> anyhow::Result<()> {
    let layout = args.layout.source();
    let opts = AttachOptions {
        mode: if args.audit { Mode::Audit } else { Mode::Fill },
        ports: args.ports,
        method: args.method,
        layout,
        lock_timeout: LOCK_TIMEOUT,
    };
    let netns = args.netns.target()?;
    // Check every name before touching anything: all or nothing.
    for iface in &args.interfaces {
        if !attach::valid_ifname(iface) {
            bail!("{iface:?} is not a valid interface name");
        }
    }
    let missing = netns.run(|| {
        args.interfaces
            .iter()
            .find(|iface| dhcpfix::netdev::ifindex(iface).is_none())
            .cloned()
    })?;
    if let Some(iface) = missing {
        bail!("interface {iface:?} not found in {netns}; nothing was attached");
    }
    let pins = PinDir::prepare(pin_dir)?;
    let mut added = Vec::new();
    for iface in &args.interfaces {
        match attach::attach(&pins, &netns, iface, &opts) {
            Ok(Attached::New(method)) => {
                println!(
                    "{iface}: attached ({method}, {}, ports {})",
                    opts.mode,
                    ports(&opts.ports)
                );
                added.push(iface);
            }
            Ok(Attached::Existing(method)) => {
                println!(
                    "{iface}: already attached ({method}), now {}, ports {}",
                    opts.mode,
                    ports(&opts.ports)
                );
            }
            Err(e) => {
                // Undo what this command attached so far.
                for done in added {
                    let _ = attach::detach(&pins, &netns, done, LOCK_TIMEOUT);
                }
                bail!("{e}");
            }
        }
    }
    Ok(())
}

fn ports(ports: &[u16]) -> String {
    ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}
