//! Reports of every command, built from recorded snapshots and built ledgers, against the
//! published schema (`docs/report.schema.json`); the end-to-end tests check the binary's own
//! output the same way.

use serde_json::Value;

use super::model::Report;
use super::receiver::{receiver_report, Expectation, ReceiverView};
use super::run::{worker_rows, RequestsView, RunView};
use crate::diagnose::{diagnose, Facts, Finding, PidSignal, Severity};
use crate::ledger::build::{id, proc, B};
use crate::ledger::{Signal, StopRecord};
use crate::snapshot::Snapshot;

fn assert_valid(report: &Report) -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/report.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let v = jsonschema::validator_for(&schema).unwrap();
    let json = serde_json::to_value(report).unwrap();
    let errors: Vec<String> = v
        .iter_errors(&json)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    json
}

fn recorded(name: &str) -> Snapshot {
    let path = format!(
        "{}/fixtures/snapshots/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

const RECORDED: [&str; 6] = [
    "grpc-fork-off",
    "instrument",
    "postfork",
    "preload-http",
    "sdk162-preload",
    "stuck-reader",
];

#[test]
fn check_reports_of_every_recorded_snapshot() {
    for name in RECORDED {
        let snap = recorded(name);
        let findings = diagnose(&Facts::from_snapshot(&snap));
        let json = assert_valid(&Report::new(&snap, &findings));
        assert!(json.get("receiver").is_none() && json.get("run").is_none());
    }
}

#[test]
fn receive_and_run_reports() {
    let snap = recorded("postfork");
    let workers: Vec<i32> = snap.workers().map(|p| p.pid).collect();
    let mut b = B::new();
    let h = proc(workers[0], &[], 1);
    let c = b.conn(std::slice::from_ref(&h));
    b.sends(c, &[h], Signal::Traces, id("app", Some(7), None), 3, 10);
    let mut ledger = b.l.clone();
    ledger.expected_signals = vec![Signal::Traces, Signal::Metrics];
    // receive, without and with a tree.
    let findings = diagnose(&Facts::new(None, Some(&ledger)));
    let r =
        receiver_report(&ledger, None, &findings, None, None).with_expectation(Some(Expectation {
            workers: 2,
            signals: ledger.expected_signals.clone(),
            met: false,
            workers_done: vec![],
        }));
    let json = assert_valid(&r);
    assert!(json["receiver"]["connections"].is_array());
    assert_eq!(json["receiver"]["connection_count"], 1);
    assert_valid(&receiver_report(&ledger, Some(&snap), &[], None, None));
    // run: one lost signal, named by a finding.
    ledger.served.insert(
        workers[0],
        crate::ledger::Served {
            requests: 4,
            first_ms: 1,
            last_ms: 20,
        },
    );
    let lost = Finding {
        code: "FC209".into(),
        slug: "lost-on-exit".into(),
        severity: Severity::Error,
        pids: vec![workers[0]],
        title: "t".into(),
        evidence: vec![],
        fix: String::new(),
        signals: vec![],
    }
    .with_signals(vec![PidSignal {
        pid: workers[0],
        signal: Signal::Metrics,
    }]);
    let findings = vec![lost];
    let run = RunView {
        command: vec!["gunicorn".into()],
        launched_pid: snap.root_pid,
        master: snap.root_pid,
        workers_at_start: workers.clone(),
        signals: ledger.expected_signals.clone(),
        env: vec![],
        targets: vec!["http://127.0.0.1:1/".into()],
        requests: RequestsView::default(),
        workers: worker_rows(
            &snap,
            &ledger,
            &workers,
            &ledger.expected_signals,
            &findings,
        ),
        stop: StopRecord {
            ended: Some("exit status 0".into()),
            ..StopRecord::default()
        },
        elapsed_ms: 5,
        http: false,
        ended: Some("exit status 0".into()),
        exit_code: Some(0),
        drivers: vec![crate::report::run::DriverView {
            command: "python enqueue.py 4".into(),
            pid: 9,
            status: Some("exit status 0".into()),
            exit_code: Some(0),
            stopped_by_run: false,
            elapsed_ms: 300,
            output: vec!["queued 4".into()],
        }],
        children: vec![crate::ledger::ChildRecord {
            pid: workers[0],
            exited_ms: Some(7),
            exit_status: Some(0),
            worked: true,
            ..Default::default()
        }],
    };
    let r = Report::new(&snap, &findings)
        .with_receiver(&ledger, ReceiverView::of(&ledger, None, None))
        .with_run(run);
    let json = assert_valid(&r);
    let cell = &json["run"]["workers"][0]["signals"];
    assert_eq!(cell["metrics"]["status"], "missing");
    assert_eq!(cell["metrics"]["findings"][0], "FC209");
    assert_eq!(cell["traces"]["status"], "received");
    assert_eq!(json["processes"][1]["served"]["requests"], 4);
}

#[test]
fn the_schema_refuses_what_it_does_not_promise() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/report.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let v = jsonschema::validator_for(&schema).unwrap();
    let snap = recorded("preload-http");
    let good =
        serde_json::to_value(Report::new(&snap, &diagnose(&Facts::from_snapshot(&snap)))).unwrap();
    assert!(v.is_valid(&good));
    assert_eq!(good["tool"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(good["tool"]["commit"], env!("OTEL_FORKCHECK_COMMIT"));
    let mut bad = good.clone();
    bad["tool"]["commit"] = 7.into();
    assert!(!v.is_valid(&bad));
    let mut old = good.clone();
    old["tool"].as_object_mut().unwrap().remove("commit");
    assert!(
        v.is_valid(&old),
        "reports without tool.commit (0.1.0) stay valid"
    );
    let mut bad = good.clone();
    bad["verdict"] = "ok".into();
    assert!(!v.is_valid(&bad));
    let mut bad = good.clone();
    bad["findings"][0]["code"] = "103".into();
    assert!(!v.is_valid(&bad));
    let mut bad = good;
    bad.as_object_mut().unwrap().remove("processes");
    assert!(!v.is_valid(&bad));
}

#[test]
fn metric_values_and_count_expectations_are_in_the_schema() {
    use crate::diagnose::testkit::{Scenario, MASTER, W1, W2};
    use crate::ledger::{CountExpectation, ExpectedCount};
    let mut s = Scenario::gunicorn(2);
    s.started(MASTER, 1_000)
        .started(W1, 5_000)
        .started(W2, 5_000);
    s.served(W1, 2, 6_000..=7_000).served(W2, 1, 6_000..=7_000);
    for w in [W1, W2] {
        s.metrics(w)
            .counter("requests{prefork}", 1.0, 2_000)
            .counter("requests{/}", 1.5, 5_500)
            .at(9_000);
    }
    s.expect_count(CountExpectation {
        metric: "requests".into(),
        expected: ExpectedCount::Served(Some(3)),
    });
    s.stopped(9_500).now(10_000);
    let (snap, ledger) = (s.snapshot().unwrap(), s.ledger());
    let findings = diagnose(&Facts::new(Some(snap), Some(ledger)));
    assert!(findings.iter().any(|f| f.code == "FC211"), "{findings:?}");
    let r =
        Report::new(snap, &findings).with_receiver(ledger, ReceiverView::of(ledger, None, None));
    let json = assert_valid(&r);
    let w1 = &json["processes"][1]["exports"];
    assert_eq!(w1["sums"]["requests"], 2.5);
    assert_eq!(w1["metrics"]["requests"]["series"], 2);
    assert_eq!(w1["identities"][0]["sums"]["requests"], 2.5);
    let c = &json["counts"][0];
    assert_eq!(
        (c["total"].clone(), c["expected"].clone()),
        (5.into(), 3.into())
    );
    assert_eq!(c["met"], false);
    assert_eq!(c["pids"][0]["served"], 2);
    // the human table shows the top counters
    let table = super::receiver::table(ledger, Some(snap), &findings, false);
    assert!(table.contains("COUNTERS"), "{table}");
    assert!(table.contains("requests=2.5"), "{table}");
}
