//! What `run` prints and writes: it fills the one [`Report`] (the inspection, each process's
//! exports, the receiver and run sections) and renders it as asked, with `--junit` beside.

use std::collections::BTreeMap;

use super::{RunOptions, RunResult};
use crate::diagnose::{self, Facts, Finding};
use crate::error::Error;
use crate::ledger::{CountExpectation, ExpectedCount, Ledger};
use crate::receive::cmd::save_json;
use crate::report::receiver::ReceiverView;
use crate::report::run::{worker_rows, RequestsView, RunView};
use crate::report::{emit_report, junit, model::Report};

/// The ledger to judge: the run's, with the `--expect-count` expectations, `served` filled in
/// with the requests the server answered (any status).
pub fn judged_ledger(args: &RunOptions, r: &RunResult) -> Ledger {
    let mut ledger = r.ledger.clone();
    let answered = r.outcomes.iter().filter(|o| o.status.is_some()).count() as u64;
    ledger.expected_counts = args
        .expect_counts
        .iter()
        .map(|e| CountExpectation {
            metric: e.metric.clone(),
            expected: match e.expected {
                ExpectedCount::Served(None) => ExpectedCount::Served(Some(answered)),
                ref x => x.clone(),
            },
        })
        .collect();
    ledger
}

/// The report of a run (`ledger`: the run's, as judged).
pub fn report(r: &RunResult, ledger: &Ledger, findings: &[Finding]) -> Report {
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for o in &r.outcomes {
        *statuses
            .entry(o.status.map_or("error".into(), |s| s.to_string()))
            .or_default() += 1;
    }
    let run = RunView {
        command: r.command.clone(),
        launched_pid: r.launched,
        master: r.master,
        workers_at_start: r.workers.clone(),
        signals: r.signals.clone(),
        env: r.env.clone(),
        targets: r.targets.clone(),
        requests: RequestsView {
            sent: r.outcomes.len(),
            answered: r.outcomes.iter().filter(|o| o.status.is_some()).count(),
            attributed: r
                .outcomes
                .iter()
                .filter(|o| o.status.is_some() && o.pid.is_some())
                .count(),
            statuses,
            errors: r
                .outcomes
                .iter()
                .filter_map(|o| o.error.clone())
                .take(10)
                .collect(),
        },
        workers: worker_rows(&r.snapshot, ledger, &r.workers, &r.signals, findings),
        stop: r.stop.clone(),
        elapsed_ms: r.elapsed.as_millis() as u64,
        http: r.sent_http,
        ended: r.ended.clone(),
        exit_code: r.exit_code,
        drivers: r.drivers.clone(),
        children: r.ledger.children.clone(),
    };
    Report::new(&r.snapshot, findings)
        .with_receiver(ledger, ReceiverView::of(ledger, r.http, r.grpc))
        .with_run(run)
}

/// Prints the report, writes the JUnit file (and the saved ledger), and returns the exit
/// status: from the findings alone.
pub fn emit(args: &RunOptions, r: &RunResult) -> i32 {
    let ledger = judged_ledger(args, r);
    let findings = diagnose::diagnose(&Facts::new(Some(&r.snapshot), Some(&ledger)));
    if let Some(path) = &args.save_ledger {
        let snap_path = path.with_extension("snapshot.json");
        if let Err(e) = save_json(path, &ledger).and_then(|_| save_json(&snap_path, &r.snapshot)) {
            return Error::new(e, "choose a writable path for --save-ledger").print();
        }
    }
    let report = report(r, &ledger, &findings);
    if let Some(path) = &args.junit {
        let xml = junit::render(
            "otel-forkcheck run",
            &junit::cases(&report, args.fail_on),
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
    emit_report(&report, args.format, args.fail_on)
}
