//! `--netns NAME|PATH|pid:PID`, shared by the commands that act on
//! interfaces (`attach`, `detach`) and those that show them (`status`,
//! `stats`, `watch`, `clean`).

use dhcpfix::netns::{self, Netns, NetnsSpec};

#[derive(Debug, Clone, clap::Args)]
pub struct NetnsArg {
    /// The network namespace: NAME (a file under /run/netns), an nsfs PATH
    /// (/proc/PID/ns/net, a bind mount), or pid:PID. Commands that change
    /// interfaces default to their own namespace; commands that show them,
    /// to every namespace.
    #[arg(long, value_name = "NAME|PATH|pid:PID")]
    pub netns: Option<NetnsSpec>,
}

impl NetnsArg {
    /// The namespace to act in: the one given, or this process's own.
    pub fn target(&self) -> anyhow::Result<Netns> {
        Ok(match &self.netns {
            Some(spec) => Netns::open(spec)?,
            None => Netns::current()?,
        })
    }

    /// The namespaces to show: the one given, or every one this process can
    /// see (those under /run/netns and those held by processes), and the
    /// cookie to keep (`None`: all).
    pub fn scope(&self) -> anyhow::Result<(Vec<Netns>, Option<u64>)> {
        Ok(match &self.netns {
            Some(spec) => {
                let ns = Netns::open(spec)?;
                let cookie = ns.cookie();
                (vec![ns], Some(cookie))
            }
            None => (netns::scan(true), None),
        })
    }
}
