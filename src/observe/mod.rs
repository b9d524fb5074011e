//! Gathers facts about a live process tree from /proc and interpreter memory. Judges nothing.
//!
//! Never pauses or writes to the target: /proc reads and non-blocking py-spy reads only.

use std::time::Duration;

use crate::snapshot::Snapshot;

/// What to observe and for how long.
#[derive(Debug, Clone)]
pub struct Options {
    pub pid: i32,
    /// Time between the first and the second sample; zero takes one sample.
    pub window: Duration,
    /// Read Python thread names from interpreter memory.
    pub python_names: bool,
}

/// Why a tree could not be observed at all (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("no process with pid {0}")]
    NoSuchPid(i32),
    #[error("permission denied reading /proc/{pid} ({what})")]
    PermissionDenied { pid: i32, what: String },
    #[error("{0}")]
    Other(String),
}

impl ObserveError {
    /// What the user can do about it, one line.
    pub fn hint(&self) -> &'static str {
        match self {
            ObserveError::NoSuchPid(_) => {
                "check the pid (for gunicorn: cat the --pid file, or `pgrep -o -f gunicorn`)"
            }
            ObserveError::PermissionDenied { .. } => {
                "run as the same user as the target, as root, or with CAP_SYS_PTRACE"
            }
            ObserveError::Other(_) => "",
        }
    }
}

/// Observe the tree rooted at `opts.pid`.
pub fn observe(opts: &Options) -> Result<Snapshot, ObserveError> {
    let _ = opts;
    Err(ObserveError::Other("observe is not built yet".into()))
}
