//! What `run` prints: what was launched, the workers with the requests each served and, per
//! signal, whether its data arrived; then the inspection table, the findings and the verdict
//! (the shared human report); `--format json` (report schema 1 with each process's `exports`
//! and a `run` section); `--junit FILE`.
//!
//! The per-worker, per-signal judgement ([`cell`]) is one function shared by all three, so the
//! JUnit testcases say exactly what the human table says.

use std::fmt::Write as _;

use colored::Colorize;
use serde_json::{json, Value};

use super::{RunOptions, RunResult};
use crate::diagnose::evidence::shares_collector_connection;
use crate::diagnose::{self, Facts, Finding};
use crate::error::Error;
use crate::ledger::{PidExports, Served, Signal};
use crate::receive::cmd::save_json;
use crate::report::junit::{self, Case};
use crate::report::{columns, human, json::Report, FailOn, Format};
use crate::snapshot::Role;

/// Whether one signal of one worker arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    /// Arrived, and (when the worker served requests) after its last served request.
    Yes { requests: u64, items: u64 },
    /// Arrived, but the last export came before the last served request.
    Stale {
        requests: u64,
        items: u64,
        behind_ms: u64,
    },
    /// The worker served requests and nothing of this signal arrived.
    No,
    /// Served no request and sent nothing: not a failure.
    Idle,
    /// Nothing (or nothing recent) counted under this pid, but it shares a collector connection
    /// with these pids, under which its exports may have been counted: cannot be told.
    Shared(Vec<i32>),
}

impl Cell {
    pub fn failed(&self) -> bool {
        matches!(self, Cell::Stale { .. } | Cell::No)
    }

    fn text(&self) -> String {
        match self {
            Cell::Yes { requests, items } => format!("yes ({requests}/{items})"),
            Cell::Stale {
                requests,
                items,
                behind_ms,
            } => format!(
                "LOST last {:.1}s ({requests}/{items})",
                *behind_ms as f64 / 1000.0
            ),
            Cell::No => "NO".into(),
            Cell::Idle => "- (idle)".into(),
            Cell::Shared(_) => "? (shared conn)".into(),
        }
    }
}

/// The judgement for one signal of one pid (known and possible exports both count).
pub fn cell(exports: Option<&PidExports>, served: Option<&Served>, s: Signal) -> Cell {
    let (requests, items, last) = match exports {
        Some(p) => {
            let (k, q) = (p.signals.get(s), p.possible.get(s));
            (
                k.requests + q.requests,
                k.items + q.items,
                k.last_ms.max(q.last_ms),
            )
        }
        None => (0, 0, None),
    };
    let served = served.filter(|s| s.requests > 0);
    match (last, served) {
        (None, None) => Cell::Idle,
        (None, Some(_)) => Cell::No,
        (Some(l), Some(sv)) if l < sv.last_ms => Cell::Stale {
            requests,
            items,
            behind_ms: sv.last_ms - l,
        },
        (Some(_), _) => Cell::Yes { requests, items },
    }
}

/// One worker's line.
pub struct Row {
    pub pid: i32,
    pub role: Role,
    pub served: u64,
    pub cells: Vec<(Signal, Cell)>,
}

