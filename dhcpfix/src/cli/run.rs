//! `dhcpfix run --iface PATTERN...`: the host agent.

use std::path::{Path, PathBuf};

use dhcpfix::{
    agent::{
        self,
        config::{FileConfig, MetricsAddr, Overrides, Settings},
    },
    attach::{Method, Mode},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Attach to interfaces whose name matches this shell glob, now and as
    /// they appear (repeatable): 'vnet*' (libvirt), 'tap*' (Proxmox, OpenStack).
    #[arg(long = "iface", value_name = "PATTERN")]
    pub interfaces: Vec<String>,
    /// Read settings from this TOML file (interfaces, metrics_addr, mode,
    /// ports, method, detach_on_exit, netns, guest_metrics); flags given
    /// here win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics, or "none"
    /// [default: 127.0.0.1:9788].
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<MetricsAddr>,
    /// What to do on the interfaces [default: fill].
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Same as --mode audit: only count what would be filled.
    #[arg(long, conflicts_with = "mode")]
    pub audit: bool,
    /// UDP destination ports to act on, at most 4 [default: 68,67,546,547].
    #[arg(long, value_delimiter = ',')]
    pub ports: Option<Vec<u16>>,
    /// How to hook into interfaces [default: auto].
    #[arg(long, value_enum)]
    pub method: Option<Method>,
    /// On SIGTERM/SIGINT, detach from the interfaces this agent covers
    /// (by default attachments stay, so guests stay covered while it
    /// restarts).
    #[arg(long)]
    pub detach_on_exit: bool,
    /// Seconds between full passes over all interfaces, a backstop for
    /// link events the kernel could not deliver.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub resync: Option<u64>,
    /// Also cover the network namespaces whose name (under /run/netns)
    /// matches this glob (repeatable), or `all`: every namespace, named or
    /// only held by a process, as they come and go. KubeVirt pods: see
    /// docs/kubevirt.md.
    #[arg(long, value_name = "all|PATTERN")]
    pub netns: Vec<String>,
    /// Leave out the per-guest series (mac label) on /metrics, for hosts
    /// with very many guests; the per-interface guest counts stay.
    #[arg(long)]
    pub no_guest_metrics: bool,
    #[command(flatten)]
    pub layout: super::layout_args::LayoutArgs,
}

pub fn run(pin_dir: &Path, args: Args) -> anyhow::Result<()> {
    let layout = args.layout.source();
    let overrides = Overrides {
        interfaces: args.interfaces,
        metrics_addr: args.metrics_addr,
        mode: if args.audit { Some(Mode::Audit) } else { args.mode },
        ports: args.ports,
        method: args.method,
        detach_on_exit: args.detach_on_exit,
        layout,
        resync: args.resync.map(std::time::Duration::from_secs),
        netns: args.netns,
        no_guest_metrics: args.no_guest_metrics,
    };
    let file = match &args.config {
        Some(path) => Some((path.as_path(), FileConfig::load(path)?)),
        None => None,
    };
    let settings = Settings::resolve(overrides, file)?;
    agent::run(pin_dir.to_path_buf(), settings)?;
    Ok(())
}
