//! What `receive` prints: the per-pid table (live and final) and the JSON report (DESIGN.md
//! schema 1, each process with its `exports`). Findings and the verdict come from `report`.

use std::fmt::Write as _;
use std::net::SocketAddr;

use colored::Colorize;
use serde_json::{json, Value};

use crate::diagnose::Finding;
use crate::ledger::{Ledger, PidExports, Signal};
use crate::report::json::Report;
use crate::report::{codes_for, columns, rfc3339_ms};
use crate::snapshot::{Process, Role, Snapshot};

/// The processes to report: the tree's (`--pid`), then each sender outside it as a process of
/// role `other`. Without a tree the root is pid 0, framework unknown.
pub fn view(ledger: &Ledger, snap: Option<&Snapshot>) -> Snapshot {
    let mut view = snap.cloned().unwrap_or_default();
    for (pid, ex) in &ledger.processes {
        if view.process(*pid).is_none() {
            view.processes.push(Process {
                pid: *pid,
                nspid: ex.sender.nspid.clone(),
                role: Role::Other,
                started_at_ms: ex.sender.started_at_ns / 1_000_000,
                ..Default::default()
            });
        }
    }
    view
}

/// The JSON report: schema 1 ([`Report`]) over [`view`], each process with its `exports`, plus
/// a `receiver` section.
pub fn json_report(
    ledger: &Ledger,
    snap: Option<&Snapshot>,
    findings: &[Finding],
    http: Option<SocketAddr>,
    grpc: Option<SocketAddr>,
) -> Value {
    let view = view(ledger, snap);
    let report = Report::new(&view, findings).with_exports(ledger);
    let mut v = serde_json::to_value(report).unwrap_or(Value::Null);
    v["receiver"] = json!({
        "http": http.map(|a| a.to_string()),
        "grpc": grpc.map(|a| a.to_string()),
        "started_at": rfc3339_ms(ledger.started_at_ms),
        "observed_ms": ledger.now_ms().saturating_sub(ledger.started_at_ms),
        "totals": ledger.totals,
        "malformed": ledger.malformed_total,
        "unattributed": ledger.unattributed,
        "connections": ledger.connections.values().collect::<Vec<_>>(),
        "forward": ledger.forward,
        "expected_signals": ledger.expected_signals,
    });
    v
}

fn age(now: u64, last: Option<u64>) -> String {
    match last {
        None => "-".into(),
        Some(l) => {
            let s = now.saturating_sub(l) / 1000;
            if s < 60 {
                format!("{s}s")
            } else {
                format!("{}m{}s", s / 60, s % 60)
            }
        }
    }
}

fn cell(p: &PidExports, s: Signal) -> String {
    let k = p.signals.get(s);
    let q = p.possible.get(s);
    match (k.any(), q.any()) {
        (false, false) => "-".into(),
        (true, false) => format!("{}/{}", k.requests, k.items),
        (false, true) => format!("?{}/{}", q.requests, q.items),
        (true, true) => format!("{}/{} ?{}", k.requests, k.items, q.requests),
    }
}

