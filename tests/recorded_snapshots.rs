//! Every rule on snapshots recorded from real gunicorn runs (scripts/record-snapshots.sh):
//! the exact codes and pids each scenario must produce, and nothing else.

use otel_forkcheck::diagnose::{diagnose, Facts, Finding};
use otel_forkcheck::snapshot::Snapshot;

fn load(name: &str) -> Snapshot {
    let path = format!(
        "{}/fixtures/snapshots/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// (code, pids) of every finding, in report order.
fn found(snap: &Snapshot) -> Vec<(String, Vec<i32>)> {
    diagnose(&Facts::from_snapshot(snap))
        .into_iter()
        .map(|f: Finding| (f.code, f.pids))
        .collect()
}

fn master(snap: &Snapshot) -> i32 {
    snap.master().expect("recorded tree has a master").pid
}

fn workers(snap: &Snapshot) -> Vec<i32> {
    let mut w: Vec<i32> = snap.workers().map(|p| p.pid).collect();
    w.sort();
    w
}

fn all(snap: &Snapshot) -> Vec<i32> {
    let mut pids = vec![master(snap)];
    pids.extend(workers(snap));
    pids.sort();
    pids
}

fn f(code: &str, pids: Vec<i32>) -> (String, Vec<i32>) {
    (code.to_string(), pids)
}

#[test]
fn preload_with_export_before_fork() {
    let s = load("preload-http");
    assert_eq!(workers(&s).len(), 2);
    assert_eq!(
        found(&s),
        vec![
            f("FC103", all(&s)),
            f("FC101", vec![master(&s)]),
            f("FC302", vec![master(&s)]),
        ]
    );
}

#[test]
fn post_fork_is_clean() {
    let s = load("postfork");
    assert_eq!(workers(&s).len(), 2);
    assert_eq!(found(&s), vec![]);
    // and the facts behind the pass: workers have all three threads, the master none
    for w in s.workers() {
        assert_eq!(w.exporter_threads().count(), 3, "worker {}", w.pid);
    }
    assert_eq!(s.master().unwrap().exporter_threads().count(), 0);
}

#[test]
fn sdk_1_6_2_leaves_workers_without_exporter() {
    let s = load("sdk162-preload");
    let (m, w) = (master(&s), workers(&s));
    assert_eq!(
        found(&s),
        vec![
            f("FC102", vec![m, w[0]]),
            f("FC102", vec![m, w[1]]),
            f("FC103", all(&s)),
            f("FC106", all(&s)),
            f("FC101", vec![m]),
            f("FC302", vec![m]),
        ]
    );
    assert_eq!(
        s.master().unwrap().python.sdk_version.as_deref(),
        Some("1.6.2")
    );
}

#[test]
fn slow_collector_at_fork_leaves_worker_readers_stuck() {
    let s = load("stuck-reader");
    let (m, w) = (master(&s), workers(&s));
    assert_eq!(
        found(&s),
        vec![
            f("FC103", all(&s)),
            f("FC104", vec![w[0]]),
            f("FC104", vec![w[1]]),
            f("FC101", vec![m]),
            f("FC302", vec![m]),
        ]
    );
}

#[test]
fn opentelemetry_instrument_runs_the_sdk_in_the_master() {
    let s = load("instrument");
    let m = master(&s);
    assert_eq!(found(&s), vec![f("FC101", vec![m]), f("FC301", vec![m])]);
    assert!(s.master().unwrap().env.auto_instrumentation);
}

#[test]
fn grpc_channel_from_the_master_with_fork_support_off_crash_loops() {
    let s = load("grpc-fork-off");
    let m = master(&s);
    // the workers alive at the end: none has gRPC threads of its own
    let mut fc105 = vec![m];
    fc105.extend(workers(&s));
    let mut churned: Vec<i32> = s
        .churn
        .exited
        .iter()
        .chain(&s.churn.spawned)
        .copied()
        .collect();
    churned.sort();
    churned.dedup();
    assert!(s.churn.exited.len() >= 2, "{:?}", s.churn);
    assert_eq!(
        found(&s),
        vec![
            f("FC105", fc105),
            f("FC107", churned),
            f("FC101", vec![m]),
            f("FC302", vec![m]),
        ]
    );
    assert_eq!(
        s.master().unwrap().env.grpc_fork_support.as_deref(),
        Some("0")
    );
}

/// `Pool(maxtasksperchild=1)` kept busy (fixtures/multiprocessing/pool.py): a process replaced
/// after every task. The window caught a recycled process's exit status (0) from its zombie
/// before the parent reaped it: recycling, no crash loop. Without that status the same churn
/// would be FC107, as it was before statuses were read.
#[test]
fn a_recycling_multiprocessing_pool_is_no_crash_loop() {
    let s = load("pool-recycling");
    assert!(s.churn.exited.len() >= 10, "{:?}", s.churn);
    assert!(!s.churn.wait_statuses.is_empty());
    assert!(s
        .churn
        .wait_statuses
        .iter()
        .all(|(pid, code)| { *code == 0 && s.churn.exited.contains(pid) }));
    assert_eq!(found(&s), vec![]);
    let mut blind = s.clone();
    blind.churn.wait_statuses.clear();
    assert_eq!(
        found(&blind)
            .into_iter()
            .map(|(c, _)| c)
            .collect::<Vec<_>>(),
        ["FC107"]
    );
}

#[test]
fn snapshots_survive_a_json_round_trip() {
    for name in [
        "preload-http",
        "postfork",
        "sdk162-preload",
        "stuck-reader",
        "instrument",
        "grpc-fork-off",
        "pool-recycling",
    ] {
        let s = load(name);
        let again: Snapshot = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(s, again, "{name}");
    }
}
