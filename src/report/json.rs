//! The JSON report, schema 1 (DESIGN.md): fields may be added, never renamed.

use serde::Serialize;

use super::{codes_for, rfc3339_ms, Verdict};
use crate::diagnose::Finding;
use crate::ledger::{Ledger, PidExports};
use crate::snapshot::{
    Churn, Endpoint, EnvFacts, Framework, PythonFacts, Role, Snapshot, Socket, Thread,
};

pub const REPORT_SCHEMA: u32 = 1;

#[derive(Debug, Serialize)]
pub struct Report<'a> {
    pub schema: u32,
    pub tool: Tool,
    pub verdict: Verdict,
    pub root: Root,
    pub window_ms: u64,
    pub processes: Vec<ProcessView<'a>>,
    pub findings: &'a [Finding],
    pub churn: &'a Churn,
    pub collector_endpoints: &'a [Endpoint],
    pub notes: &'a [String],
}

#[derive(Debug, Serialize)]
pub struct Tool {
    pub name: &'static str,
    pub version: &'static str,
}

impl Tool {
    pub fn this() -> Tool {
        Tool {
            name: "otel-forkcheck",
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Root {
    pub pid: i32,
    pub framework: Framework,
}

/// A process as the snapshot has it, plus readable times and the codes that name it.
#[derive(Debug, Serialize)]
pub struct ProcessView<'a> {
    pub pid: i32,
    pub ppid: i32,
    pub nspid: &'a [i32],
    pub role: Role,
    /// `null` when the start time is not known (0 ms).
    pub started_at: Option<String>,
    pub exe: &'a str,
    pub cmdline: &'a [String],
    pub threads: Vec<ThreadView<'a>>,
    pub sockets: &'a [Socket],
    pub env: &'a EnvFacts,
    pub python: &'a PythonFacts,
    /// The receiver's view of this pid, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exports: Option<serde_json::Value>,
    /// Codes of the findings that name this pid.
    pub findings: Vec<&'a str>,
}

#[derive(Debug, Serialize)]
pub struct ThreadView<'a> {
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wakeups_in_window: Option<u64>,
    #[serde(flatten)]
    pub thread: &'a Thread,
}

impl<'a> Report<'a> {
    pub fn new(snap: &'a Snapshot, findings: &'a [Finding]) -> Self {
        let processes = snap
            .processes
            .iter()
            .map(|p| ProcessView {
                pid: p.pid,
                ppid: p.ppid,
                nspid: &p.nspid,
                role: p.role,
                started_at: (p.started_at_ms > 0).then(|| rfc3339_ms(p.started_at_ms)),
                exe: &p.exe,
                cmdline: &p.cmdline,
                sockets: &p.sockets,
                env: &p.env,
                python: &p.python,
                exports: None,
                findings: codes_for(findings, p.pid),
                threads: p
                    .threads
                    .iter()
                    .map(|t| ThreadView {
                        started_at: rfc3339_ms(t.started_at_ms),
                        wakeups_in_window: t.wakeups_in_window(),
                        thread: t,
                    })
                    .collect(),
            })
            .collect();
        Report {
            schema: REPORT_SCHEMA,
            tool: Tool::this(),
            verdict: Verdict::of(findings),
            root: Root {
                pid: snap.root_pid,
                framework: snap.framework,
            },
            window_ms: snap.window_ms,
            processes,
            findings,
            churn: &snap.churn,
            collector_endpoints: &snap.collector_endpoints,
            notes: &snap.notes,
        }
    }

    /// Attaches the receiver's view to every process: its `PidExports` from the ledger, or an
    /// empty one for a pid that sent nothing.
    pub fn with_exports(mut self, ledger: &Ledger) -> Self {
        for p in &mut self.processes {
            let ex = match ledger.processes.get(&p.pid) {
                Some(e) => serde_json::to_value(e),
                None => serde_json::to_value(PidExports::new(p.pid)),
            };
            p.exports = Some(ex.unwrap_or(serde_json::Value::Null));
        }
        self
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}
