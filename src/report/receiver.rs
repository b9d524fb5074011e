//! The receiver's part of the report: its section, the processes it heard from (the tree's and
//! any sender outside it), and the per-pid table `receive` prints (live and final).

use std::fmt::Write as _;
use std::net::SocketAddr;

use colored::Colorize;
use serde::Serialize;

use super::model::Report;
use super::{codes_for, columns, rfc3339_ms};
use crate::diagnose::Finding;
use crate::ledger::{
    ConnRecord, ForwardStats, Ledger, LimitStats, Num, PidExports, Signal, Signals,
};
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

/// The receiver section of the report.
#[derive(Debug, Clone, Serialize)]
pub struct ReceiverView {
    pub http: Option<String>,
    pub grpc: Option<String>,
    pub started_at: String,
    pub observed_ms: u64,
    pub totals: Signals,
    pub malformed: u64,
    pub unattributed: PidExports,
    /// Every connection remembered (the same list in `receive` and `run`).
    pub connections: Vec<ConnRecord>,
    /// How many connections were accepted (the list may be capped).
    pub connection_count: usize,
    pub forward: Option<ForwardStats>,
    pub expected_signals: Vec<Signal>,
    /// Said when nothing at all arrived: the first thing to check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl ReceiverView {
    pub fn of(ledger: &Ledger, http: Option<SocketAddr>, grpc: Option<SocketAddr>) -> Self {
        ReceiverView {
            http: http.map(|a| a.to_string()),
            grpc: grpc.map(|a| a.to_string()),
            started_at: rfc3339_ms(ledger.started_at_ms),
            observed_ms: ledger.now_ms().saturating_sub(ledger.started_at_ms),
            totals: ledger.totals.clone(),
            malformed: ledger.malformed_total,
            unattributed: ledger.unattributed.clone(),
            connections: ledger.connections.values().cloned().collect(),
            connection_count: ledger.connections.len(),
            forward: ledger.forward.clone(),
            expected_signals: ledger.expected_signals.clone(),
            note: nothing_received(ledger),
        }
    }
}

/// `receive --expect-workers N`: how far it got. The judgement is FC213's.
#[derive(Debug, Clone, Serialize)]
pub struct Expectation {
    pub workers: usize,
    pub signals: Vec<Signal>,
    /// Whether N workers exported every signal before the receiver stopped.
    pub met: bool,
    pub workers_done: Vec<i32>,
}

/// A note when no export at all reached the receiver: the first thing to check is whether the
/// exporters read the OTEL_EXPORTER_OTLP_* variables, with the same protocol.
pub fn nothing_received(ledger: &Ledger) -> Option<String> {
    if ledger.totals.any() || ledger.malformed_total > 0 {
        return None;
    }
    Some(format!(
        "no export at all reached the receiver ({} connection(s) accepted). Unless the export \
         intervals are longer than the run and nothing flushes at exit (FC209), the exporters \
         do not use this receiver's endpoints: an endpoint or protocol chosen in code, \
         OTEL_SDK_DISABLED, or exporters not installed",
        ledger.connections.len()
    ))
}

