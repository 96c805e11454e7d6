//! The `dhcpfix` binary under test, run as an operator or a libvirt hook
//! runs it: a cold process per command, inside a bench namespace, with a
//! pin directory on the bench's bpffs.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use dhcpfix_lab::kit::process;
use serde::Deserialize;

use crate::{
    error::{BenchError, Result},
    sandbox::Netns,
};

const LIMIT: Duration = Duration::from_secs(120);

#[derive(Clone, Debug)]
pub struct Dhcpfix {
    bin: PathBuf,
}

/// The counters `dhcpfix stats --json` prints for one interface.
pub use dhcpfix_common::counters::Counters;

#[derive(Deserialize)]
struct StatsJson {
    interfaces: Vec<InterfaceJson>,
}

#[derive(Deserialize)]
struct InterfaceJson {
    name: String,
    counters: Counters,
}

impl Dhcpfix {
    pub fn new(bin: impl Into<PathBuf>) -> Result<Dhcpfix> {
        let bin = bin.into();
        if !bin.is_file() {
            return Err(BenchError::NoBinary(bin));
        }
        Ok(Dhcpfix { bin })
    }

    pub fn path(&self) -> &Path {
        &self.bin
    }

    /// `dhcpfix --pin-dir PIN <args>` inside `ns`.
    pub fn command(&self, ns: &Netns, pin_dir: &Path, args: &[&str]) -> Command {
        let mut cmd = ns.command(&self.bin);
        cmd.arg("--pin-dir").arg(pin_dir).args(args);
        cmd
    }

    /// `dhcpfix attach IFACE...`; returns the wall time of the process.
    pub fn attach(&self, ns: &Netns, pin_dir: &Path, ifaces: &[String]) -> Result<Duration> {
        let mut args = vec!["attach"];
        args.extend(ifaces.iter().map(String::as_str));
        let mut cmd = self.command(ns, pin_dir, &args);
        let t0 = Instant::now();
        process::run(&mut cmd, None, LIMIT)?;
        Ok(t0.elapsed())
    }

    /// The counters of `iface` from `dhcpfix stats --json`.
    pub fn counters(&self, ns: &Netns, pin_dir: &Path, iface: &str) -> Result<Counters> {
        let mut cmd = self.command(ns, pin_dir, &["stats", "--json"]);
        let out = process::run(&mut cmd, None, LIMIT)?;
        let stats: StatsJson = serde_json::from_slice(&out.stdout).map_err(|e| BenchError::Parse {
            what: process::shown(&cmd),
            detail: e.to_string(),
        })?;
        stats
            .interfaces
            .into_iter()
            .find(|i| i.name == iface)
            .map(|i| i.counters)
            .ok_or_else(|| BenchError::Parse {
                what: process::shown(&cmd),
                detail: format!("no interface {iface}"),
            })
    }

    /// Whether this build has the agent (`dhcpfix run --help` succeeds).
    pub fn has_agent(&self) -> bool {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["run", "--help"]);
        process::run(&mut cmd, None, Duration::from_secs(10)).is_ok()
    }
}
