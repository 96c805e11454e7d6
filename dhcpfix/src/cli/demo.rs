//! `dhcpfix demo`: the lab, before and after.

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("demo: not yet")
}
