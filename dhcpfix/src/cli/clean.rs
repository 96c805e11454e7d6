//! `dhcpfix clean [--all]`

use std::path::Path;

use dhcpfix::{agent::cleanup, bpffs::PinDir};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Detach from every interface and remove every pin (links, maps,
    /// program), leaving the pin directory empty. Stop `dhcpfix run` first,
    /// or it attaches again.
    #[arg(long)]
    pub all: bool,
}

pub fn run(pin_dir: &Path, args: Args) -> anyhow::Result<()> {
    let pins = PinDir::new(pin_dir);
    if !pins.is_ready() {
        println!(
            "nothing to clean: {} is not a dhcpfix pin directory",
            pin_dir.display()
        );
        return Ok(());
    }
    if args.all {
        let removed = cleanup::remove_everything(&pins)?;
        for name in &removed.detached {
            println!("{name}: detached");
        }
        for pin in &removed.pins {
            println!("removed {pin}");
        }
        println!("{} holds no dhcpfix pins any more", pin_dir.display());
        return Ok(());
    }
    let cleaned = cleanup::remove_dead(&pins)?;
    for name in &cleaned.dead_pins {
        println!("{name}: the interface is gone; removed its pin");
    }
    if cleaned.stale_entries > 0 {
        println!(
            "removed {} configuration and counters entries of interfaces without attachment",
            cleaned.stale_entries
        );
    }
    if cleaned.dead_pins.is_empty() && cleaned.stale_entries == 0 {
        println!("nothing to clean");
    }
    Ok(())
}
