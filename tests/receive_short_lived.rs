//! Many short-lived senders at once: 40 forked children of the real Python SDK, each exporting
//! one span over a fresh OTLP/HTTP connection, flushing and leaving at once with os._exit (a
//! task queue's children). Every export is attributed to its own child, none unattributed, and
//! every client socket was found by an exact sock_diag lookup: no socket table was read.
//!
//! Needs the `current` venv: `scripts/setup-venvs.sh current`. One test in this binary: the
//! lookup counters are the process's.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use otel_forkcheck::proc::conn::lookup_counts;
use otel_forkcheck::receive::{self, Options};

const CHILDREN: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_short_lived_children_are_each_attributed_by_exact_lookups() {
    let python = common::venv("current").join("bin/python");
    let r = receive::serve(Options::ephemeral()).await.unwrap();
    let endpoint = format!("http://{}", r.http_addr.unwrap());
    let before = lookup_counts();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(common::root().join("fixtures/receive/short_lived_exporters.py"))
            .args([&endpoint, &CHILDREN.to_string()])
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .output()
            .expect("run python")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "python failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut parent = 0;
    let mut kids = BTreeSet::new();
    for l in stdout.lines() {
        match l.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["pid", pid, "parent"] => parent = pid.parse().unwrap(),
            ["pid", pid, "child"] => assert!(kids.insert(pid.parse::<i32>().unwrap())),
            _ => {}
        }
    }
    assert_eq!(kids.len(), CHILDREN, "{stdout}");

    // Every child waited for its answer before leaving, so all are accounted by now; the wait
    // covers a slow machine only.
    let mut l = r.ledger();
    for _ in 0..100 {
        if l.totals.traces.requests >= CHILDREN as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        l = r.ledger();
    }
    let counts = lookup_counts();
    r.shutdown(Duration::from_secs(1)).await;

    assert_eq!(l.totals.traces.requests, CHILDREN as u64);
    assert_eq!(l.totals.traces.items, CHILDREN as u64);
    assert_eq!(
        l.unattributed.signals.traces.requests, 0,
        "{:#?}",
        l.connections
    );
    assert_eq!(l.malformed_total, 0);
    let attributed: BTreeSet<i32> = l.processes.keys().copied().collect();
    assert_eq!(
        attributed, kids,
        "exactly the children, not the parent {parent}"
    );
    for k in &kids {
        let p = &l.processes[k];
        assert_eq!(p.signals.traces.requests, 1, "pid {k}: {p:#?}");
        assert_eq!(p.signals.traces.items, 1, "pid {k}");
        assert_eq!(p.identities.len(), 1, "pid {k}");
        assert_eq!(p.identities[0].identity.process_pid, Some(*k as i64));
        assert!(p.sender.started_at_ns > 0, "pid {k}");
    }
    // One connection per child, held by that child alone, found at once (no error).
    let used: Vec<_> = l.connections.values().filter(|c| c.requests > 0).collect();
    assert_eq!(used.len(), CHILDREN, "{used:#?}");
    let holders: BTreeSet<i32> = used
        .iter()
        .map(|c| {
            assert_eq!(c.holders.len(), 1, "{c:#?}");
            assert_eq!(c.attribution_error, None, "{c:#?}");
            c.holders[0]
        })
        .collect();
    assert_eq!(holders, kids);
    // Each connection's client socket: one exact lookup, never a table read.
    let exact = counts.exact_lookups - before.exact_lookups;
    let tables = counts.table_reads - before.table_reads;
    assert_eq!(tables, 0, "socket tables read ({exact} exact lookups)");
    assert_eq!(
        exact,
        l.connections.len() as u64,
        "one exact lookup per connection"
    );
}
