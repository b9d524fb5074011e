//! The one report `check`, `receive` and `run` fill, schema 1 (`docs/report.schema.json`):
//! fields may be added, never renamed. Human, JSON, NDJSON, JUnit and GitHub output all render
//! from a [`Report`]; the facts it was made from ride along (not serialised) for the human
//! tables.

use serde::Serialize;

use super::receiver::{Expectation, ReceiverView};
use super::run::RunView;
use super::{codes_for, rfc3339_ms, Verdict};
use crate::diagnose::Finding;
use crate::ledger::{CountTally, Ledger, Num, PidExports, Served};
use crate::snapshot::{
    Churn, Endpoint, EnvFacts, Framework, GracefulTimeout, Process, PrometheusFacts, PythonFacts,
    Role, Snapshot, Socket, StartMethod, Thread, WorkerClass,
};

pub const REPORT_SCHEMA: u32 = 1;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: u32,
    pub tool: Tool,
    /// From the findings alone: fail with an error, warn with a warning, else pass.
    pub verdict: Verdict,
    pub root: Root,
    pub window_ms: u64,
    pub processes: Vec<ProcessView>,
    pub findings: Vec<Finding>,
    pub churn: Churn,
    pub collector_endpoints: Vec<Endpoint>,
    pub notes: Vec<String>,
    /// What the receiver saw (`receive`, `run`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receiver: Option<ReceiverView>,
    /// What `run` launched, sent and stopped, and each worker's signals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<RunView>,
    /// `receive --expect-workers`: how far the expectation got (judged by FC213).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expectation: Option<Expectation>,
    /// `--expect-count`: each counter's total over the pids against what was expected
    /// (judged by FC211 and FC212).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub counts: Vec<CountView>,
    /// The facts, for the human tables.
    #[serde(skip)]
    pub snapshot: Snapshot,
    #[serde(skip)]
    pub ledger: Option<Ledger>,
}

/// One `--expect-count`: the counter's total over the pids, and each pid's part.
#[derive(Debug, Clone, Serialize)]
pub struct CountView {
    pub metric: String,
    /// None: the number of requests served was not known.
    pub expected: Option<Num>,
    /// Where the expected number came from.
    pub expected_from: String,
    pub total: Num,
    /// The total equals the expected count.
    pub met: bool,
    pub pids: Vec<PidCountView>,
    /// Part of `total` whose sender was not found.
    pub unattributed: Num,
}

#[derive(Debug, Clone, Serialize)]
pub struct PidCountView {
    pub pid: i32,
    pub total: Num,
    /// Requests `run` saw it serve.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served: Option<u64>,
}

