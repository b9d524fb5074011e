//! Human output: a per-process table, then findings with evidence and fix, then the verdict.
//! Colors come from `colored`, whose global switch the CLI sets (TTY, NO_COLOR, --color).

use std::fmt::Write;

use colored::Colorize;

use super::{codes_for, columns, Verdict};
use crate::diagnose::evidence::{age_s, collector_of};
use crate::diagnose::{Finding, Severity};
use crate::snapshot::{Process, Snapshot, ThreadKind};

pub fn render(snap: &Snapshot, findings: &[Finding]) -> String {
    let mut out = String::new();
    let workers = snap.workers().count();
    let _ = writeln!(
        out,
        "{} {} pid {}, {} worker(s), watched {:.1} s",
        "otel-forkcheck:".bold(),
        snap.framework.as_str(),
        snap.root_pid,
        workers,
        snap.window_ms as f64 / 1000.0
    );
    out.push('\n');
    table(&mut out, snap, findings);
    for note in &snap.notes {
        let _ = writeln!(out, "{} {note}", "note:".yellow());
    }
    out.push('\n');
    out.push_str(&self::findings(findings));
    verdict_line(&mut out, findings);
    out
}

/// The findings with pids, evidence and fix, for people (empty when there are none).
pub fn findings(findings: &[Finding]) -> String {
    let mut out = String::new();
    for (i, f) in findings.iter().enumerate() {
        // The same fix under several findings is printed once, then referred to.
        let same_fix = findings[..i].iter().find(|g| g.fix == f.fix);
        finding(&mut out, f, same_fix.map(|g| g.code.as_str()));
    }
    out
}

fn table(out: &mut String, snap: &Snapshot, findings: &[Finding]) {
    let header = [
        "PID",
        "ROLE",
        "AGE",
        "EXPORTER THREADS",
        "COLLECTOR SOCKETS",
        "STATUS",
    ]
    .map(String::from);
    let mut rows: Vec<[String; 6]> = vec![header];
    rows.extend(snap.processes.iter().map(|p| {
        [
            p.pid.to_string(),
            p.role.as_str().to_string(),
            format!("{:.1}s", age_s(snap, p)),
            exporter_threads(p),
            collector_sockets(snap, p),
            status(p, findings),
        ]
    }));
    let lines = columns(&rows, "  ");
    let _ = writeln!(out, "{}", lines[0].dimmed());
    for (row, text) in rows.iter().zip(&lines).skip(1) {
        let colored = if row[5] == "ok" {
            text.normal()
        } else if findings
            .iter()
            .any(|f| f.severity == Severity::Error && row[5].contains(f.code.as_str()))
        {
            text.red()
        } else {
            text.yellow()
        };
        let _ = writeln!(out, "{colored}");
    }
}

/// "reader, span, log, grpc x3", "-" for none, "?" when names could not be read.
fn exporter_threads(p: &Process) -> String {
    let mut parts = Vec::new();
    for (kind, word) in [
        (ThreadKind::MetricReader, "reader"),
        (ThreadKind::SpanProcessor, "span"),
        (ThreadKind::LogProcessor, "log"),
        (ThreadKind::Grpc, "grpc"),
    ] {
        match p.threads_of(kind).count() {
            0 => {}
            1 => parts.push(word.to_string()),
            n => parts.push(format!("{word} x{n}")),
        }
    }
    match (parts.is_empty(), p.python.names_read) {
        (false, _) => parts.join(", "),
        (true, true) => "-".to_string(),
        (true, false) => "? (no Python names)".to_string(),
    }
}

fn collector_sockets(snap: &Snapshot, p: &Process) -> String {
    let to_collector: Vec<_> = p
        .sockets
        .iter()
        .filter(|s| collector_of(snap, s).is_some())
        .collect();
    if to_collector.is_empty() {
        return "-".to_string();
    }
    let shared: Vec<usize> = to_collector
        .iter()
        .map(|s| s.shared_with.len())
        .filter(|n| *n > 1)
        .collect();
    let most = shared.iter().max().copied().unwrap_or(0);
    match shared.len() {
        0 => to_collector.len().to_string(),
        n if n == to_collector.len() => format!("{n}, shared by {most} pids"),
        n => format!("{} ({n} shared by {most} pids)", to_collector.len()),
    }
}

fn status(p: &Process, findings: &[Finding]) -> String {
    let mut codes = codes_for(findings, p.pid);
    if codes.is_empty() {
        "ok".to_string()
    } else {
        codes.dedup();
        codes.join(" ")
    }
}

fn finding(out: &mut String, f: &Finding, fix_as_for: Option<&str>) {
    let head = format!("{}[{}]", f.severity.as_str(), f.code);
    let head = match f.severity {
        Severity::Error => head.red().bold(),
        Severity::Warning => head.yellow().bold(),
    };
    let _ = writeln!(out, "{head} {}: {}", f.slug.bold(), f.title);
    let pids: Vec<String> = f.pids.iter().map(|p| p.to_string()).collect();
    let _ = writeln!(out, "  pids: {}", pids.join(", "));
    let _ = writeln!(out, "  evidence:");
    for e in &f.evidence {
        let _ = writeln!(out, "    - {e}");
    }
    if let Some(code) = fix_as_for {
        let _ = writeln!(out, "  fix: as for {code} above");
        let _ = writeln!(out, "  more: otel-forkcheck explain {}", f.code);
        out.push('\n');
        return;
    }
    let _ = writeln!(out, "  fix:");
    for line in f.fix.lines() {
        if line.is_empty() {
            out.push('\n');
        } else {
            let _ = writeln!(out, "    {line}");
        }
    }
    let _ = writeln!(out, "  more: otel-forkcheck explain {}", f.code);
    out.push('\n');
}

fn verdict_line(out: &mut String, findings: &[Finding]) {
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = findings.len() - errors;
    let verdict = Verdict::of(findings);
    let word = match verdict {
        Verdict::Pass => "pass".green().bold(),
        Verdict::Warn => "warn".yellow().bold(),
        Verdict::Fail => "fail".red().bold(),
    };
    let _ = writeln!(
        out,
        "verdict: {word} ({errors} error(s), {warnings} warning(s))"
    );
}
