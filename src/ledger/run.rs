//! What `run` adds to the ledger from outside the receiver: requests each pid served, the
//! expected counts, how the server stopped, and each child that came and went.

use serde::{Deserialize, Serialize};

use super::*;

/// Requests one pid was seen serving (the server side of the connection was held by it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    pub requests: u64,
    /// Unix milliseconds when the first and the last served response was fully read: whatever
    /// the request recorded was recorded by then.
    pub first_ms: u64,
    pub last_ms: u64,
}

/// `--expect-count METRIC[=N|served]`: what a counter's total across every pid should be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountExpectation {
    /// The metric's name (a sum's total, or a histogram's or summary's count).
    pub metric: String,
    pub expected: ExpectedCount,
}

/// The total a counter should reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedCount {
    /// A number given on the command line.
    Exactly(Num),
    /// The requests the server answered (`run`): filled in by `run` once they were sent.
    Served(Option<u64>),
}

/// How a launched server was stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopRecord {
    /// The pid that got SIGTERM (the master).
    pub master: i32,
    /// Unix milliseconds when SIGTERM was sent.
    pub requested_ms: u64,
    /// True when every process left within the grace period; false when the group was SIGKILLed.
    pub graceful: bool,
    /// How long the stop took, milliseconds.
    pub waited_ms: u64,
    /// What the server itself said about killing workers (e.g. gunicorn's
    /// `Worker (pid:N) was sent SIGKILL!`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Set when the command ended by itself (a batch program) and `run` sent no SIGTERM: how
    /// it ended ("exit status 0"); `requested_ms` is then when its exit was seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
}

/// One child of the master as `run` tracked it (polled about every 50 ms): children that come
/// and go (Celery `--max-tasks-per-child`, `Pool(maxtasksperchild=...)`, batch pools, RQ's work
/// horses) are judged one by one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildRecord {
    pub pid: i32,
    /// Process start, Unix milliseconds.
    pub started_ms: u64,
    /// When `run` first and last saw it alive, Unix milliseconds.
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// CPU time (user + system) at its idle baseline (the first time it stood still, else when
    /// first seen), and the growth beyond it until the stop was requested (or until it left,
    /// when that came first), milliseconds.
    pub cpu_first_ms: u64,
    pub cpu_grown_ms: u64,
    /// CPU growth since it was first seen (until the stop was requested or it left).
    #[serde(default)]
    pub cpu_since_seen_ms: u64,
    /// When it was seen gone (or a zombie), Unix milliseconds; None while it was alive at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exited_ms: Option<u64>,
    /// Its exit status, when read from the zombie before its parent reaped it (0: a clean exit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    /// Killed by this signal, when read from the zombie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_signal: Option<i32>,
    /// True when it left before the stop was requested (recycled or finished), while its
    /// parent lived on.
    #[serde(default)]
    pub left_before_stop: bool,
    /// Left before the stop while its parent lived on for a second at least (not the end of a
    /// batch program): recycled.
    #[serde(default)]
    pub recycled: bool,
    /// Counted as active: CPU grown beyond its idle baseline by the threshold, or recycled
    /// after CPU grown since first seen by the threshold.
    #[serde(default)]
    pub worked: bool,
    /// Forked for one job (an RQ work horse): its whole life is the job, so its baseline is
    /// its CPU time when first seen.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_job: bool,
}
