use super::*;
use crate::diagnose::testkit::{gunicorn, main_only, sdk_threads, MASTER};
use crate::ledger::build::*;
use crate::snapshot::{Snapshot, ThreadKind};

const W1: i32 = MASTER + 1;
const W2: i32 = MASTER + 2;

fn stop(graceful: bool) -> StopRecord {
    StopRecord {
        master: MASTER,
        requested_ms: 10_000,
        graceful,
        waited_ms: if graceful { 800 } else { 35_000 },
        notes: vec![],
        ended: None,
        exits: Vec::new(),
    }
}

fn served(n: u64, last_ms: u64) -> Served {
    Served {
        requests: n,
        first_ms: 1_000,
        last_ms,
    }
}

/// Two workers; w1 exported every signal at `w1_at` (None: nothing at all).
fn ledger(w1_at: Option<u64>) -> Ledger {
    let (w1, w2) = (proc(W1, &[], 0), proc(W2, &[], 0));
    let mut b = B::new();
    let c1 = b.conn(std::slice::from_ref(&w1));
    let c2 = b.conn(std::slice::from_ref(&w2));
    for s in Signal::ALL {
        if let Some(at) = w1_at {
            b.sends(
                c1,
                std::slice::from_ref(&w1),
                s,
                id("a", Some(W1 as i64), None),
                3,
                at,
            );
        }
        b.sends(
            c2,
            std::slice::from_ref(&w2),
            s,
            id("a", Some(W2 as i64), None),
            3,
            10_500,
        );
    }
    let mut l = b.at(12_000);
    l.expected_signals = Signal::ALL.to_vec();
    l.served.insert(W1, served(14, 5_000));
    l.served.insert(W2, served(16, 5_100));
    l.stop = Some(stop(true));
    l
}

/// Workers with these export intervals in their environment (ms).
fn snap_with(interval: &str) -> Snapshot {
    let mut snap = gunicorn(main_only(100), vec![sdk_threads(200), sdk_threads(300)]);
    for p in snap.processes.iter_mut() {
        for s in Signal::ALL {
            p.env.otel.push((interval_var(s).into(), interval.into()));
        }
    }
    snap
}

fn run(l: &Ledger) -> Vec<Finding> {
    let snap = snap_with("60000");
    check(&Facts::new(Some(&snap), Some(l)))
}

#[test]
fn nothing_arrived_from_a_worker_that_served_is_lost() {
    let f = run(&ledger(None));
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].code, "FC209");
    assert_eq!(f[0].pids, vec![W1]);
    assert!(
        f[0].title.contains("metrics, traces, logs"),
        "{}",
        f[0].title
    );
    assert!(f[0].evidence[0].contains("served 14 request(s)"));
    assert!(f[0]
        .evidence
        .iter()
        .any(|e| e.contains("nothing arrived from pid 101")));
    assert!(f[0].evidence.iter().any(|e| e.contains("(graceful)")));
    assert!(f[0].fix.contains("worker_exit"));
    assert!(f[0].fix.contains("shutdown_on_exit"));
    for s in Signal::ALL {
        assert!(f[0].names_signal(W1, s), "{:?}", f[0].signals);
        assert!(!f[0].names_signal(W2, s));
    }
}

#[test]
fn last_export_before_last_request_is_lost() {
    let f = run(&ledger(Some(4_000)));
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].pids, vec![W1]);
    assert!(f[0]
        .evidence
        .iter()
        .any(|e| e.contains("1.0 s before its last served request")));
}

#[test]
fn exit_flush_after_last_request_passes() {
    assert!(run(&ledger(Some(10_200))).is_empty());
}

#[test]
fn not_judged_without_a_stop_or_without_requests() {
    let mut l = ledger(None);
    l.stop = None;
    assert!(run(&l).is_empty());
    let mut l = ledger(None);
    l.served.insert(W1, served(0, 0));
    assert!(run(&l).is_empty());
    // A worker that served nothing and sent nothing is not a failure.
    let mut l = ledger(None);
    l.served.remove(&W1);
    assert!(run(&l).is_empty());
}

#[test]
fn a_signal_without_a_batching_thread_is_left_to_other_rules() {
    let l = ledger(None);
    // w1 runs a metric reader only (names read): only metrics can be pending there.
    let mut snap = snap_with("60000");
    snap.processes[1]
        .threads
        .retain(|t| t.kind != ThreadKind::SpanProcessor);
    snap.processes[1]
        .threads
        .retain(|t| t.kind != ThreadKind::LogProcessor);
    let f = check(&Facts::new(Some(&snap), Some(&l)));
    assert_eq!(f.len(), 1);
    assert!(
        f[0].title.contains("their metrics never arrived"),
        "{}",
        f[0].title
    );
    assert_eq!(
        f[0].signals,
        vec![PidSignal {
            pid: W1,
            signal: Signal::Metrics
        }]
    );
}

/// Inspected before its SDK was set up (a pool initializer still importing it), or gone since
/// its first sample: no SDK thread then says nothing about what was pending when it left.
#[test]
fn no_sdk_thread_when_inspected_is_no_excuse() {
    let l = ledger(None);
    let mut snap = snap_with("60000");
    snap.processes[1].threads = main_only(200);
    let f = check(&Facts::new(Some(&snap), Some(&l)));
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].pids, vec![W1]);
    assert_eq!(f[0].signals.len(), 3, "{:?}", f[0].signals);
    // Gone since its first sample, which showed a metric reader only: every signal is judged.
    let mut snap = snap_with("60000");
    snap.processes[1]
        .threads
        .retain(|t| t.kind == ThreadKind::MetricReader);
    snap.processes[1].gone = true;
    let f = check(&Facts::new(Some(&snap), Some(&l)));
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].signals.len(), 3, "{:?}", f[0].signals);
}

