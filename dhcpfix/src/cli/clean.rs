//! `dhcpfix clean [--all] [--netns NS]`

use std::path::Path;

use super::netns_arg::NetnsArg;
use dhcpfix::{
    attach,
    pins::{PinDir, LOCK_TIMEOUT},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Detach from every interface and remove every pin (links, maps,
    /// program), leaving the pin directory empty. Stop `dhcpfix run` first,
    /// or it attaches again.
    #[arg(long)]
    pub all: bool,
    /// Without --all: only what interfaces of this network namespace left.
    #[command(flatten)]
    pub netns: NetnsArg,
}

pub fn run(pin_dir: &Path, args: Args) -> anyhow::Result<()> {
    let Some(pins) = PinDir::open(pin_dir)? else {
        println!(
            "nothing to clean: {} is not a dhcpfix pin directory",
            pin_dir.display()
        );
        return Ok(());
    };
    let (namespaces, only) = args.netns.scope()?;
    if args.all {
        if only.is_some() {
            anyhow::bail!("--all removes the program and every pin, in every namespace; leave out --netns");
        }
        let (detached, removed) = attach::remove_everything(&pins, &namespaces, LOCK_TIMEOUT)?;
        for a in &detached {
            println!("{}: detached", a.name);
        }
        for pin in &removed {
            println!("removed {pin}");
        }
        println!("{} holds no dhcpfix pins any more", pin_dir.display());
        return Ok(());
    }
    let removed = attach::remove_dead(&pins, &namespaces, only, LOCK_TIMEOUT)?;
    for gone in &removed {
        if gone.had_link {
            println!("{}: the interface is gone; removed its pin", gone.name);
        } else {
            println!(
                "removed the configuration and counters of {} (ifindex {}), which had no attachment",
                if gone.name.is_empty() {
                    "an interface"
                } else {
                    gone.name.as_str()
                },
                gone.key.ifindex
            );
        }
    }
    if removed.is_empty() {
        println!("nothing to clean");
    }
    Ok(())
}
