//! `dhcpfix run`: a host agent that keeps dhcpfix attached to every guest
//! tap matching its patterns, as guests come and go.
//!
//! - At start it loads the program (once per pin directory), then
//!   reconciles with the pins: keeps live attachments (and their counters),
//!   removes pins of deleted interfaces, attaches to new ones.
//! - It follows rtnetlink link events and attaches to a new interface as
//!   soon as it appears; it removes the pin of a deleted one. A full pass
//!   runs again when the kernel reports lost events, and periodically.
//! - It logs each fill from the classifier's event ring buffer, and serves
//!   Prometheus metrics.
//! - On SIGTERM/SIGINT it exits and leaves the attachments in place, so
//!   guests stay covered while it restarts (`--detach-on-exit` removes them).

pub mod cleanup;
pub mod config;
pub mod events;
pub mod pattern;
pub mod reconcile;

use std::{
    io::{self, Read},
    os::{
        fd::{AsFd, AsRawFd},
        unix::net::UnixStream,
    },
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::{
    attach::{AttachError, Method},
    bpffs::{BpffsError, PinDir},
    metrics::{self, MetricsError},
    netdev::{
        self,
        caps::{self, CapsError, Operation},
        LinkEvent, LinkMonitor, NetlinkError,
    },
    program::{self, LoadError},
};
use config::{MetricsAddr, Settings};
use events::EventStream;
use reconcile::Reconciler;

/// Errors of the agent and of `clean`. One line each.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no interface patterns: pass --iface PATTERN (e.g. --iface 'vnet*') or set interfaces in the config file")]
    NoPatterns,
    #[error("interface pattern {pattern:?}: {reason}")]
    BadPattern { pattern: String, reason: String },
    #[error("reading config file {path}: {source}")]
    ConfigRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("config file {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{0}")]
    Settings(String),
    #[error(transparent)]
    Capabilities(#[from] CapsError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("{op}: {source}")]
    Sys {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("renaming pin {path}: {source}")]
    Rename {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("removing {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pin directory {path} is no longer on a bpffs (unmounted?), so the attachments pinned there are gone, and mounting a new one failed: {source}")]
    PinDirLost {
        path: PathBuf,
        #[source]
        source: Box<BpffsError>,
    },
    // Boxed: these are large, and every agent function returns this type.
    #[error(transparent)]
    Bpffs(Box<BpffsError>),
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
    Bpffs(BpffsError),
    Load(LoadError),
    Attach(AttachError),
    Metrics(MetricsError)
);

/// SIGTERM and SIGINT, as bytes on a non-blocking socket pair.
struct Signals {
    rx: UnixStream,
}

impl Signals {
    fn install() -> Result<Self, AgentError> {
        let sys_err = |op| move |source| AgentError::Sys { op, source };
        let (rx, tx) = UnixStream::pair().map_err(sys_err("socketpair(2)"))?;
        rx.set_nonblocking(true).map_err(sys_err("fcntl(O_NONBLOCK)"))?;
        tx.set_nonblocking(true).map_err(sys_err("fcntl(O_NONBLOCK)"))?;
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            let tx = tx.try_clone().map_err(sys_err("dup(2)"))?;
            signal_hook::low_level::pipe::register(sig, tx).map_err(sys_err("sigaction(2)"))?;
        }
        Ok(Self { rx })
    }

    /// Whether a signal arrived (consumes the notification).
    fn received(&mut self) -> bool {
        let mut buf = [0u8; 16];
        matches!(self.rx.read(&mut buf), Ok(n) if n > 0)
    }
}

/// Waits until one of `fds` is readable or `timeout` passes; returns which
/// are readable.
fn wait(fds: &[Option<std::os::fd::BorrowedFd<'_>>], timeout: Duration) -> Result<Vec<bool>, AgentError> {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            // A negative fd is ignored by poll(2).
            fd: fd.map_or(-1, |f| f.as_raw_fd()),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `polls` is a valid array of `polls.len()` pollfd structs that
    // outlives the call; the fds are borrowed for its duration.
    let n = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![false; fds.len()]);
        }
        return Err(AgentError::Sys {
            op: "poll(2)",
            source: e,
        });
    }
    Ok(polls.iter().map(|p| p.revents != 0).collect())
}

