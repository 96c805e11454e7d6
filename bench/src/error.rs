//! The one error type of the benchmark. Messages are one line: what failed,
//! and where useful what to do.

use std::{io, path::PathBuf, time::Duration};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("the benchmark needs root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN): re-run as root")]
    NotRoot,
    #[error("{tool} not found: install {package} (cargo xtask setup does this)")]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
    },
    #[error("dhcpfix binary {0} not found: build it (cargo xtask build) or pass --dhcpfix PATH")]
    NoBinary(PathBuf),
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("`{command}` did not finish within {limit:?} and was killed")]
    Timeout { command: String, limit: Duration },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{op}: {source}")]
    Sys { op: &'static str, source: io::Error },
    #[error("{0}")]
    TestRun(#[from] dhcpfix::testrun::TestRunError),
    #[error("{what}: unexpected output: {detail}")]
    Parse { what: String, detail: String },
    #[error("measurement invalid: {0}")]
    Check(String),
    #[error("drawing the chart {path}: {detail}")]
    Chart { path: PathBuf, detail: String },
}

impl BenchError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }

    pub(crate) fn sys(op: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |source| Self::Sys { op, source }
    }
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;