/// The report of a receiver: the tree (when `--pid` gave one) and every sender outside it,
/// each with its exports.
pub fn receiver_report(
    ledger: &Ledger,
    snap: Option<&Snapshot>,
    findings: &[Finding],
    http: Option<SocketAddr>,
    grpc: Option<SocketAddr>,
) -> Report {
    let view = view(ledger, snap);
    Report::new(&view, findings).with_receiver(ledger, ReceiverView::of(ledger, http, grpc))
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

/// Counters shown per pid in the table.
const TOP_COUNTERS: usize = 3;

/// The pid's largest counters (monotonic sums, then histogram and summary counts), as
/// `name=total`, with how many more there are; with `was` (the same pid `secs` seconds before),
/// each one's rate since.
pub fn top_counters(p: &PidExports, was: Option<(&PidExports, f64)>) -> String {
    let mut c: Vec<(&str, f64)> = p
        .metrics
        .iter()
        .filter(|(_, t)| t.monotonic || t.kind.is_counted())
        .map(|(name, t)| (name.as_str(), t.total()))
        .collect();
    if c.is_empty() {
        return "-".into();
    }
    c.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
    let mut out: Vec<String> = c
        .iter()
        .take(TOP_COUNTERS)
        .map(|(n, v)| {
            let rate = was.and_then(|(w, secs)| {
                let before = w.metrics.get(*n).map_or(0.0, |t| t.total());
                (secs > 0.0 && *v != before).then(|| format!(" ({})", per_s(*v - before, secs)))
            });
            format!("{n}={}{}", Num(*v), rate.unwrap_or_default())
        })
        .collect();
    if c.len() > TOP_COUNTERS {
        out.push(format!("+{}", c.len() - TOP_COUNTERS));
    }
    out.join(" ")
}

/// `d` over `secs` seconds, to one decimal: `+4/s`, `+0.5/s`, `-1/s`.
fn per_s(d: f64, secs: f64) -> String {
    let r = (d / secs * 10.0).round() / 10.0;
    if r >= 0.0 {
        format!("+{}/s", Num(r))
    } else {
        format!("{}/s", Num(r))
    }
}

/// Data points, spans and log records, known and possible.
fn items(p: &PidExports) -> u64 {
    Signal::ALL
        .iter()
        .map(|s| p.signals.get(*s).items + p.possible.get(*s).items)
        .sum()
}

/// The per-pid table: pid, role, per signal requests/items, the top counters, last export
/// age, identity, status.
pub fn table(
    ledger: &Ledger,
    snap: Option<&Snapshot>,
    findings: &[Finding],
    color: bool,
) -> String {
    render(ledger, None, snap, findings, color)
}

/// The live view's table (it redraws every second on a terminal): [`table`] with what arrived
/// from each pid per second since `prev`, the previous frame, and its counters' rates.
pub fn live_table(
    ledger: &Ledger,
    prev: &Ledger,
    snap: Option<&Snapshot>,
    findings: &[Finding],
    color: bool,
) -> String {
    render(ledger, Some(prev), snap, findings, color)
}

fn render(
    ledger: &Ledger,
    prev: Option<&Ledger>,
    snap: Option<&Snapshot>,
    findings: &[Finding],
    color: bool,
) -> String {
    let now = ledger.now_ms();
    let secs = prev.map(|p| now.saturating_sub(p.now_ms()) as f64 / 1000.0);
    let mut head: Vec<String> = ["PID", "ROLE", "METRICS", "TRACES", "LOGS"]
        .map(String::from)
        .to_vec();
    if prev.is_some() {
        head.push("RATE".into());
    }
    head.extend(["COUNTERS", "LAST", "IDENTITY", "STATUS"].map(String::from));
    let mut rows: Vec<Vec<String>> = vec![head];
    let empty = PidExports::default();
    // Items (all signals) per second since the previous frame.
    let rate = |p: &PidExports, was: Option<&PidExports>| -> Option<String> {
        let secs = secs?;
        let d = items(p).saturating_sub(was.map_or(0, items));
        Some(if secs <= 0.0 || d == 0 {
            "-".into()
        } else {
            per_s(d as f64, secs)
        })
    };
    for proc in view(ledger, snap).processes {
        let pid = proc.pid;
        let p = ledger.processes.get(&pid).unwrap_or(&empty);
        let was = prev.and_then(|l| l.processes.get(&pid));
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
        if p.pinned_by_identity > 0 {
            let _ = write!(status, " ({} shared by identity)", p.pinned_by_identity);
        }
        if p.malformed > 0 {
            let _ = write!(status, " malformed={}", p.malformed);
        }
        let mut row = vec![
            pid.to_string(),
            proc.role.as_str().into(),
            cell(p, Signal::Metrics),
            cell(p, Signal::Traces),
            cell(p, Signal::Logs),
        ];
        row.extend(rate(p, was));
        row.extend([
            top_counters(p, was.zip(secs)),
            age(now, p.signals.last_ms().or(p.possible.last_ms())),
            ident,
            status,
        ]);
        rows.push(row);
    }
    let u = &ledger.unattributed;
    if u.signals.any() || u.malformed > 0 {
        let was = prev.map(|l| &l.unattributed);
        let mut row = vec![
            "?".into(),
            "unknown".into(),
            cell(u, Signal::Metrics),
            cell(u, Signal::Traces),
            cell(u, Signal::Logs),
        ];
        row.extend(rate(u, was));
        row.extend([
            top_counters(u, was.zip(secs)),
            age(now, u.signals.last_ms()),
            "sender not found".into(),
            format!("malformed={}", u.malformed),
        ]);
        rows.push(row);
    }
    let mut out = String::new();
    for (i, (r, line)) in rows.iter().zip(columns(&rows, "")).enumerate() {
        if color && i == 0 {
            out.push_str(&line.bold().to_string());
        } else if color && r.last().is_some_and(|s| s.starts_with("FC")) {
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
    if let Some(l) = limits_line(&ledger.limits) {
        out.push_str(&l);
    }
    if let Some(n) = snap.map(|s| s.churn.aged_out).filter(|n| *n > 0) {
        let _ = writeln!(
            out,
            "{n} exited process(es) of the tree no longer shown (beyond --keep-exited, the \
             longest gone first)"
        );
    }
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

/// What the receiver's own limits did, as a summary line (None when they did nothing): each
/// count with the flag that sets its bound.
pub fn limits_line(l: &LimitStats) -> Option<String> {
    if l.is_quiet() {
        return None;
    }
    let parts: Vec<String> = [
        (
            l.first_request_timeouts,
            "connection(s) closed without a request in time (--first-request-timeout)",
        ),
        (
            l.idle_timeouts,
            "idle connection(s) closed (--idle-timeout)",
        ),
        (
            l.evicted_listener_cap,
            "idle connection(s) closed for room at a listener's cap (--max-connections)",
        ),
        (
            l.evicted_peer_cap,
            "idle connection(s) closed for room at a peer's cap (--max-connections-per-peer)",
        ),
        (
            l.refused_connections,
            "connection(s) refused at a cap with every one busy",
        ),
        (
            l.budget_refused,
            "request(s) refused for memory, to be retried (--memory-budget)",
        ),
        (l.budget_waited, "request(s) waited for memory"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    Some(format!(
        "limits: {}; body memory peak {:.1} MiB\n",
        parts.join(", "),
        l.budget_peak_bytes as f64 / (1 << 20) as f64
    ))
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
        let v = serde_json::to_value(receiver_report(&ledger, None, &[], None, None)).unwrap();
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
        let v =
            serde_json::to_value(receiver_report(&ledger, Some(&snap), &[], None, None)).unwrap();
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

    #[test]
    fn the_live_table_shows_rates_since_the_previous_frame() {
        use crate::diagnose::testkit::{Scenario, W1};
        let mut s = Scenario::gunicorn(1);
        s.metrics(W1)
            .counter("requests{/}", 10.0, 1)
            .items(3)
            .at(1_000);
        let prev = s.now(1_000).ledger().clone();
        s.metrics(W1)
            .counter("requests{/}", 14.0, 1)
            .items(3)
            .at(3_000);
        s.traces(W1).items(7).at(3_000);
        let now = s.now(3_000).ledger().clone();
        let snap = s.snapshot().cloned();
        let live = live_table(&now, &prev, snap.as_ref(), &[], false);
        let head = live.lines().next().unwrap();
        assert!(head.contains("LOGS  RATE  COUNTERS"), "{live}");
        let w1 = live.lines().find(|l| l.starts_with("101")).unwrap();
        // 3 data points and 7 spans in 2 s; the counter went from 10 to 14
        assert!(w1.contains(" +5/s "), "{live}");
        assert!(w1.contains("requests=14 (+2/s)"), "{live}");
        // the final summary has no rates
        let last = table(&now, snap.as_ref(), &[], false);
        assert!(
            !last.contains("RATE") && last.contains("requests=14 "),
            "{last}"
        );
    }

    #[test]
    fn the_summary_says_what_the_limits_did_only_when_they_did_something() {
        use crate::diagnose::testkit::{Scenario, W1};
        let mut s = Scenario::gunicorn(1);
        s.metrics(W1).items(3).at(1_000);
        let mut ledger = s.now(1_000).ledger().clone();
        ledger.limits.budget_peak_bytes = 3 << 20;
        let quiet = table(&ledger, None, &[], false);
        assert!(!quiet.contains("limits:"), "{quiet}");
        ledger.limits.first_request_timeouts = 4;
        ledger.limits.budget_refused = 2;
        let busy = table(&ledger, None, &[], false);
        let line = busy.lines().find(|l| l.starts_with("limits: ")).unwrap();
        assert_eq!(
            line,
            "limits: 4 connection(s) closed without a request in time \
             (--first-request-timeout), 2 request(s) refused for memory, to be retried \
             (--memory-budget); body memory peak 3.0 MiB"
        );
    }
}