impl CountView {
    pub fn of(t: &CountTally) -> CountView {
        CountView {
            metric: t.metric.clone(),
            expected: t.expected.map(Num),
            expected_from: t.expected_from.clone(),
            total: Num(t.total),
            met: t.compare() == Some(std::cmp::Ordering::Equal),
            pids: t
                .pids
                .iter()
                .map(|p| PidCountView {
                    pid: p.pid,
                    total: Num(p.total),
                    served: p.served,
                })
                .collect(),
            unattributed: Num(t.unattributed),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Tool {
    pub name: &'static str,
    /// The crate's version, plain ("0.1.0").
    pub version: &'static str,
    /// The commit it was built from (`git rev-parse --short HEAD` at build time), "unknown"
    /// when built outside a git checkout (e.g. from the sdist).
    pub commit: &'static str,
}

impl Tool {
    pub fn this() -> Tool {
        Tool {
            name: "otel-forkcheck",
            version: env!("CARGO_PKG_VERSION"),
            commit: env!("OTEL_FORKCHECK_COMMIT"),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Root {
    pub pid: i32,
    pub framework: Framework,
    /// gunicorn's worker class, when the framework is gunicorn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_class: Option<WorkerClass>,
    /// The server's graceful timeout (gunicorn, uWSGI), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graceful_timeout: Option<GracefulTimeout>,
    /// Planned recycling (gunicorn's `max_requests`, Celery's `--max-tasks-per-child`), when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recycling: Option<crate::snapshot::Recycling>,
}

/// A process as the snapshot has it, plus readable times, what the receiver saw from it, and
/// the codes of the findings that name it.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessView {
    pub pid: i32,
    pub ppid: i32,
    pub nspid: Vec<i32>,
    pub role: Role,
    /// How a worker was started (fork, spawn, forkserver); absent for other processes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_by: Option<StartMethod>,
    /// `null` when the start time is not known (0 ms).
    pub started_at: Option<String>,
    pub exe: String,
    pub cmdline: Vec<String>,
    pub threads: Vec<ThreadView>,
    pub sockets: Vec<Socket>,
    pub env: EnvFacts,
    pub python: PythonFacts,
    #[serde(skip_serializing_if = "PrometheusFacts::is_empty")]
    pub prometheus: PrometheusFacts,
    /// It exited during the window; its facts are from its first sample.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub gone: bool,
    /// What of /proc/<pid> was refused (permission denied): `exe`, `maps`, `memory`,
    /// `environ`, `fd` (FC305).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
    /// The receiver's view of this pid, when there is a receiver.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exports: Option<PidExports>,
    /// Requests `run` saw this pid serve.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served: Option<Served>,
    /// Codes of the findings that name this pid.
    pub findings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThreadView {
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wakeups_in_window: Option<u64>,
    #[serde(flatten)]
    pub thread: Thread,
}

impl ProcessView {
    fn of(p: &Process, findings: &[Finding]) -> ProcessView {
        ProcessView {
            pid: p.pid,
            ppid: p.ppid,
            nspid: p.nspid.clone(),
            role: p.role,
            started_by: p.started_by,
            started_at: (p.started_at_ms > 0).then(|| rfc3339_ms(p.started_at_ms)),
            exe: p.exe.clone(),
            cmdline: p.cmdline.clone(),
            sockets: p.sockets.clone(),
            env: p.env.clone(),
            python: p.python.clone(),
            prometheus: p.prometheus.clone(),
            gone: p.gone,
            unreadable: p.unreadable.clone(),
            exports: None,
            served: None,
            findings: codes_for(findings, p.pid)
                .into_iter()
                .map(String::from)
                .collect(),
            threads: p
                .threads
                .iter()
                .map(|t| ThreadView {
                    started_at: rfc3339_ms(t.started_at_ms),
                    wakeups_in_window: t.wakeups_in_window(),
                    thread: t.clone(),
                })
                .collect(),
        }
    }
}

impl Report {
    /// The report of an inspection: the tree and its findings.
    pub fn new(snap: &Snapshot, findings: &[Finding]) -> Self {
        Report {
            schema: REPORT_SCHEMA,
            tool: Tool::this(),
            verdict: Verdict::of(findings),
            root: Root {
                pid: snap.root_pid,
                framework: snap.framework,
                worker_class: snap.worker_class.clone(),
                graceful_timeout: snap.graceful_timeout.clone(),
                recycling: snap.recycling.clone(),
            },
            window_ms: snap.window_ms,
            processes: snap
                .processes
                .iter()
                .map(|p| ProcessView::of(p, findings))
                .collect(),
            findings: findings.to_vec(),
            churn: snap.churn.clone(),
            collector_endpoints: snap.collector_endpoints.clone(),
            notes: snap.notes.clone(),
            receiver: None,
            run: None,
            expectation: None,
            counts: Vec::new(),
            snapshot: snap.clone(),
            ledger: None,
        }
    }

    /// Attaches the receiver's view to every process (its `PidExports`, or an empty one for a
    /// pid that sent nothing; what `run` saw it serve) and the receiver section.
    pub fn with_receiver(mut self, ledger: &Ledger, receiver: ReceiverView) -> Self {
        for p in &mut self.processes {
            p.exports = Some(
                ledger
                    .processes
                    .get(&p.pid)
                    .cloned()
                    .unwrap_or_else(|| PidExports::new(p.pid)),
            );
            p.served = ledger.served.get(&p.pid).cloned();
        }
        self.receiver = Some(receiver);
        self.counts = ledger.count_tallies().iter().map(CountView::of).collect();
        self.ledger = Some(ledger.clone());
        self
    }

    pub fn with_run(mut self, run: RunView) -> Self {
        self.run = Some(run);
        self
    }

    pub fn with_expectation(mut self, e: Option<Expectation>) -> Self {
        self.expectation = e;
        self
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// One line of JSON.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}
