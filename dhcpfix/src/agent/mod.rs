//! `dhcpfix run`: a host agent that keeps dhcpfix attached to every guest
//! tap matching its patterns, in its own network namespace and (with
//! `--netns`) in every other, as guests and pods come and go.
//!
//! - At start it loads the program (once per pin directory), then
//!   reconciles with the pins: keeps live attachments (and their counters),
//!   removes what deleted interfaces left, attaches to new ones.
//! - It follows link events of every namespace through one netlink socket
//!   ([`crate::netdev::LinkMonitor`]) and attaches to a new interface as soon as it appears;
//!   namespaces are found as they appear ([`namespaces`]) and forgotten with
//!   everything of theirs when the kernel reports them gone. A full pass
//!   runs again when the kernel reports lost events, and periodically.
//! - It logs fills from the classifier's ring buffer ([`events`]), warns
//!   when a guest starts throwing DHCP replies away or is about to lose its
//!   lease ([`guests`]), and serves metrics and health probes ([`http`]).
//! - On SIGTERM/SIGINT it exits and leaves the attachments in place, so
//!   guests stay covered while it restarts (`--detach-on-exit` removes them).
//!
//! Everything waits on one tokio runtime; the work each event causes
//! (attaching: a few milliseconds of bpf(2)) runs in place.

pub mod config;
pub mod events;
pub mod guests;
pub mod http;
pub mod namespaces;
pub mod pattern;
pub mod reconcile;
mod supervisor;

use std::{io, path::PathBuf};

use crate::{
    attach::AttachError,
    metrics::MetricsError,
    netdev::{
        caps::{self, CapsError, Operation},
        NetlinkError,
    },
    netns::NetnsError,
    pins::PinsError,
    program::LoadError,
};
pub use config::Settings;

/// Errors of the agent and of `clean`. One line each.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no interface patterns: pass --iface PATTERN (e.g. --iface 'vnet*') or set interfaces in the config file")]
    NoPatterns,
    #[error("interface pattern {pattern:?}: {reason}")]
    BadPattern { pattern: String, reason: String },
    #[error("reading config file {path}: {source}")]
    ConfigRead { path: PathBuf, source: io::Error },
    #[error("config file {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{0}")]
    Settings(String),
    #[error(transparent)]
    Capabilities(#[from] CapsError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("serving metrics on {addr}: {source}; pass another --metrics-addr, or --metrics-addr none")]
    Bind {
        addr: std::net::SocketAddr,
        source: io::Error,
    },
    #[error("{op}: {source}")]
    Sys { op: &'static str, source: io::Error },
    #[error("pin directory {path} is no longer on a bpffs (unmounted?), so the attachments pinned there are gone, and mounting a new one failed: {source}")]
    PinDirLost { path: PathBuf, source: Box<PinsError> },
    // Boxed: these are large, and every agent function returns this type.
    #[error(transparent)]
    Pins(Box<PinsError>),
    #[error(transparent)]
    Netns(Box<NetnsError>),
    #[error(transparent)]
    Load(Box<LoadError>),
    #[error(transparent)]
    Attach(Box<AttachError>),
    #[error(transparent)]
    Metrics(Box<MetricsError>),
}

macro_rules! boxed_from {
    ($($variant:ident($error:ty)),*) => {$(
        impl From<$error> for AgentError {
            fn from(e: $error) -> Self {
                Self::$variant(Box::new(e))
            }
        }
    )*};
}
boxed_from!(
    Pins(PinsError),
    Netns(NetnsError),
    Load(LoadError),
    Attach(AttachError),
    Metrics(MetricsError)
);

/// Raises the soft limit on open files to the hard one (the HTTP endpoint
/// bounds its own connections; the rest of the agent needs few).
fn raise_nofile_limit() {
    // SAFETY: a zeroed rlimit is a valid out-parameter.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is writable.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 && lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` holds the limits to set.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(pin_dir: PathBuf, settings: Settings) -> Result<(), AgentError> {
    let mut needs = vec![
        Operation::Load,
        Operation::attach(settings.attach.method == crate::attach::Method::Netlink),
    ];
    if !matches!(settings.netns, namespaces::Select::Own) {
        needs.push(Operation::OtherNamespaces);
    }
    caps::require(&needs)?;
    raise_nofile_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("dhcpfix")
        .enable_all()
        .build()
        .map_err(|source| AgentError::Sys {
            op: "starting the tokio runtime",
            source,
        })?;
    runtime.block_on(supervisor::run(pin_dir, settings))
}
