//! `run`'s part of the report: what was launched, sent and stopped, and for each worker and
//! expected signal a cell. A cell fails (NO, LOST) only when a finding names that pid and
//! signal ([`Finding::signals`]); the other cells state facts (arrived, idle, nothing arrived,
//! shared connection). So the table, the JUnit file and the exit status cannot disagree.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::diagnose::evidence::shares_collector_connection;
use crate::diagnose::Finding;
use crate::ledger::{ChildRecord, Ledger, PidExports, Signal, StopRecord};
use crate::snapshot::{Role, Snapshot};

/// One variable `run` set for the server, and what it replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvSet {
    pub name: String,
    pub value: String,
    /// The user's value it overrides, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RequestsView {
    pub sent: usize,
    pub answered: usize,
    pub attributed: usize,
    /// Responses by HTTP status ("error" when none came).
    pub statuses: BTreeMap<String, usize>,
    /// The first few request errors.
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    pub command: Vec<String>,
    pub launched_pid: i32,
    pub master: i32,
    pub workers_at_start: Vec<i32>,
    pub signals: Vec<Signal>,
    pub env: Vec<EnvSet>,
    pub targets: Vec<String>,
    pub requests: RequestsView,
    pub workers: Vec<WorkerRow>,
    pub stop: StopRecord,
    pub elapsed_ms: u64,
    /// False when the command opened no port and no --hit was given: no requests were sent.
    pub http: bool,
    /// How the command ended when it ended by itself (a batch program), e.g. "exit status 0".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    /// Its exit code then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The `--drive` commands.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drivers: Vec<DriverView>,
    /// Every child of the master tracked one by one (activity without requests).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<ChildRecord>,
}

/// One `--drive` command: run through `sh -c` in its own process group.
#[derive(Debug, Clone, Serialize)]
pub struct DriverView {
    pub command: String,
    pub pid: i32,
    /// "exit status 0", "killed by SIGTERM"; None when it could not be waited for.
    pub status: Option<String>,
    pub exit_code: Option<i32>,
    /// True when it was still running at the end of the watch and run stopped it.
    pub stopped_by_run: bool,
    pub elapsed_ms: u64,
    /// Its last lines of output.
    pub output: Vec<String>,
}

/// One worker's line: requests it served and a cell per expected signal.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerRow {
    pub pid: i32,
    pub role: Role,
    pub requests_served: u64,
    pub signals: BTreeMap<Signal, Cell>,
}

/// One signal of one worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cell {
    pub status: CellStatus,
    /// Whether anything of this signal arrived from the pid (known or possibly its own).
    pub received: bool,
    pub exports: u64,
    pub items: u64,
    /// The findings that name this pid and signal: a failed cell always has one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CellStatus {
    /// Arrived, and no finding says any of it was lost.
    Received,
    /// A finding says data was lost, though some arrived.
    LastIntervalLost,
    /// A finding says none arrived.
    Missing,
    /// Served no request and nothing arrived: not a failure.
    Idle,
    /// Served requests, nothing arrived, and no rule calls it a failure (for example an
    /// export not due yet while the run could not stop the server gracefully).
    NotReceived,
    /// Its exports may be counted under another holder of its collector connection.
    UnknownSharedConnection,
}

impl Cell {
    pub fn failed(&self) -> bool {
        matches!(
            self.status,
            CellStatus::Missing | CellStatus::LastIntervalLost
        )
    }

    /// What the human table shows.
    pub fn text(&self) -> String {
        let codes = self.findings.join(",");
        match self.status {
            CellStatus::Received => format!("yes ({}/{})", self.exports, self.items),
            CellStatus::LastIntervalLost => {
                format!("LOST {codes} ({}/{})", self.exports, self.items)
            }
            CellStatus::Missing => format!("NO {codes}"),
            CellStatus::Idle => "- (idle)".into(),
            CellStatus::NotReceived => "- (none yet)".into(),
            CellStatus::UnknownSharedConnection => "? (shared conn)".into(),
        }
    }
}

