//! `otel-forkcheck receive`: run the receiver for people and for CI, with the options the
//! command line parsed ([`ReceiveOptions`]).

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::diagnose::{self, Facts};
use crate::ledger::{CountExpectation, Ledger, Num, Signal};
use crate::snapshot::Snapshot;

use super::{Event, Options, Receiver};
mod senders;
use crate::diagnose::evidence::workers_exporting;
use crate::error::Error;
use crate::observe::tree::tree_snapshot;
use crate::report::receiver::{self as report, Expectation};
use crate::report::{github, human, print_stdout, FailOn, Format, Verdict};
use senders::SenderTrees;

/// What `receive` was asked to do, parsed (by the command line) and bounded.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    pub server: Options,
    /// The pre-fork master whose tree is re-read every second.
    pub pid: Option<i32>,
    pub signals: Vec<Signal>,
    pub expect_workers: Option<usize>,
    /// `--expect-count METRIC=N`: judged at the end (FC211, FC212).
    pub expect_counts: Vec<CountExpectation>,
    pub timeout: Option<Duration>,
    pub format: Format,
    pub fail_on: FailOn,
    pub color: bool,
    pub save_ledger: Option<PathBuf>,
    /// Processes of a re-read tree that exited, kept for the report ([`merge_tree`]).
    pub keep_exited: usize,
}

