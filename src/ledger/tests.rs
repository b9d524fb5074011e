//! Accounting tests on ledgers built export by export.

use super::*;

fn holder(pid: i32) -> Holder {
    Holder {
        pid,
        nspid: vec![pid],
        started_at_ns: 1_000,
        comm: "python".into(),
        ancestors: Vec::new(),
    }
}

fn export(conn: u64, signal: Signal, id: Identity, items: u64) -> Export {
    Export {
        at_ms: 10,
        conn,
        proto: Proto::Http,
        signal: Some(signal),
        bytes: 100,
        resources: vec![ResourceSummary {
            identity: id,
            items,
            ..Default::default()
        }],
    }
}

#[test]
fn single_holder_gets_the_export() {
    let mut l = Ledger::new(0);
    l.open_conn(1, Proto::Http, "127.0.0.1:5000".into(), 0);
    l.set_holders(1, Some(9), &[holder(10)], None);
    let a = l.record(
        &export(1, Signal::Metrics, Identity::default(), 7),
        &[holder(10)],
    );
    assert_eq!(a.resources, vec![(vec![10], AttributedBy::Connection)]);
    let p = &l.processes[&10];
    assert_eq!(p.signals.metrics.requests, 1);
    assert_eq!(p.signals.metrics.items, 7);
    assert_eq!(l.connections[&1].requests, 1);
    assert_eq!(l.totals.metrics.items, 7);
}

#[test]
fn shared_connection_pinned_by_resource_pid_else_possible() {
    let mut l = Ledger::new(0);
    let hs = [holder(10), holder(11)];
    l.open_conn(1, Proto::Http, "p".into(), 0);
    l.set_holders(1, Some(9), &hs, None);
    let id = Identity {
        process_pid: Some(11),
        ..Default::default()
    };
    let a = l.record(&export(1, Signal::Traces, id, 3), &hs);
    assert_eq!(a.resources, vec![(vec![11], AttributedBy::Resource)]);
    assert_eq!(l.processes[&11].signals.traces.items, 3);
    assert_eq!(l.processes[&11].pinned_by_resource, 1);
    assert!(!l.processes[&10].signals.any());

    let a = l.record(&export(1, Signal::Traces, Identity::default(), 2), &hs);
    assert_eq!(a.resources, vec![(vec![10, 11], AttributedBy::Ambiguous)]);
    assert_eq!(l.processes[&10].possible.traces.items, 2);
    assert_eq!(l.processes[&11].possible.traces.items, 2);
    assert!(!l.processes[&10].signals.any());
}

#[test]
fn series_are_capped_but_earliest_kept() {
    let mut e = PidExports::new(1);
    for i in 0..(MAX_SERIES_PER_PID as u64 + 10) {
        e.note_series(&SeriesStart {
            series: format!("s{i}").into(),
            start_time_unix_nano: 1_000_000 - i,
            key: i,
        });
    }
    assert_eq!(e.cumulative_series.len(), MAX_SERIES_PER_PID);
    assert_eq!(e.series_dropped, 10);
    assert_eq!(
        e.earliest_cumulative.as_ref().unwrap().start_time_unix_nano,
        1_000_000 - (MAX_SERIES_PER_PID as u64 + 9)
    );
}

#[test]
fn malformed_counts_on_every_holder_and_connection() {
    let mut l = Ledger::new(0);
    l.open_conn(4, Proto::Http, "p".into(), 0);
    l.record_malformed(4, &[holder(1), holder(2)], "bad protobuf", 5);
    assert_eq!(l.processes[&1].malformed, 1);
    assert_eq!(l.processes[&2].malformed, 1);
    assert_eq!(l.connections[&4].malformed, 1);
    assert_eq!(l.malformed_total, 1);
    l.record_malformed(99, &[], "x", 6);
    assert_eq!(l.unattributed.malformed, 1);
}

#[test]
fn round_trips_through_json() {
    let mut l = Ledger::new(0);
    l.open_conn(1, Proto::Grpc, "127.0.0.1:1".into(), 0);
    l.set_holders(1, Some(3), &[holder(5)], None);
    l.record(
        &export(
            1,
            Signal::Logs,
            Identity {
                service_name: Some("a".into()),
                ..Default::default()
            },
            1,
        ),
        &[holder(5)],
    );
    let s = serde_json::to_string(&l).unwrap();
    let back: Ledger = serde_json::from_str(&s).unwrap();
    assert_eq!(back.processes[&5].signals.logs.items, 1);
}
