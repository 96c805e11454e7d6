//! The one error type of the benchmark. Messages are one line: what failed,
//! and where useful what to do.

use std::{io, path::PathBuf};

use dhcpfix_lab::kit::KitError;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("the benchmark needs root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN): re-run as root")]
    NotRoot,
    /// Running programs, namespaces, mounts, system calls (the kit's).
    #[error(transparent)]
    Kit(#[from] KitError),
    #[error("dhcpfix binary {0} not found: build it (cargo xtask build) or pass --dhcpfix PATH")]
    NoBinary(PathBuf),
    #[error(transparent)]
    TestRun(#[from] dhcpfix::testrun::TestRunError),
    #[error("{what}: unexpected output: {detail}")]
    Parse { what: String, detail: String },
    #[error("measurement invalid: {0}")]
    Check(String),
    #[error("drawing the chart {path}: {detail}")]
    Chart { path: PathBuf, detail: String },
}

impl BenchError {
    /// `map_err` adapter for a failed operation on a path.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let kit = KitError::io(op, path);
        move |source| Self::Kit(kit(source))
    }

    /// `map_err` adapter for a failed system call.
    pub(crate) fn sys(op: &'static str) -> impl FnOnce(io::Error) -> Self {
        let kit = KitError::sys(op);
        move |source| Self::Kit(kit(source))
    }
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;
