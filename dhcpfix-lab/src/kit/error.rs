//! The kit's one error type.

use std::{io, path::PathBuf, time::Duration};

/// What can go wrong in the kit. Messages are one line: what failed, why
/// (the system's error, in the message; no separate source, so a chain
/// does not print it twice), and where useful what to do.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    #[error("{tool} not found: install {package} (cargo xtask setup does this)")]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
    },
    #[error("cannot run {program}: {error}")]
    Spawn { program: String, error: io::Error },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("`{command}` did not finish within {limit:?} and was killed")]
    Timeout { command: String, limit: Duration },
    #[error("{op} {path}: {error}")]
    Io {
        op: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("{op}: {error}")]
    Sys { op: &'static str, error: io::Error },
    #[error("removing {what} incomplete: {details}; once this process exits, the next sandbox of its kind (or `ip netns del`) removes the rest")]
    Teardown { what: String, details: String },
}

impl KitError {
    /// `map_err` adapter for a failed operation on a path.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |error| Self::Io { op, path, error }
    }

    /// `map_err` adapter for a failed system call.
    pub fn sys(op: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |error| Self::Sys { op, error }
    }
}