/// The cell of one signal of one pid: failed exactly when a finding names them.
pub fn cell(
    exports: Option<&PidExports>,
    served: u64,
    shared: bool,
    s: Signal,
    findings: &[Finding],
    pid: i32,
) -> Cell {
    let (requests, items) = exports.map_or((0, 0), |p| {
        let (k, q) = (p.signals.get(s), p.possible.get(s));
        (k.requests + q.requests, k.items + q.items)
    });
    let received = requests > 0;
    let named: Vec<String> = findings
        .iter()
        .filter(|f| f.names_signal(pid, s))
        .map(|f| f.code.clone())
        .collect();
    let status = match (named.is_empty(), received) {
        (false, true) => CellStatus::LastIntervalLost,
        (false, false) => CellStatus::Missing,
        (true, true) => CellStatus::Received,
        (true, false) if shared => CellStatus::UnknownSharedConnection,
        (true, false) if served > 0 => CellStatus::NotReceived,
        (true, false) => CellStatus::Idle,
    };
    Cell {
        status,
        received,
        exports: requests,
        items,
        findings: named,
    }
}

/// Workers of the snapshot, those found at start, and any pid that served requests.
pub fn worker_rows(
    snapshot: &Snapshot,
    ledger: &Ledger,
    workers_at_start: &[i32],
    signals: &[Signal],
    findings: &[Finding],
) -> Vec<WorkerRow> {
    let mut pids: Vec<i32> = snapshot.workers().map(|p| p.pid).collect();
    pids.extend(workers_at_start);
    pids.extend(ledger.served.keys());
    pids.extend(ledger.children.iter().filter(|c| c.worked).map(|c| c.pid));
    pids.sort_unstable();
    pids.dedup();
    pids.into_iter()
        .map(|pid| {
            let role = snapshot.process(pid).map(|p| p.role).unwrap_or(
                if workers_at_start.contains(&pid) {
                    Role::Worker
                } else {
                    Role::Other
                },
            );
            let served = ledger.served.get(&pid).map_or(0, |s| s.requests);
            let shared = !shares_collector_connection(Some(snapshot), Some(ledger), pid).is_empty();
            let exports = ledger.processes.get(&pid);
            WorkerRow {
                pid,
                role,
                requests_served: served,
                signals: signals
                    .iter()
                    .map(|s| (*s, cell(exports, served, shared, *s, findings, pid)))
                    .collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::{PidSignal, Severity};
    use crate::ledger::SignalStats;

    fn exports(requests: u64) -> PidExports {
        let mut p = PidExports::new(5);
        p.signals.traces = SignalStats {
            requests,
            items: 4 * requests,
            bytes: 1,
            first_ms: (requests > 0).then_some(1),
            last_ms: (requests > 0).then_some(40),
        };
        p
    }

    fn fc209(pid: i32, s: Signal) -> Finding {
        Finding {
            code: "FC209".into(),
            slug: "lost-on-exit".into(),
            severity: Severity::Error,
            pids: vec![pid],
            title: String::new(),
            evidence: vec![],
            fix: String::new(),
            signals: vec![],
        }
        .with_signals(vec![PidSignal { pid, signal: s }])
    }

    #[test]
    fn a_cell_fails_only_when_a_finding_names_it() {
        let t = Signal::Traces;
        let lost = [fc209(5, t)];
        let other_pid = [fc209(6, t)];
        let other_signal = [fc209(5, Signal::Logs)];
        let status = |e: Option<&PidExports>, served, shared, f: &[Finding]| {
            cell(e, served, shared, t, f, 5).status
        };
        let some = exports(2);
        assert_eq!(status(Some(&some), 3, false, &[]), CellStatus::Received);
        assert_eq!(
            status(Some(&some), 3, false, &lost),
            CellStatus::LastIntervalLost
        );
        assert_eq!(status(None, 3, false, &lost), CellStatus::Missing);
        assert_eq!(status(None, 3, false, &other_pid), CellStatus::NotReceived);
        assert_eq!(
            status(None, 3, false, &other_signal),
            CellStatus::NotReceived
        );
        assert_eq!(status(None, 0, false, &[]), CellStatus::Idle);
        assert_eq!(
            status(None, 3, true, &[]),
            CellStatus::UnknownSharedConnection
        );
        let c = cell(None, 3, false, t, &lost, 5);
        assert!(c.failed());
        assert_eq!(c.text(), "NO FC209");
        assert_eq!(c.findings, vec!["FC209"]);
    }
}
