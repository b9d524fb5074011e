//! otel-forkcheck: finds why OpenTelemetry telemetry from pre-fork Python servers is missing,
//! doubled or mixed up.
//!
//! The flow is observe -> diagnose -> report: `observe` reads /proc (and Python memory) into a
//! [`snapshot::Snapshot`], `diagnose` runs one pure rule per finding code over it, `report`
//! prints. `receive` and `run` build on the same pieces.

pub mod cli;
pub mod diagnose;
pub mod error;
pub mod ledger;
pub mod observe;
pub mod otlp;
pub mod out;
pub mod proc;
pub mod receive;
pub mod report;
pub mod run;
pub mod snapshot;