/// The per-pid table: pid, role, per signal requests/items, last export age, identity, status.
pub fn table(
    ledger: &Ledger,
    snap: Option<&Snapshot>,
    findings: &[Finding],
    color: bool,
) -> String {
    let now = ledger.now_ms();
    let mut rows: Vec<[String; 8]> = vec![[
        "PID".into(),
        "ROLE".into(),
        "METRICS".into(),
        "TRACES".into(),
        "LOGS".into(),
        "LAST".into(),
        "IDENTITY".into(),
        "STATUS".into(),
    ]];
    let empty = PidExports::default();
    for proc in view(ledger, snap).processes {
        let pid = proc.pid;
        let p = ledger.processes.get(&pid).unwrap_or(&empty);
        let ident = p
            .identities
            .iter()
            .max_by_key(|i| i.last_ms)
            .map(|i| {
                let mut s = i.identity.to_string();
                if p.identities.len() > 1 {
                    let _ = write!(s, " (+{} more)", p.identities.len() - 1);
                }
                s
            })
            .unwrap_or_else(|| "-".into());
        let codes = codes_for(findings, pid);
        let mut status = if !codes.is_empty() {
            codes.join(",")
        } else if p.signals.any() {
            "ok".into()
        } else if p.possible.any() {
            "shared socket".into()
        } else {
            "silent".into()
        };
        if p.malformed > 0 {
            let _ = write!(status, " malformed={}", p.malformed);
        }
        rows.push([
            pid.to_string(),
            proc.role.as_str().into(),
            cell(p, Signal::Metrics),
            cell(p, Signal::Traces),
            cell(p, Signal::Logs),
            age(now, p.signals.last_ms().or(p.possible.last_ms())),
            ident,
            status,
        ]);
    }
    let u = &ledger.unattributed;
    if u.signals.any() || u.malformed > 0 {
        rows.push([
            "?".into(),
            "unknown".into(),
            cell(u, Signal::Metrics),
            cell(u, Signal::Traces),
            cell(u, Signal::Logs),
            age(now, u.signals.last_ms()),
            "sender not found".into(),
            format!("malformed={}", u.malformed),
        ]);
    }
    let mut out = String::new();
    for (i, (r, line)) in rows.iter().zip(columns(&rows, "")).enumerate() {
        if color && i == 0 {
            out.push_str(&line.bold().to_string());
        } else if color && r[7].starts_with("FC") {
            out.push_str(&line.red().to_string());
        } else {
            out.push_str(&line);
        }
        out.push('\n');
    }
    let t = &ledger.totals;
    let _ = writeln!(
        out,
        "{} connections, {} malformed; received {} data points, {} spans, {} log records (requests/items; ? = on a shared connection)",
        ledger.connections.len(),
        ledger.malformed_total,
        t.metrics.items,
        t.traces.items,
        t.logs.items
    );
    if let Some(f) = &ledger.forward {
        let _ = writeln!(
            out,
            "forwarded to {}: {} ok, {} failed, {} dropped{}",
            f.url,
            f.sent,
            f.failed,
            f.dropped,
            f.last_error
                .as_ref()
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Framework;

    #[test]
    fn json_report_without_a_tree_lists_each_sender() {
        let mut ledger = Ledger::new(1_000);
        for pid in [7, 5] {
            let mut ex = PidExports::new(pid);
            ex.sender.started_at_ns = if pid == 5 { 2_000_000_000 } else { 0 };
            ledger.processes.insert(pid, ex);
        }
        let v = json_report(&ledger, None, &[], None, None);
        assert_eq!(v["schema"], 1);
        assert_eq!(v["verdict"], "pass");
        assert_eq!(v["root"]["pid"], 0);
        assert_eq!(v["root"]["framework"], "unknown");
        let procs = v["processes"].as_array().unwrap();
        let pids: Vec<i64> = procs.iter().map(|p| p["pid"].as_i64().unwrap()).collect();
        assert_eq!(pids, vec![5, 7]);
        for p in procs {
            assert_eq!(p["role"], "other");
            assert_eq!(p["exports"]["pid"], p["pid"]);
        }
        assert_eq!(procs[0]["started_at"], "1970-01-01T00:00:02.000Z");
        assert!(procs[1]["started_at"].is_null());
        assert!(v["receiver"]["connections"].is_array());
    }

    #[test]
    fn json_report_keeps_the_tree_first_then_outside_senders() {
        let mut ledger = Ledger::new(1_000);
        ledger.processes.insert(9, PidExports::new(9));
        let snap = Snapshot {
            root_pid: 1,
            framework: Framework::Gunicorn,
            processes: vec![
                Process {
                    pid: 1,
                    role: Role::Master,
                    started_at_ms: 1,
                    ..Default::default()
                },
                Process {
                    pid: 2,
                    ppid: 1,
                    role: Role::Worker,
                    started_at_ms: 1,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let v = json_report(&ledger, Some(&snap), &[], None, None);
        assert_eq!(v["root"]["pid"], 1);
        assert_eq!(v["root"]["framework"], "gunicorn");
        let procs = v["processes"].as_array().unwrap();
        let rows: Vec<(i64, &str)> = procs
            .iter()
            .map(|p| (p["pid"].as_i64().unwrap(), p["role"].as_str().unwrap()))
            .collect();
        assert_eq!(rows, vec![(1, "master"), (2, "worker"), (9, "other")]);
        // A tree process that sent nothing still carries an (empty) exports view.
        assert_eq!(procs[1]["exports"]["pid"], 2);
    }
}
