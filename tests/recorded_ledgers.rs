//! Every rule on ledgers (and their snapshots) recorded from real gunicorn runs
//! (scripts/record-ledgers.sh): the exact codes and pids each scenario must produce, and nothing
//! else. Expected pids are read from the recorded facts (who served, who held which socket,
//! which process.pid arrived), not from the rules' own logic.

use std::collections::BTreeSet;

use otel_forkcheck::diagnose::{diagnose, Facts};
use otel_forkcheck::ledger::{ConnRecord, Ledger};
use otel_forkcheck::snapshot::Snapshot;

fn read<T: serde::de::DeserializeOwned>(file: &str) -> T {
    let path = format!("{}/fixtures/ledgers/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

struct Recorded {
    ledger: Ledger,
    snap: Snapshot,
}

impl Recorded {
    fn load(name: &str) -> Recorded {
        Recorded {
            ledger: read(&format!("{name}.json")),
            snap: read(&format!("{name}.snapshot.json")),
        }
    }

    /// (code, pids) of every finding, in report order.
    fn found(&self) -> Vec<(String, Vec<i32>)> {
        found(Facts::new(Some(&self.snap), Some(&self.ledger)))
    }

    /// The connections more than one process held.
    fn shared(&self) -> Vec<&ConnRecord> {
        self.ledger
            .connections
            .values()
            .filter(|c| c.holders.len() > 1)
            .collect()
    }

    /// Every worker sent, each under the master's pid as its resource process.pid, and the
    /// findings are exactly FC203, FC204 (the workers), FC101 and `last` (the master).
    fn assert_workers_send_the_masters_pid(&self, last: &str) {
        let m = self.master();
        assert_eq!(self.senders(), self.workers());
        for p in self.workers() {
            assert_eq!(self.resource_pids(p), BTreeSet::from([m as i64]), "pid {p}");
        }
        assert_eq!(
            self.found(),
            vec![
                f("FC203", self.workers()),
                f("FC204", self.workers()),
                f("FC101", vec![m]),
                f(last, vec![m]),
            ]
        );
    }

    /// What a master's connections inherited by every process give, in report order: FC103
    /// and FC207 (everyone), FC101 and FC202 (the master).
    fn inherited_connections(&self) -> Vec<(String, Vec<i32>)> {
        let m = self.master();
        vec![
            f("FC103", self.all()),
            f("FC207", self.all()),
            f("FC101", vec![m]),
            f("FC202", vec![m]),
        ]
    }

    fn master(&self) -> i32 {
        self.snap.master().expect("recorded tree has a master").pid
    }

    fn workers(&self) -> Vec<i32> {
        let mut w: Vec<i32> = self.snap.workers().map(|p| p.pid).collect();
        w.sort();
        w
    }

    fn all(&self) -> Vec<i32> {
        let mut pids = self.workers();
        pids.push(self.master());
        pids.sort();
        pids
    }

    /// Pids that `run` saw serve requests.
    fn served(&self) -> Vec<i32> {
        let s: Vec<i32> = self
            .ledger
            .served
            .iter()
            .filter(|(_, s)| s.requests > 0)
            .map(|(p, _)| *p)
            .collect();
        assert!(!s.is_empty(), "no pid served requests");
        s
    }

    /// Pids with exports known to be theirs.
    fn senders(&self) -> Vec<i32> {
        let s: Vec<i32> = self
            .ledger
            .processes
            .values()
            .filter(|p| p.signals.any())
            .map(|p| p.sender.pid)
            .collect();
        assert!(!s.is_empty(), "nothing was attributed");
        s
    }

    /// Every resource process.pid that arrived from `pid`.
    fn resource_pids(&self, pid: i32) -> BTreeSet<i64> {
        self.ledger.processes[&pid]
            .identities
            .iter()
            .filter_map(|i| i.identity.process_pid)
            .collect()
    }
}

fn f(code: &str, pids: Vec<i32>) -> (String, Vec<i32>) {
    (code.to_string(), pids)
}

/// (code, pids) of every finding `diagnose` gives on `facts`, in report order.
fn found(facts: Facts) -> Vec<(String, Vec<i32>)> {
    diagnose(&facts)
        .into_iter()
        .map(|f| (f.code, f.pids))
        .collect()
}

#[test]
fn preload_with_export_before_fork() {
    let r = Recorded::load("preload-export");
    assert_eq!(r.workers().len(), 2);
    // The master's import-time flush opened the three connections, every worker inherited them.
    let shared = r.shared();
    assert_eq!(shared.len(), 3);
    assert!(shared.iter().all(|c| c.holders == r.all()));
    let mut want = r.inherited_connections();
    want.extend([f("FC206", r.workers()), f("FC302", vec![r.master()])]);
    assert_eq!(r.found(), want);
}

/// Both workers re-export the master's pre-fork counter (same series, same start time as the
/// master's), but in this recording the first worker was forked 43 ms after the master recorded
/// it: within FC206's 50 ms tolerance for /proc start times, named because its series repeats the
/// master's start time to the nanosecond.
#[test]
fn preload_export_fc206_names_every_worker() {
    let r = Recorded::load("preload-export");
    let m = &r.ledger.processes[&r.master()];
    let prefork = m.earliest_cumulative.as_ref().unwrap();
    for p in r.workers() {
        let w = r.ledger.processes[&p].earliest_cumulative.as_ref().unwrap();
        assert_eq!(w, prefork, "pid {p} re-exports the master's series");
    }
    let fc206: Vec<_> = r.found().into_iter().filter(|f| f.0 == "FC206").collect();
    assert_eq!(fc206, vec![f("FC206", r.workers())]);
}

#[test]
fn post_fork_is_clean() {
    let r = Recorded::load("postfork");
    assert_eq!(r.served(), r.workers(), "both workers served");
    assert_eq!(r.senders(), r.workers(), "the master sent nothing");
    for p in r.workers() {
        assert!(r.ledger.processes[&p].signals.seen().len() == 3, "pid {p}");
    }
    assert_eq!(r.found(), vec![]);
}

#[test]
fn opentelemetry_instrument_with_sdk_1_42_gives_every_worker_the_masters_pid() {
    let r = Recorded::load("instrument-sdk142");
    r.assert_workers_send_the_masters_pid("FC301");
}

#[test]
fn no_flush_at_exit_loses_what_every_serving_worker_recorded() {
    let r = Recorded::load("postfork-noflush");
    let stop = r.ledger.stop.as_ref().expect("run stopped the server");
    assert!(stop.graceful);
    // One FC209 per worker that served requests, and nothing else.
    let want: Vec<_> = r
        .served()
        .into_iter()
        .map(|p| f("FC209", vec![p]))
        .collect();
    assert_eq!(want.len(), 2);
    assert_eq!(r.found(), want);
}

#[test]
fn receive_on_a_preloaded_sdk_1_42_with_the_process_detector() {
    let r = Recorded::load("receive-preload-process");
    assert!(
        r.ledger.closed && r.ledger.stop.is_none(),
        "receive, not run"
    );
    r.assert_workers_send_the_masters_pid("FC302");
    // Without the tree (receive without --pid) the receiver rules say the same.
    let alone = found(Facts::new(None, Some(&r.ledger)));
    assert_eq!(
        alone,
        vec![f("FC203", r.workers()), f("FC204", r.workers())]
    );
}

#[test]
fn ledgers_survive_a_json_round_trip() {
    for name in [
        "preload-export",
        "postfork",
        "instrument-sdk142",
        "postfork-noflush",
        "receive-preload-process",
        "celery-inherited",
    ] {
        let r = Recorded::load(name);
        let again: Ledger =
            serde_json::from_str(&serde_json::to_string(&r.ledger).unwrap()).unwrap();
        assert_eq!(r.ledger, again, "{name}");
    }
}

/// Plain `receive` while Celery prefork (SDK in MainProcess, metrics exported before the pool
/// forked) ran tasks: each child that ran a task exported its metrics over MainProcess's
/// inherited connection under its own service.instance.id, which also arrived on the child's
/// own traces and logs connections. The receiver pinned them to the child (identity_pins), so
/// FC206 names it (it re-exports the pre-fork count), and no FC208 says its metrics stalled.
#[test]
fn celery_children_pinned_by_the_identity_they_sent_alone() {
    let r = Recorded::load("celery-inherited");
    let shared = r.shared();
    assert_eq!(shared.len(), 1);
    assert_eq!(shared[0].holders, r.all());
    // The children whose metrics were pinned, read from the recorded facts: each pin names the
    // shared connection, and a connection the child held alone that carried the identity.
    let pinned: Vec<i32> = r
        .ledger
        .processes
        .values()
        .filter(|p| !p.identity_pins.is_empty())
        .map(|p| p.sender.pid)
        .collect();
    assert!(!pinned.is_empty());
    for pid in &pinned {
        let p = &r.ledger.processes[pid];
        assert!(p.signals.metrics.items > 0 && !p.possible.metrics.any());
        for pin in &p.identity_pins {
            assert_eq!(pin.shared_conns, vec![shared[0].id]);
            assert_eq!(r.ledger.connections[&pin.learned_conn].holders, vec![*pid]);
            let there = &r.ledger.connections[&pin.learned_conn].identities;
            assert!(there.iter().any(|i| i.identity == pin.identity));
        }
    }
    let mut want = r.inherited_connections();
    want.push(f("FC206", pinned));
    assert_eq!(r.found(), want);
}
