//! What the interpreter of a process told (or why it told nothing).

use serde::{Deserialize, Serialize};

/// `names_error` of a process whose names were not read because `--no-python-names` said so.
pub const NAMES_NOT_REQUESTED: &str = "not requested";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PythonFacts {
    /// True when thread names were read from interpreter memory.
    pub names_read: bool,
    /// Known not to be Python: its executable and memory map were read, and neither is
    /// Python's (no python executable, no libpython mapped).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub not_python: bool,
    /// Why not, when they were not.
    #[serde(default)]
    pub names_error: Option<String>,
    /// Its interpreter was exiting when read (`threading._SHUTTING_DOWN`, Python 3.9-3.13):
    /// the main thread had ended, and the atexit handlers (the SDK's shutdown, which ends its
    /// threads one by one as each flushes) run until the process is gone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exiting: bool,
    /// Python version, e.g. `3.11.7`.
    #[serde(default)]
    pub version: Option<String>,
    /// site-packages directory the interpreter uses, when found.
    #[serde(default)]
    pub site_packages: Option<String>,
    /// opentelemetry-sdk version found there.
    #[serde(default)]
    pub sdk_version: Option<String>,
    /// Which OTLP exporter packages are installed there (`http`, `grpc`).
    #[serde(default)]
    pub exporters: Vec<String>,
    /// Python threads the interpreter lists whose OS thread does not exist in this process:
    /// the parent's threads as copied by fork (docs/failure-modes.md#ghost-threads).
    #[serde(default)]
    pub ghost_threads: Vec<GhostThread>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GhostThread {
    pub name: String,
    /// The OS thread id the interpreter recorded for it: an id in the process's own pid
    /// namespace (see [`super::Thread::ns_tid`]), which no thread of the process has.
    pub os_tid: i64,
}