/// The bpffs under the pin directory was unmounted (by hand, by a
/// careless clean-up): every link pinned there went with it and the guests
/// are unprotected. Mount a new one and load the program again (the next
/// full pass attaches every interface), or fail with one line so that the
/// service manager shows it (under systemd, without CAP_SYS_ADMIN).
fn recover_pin_dir(pins: &PinDir, layout: &crate::program::LayoutSource) -> Result<(), AgentError> {
    log::warn!(
        "pin directory {} is no longer on a bpffs (unmounted?): the attachments pinned there are gone; mounting a new one and attaching again",
        pins.root().display()
    );
    PinDir::prepare(pins.root()).map_err(|source| AgentError::PinDirLost {
        path: pins.root().to_path_buf(),
        source: Box::new(source),
    })?;
    let _lock = pins.lock()?;
    program::load_or_open(pins, layout)?;
    Ok(())
}

fn full_pass(reconciler: &mut Reconciler) -> Result<(), AgentError> {
    let links = netdev::links()?;
    reconciler.full(&links)
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(pin_dir: PathBuf, settings: Settings) -> Result<(), AgentError> {
    caps::require(&[
        Operation::Load,
        Operation::attach(settings.attach.method == Method::Netlink),
    ])?;
    let mut signals = Signals::install()?;
    // Bind first: a port in use should stop the agent before it changes
    // anything.
    let _metrics = match settings.metrics_addr {
        MetricsAddr::On(addr) => Some(metrics::serve(addr, PinDir::new(&pin_dir))?),
        MetricsAddr::Off => None,
    };
    let pins = PinDir::prepare(pin_dir)?;
    // Subscribe before the first full pass, so no interface slips between.
    let mut monitor = LinkMonitor::open()?;
    {
        // Load now, so that attaching to a new interface takes a link only.
        let _lock = pins.lock()?;
        program::load_or_open(&pins, &settings.attach.layout)?;
    }
    let mut events = match EventStream::open(&pins) {
        Ok(e) => Some(e),
        Err(e) => {
            log::warn!(
                "no fill events ({e}); the pinned program predates them: `dhcpfix clean --all` while the agent is stopped replaces it"
            );
            None
        }
    };
    let mut reconciler = Reconciler::new(pins.clone(), settings.patterns.clone(), settings.attach.clone());
    full_pass(&mut reconciler)?;
    log::info!(
        "dhcpfix {} running: interfaces {}, {} mode, ports {}, pin directory {}, metrics {}",
        env!("CARGO_PKG_VERSION"),
        settings.patterns,
        settings.attach.mode,
        settings
            .attach
            .ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(","),
        pins.root().display(),
        match settings.metrics_addr {
            MetricsAddr::On(a) => format!("http://{a}/metrics"),
            MetricsAddr::Off => "off".into(),
        }
    );

    let mut next_pass = Instant::now() + settings.resync;
    loop {
        let timeout = next_pass.saturating_duration_since(Instant::now());
        let ready = wait(
            &[
                Some(signals.rx.as_fd()),
                Some(monitor.as_fd()),
                events.as_ref().map(AsFd::as_fd),
            ],
            timeout,
        )?;
        if ready[0] && signals.received() {
            break;
        }
        if !pins.is_ready() {
            recover_pin_dir(&pins, &settings.attach.layout)?;
            events = EventStream::open(&pins).ok();
            next_pass = Instant::now();
        }
        if ready[1] {
            let mut lost = false;
            for event in monitor.drain()? {
                match event {
                    LinkEvent::Changed(link) => reconciler.changed(&link),
                    LinkEvent::Deleted(link) => reconciler.deleted(&link),
                    LinkEvent::Lost => lost = true,
                }
            }
            if lost {
                log::warn!("the kernel dropped link events; re-reading every interface");
                next_pass = Instant::now();
            }
        }
        if let Some(stream) = events.as_mut().filter(|_| ready[2]) {
            stream.drain(|ifindex| {
                reconciler
                    .name_of(ifindex)
                    .map(str::to_owned)
                    .or_else(|| netdev::ifname(ifindex))
                    .unwrap_or_else(|| format!("if{ifindex}"))
            });
        }
        if Instant::now() >= next_pass {
            if let Err(e) = full_pass(&mut reconciler) {
                log::error!("{e}");
            }
            if !events.as_ref().is_some_and(|e| e.is_current(&pins)) {
                // The program was removed and loaded again: follow it.
                events = EventStream::open(&pins).ok();
            }
            next_pass = Instant::now() + settings.resync;
        }
    }

    if let Some(stream) = events.as_mut() {
        stream.drain(|ifindex| netdev::ifname(ifindex).unwrap_or_else(|| format!("if{ifindex}")));
    }
    if settings.detach_on_exit {
        log::info!("stopping: detaching (--detach-on-exit)");
        reconciler.detach_all();
    } else {
        log::info!(
            "stopping: {} attachment(s) stay in place; guests remain covered",
            reconciler.managed().len()
        );
    }
    Ok(())
}