/// Runs `otel-forkcheck receive`; returns the exit status.
pub fn receive(mut o: ReceiveOptions) -> i32 {
    let mut note = None;
    if let Some(pid) = o.pid {
        // A wrapper (`sh -c`, tini) is looked through to the master below it.
        match crate::observe::resolve_root(pid) {
            Ok((root, n)) => (o.pid, note) = (Some(root), n),
            Err(e) => return Error::from(e).print(),
        }
        if let Err(e) = tree_snapshot(o.pid.unwrap_or(pid)) {
            return Error::from(e).print();
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Error::new(format!("cannot start the runtime: {e}"), "").print(),
    };
    rt.block_on(run(o, note))
}

async fn run(args: ReceiveOptions, root_note: Option<String>) -> i32 {
    let r = match super::serve(args.server.clone()).await {
        Ok(r) => r,
        Err(e) => return Error::new(e.to_string(), e.hint()).print(),
    };
    // The bound addresses, always (port 0 says which port it got); on stderr so stdout stays
    // machine-readable for json/ndjson.
    let mut listening = Vec::new();
    match (r.http_addr, r.grpc_addr) {
        (Some(h), Some(g)) if h == g => {
            listening.push(format!("OTLP/HTTP and OTLP/gRPC on one port: http://{h}"))
        }
        (h, g) => {
            if let Some(a) = h {
                listening.push(format!("OTLP/HTTP on http://{a}"));
            }
            if let Some(a) = g {
                listening.push(format!("OTLP/gRPC on {a}"));
            }
        }
    }
    eprintln!(
        "otel-forkcheck receive: listening: {}",
        listening.join(", ")
    );
    let _ = std::io::stderr().flush();

    let live = args.format == Format::Human && std::io::stdout().is_terminal();
    // Only ndjson prints every export: other formats do not subscribe, so the receiver builds
    // no event per request.
    let mut events = (args.format == Format::Ndjson).then(|| r.subscribe());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut snap = args.pid.and_then(|p| tree_snapshot(p).ok());
    let mut ran_python = snap.as_ref().is_some_and(runs_python);
    if let (Some(s), Some(n)) = (snap.as_mut(), root_note) {
        s.notes.insert(0, n);
    }
    // Without --pid: the senders' own trees.
    let mut trees = SenderTrees::new(args.keep_exited);
    // The live view's previous frame (rates are per second since it).
    let mut prev: Option<Ledger> = None;
    let mut last_lines = 0usize;
    let mut met = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let deadline = args.timeout.map(|t| tokio::time::Instant::now() + t);
    let timed_out = async move {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(timed_out);
    let mut sigterm =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        let term = async {
            match sigterm.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        let next_event = async {
            match events.as_mut() {
                Some(e) => e.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = term => break,
            _ = &mut timed_out => break,
            ev = next_event => {
                match ev {
                    Ok(e) => if args.format == Format::Ndjson { print_event(&e) },
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        if args.format == Format::Ndjson {
                            print_stdout(&format!("{}\n", serde_json::json!({"event": "lagged", "skipped": n})));
                        }
                    }
                    Err(_) => break,
                }
            }
            _ = tick.tick() => {
                if let Some(pid) = args.pid {
                    if let Ok(s) = tree_snapshot(pid) {
                        ran_python = ran_python || runs_python(&s);
                        snap = Some(merge_tree(snap.take(), s, args.keep_exited));
                    }
                }
                let ledger = r.ledger();
                if let Some(n) = args.expect_workers {
                    if workers_exporting(&ledger, snap.as_ref(), &args.signals).len() >= n {
                        met = true;
                        break;
                    }
                }
                if args.pid.is_none() {
                    trees.update(&ledger);
                }
                if live {
                    let findings = judge(&ledger, snap.as_ref(), &trees);
                    let view = snap.clone().or_else(|| trees.merged(&ledger));
                    let text = match &prev {
                        Some(p) => report::live_table(&ledger, p, view.as_ref(), &findings, args.color),
                        None => report::table(&ledger, view.as_ref(), &findings, args.color),
                    };
                    prev = Some(ledger);
                    let mut out = std::io::stdout().lock();
                    if last_lines > 0 {
                        let _ = write!(out, "\x1b[{last_lines}A\x1b[J");
                    }
                    let _ = out.write_all(text.as_bytes());
                    let _ = out.flush();
                    last_lines = text.lines().count();
                }
            }
        }
    }
    // Drain events already accounted, for ndjson completeness.
    if let Some(events) = events.as_mut() {
        while let Ok(e) = events.try_recv() {
            print_event(&e);
        }
    }
    // A program run since the last look (a wrapper that waited for this receiver).
    if let (false, Some(pid)) = (ran_python, args.pid) {
        ran_python = tree_snapshot(pid).is_ok_and(|s| runs_python(&s));
    }
    finish(&args, r, snap, trees, met, last_lines, ran_python).await
}

/// Whether a process of `s` runs Python, or may (unknown is not refused). The light tree
/// snapshot carries no Python facts: each process is asked here, as `observe` asks it.
fn runs_python(s: &Snapshot) -> bool {
    s.processes
        .iter()
        .any(|p| crate::observe::python::may_run_python(p.pid, &p.exe))
}

/// A `--pid` tree in which no process ran Python while the receiver ran: not the server (a
/// shell, a sidecar, the wrong pid), so "no findings" would be a pass that judged nothing. Not
/// refused at start: a wrapper may wait for this receiver before it runs the server.
fn no_python(s: &Snapshot) -> Error {
    Error::new(
        crate::observe::no_python_cause(
            s,
            "ran no Python while the receiver ran: nothing here to judge",
        ),
        crate::observe::PYTHON_MASTER_HINT,
    )
}

/// The findings: over the `--pid` tree, else over the senders' own trees.
fn judge(ledger: &Ledger, snap: Option<&Snapshot>, trees: &SenderTrees) -> Vec<diagnose::Finding> {
    match snap {
        Some(s) => diagnose::diagnose(&Facts::new(Some(s), Some(ledger))),
        None => trees.diagnose(ledger),
    }
}

fn print_event(e: &Event) {
    if let Ok(s) = serde_json::to_string(e) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
    }
}

/// Exited processes kept in a re-read tree by default (`--keep-exited`).
pub const DEFAULT_KEEP_EXITED: usize = 1024;

/// The tree as just read (`new`), then the processes that exited since (their exports stay
/// meaningful), the latest to exit first: at most `keep` of them. Those beyond it, and exited
/// ones whose pid a new process took, are dropped and counted in `churn.aged_out`, so a tree
/// under sustained churn stays bounded in memory and in the cost of every re-read and report.
pub fn merge_tree(old: Option<Snapshot>, mut new: Snapshot, keep: usize) -> Snapshot {
    let Some(mut old) = old else {
        return new;
    };
    // Notes said once (the wrapper looked through) stay said.
    for n in std::mem::take(&mut old.notes).into_iter().rev() {
        if !new.notes.contains(&n) {
            new.notes.insert(0, n);
        }
    }
    // `old` is [alive then, exited before (latest first)]: those alive then and gone now
    // exited last, so keeping old's order keeps the latest exits first.
    let live: std::collections::HashMap<i32, u64> = new
        .processes
        .iter()
        .map(|p| (p.pid, p.started_at_ms))
        .collect();
    let mut aged_out = old.churn.aged_out;
    let mut kept = 0;
    for p in old.processes {
        match live.get(&p.pid) {
            // The same process, still alive (or its pid, now someone else's).
            Some(start) => {
                if *start != p.started_at_ms && p.started_at_ms != 0 {
                    aged_out += 1;
                }
            }
            None if kept < keep => {
                kept += 1;
                new.processes.push(p);
            }
            None => aged_out += 1,
        }
    }
    new.churn.aged_out += aged_out;
    new
}

async fn finish(
    args: &ReceiveOptions,
    r: Receiver,
    snap: Option<Snapshot>,
    mut trees: SenderTrees,
    met: bool,
    last_lines: usize,
    ran_python: bool,
) -> i32 {
    let (http, grpc) = (r.http_addr, r.grpc_addr);
    let mut ledger = r.shutdown(Duration::from_millis(500)).await;
    ledger.expected_workers = args.expect_workers;
    ledger.expected_counts = args.expect_counts.clone();
    ledger.closed = true;
    if args.pid.is_none() {
        trees.update(&ledger);
    }
    let findings = judge(&ledger, snap.as_ref(), &trees);
    // Roles for the report and the table: the --pid tree, else the senders' trees.
    let view = snap.clone().or_else(|| trees.merged(&ledger));
    if let Some(path) = &args.save_ledger {
        if let Err(e) = save_json(path, &ledger) {
            return Error::new(e, "choose a writable path for --save-ledger").print();
        }
    }
    if let (false, Some(s)) = (ran_python, snap.as_ref()) {
        // A process of the tree that exported ran an SDK, though no look may have caught it
        // running (a job shorter than the time between two looks): judged as usual.
        let exported = ledger.processes.values().any(|e| {
            e.sender.descends_from(s.root_pid) || s.processes.iter().any(|p| p.pid == e.sender.pid)
        });
        if !exported {
            return no_python(s).print();
        }
    }
    let status = args.fail_on.exit_status(&findings);
    let expectation = args.expect_workers.map(|n| Expectation {
        workers: n,
        signals: args.signals.clone(),
        met,
        workers_done: workers_exporting(&ledger, snap.as_ref(), &args.signals),
    });
    match args.format {
        Format::Json => {
            let r = report::receiver_report(&ledger, view.as_ref(), &findings, http, grpc)
                .with_expectation(expectation);
            print_stdout(&(r.to_json() + "\n"));
        }
        Format::Github => {
            let r = report::receiver_report(&ledger, view.as_ref(), &findings, http, grpc);
            print_stdout(&github::render(&r));
        }
        Format::Ndjson => {
            let v = serde_json::json!({
                "event": "summary",
                "verdict": Verdict::of(&findings),
                "expectation_met": args.expect_workers.map(|_| met),
                "findings": findings,
            });
            print_stdout(&format!("{v}\n"));
        }
        Format::Human => {
            let mut out = String::new();
            if last_lines > 0 {
                out.push_str(&format!("\x1b[{last_lines}A\x1b[J"));
            }
            out.push_str(&report::table(
                &ledger,
                view.as_ref(),
                &findings,
                args.color,
            ));
            out.push('\n');
            if findings.is_empty() {
                out.push_str("No findings.\n\n");
            } else {
                out.push_str(&human::findings(&findings));
            }
            if let Some(e) = &expectation {
                let _ = writeln!(
                    out,
                    "expectation: {} worker(s) exporting {}: {} ({} so far: {:?})",
                    e.workers,
                    if e.signals.is_empty() {
                        "anything".to_string()
                    } else {
                        e.signals
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    },
                    if e.met { "met" } else { "NOT met" },
                    e.workers_done.len(),
                    e.workers_done
                );
            }
            for t in ledger.count_tallies() {
                let _ = writeln!(
                    out,
                    "count: {} added up to {} over {} pid(s), expected {}: {}",
                    t.metric,
                    Num(t.total),
                    t.pids.iter().filter(|p| p.total != 0.0).count(),
                    t.expected.map_or("?".into(), |e| Num(e).to_string()),
                    match t.compare() {
                        Some(std::cmp::Ordering::Equal) => "met",
                        Some(std::cmp::Ordering::Greater) => "too many (FC211)",
                        _ => "too few (FC212)",
                    }
                );
            }
            let _ = writeln!(out, "verdict: {}", Verdict::of(&findings).as_str());
            print_stdout(&out);
        }
    }
    status
}

/// Writes `value` as pretty JSON to `path`.
pub fn save_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Process;

    fn tree(pids: &[(i32, u64)]) -> Snapshot {
        Snapshot {
            processes: pids
                .iter()
                .map(|&(pid, started_at_ms)| Process {
                    pid,
                    started_at_ms,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn pids(s: &Snapshot) -> Vec<i32> {
        s.processes.iter().map(|p| p.pid).collect()
    }

    #[test]
    fn exited_processes_are_kept_latest_first_up_to_the_bound_and_counted() {
        let s = merge_tree(None, tree(&[(1, 1), (2, 2), (3, 3)]), 2);
        let s = merge_tree(Some(s), tree(&[(1, 1), (2, 2), (4, 4)]), 2);
        assert_eq!(pids(&s), [1, 2, 4, 3]);
        assert_eq!(s.churn.aged_out, 0);
        // 2 and 4 exit now, after 3: 3 goes
        let s = merge_tree(Some(s), tree(&[(1, 1), (5, 5)]), 2);
        assert_eq!(pids(&s), [1, 5, 2, 4]);
        assert_eq!(s.churn.aged_out, 1);
        // pid 2 is reused by a new process: the exited one is dropped and counted; 5 exits
        let s = merge_tree(Some(s), tree(&[(1, 1), (2, 9)]), 2);
        assert_eq!(pids(&s), [1, 2, 5, 4]);
        assert_eq!(s.churn.aged_out, 2);
        // nothing kept at all
        let s = merge_tree(Some(s), tree(&[(1, 1)]), 0);
        assert_eq!(pids(&s), [1]);
        assert_eq!(s.churn.aged_out, 5);
    }
}
