//! Everything the bench creates outside its own memory is one kit sandbox
//! (`dhcpfix_lab::kit::sandbox`): network namespaces named
//! `dfb-<pid>-<n>-<tag><m>` and a work directory
//! `/run/dhcpfix-bench/dfb-<pid>-<n>` with a bpffs at `bpf/` that holds
//! every pin directory.
//!
//! All of it goes away when its owner is dropped, on SIGINT/SIGTERM (the
//! kit's signal thread removes whatever is live, then the process dies of
//! the signal), and for a run that was SIGKILLed, at the start of the next
//! run.

use std::path::PathBuf;

pub use dhcpfix_lab::kit::Netns;
use dhcpfix_lab::kit::{self, find_tool, is_root, mount_bpffs, Place};

use crate::error::{BenchError, Result};

/// Parent of the per-run directories (one per bench process).
pub const RUN_DIR: &str = "/run/dhcpfix-bench";
/// Where the bench's sandboxes live.
pub const PLACE: Place = Place {
    prefix: "dfb",
    run_dir: RUN_DIR,
    mode: 0o700,
};

/// The bench's own corner of the machine.
pub struct Sandbox {
    inner: kit::Sandbox,
    bpf: PathBuf,
}

impl Sandbox {
    /// Checks privileges and tools, removes leftovers of dead runs, installs
    /// the signal cleanup and mounts the bench's bpffs.
    pub fn create() -> Result<Sandbox> {
        if !is_root() {
            return Err(BenchError::NotRoot);
        }
        find_tool("ip", "iproute2")?;
        let inner = kit::Sandbox::create(&PLACE)?;
        let bpf = inner.dir().join("bpf");
        mount_bpffs(&bpf, 0o700)?;
        Ok(Sandbox { inner, bpf })
    }

    /// A new, empty network namespace with loopback up.
    pub fn netns(&self, tag: &str) -> Result<Netns> {
        Ok(self.inner.netns(&self.inner.unique(tag))?)
    }

    /// A file in the bench's run directory (logs of children).
    pub fn file(&self, name: &str) -> PathBuf {
        self.inner.dir().join(name)
    }

    /// A fresh pin directory path on the bench's bpffs (dhcpfix creates it).
    pub fn pin_dir(&self, tag: &str) -> PathBuf {
        self.bpf.join(self.inner.unique(tag))
    }
}
