//! What `receive` prints: the per-pid table (live and final), findings, the JSON report
//! (DESIGN.md schema 1, each process with its `exports`).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, UNIX_EPOCH};

use colored::Colorize;
use serde_json::{json, Value};

use crate::diagnose::{Finding, Severity};
use crate::ledger::{Ledger, PidExports, Signal};
use crate::snapshot::{Role, Snapshot};

/// pass / warn / fail from the findings.
pub fn verdict(findings: &[Finding]) -> &'static str {
    if findings.iter().any(|f| f.severity == Severity::Error) {
        "fail"
    } else if findings.is_empty() {
        "pass"
    } else {
        "warn"
    }
}

fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn role_of(snap: Option<&Snapshot>, pid: i32) -> Role {
    snap.and_then(|s| s.process(pid))
        .map(|p| p.role)
        .unwrap_or(Role::Other)
}

fn role_str(r: Role) -> &'static str {
    match r {
        Role::Master => "master",
        Role::Worker => "worker",
        Role::Other => "other",
    }
}

/// Every pid to show: the tree's processes first, then senders outside it.
fn pids(ledger: &Ledger, snap: Option<&Snapshot>) -> Vec<i32> {
    let mut out: Vec<i32> = snap
        .map(|s| s.processes.iter().map(|p| p.pid).collect())
        .unwrap_or_default();
    let seen: BTreeSet<i32> = out.iter().copied().collect();
    out.extend(ledger.processes.keys().filter(|p| !seen.contains(p)));
    out
}

/// The JSON report (schema 1).
pub fn json_report(
    ledger: &Ledger,
    snap: Option<&Snapshot>,
    findings: &[Finding],
    http: Option<SocketAddr>,
    grpc: Option<SocketAddr>,
) -> Value {
    let processes: Vec<Value> = pids(ledger, snap)
        .into_iter()
        .map(|pid| {
            let sp = snap.and_then(|s| s.process(pid));
            let ex = ledger.processes.get(&pid);
            let started_ms = sp
                .map(|p| p.started_at_ms)
                .or_else(|| ex.map(|e| e.started_at_ns / 1_000_000))
                .unwrap_or(0);
            json!({
                "pid": pid,
                "ppid": sp.map(|p| p.ppid),
                "role": role_str(role_of(snap, pid)),
                "started_at": (started_ms > 0).then(|| rfc3339_ms(started_ms)),
                "threads": sp.map(|p| serde_json::to_value(&p.threads).unwrap_or(Value::Null)).unwrap_or(json!([])),
                "sockets": sp.map(|p| serde_json::to_value(&p.sockets).unwrap_or(Value::Null)).unwrap_or(json!([])),
                "exports": ex.map(|e| serde_json::to_value(e).unwrap_or(Value::Null)).unwrap_or_else(|| {
                    serde_json::to_value(PidExports::new(pid)).unwrap_or(Value::Null)
                }),
            })
        })
        .collect();
    json!({
        "schema": 1,
        "tool": {"name": "otel-forkcheck", "version": env!("CARGO_PKG_VERSION")},
        "verdict": verdict(findings),
        "root": snap.map(|s| json!({"pid": s.root_pid, "framework": s.framework.as_str()})),
        "processes": processes,
        "findings": findings,
        "receiver": {
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
        },
    })
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
    for pid in pids(ledger, snap) {
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
        let codes: Vec<&str> = findings
            .iter()
            .filter(|f| f.pids.contains(&pid))
            .map(|f| f.code.as_str())
            .collect();
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
            role_str(role_of(snap, pid)).into(),
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
    let widths: Vec<usize> = (0..8)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        let mut line = String::new();
        for c in 0..8 {
            if c == 7 {
                line.push_str(&r[c]);
            } else {
                let _ = write!(line, "{:<w$}  ", r[c], w = widths[c]);
            }
        }
        let line = line.trim_end().to_string();
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

/// Findings with evidence and fix, for people.
pub fn findings_text(findings: &[Finding], color: bool) -> String {
    let mut out = String::new();
    if findings.is_empty() {
        out.push_str("No findings.\n");
        return out;
    }
    for f in findings {
        let head = format!(
            "{} {} [{}] {}",
            f.code,
            f.slug,
            f.severity.as_str(),
            f.title
        );
        let head = if !color {
            head
        } else if f.severity == Severity::Error {
            head.red().bold().to_string()
        } else {
            head.yellow().bold().to_string()
        };
        let _ = writeln!(out, "{head}");
        for e in &f.evidence {
            let _ = writeln!(out, "    - {e}");
        }
        let _ = writeln!(out, "  Fix:");
        for l in f.fix.lines() {
            let _ = writeln!(out, "    {l}");
        }
        let _ = writeln!(out, "  (otel-forkcheck explain {})", f.code);
        out.push('\n');
    }
    out
}
