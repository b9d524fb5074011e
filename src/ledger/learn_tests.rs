//! Identity learned across connections (learn.rs), on ledgers built export by export.

use super::learn::MAX_HELD;
use super::*;

const M: i32 = 100;
const C1: i32 = 101;
const C2: i32 = 102;

fn holder(pid: i32, started_at_ns: u64, ancestors: &[i32]) -> Holder {
    Holder {
        pid,
        nspid: vec![pid],
        started_at_ns,
        comm: "celery".into(),
        ancestors: ancestors.to_vec(),
    }
}

/// MainProcess and its two pool children (forked after it started).
fn tree() -> [Holder; 3] {
    [
        holder(M, 1_000, &[1]),
        holder(C1, 2_000, &[M]),
        holder(C2, 2_100, &[M]),
    ]
}

fn inst(id: &str) -> Identity {
    Identity {
        service_name: Some("tasks".into()),
        service_instance_id: Some(id.into()),
        ..Default::default()
    }
}

fn export(conn: u64, signal: Signal, id: Identity, items: u64, at_ms: u64) -> Export {
    Export {
        at_ms,
        conn,
        proto: Proto::Http,
        signal: Some(signal),
        bytes: 100,
        resources: vec![ResourceSummary {
            identity: id,
            items,
            cumulative: vec![SeriesStart {
                series: "tasks".into(),
                start_time_unix_nano: 5,
                key: 7,
            }],
            ..Default::default()
        }],
    }
}

fn conn(l: &mut Ledger, id: u64, holders: &[Holder]) {
    l.open_conn(id, Proto::Http, format!("127.0.0.1:{}", 40000 + id), 0);
    l.set_holders(id, Some(900 + id), holders, None);
}

#[test]
fn a_childs_metrics_on_the_inherited_connection_are_its_own_whatever_the_order() {
    let t = tree();
    let mut l = Ledger::new(0);
    conn(&mut l, 1, &t); // MainProcess's keep-alive connection, inherited by both children
    conn(&mut l, 2, &t[1..2]); // C1's own traces connection
                               // C1's metrics arrive on the shared connection first, its traces (same identity) later.
    let a = l.record(&export(1, Signal::Metrics, inst("c1"), 4, 10), &t);
    assert_eq!(
        a.resources,
        vec![(vec![M, C1, C2], AttributedBy::Ambiguous)]
    );
    // C2's metrics: its identity never arrives on a connection of its own.
    l.record(&export(1, Signal::Metrics, inst("c2"), 3, 11), &t);
    l.record(&export(2, Signal::Traces, inst("c1"), 2, 20), &t[1..2]);
    assert_eq!(l.learned.len(), 1);
    assert_eq!((l.learned[0].pid, l.learned[0].conn), (C1, 2));

    let mut s = l.clone();
    s.settle();
    let c1 = &s.processes[&C1];
    assert_eq!(c1.signals.metrics.items, 4);
    assert_eq!(c1.signals.metrics.requests, 1);
    assert_eq!(c1.pinned_by_identity, 1);
    assert_eq!(c1.cumulative_series.len(), 1, "its series are its own now");
    let pin = &c1.identity_pins[0];
    assert_eq!(pin.identity, inst("c1"));
    assert_eq!((pin.learned_conn, pin.learned_at_ms), (2, 20));
    assert_eq!((pin.shared_conns.clone(), pin.blocks), (vec![1], 1));
    // C2's stay possible for every holder; C1's block is nobody else's.
    for pid in [M, C1, C2] {
        assert_eq!(s.processes[&pid].possible.metrics.items, 3, "pid {pid}");
    }
    assert!(!s.processes[&M].signals.any());
    assert!(!s.processes[&C2].signals.any());
    // Settling is idempotent, and the live ledger keeps the blocks for the next copy.
    let again = {
        let mut x = s.clone();
        x.settle();
        x
    };
    assert_eq!(again, s);
    assert_eq!(l.held.len(), 2);
}

#[test]
fn an_identity_sent_alone_by_two_processes_pins_nothing() {
    // SDK < 1.44: both children kept the identity built before the fork.
    let t = tree();
    let mut l = Ledger::new(0);
    conn(&mut l, 1, &t);
    conn(&mut l, 2, &t[1..2]);
    conn(&mut l, 3, &t[2..3]);
    l.record(&export(2, Signal::Traces, inst("same"), 1, 5), &t[1..2]);
    l.record(&export(1, Signal::Metrics, inst("same"), 4, 10), &t);
    l.record(&export(3, Signal::Traces, inst("same"), 1, 15), &t[2..3]);
    l.settle();
    assert_eq!(l.learned[0].also_from, Some(C2));
    assert_eq!(l.processes[&C1].pinned_by_identity, 0);
    assert_eq!(l.processes[&C1].possible.metrics.items, 4);
    assert_eq!(l.processes[&M].possible.metrics.items, 4);
}

#[test]
fn a_parents_identity_does_not_pin_what_its_forks_may_have_inherited() {
    // The master exported alone before it forked (its identity learned then); after the fork
    // its children could send under that identity on the inherited connection.
    let t = tree();
    let mut l = Ledger::new(0);
    conn(&mut l, 1, &t[..1]);
    l.record(&export(1, Signal::Metrics, inst("master"), 1, 5), &t[..1]);
    l.set_holders(1, None, &t, None);
    l.record(&export(1, Signal::Metrics, inst("master"), 4, 10), &t);
    l.settle();
    assert_eq!(l.processes[&M].signals.metrics.items, 1);
    assert_eq!(l.processes[&M].pinned_by_identity, 0);
    assert_eq!(l.processes[&C1].possible.metrics.items, 4);
    // Another process that got the pid later is not the one that sent the identity.
    let mut l = Ledger::new(0);
    let reused = holder(C1, 9_000, &[M]);
    conn(&mut l, 1, &t);
    conn(&mut l, 2, &t[1..2]);
    l.record(&export(2, Signal::Traces, inst("c1"), 1, 5), &t[1..2]);
    let shared = [t[0].clone(), reused.clone(), t[2].clone()];
    l.record(&export(1, Signal::Metrics, inst("c1"), 4, 10), &shared);
    l.settle();
    assert_eq!(l.processes[&C1].pinned_by_identity, 0);
}

#[test]
fn held_blocks_are_capped_and_the_oldest_settled_first() {
    let t = tree();
    let mut l = Ledger::new(0);
    conn(&mut l, 1, &t);
    conn(&mut l, 2, &t[1..2]);
    l.record(&export(2, Signal::Traces, inst("c1"), 1, 1), &t[1..2]);
    let n = MAX_HELD + 10;
    for i in 0..n {
        l.record(
            &export(1, Signal::Metrics, inst("c1"), 1, 10 + i as u64),
            &t,
        );
    }
    assert_eq!(l.held.len(), MAX_HELD);
    // The ten oldest were settled in the live ledger already, pinned as the rest will be.
    assert_eq!(l.processes[&C1].signals.metrics.items, 10);
    l.settle();
    assert_eq!(l.processes[&C1].signals.metrics.items, n as u64);
    assert_eq!(l.processes[&C1].identity_pins[0].blocks, n as u64);
    assert!(!l.processes[&M].possible.any());
    // Anonymous blocks are never held.
    l.record(&export(1, Signal::Logs, Identity::default(), 2, 99), &t);
    assert!(l.held.is_empty());
    assert_eq!(l.processes[&M].possible.logs.items, 2);
}
