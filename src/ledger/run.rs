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

/// An OTLP endpoint variable `run` set for the server it started: FC214 compares each
/// process's environment with them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSet {
    pub var: String,
    pub value: String,
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
    /// `Worker (pid:N) was sent SIGKILL!`), and the SDK's `Overriding of current ... Provider is
    /// not allowed` warnings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Set when the command ended by itself (a batch program) and `run` sent no SIGTERM: how
    /// it ended ("exit status 0"); `requested_ms` is then when its exit was seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    /// Each worker alive when SIGTERM was sent: how long it took to leave and how it ended
    /// (FC210).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exits: Vec<WorkerExit>,
}

/// How one worker left after the graceful stop was requested.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerExit {
    pub pid: i32,
    /// From SIGTERM to the master until it was seen gone (polled about every 50 ms).
    pub after_ms: u64,
    /// Its exit status, when read from the zombie before it was reaped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    /// The signal that killed it, when read from the zombie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_signal: Option<i32>,
    /// Still alive when `run` SIGKILLed the group after `--grace`.
    #[serde(default)]
    pub killed_by_run: bool,
}

impl WorkerExit {
    /// SIGKILLed, by the server or by `run`.
    pub fn killed(&self) -> bool {
        self.killed_by_run || self.exit_signal == Some(9)
    }

    /// "exit status 0", "killed by signal 9", ...
    pub fn how(&self) -> String {
        match (self.killed_by_run, self.exit_status, self.exit_signal) {
            (true, _, _) => "still running when run SIGKILLed the group after --grace".into(),
            (_, Some(s), _) => format!("exit status {s}"),
            (_, None, Some(9)) => "killed by SIGKILL".into(),
            (_, None, Some(sig)) => format!("killed by signal {sig}"),
            _ => "exit status not seen (reaped between two polls)".into(),
        }
    }
}

/// The exits of the children alive at a graceful stop (`stop.requested_ms`); none for a
/// command that ended by itself.
pub fn worker_exits(children: &[ChildRecord], stop: &StopRecord) -> Vec<WorkerExit> {
    if stop.ended.is_some() {
        return Vec::new();
    }
    let killed_at = stop.requested_ms + stop.waited_ms;
    children
        .iter()
        .filter(|c| c.pid != stop.master && !c.left_before_stop)
        .filter(|c| c.exited_ms.is_none_or(|e| e >= stop.requested_ms))
        .map(|c| {
            let gone = c.exited_ms.unwrap_or(killed_at);
            // Seen gone at or after the SIGKILL (one poll of slack): it was still there.
            let killed_by_run = !stop.graceful && gone + 60 >= killed_at;
            WorkerExit {
                pid: c.pid,
                after_ms: gone.saturating_sub(stop.requested_ms),
                exit_status: c.exit_status,
                exit_signal: c.exit_signal,
                killed_by_run,
            }
        })
        .collect()
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