#[test]
fn a_worker_on_a_shared_connection_is_not_judged() {
    let mut l = ledger(None);
    let c = l.connections.keys().next().copied().unwrap();
    l.connections.get_mut(&c).unwrap().holders = vec![MASTER, W1];
    assert!(run(&l).is_empty());
}

#[test]
fn after_the_stop_the_interval_does_not_matter() {
    // 1 s intervals in the environment, 9 s between the first request and the stop: a
    // scheduled export was due and none came. The interval set in code may be longer, or
    // exporting is broken; either way nothing of it will ever arrive now (issue 7).
    let l = ledger(None);
    let snap = snap_with("1000");
    let f = check(&Facts::new(Some(&snap), Some(&l)));
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].pids, vec![W1]);
    assert_eq!(
        f[0].signals,
        Signal::ALL
            .iter()
            .map(|s| PidSignal {
                pid: W1,
                signal: *s
            })
            .collect::<Vec<_>>()
    );
    let ev = f[0].evidence.join("\n");
    assert!(
        ev.contains("traces: OTEL_BSP_SCHEDULE_DELAY=1000 in its environment, so a scheduled export was due"),
        "{ev}"
    );
    assert!(ev.contains("schedule_delay_millis"), "{ev}");
    assert!(ev.contains("export_interval_millis"), "{ev}");
    // Without a snapshot the SDK defaults are said, and every signal is judged all the same.
    let f = check(&Facts::new(None, Some(&l)));
    assert_eq!(f.len(), 1);
    assert!(
        f[0].title
            .contains("their metrics, traces, logs never arrived"),
        "{}",
        f[0].title
    );
    assert!(f[0]
        .evidence
        .iter()
        .any(|e| e.contains("OTEL_BLRP_SCHEDULE_DELAY unset: the SDK default is 1000 ms")));
    // The same after a stop that needed SIGKILL: every process is gone either way.
    let mut l = ledger(None);
    l.stop = Some(stop(false));
    assert_eq!(
        check(&Facts::new(Some(&snap), Some(&l)))[0].signals.len(),
        3
    );
}

#[test]
fn a_stale_last_export_is_lost_whatever_the_interval() {
    // w1 exported at 4 s, its last request was served at 5 s, the stop came at 10 s: with
    // a 1 s interval an export was due after the last request; it did not come.
    let l = ledger(Some(4_000));
    let snap = snap_with("1000");
    let f = check(&Facts::new(Some(&snap), Some(&l)));
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].signals.len(), 3);
    assert!(f[0]
        .evidence
        .iter()
        .any(|e| e.contains("1.0 s before its last served request")));
}

#[test]
fn exports_without_items_are_nothing() {
    let mut l = ledger(None);
    let w1 = proc(W1, &[], 0);
    let mut b = B::new();
    let c = b.conn(std::slice::from_ref(&w1));
    b.sends(
        c,
        std::slice::from_ref(&w1),
        Signal::Logs,
        id("a", Some(W1 as i64), None),
        0,
        10_300,
    );
    l.processes.insert(W1, b.at(0).processes[&W1].clone());
    let f = run(&l);
    assert_eq!(f.len(), 1);
    assert!(f[0].names_signal(W1, Signal::Logs));
    assert!(f[0]
        .evidence
        .iter()
        .any(|e| e.contains("logs: 1 export(s) arrived from pid 101, without a single")));
}

#[test]
fn activity_without_served_requests_is_judged_on_what_never_arrived() {
    let mut l = ledger(None);
    l.served.remove(&W1);
    l.activity
        .insert(W1, vec!["picked 3 tasks from the broker".into()]);
    let f = run(&l);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].pids, vec![W1]);
    assert!(f[0].title.contains("was active but its"), "{}", f[0].title);
    assert!(f[0]
        .evidence
        .iter()
        .any(|e| e.contains("was active: picked 3 tasks")));
    // ... but not the master's activity
    l.activity.clear();
    l.activity.insert(MASTER, vec!["something".into()]);
    assert!(run(&l).is_empty());
    // ... and an active worker whose signals arrived is fine
    let mut l = ledger(Some(10_200));
    l.served.remove(&W1);
    l.activity.insert(W1, vec!["x".into()]);
    assert!(run(&l).is_empty());
}

#[test]
fn explained_pairs_are_left_to_the_rule_that_names_them() {
    let l = ledger(None);
    let snap = snap_with("60000");
    let explained = [PidSignal {
        pid: W1,
        signal: Signal::Metrics,
    }];
    let facts = Facts {
        explained: &explained,
        ..Facts::new(Some(&snap), Some(&l))
    };
    let f = check(&facts);
    assert_eq!(f.len(), 1);
    assert!(!f[0].names_signal(W1, Signal::Metrics));
    assert!(
        f[0].title.contains("their traces, logs never"),
        "{}",
        f[0].title
    );
}

#[test]
fn nothing_received_from_anyone_is_said() {
    let l = ledger(None);
    let mut l2 = l.clone();
    l2.processes.clear();
    l2.totals = Default::default();
    let f = run(&l2);
    assert_eq!(f.len(), 2, "{f:?}");
    assert!(f[0]
        .evidence
        .iter()
        .any(|e| e.contains("no export of any signal reached the receiver")));
    assert!(!run(&l)[0]
        .evidence
        .iter()
        .any(|e| e.contains("no export of any signal reached the receiver")));
}

#[test]
fn sigkill_is_said() {
    let mut l = ledger(None);
    l.stop = Some(stop(false));
    let f = run(&l);
    assert!(f[0].evidence.iter().any(|e| e.contains("SIGKILLed")));
}
