//! `run`'s human output: what was launched, sent and stopped, the per-worker table (cells from
//! the report, so failures are findings), then the inspection table, findings and verdict.

use std::fmt::Write as _;

use colored::Colorize;

use super::model::Report;
use super::{columns, human};

/// The whole human report of a run; None when the report has no run section.
pub fn render(report: &Report) -> Option<String> {
    let run = report.run.as_ref()?;
    let recv = report.receiver.as_ref();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} `{}` (pid {}), master pid {}, {} worker(s), {:.1} s",
        "otel-forkcheck run:".bold(),
        run.command.join(" "),
        run.launched_pid,
        run.master,
        run.workers_at_start.len(),
        run.elapsed_ms as f64 / 1000.0
    );
    let _ = writeln!(
        out,
        "  receiver: OTLP/HTTP {}, OTLP/gRPC {}",
        recv.and_then(|r| r.http.as_deref())
            .map_or("-".into(), |a| format!("http://{a}")),
        recv.and_then(|r| r.grpc.as_deref()).unwrap_or("-")
    );
    for e in &run.env {
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
    let q = &run.requests;
    for d in &run.drivers {
        let _ = writeln!(
            out,
            "  driver: `{}` (pid {}): {}{} after {:.1} s",
            d.command,
            d.pid,
            d.status.as_deref().unwrap_or("status unknown"),
            if d.stopped_by_run {
                ", stopped by run"
            } else {
                ""
            },
            d.elapsed_ms as f64 / 1000.0
        );
    }
    if !run.children.is_empty() {
        let worked: Vec<String> = run
            .children
            .iter()
            .filter(|c| c.worked)
            .map(|c| c.pid.to_string())
            .collect();
        let recycled = run.children.iter().filter(|c| c.recycled).count();
        let _ = writeln!(
            out,
            "  children: {} seen, {} recycled; worked (CPU beyond idle): {}",
            run.children.len(),
            recycled,
            if worked.is_empty() {
                "none".to_string()
            } else {
                worked.join(", ")
            }
        );
    }
    if !run.http {
        let _ = writeln!(
            out,
            "  traffic: none sent (no TCP port, no --hit): work came from --drive or outside"
        );
    } else {
        let _ = writeln!(
            out,
            "  traffic: {} request(s) to {}: {} answered ({}), {} attributed to a pid",
            q.sent,
            run.targets.join(", "),
            q.answered,
            q.statuses
                .iter()
                .map(|(k, v)| format!("{k} x{v}"))
                .collect::<Vec<_>>()
                .join(", "),
            q.attributed
        );
    }
    if let Some(e) = q.errors.first() {
        let _ = writeln!(out, "  first request error: {e}");
    }
    if let Some(how) = &run.ended {
        let _ = writeln!(
            out,
            "  ended by itself ({how}); judged after a drain of {:.1} s{}",
            run.stop.waited_ms as f64 / 1000.0,
            if run.stop.graceful {
                ""
            } else {
                ", the rest of its group SIGKILLed"
            }
        );
    } else {
        let _ = writeln!(
            out,
            "  stop: SIGTERM to pid {}, {} after {:.1} s",
            run.stop.master,
            if run.stop.graceful {
                "every process left"
            } else {
                "group SIGKILLed"
            },
            run.stop.waited_ms as f64 / 1000.0
        );
    }
    if !run.stop.exits.is_empty() {
        let exits: Vec<String> = run
            .stop
            .exits
            .iter()
            .map(|e| {
                format!(
                    "{} {:.2} s ({})",
                    e.pid,
                    e.after_ms as f64 / 1000.0,
                    e.how()
                )
            })
            .collect();
        let _ = writeln!(out, "  workers left after SIGTERM: {}", exits.join(", "));
    }
    for n in &run.stop.notes {
        let _ = writeln!(out, "  server said: {n}");
    }
    if let Some(w) = recv.and_then(|r| r.note.as_ref()) {
        let _ = writeln!(out, "  {} {w}", "note:".yellow());
    }
    out.push('\n');
    let mut table: Vec<Vec<String>> = vec![{
        let mut h = vec!["PID".to_string(), "ROLE".into(), "REQUESTS".into()];
        h.extend(run.signals.iter().map(|s| s.as_str().to_uppercase()));
        h
    }];
    for row in &run.workers {
        let mut line = vec![
            row.pid.to_string(),
            row.role.as_str().to_string(),
            row.requests_served.to_string(),
        ];
        line.extend(row.signals.values().map(|c| c.text()));
        table.push(line);
    }
    for (i, s) in columns(&table, "  ").into_iter().enumerate() {
        let failed = i > 0 && run.workers[i - 1].signals.values().any(|c| c.failed());
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
        "  (exports/items received per signal; NO and LOST name the finding that says so; ?: \
         it shares its collector connection, so its exports cannot be told from the other \
         holders')"
    );
    out.push('\n');
    out.push_str(&human::render(&report.snapshot, &report.findings));
    Some(out)
}