/// Workers of the snapshot, those found at start, and any pid that served requests.
pub fn rows(r: &RunResult) -> Vec<Row> {
    let mut pids: Vec<i32> = r.snapshot.workers().map(|p| p.pid).collect();
    pids.extend(&r.workers);
    pids.extend(r.ledger.served.keys());
    pids.sort_unstable();
    pids.dedup();
    pids.into_iter()
        .map(|pid| {
            let role =
                r.snapshot
                    .process(pid)
                    .map(|p| p.role)
                    .unwrap_or(if r.workers.contains(&pid) {
                        Role::Worker
                    } else {
                        Role::Other
                    });
            let served = r.ledger.served.get(&pid);
            let shared = shares_collector_connection(Some(&r.snapshot), Some(&r.ledger), pid);
            Row {
                pid,
                role,
                served: served.map_or(0, |s| s.requests),
                cells: r
                    .signals
                    .iter()
                    .map(|s| {
                        let c = cell(r.ledger.processes.get(&pid), served, *s);
                        if c.failed() && !shared.is_empty() {
                            (*s, Cell::Shared(shared.clone()))
                        } else {
                            (*s, c)
                        }
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Prints the report(s), writes the JUnit file, and returns the exit status.
pub fn emit(args: &RunOptions, r: &RunResult) -> i32 {
    let findings = diagnose::diagnose(&Facts::new(Some(&r.snapshot), Some(&r.ledger)));
    if let Some(path) = &args.save_ledger {
        let snap_path = path.with_extension("snapshot.json");
        if let Err(e) = save_json(path, &r.ledger).and_then(|_| save_json(&snap_path, &r.snapshot))
        {
            return Error::new(e, "choose a writable path for --save-ledger").print();
        }
    }
    match args.format {
        Format::Human => print!("{}", human_text(r, &findings)),
        Format::Json | Format::Ndjson => println!(
            "{}",
            serde_json::to_string_pretty(&json_report(r, &findings))
                .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        ),
    }
    if let Some(path) = &args.junit {
        let xml = junit::render(
            "otel-forkcheck run",
            &junit_cases(r, &findings, args.fail_on),
            r.elapsed.as_secs_f64(),
        );
        if let Err(e) = std::fs::write(path, xml) {
            return Error::new(
                format!("cannot write {}: {e}", path.display()),
                "choose a writable path for --junit",
            )
            .print();
        }
    }
    args.fail_on.exit_status(&findings)
}

/// The human report.
pub fn human_text(r: &RunResult, findings: &[Finding]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} `{}` (pid {}), master pid {}, {} worker(s), {:.1} s",
        "otel-forkcheck run:".bold(),
        r.command.join(" "),
        r.launched,
        r.master,
        r.workers.len(),
        r.elapsed.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "  receiver: OTLP/HTTP {}, OTLP/gRPC {}",
        r.http.map_or("-".into(), |a| format!("http://{a}")),
        r.grpc.map_or("-".into(), |a| a.to_string())
    );
    for e in &r.env {
        let _ = writeln!(
            out,
            "  env: {}={}{}",
            e.name,
            e.value,
            e.replaced
                .as_ref()
                .map(|o| format!(" (replaces {o})"))
                .unwrap_or_default()
        );
    }
    let answered = r.outcomes.iter().filter(|o| o.status.is_some()).count();
    let attributed = r
        .outcomes
        .iter()
        .filter(|o| o.status.is_some() && o.pid.is_some())
        .count();
    let mut statuses: std::collections::BTreeMap<String, usize> = Default::default();
    for o in &r.outcomes {
        *statuses
            .entry(o.status.map_or("error".into(), |s| s.to_string()))
            .or_default() += 1;
    }
    let _ = writeln!(
        out,
        "  traffic: {} request(s) to {}: {answered} answered ({}), {attributed} attributed to a pid",
        r.outcomes.len(),
        r.targets.join(", "),
        statuses
            .iter()
            .map(|(k, v)| format!("{k} x{v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(e) = r.outcomes.iter().find_map(|o| o.error.as_ref()) {
        let _ = writeln!(out, "  first request error: {e}");
    }
    let _ = writeln!(
        out,
        "  stop: SIGTERM to pid {}, {} after {:.1} s",
        r.stop.master,
        if r.stop.graceful {
            "every process left"
        } else {
            "group SIGKILLed"
        },
        r.stop.waited_ms as f64 / 1000.0
    );
    for n in &r.stop.notes {
        let _ = writeln!(out, "  server said: {n}");
    }
    if let Some(w) = nothing_received(r) {
        let _ = writeln!(out, "  {} {w}", "note:".yellow());
    }
    out.push('\n');
    // The per-worker table.
    let mut table: Vec<Vec<String>> = vec![{
        let mut h = vec!["PID".to_string(), "ROLE".into(), "REQUESTS".into()];
        h.extend(r.signals.iter().map(|s| s.as_str().to_uppercase()));
        h
    }];
    let rows = rows(r);
    for row in &rows {
        let mut line = vec![
            row.pid.to_string(),
            row.role.as_str().to_string(),
            row.served.to_string(),
        ];
        line.extend(row.cells.iter().map(|(_, c)| c.text()));
        table.push(line);
    }
    for (i, s) in columns(&table, "  ").into_iter().enumerate() {
        let failed = i > 0 && rows[i - 1].cells.iter().any(|(_, c)| c.failed());
        let _ = writeln!(
            out,
            "{}",
            if i == 0 {
                s.dimmed()
            } else if failed {
                s.red()
            } else {
                s.normal()
            }
        );
    }
    let _ = writeln!(
        out,
        "  (exports/items received per signal; LOST: the last export came before the worker's \
         last served request; ?: it shares its collector connection, so its exports cannot be \
         told from the other holders')"
    );
    out.push('\n');
    out.push_str(&human::render(&r.snapshot, findings));
    out
}

/// A warning when no export at all reached the receiver: the first thing to check is whether the
/// server's exporters read the OTEL_EXPORTER_OTLP_* variables run set, with the same protocol.
pub fn nothing_received(r: &RunResult) -> Option<String> {
    if r.ledger.totals.any() || r.ledger.malformed_total > 0 {
        return None;
    }
    Some(format!(
        "no export at all reached the receiver ({} connection(s) accepted). Unless the export \
         intervals are longer than the run and nothing flushes at exit (FC209), the server's \
         exporters do not use the endpoints run set: an endpoint or protocol chosen in code, \
         OTEL_SDK_DISABLED, or exporters not installed",
        r.ledger.connections.len()
    ))
}

/// The JSON report: schema 1 (as `check`), processes with `exports`, plus `run` and `receiver`.
pub fn json_report(r: &RunResult, findings: &[Finding]) -> Value {
    let report = Report::new(&r.snapshot, findings).with_exports(&r.ledger);
    let mut v = serde_json::to_value(report).unwrap_or(Value::Null);
    if let Some(procs) = v.get_mut("processes").and_then(Value::as_array_mut) {
        for p in procs.iter_mut() {
            let pid = p.get("pid").and_then(Value::as_i64).unwrap_or(0) as i32;
            if let Some(s) = r.ledger.served.get(&pid) {
                p["served"] = serde_json::to_value(s).unwrap_or(Value::Null);
            }
        }
    }
    let workers: Vec<Value> = rows(r)
        .iter()
        .map(|row| {
            let signals: serde_json::Map<String, Value> = row
                .cells
                .iter()
                .map(|(s, c)| {
                    let (status, requests, items) = match c {
                        Cell::Yes { requests, items } => ("received", *requests, *items),
                        Cell::Stale {
                            requests, items, ..
                        } => ("last-interval-lost", *requests, *items),
                        Cell::No => ("missing", 0, 0),
                        Cell::Idle => ("idle", 0, 0),
                        Cell::Shared(_) => ("unknown-shared-connection", 0, 0),
                    };
                    (
                        s.as_str().to_string(),
                        json!({"status": status, "received": !matches!(c, Cell::No | Cell::Idle),
                               "exports": requests, "items": items}),
                    )
                })
                .collect();
            json!({"pid": row.pid, "role": row.role.as_str(), "requests_served": row.served,
                   "signals": signals})
        })
        .collect();
    v["run"] = json!({
        "command": r.command,
        "launched_pid": r.launched,
        "master": r.master,
        "workers_at_start": r.workers,
        "signals": r.signals,
        "env": r.env,
        "targets": r.targets,
        "requests": {
            "sent": r.outcomes.len(),
            "answered": r.outcomes.iter().filter(|o| o.status.is_some()).count(),
            "attributed": r.outcomes.iter().filter(|o| o.status.is_some() && o.pid.is_some()).count(),
            "errors": r.outcomes.iter().filter_map(|o| o.error.clone()).take(10).collect::<Vec<_>>(),
        },
        "workers": workers,
        "stop": r.stop,
        "elapsed_ms": r.elapsed.as_millis() as u64,
    });
    v["receiver"] = json!({
        "http": r.http.map(|a| a.to_string()),
        "grpc": r.grpc.map(|a| a.to_string()),
        "totals": r.ledger.totals,
        "malformed": r.ledger.malformed_total,
        "unattributed": r.ledger.unattributed,
        "connections": r.ledger.connections.len(),
        "note": nothing_received(r),
    });
    v
}

/// One testcase per worker per expected signal, one per finding.
pub fn junit_cases(r: &RunResult, findings: &[Finding], fail_on: FailOn) -> Vec<Case> {
    let mut cases = Vec::new();
    for row in rows(r) {
        for (s, c) in &row.cells {
            let classname = format!("{} {}", row.role.as_str(), row.pid);
            let name = format!("exports {}", s.as_str());
            let mut case = Case {
                classname,
                name,
                ..Default::default()
            };
            match c {
                Cell::Yes { requests, items } => {
                    case.system_out = Some(format!(
                        "{requests} export(s), {items} {} after serving {} request(s)",
                        s.item(),
                        row.served
                    ))
                }
                Cell::Idle => {
                    case.skipped = Some("served no request and sent nothing (not a failure)".into())
                }
                Cell::Shared(with) => {
                    case.skipped = Some(format!(
                        "shares its collector connection with pid(s) {with:?}: its exports may be \
                         counted under them (see the findings)"
                    ))
                }
                Cell::No => {
                    case.failure = Some((
                        format!(
                            "served {} request(s), no {} arrived",
                            row.served,
                            s.as_str()
                        ),
                        related(findings, row.pid),
                    ))
                }
                Cell::Stale { behind_ms, .. } => {
                    case.failure = Some((
                        format!(
                            "last {} export arrived {:.1} s before the last served request: the \
                             last interval was lost",
                            s.as_str(),
                            *behind_ms as f64 / 1000.0
                        ),
                        related(findings, row.pid),
                    ))
                }
            }
            cases.push(case);
        }
    }
    let threshold = fail_on.threshold();
    for f in findings {
        let pids: Vec<String> = f.pids.iter().map(|p| p.to_string()).collect();
        let text = format!(
            "{}\n\nevidence:\n{}\n\nfix:\n{}\n\nmore: otel-forkcheck explain {}",
            f.title,
            f.evidence
                .iter()
                .map(|e| format!("- {e}"))
                .collect::<Vec<_>>()
                .join("\n"),
            f.fix,
            f.code
        );
        let mut case = Case {
            classname: "findings".into(),
            name: format!("{} {} (pids {})", f.code, f.slug, pids.join(", ")),
            ..Default::default()
        };
        if threshold.is_some_and(|t| f.severity >= t) {
            case.failure = Some((
                format!("{} {}: {}", f.severity.as_str(), f.code, f.title),
                text,
            ));
        } else {
            case.system_out = Some(text);
        }
        cases.push(case);
    }
    cases
}

/// The findings that name `pid`, one line each, for a failed worker testcase.
fn related(findings: &[Finding], pid: i32) -> String {
    let lines: Vec<String> = findings
        .iter()
        .filter(|f| f.pids.contains(&pid))
        .map(|f| format!("{} {}: {}", f.code, f.slug, f.title))
        .collect();
    if lines.is_empty() {
        "no finding names this pid".into()
    } else {
        lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::SignalStats;

    fn exports(last: Option<u64>) -> PidExports {
        let mut p = PidExports::new(5);
        if let Some(l) = last {
            p.signals.traces = SignalStats {
                requests: 2,
                items: 4,
                bytes: 1,
                first_ms: Some(1),
                last_ms: Some(l),
            };
        }
        p
    }

    #[test]
    fn cells() {
        let sv = Served {
            requests: 3,
            first_ms: 10,
            last_ms: 100,
        };
        let t = Signal::Traces;
        assert_eq!(cell(None, None, t), Cell::Idle);
        assert_eq!(cell(None, Some(&sv), t), Cell::No);
        assert_eq!(cell(Some(&exports(None)), Some(&sv), t), Cell::No);
        assert_eq!(
            cell(Some(&exports(Some(150))), Some(&sv), t),
            Cell::Yes {
                requests: 2,
                items: 4
            }
        );
        assert_eq!(
            cell(Some(&exports(Some(40))), Some(&sv), t),
            Cell::Stale {
                requests: 2,
                items: 4,
                behind_ms: 60
            }
        );
        // Exports without requests served (e.g. a worker's own timer metrics) are fine.
        assert!(!cell(Some(&exports(Some(40))), None, t).failed());
    }
}
