//! The receiver against the real OpenTelemetry Python SDK exporters (HTTP/protobuf and gRPC)
//! in forked processes: every pid attributed, and a connection opened before fork and used after
//! it listed under both pids.
//!
//! Needs the `current` venv: `scripts/setup-venvs.sh current` (built and cached under
//! target/venvs on first use).

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use otel_forkcheck::diagnose::{self, Facts};
use otel_forkcheck::ledger::Ledger;
use otel_forkcheck::receive::{self, Options};

/// The `current` venv's python (built on first use by scripts/setup-venvs.sh).
fn python() -> PathBuf {
    common::venv("current").join("bin/python")
}

/// Runs the fixture; returns (parent pid, child pids).
fn run_py(mode: &str, proto: &str, endpoint: &str, n: usize) -> (i32, Vec<i32>) {
    let out = Command::new(python())
        .arg(common::root().join("fixtures/receive/forked_exporters.py"))
        .args([mode, proto, endpoint, &n.to_string()])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "60000")
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut parent = 0;
    let mut kids = Vec::new();
    for l in stdout.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if let ["pid", pid, role] = f.as_slice() {
            let pid: i32 = pid.parse().unwrap();
            if *role == "parent" {
                parent = pid;
            } else {
                kids.push(pid);
            }
        }
    }
    assert_eq!(kids.len(), n, "{stdout}");
    (parent, kids)
}

async fn ledger_after(r: &receive::Receiver, want_traces: u64) -> Ledger {
    for _ in 0..100 {
        let l = r.ledger();
        if l.totals.traces.requests >= want_traces {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    r.ledger()
}

fn codes(l: &Ledger) -> BTreeSet<String> {
    diagnose::diagnose(&Facts::new(None, Some(l)))
        .into_iter()
        .map(|f| f.code)
        .collect()
}

async fn own_exporters(proto: &str) {
    let r = receive::serve(Options::ephemeral()).await.unwrap();
    let endpoint = match proto {
        "http" => format!("http://{}", r.http_addr.unwrap()),
        _ => r.grpc_addr.unwrap().to_string(),
    };
    let proto2 = proto.to_string();
    let (parent, kids) = tokio::task::spawn_blocking(move || run_py("own", &proto2, &endpoint, 3))
        .await
        .unwrap();
    let l = ledger_after(&r, 3).await;
    for k in &kids {
        let p = l
            .processes
            .get(k)
            .unwrap_or_else(|| panic!("child {k} not attributed: {:#?}", l.processes.keys()));
        assert_eq!(p.signals.traces.items, 1, "pid {k}");
        // force_flush and shutdown each export once
        assert!(p.signals.metrics.requests >= 1, "pid {k}");
        assert!(p.signals.metrics.items >= 1);
        assert_eq!(p.identities.len(), 1);
        assert_eq!(p.identities[0].identity.process_pid, Some(*k as i64));
        assert!(p.sender.started_at_ns > 0);
    }
    assert!(
        !l.processes.contains_key(&parent),
        "the parent exported nothing"
    );
    assert_eq!(l.unattributed.signals.traces.requests, 0);
    assert_eq!(l.malformed_total, 0);
    let c = codes(&l);
    for bad in ["FC203", "FC204", "FC205", "FC206", "FC207"] {
        assert!(!c.contains(bad), "{bad} on a healthy set-up: {c:?}");
    }
    r.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_exporters_in_forked_children_are_each_attributed() {
    own_exporters("http").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_exporters_in_forked_children_are_each_attributed() {
    own_exporters("grpc").await;
}

/// One port serving both protocols (what `run` aims exporters at): every child sends spans
/// over gRPC and metrics over OTLP/HTTP to the same address, and each request is attributed
/// and counted under its protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_http_exporters_share_one_port() {
    let r = receive::serve(Options::ephemeral_one_port()).await.unwrap();
    let addr = r.http_addr.unwrap();
    assert_eq!(r.grpc_addr, Some(addr), "one port for both");
    let endpoint = addr.to_string();
    let (parent, kids) = tokio::task::spawn_blocking(move || run_py("own", "mixed", &endpoint, 3))
        .await
        .unwrap();
    let l = ledger_after(&r, 3).await;
    assert_eq!(l.malformed_total, 0, "{:#?}", l.connections);
    assert_eq!(l.unattributed.signals.traces.requests, 0);
    assert_eq!(l.unattributed.signals.metrics.requests, 0);
    assert!(!l.processes.contains_key(&parent));
    for k in &kids {
        let p = l
            .processes
            .get(k)
            .unwrap_or_else(|| panic!("child {k} not attributed: {:#?}", l.processes.keys()));
        assert_eq!(p.signals.traces.requests, 1, "pid {k}: {p:#?}");
        assert_eq!(p.signals.traces.items, 1, "pid {k}");
        assert!(p.signals.metrics.requests >= 1, "pid {k}");
        assert_eq!(p.identities.len(), 1);
        assert_eq!(p.identities[0].identity.process_pid, Some(*k as i64));
        // Each child used two connections to the one port: one gRPC, one HTTP.
        let mine: Vec<_> = l
            .connections
            .values()
            .filter(|c| c.requests > 0 && c.holders == vec![*k])
            .collect();
        let protos: BTreeSet<&str> = mine.iter().map(|c| c.proto.as_str()).collect();
        assert_eq!(
            protos,
            BTreeSet::from(["grpc", "http"]),
            "pid {k}: {mine:#?}"
        );
    }
    let c = codes(&l);
    for bad in ["FC203", "FC204", "FC205", "FC206", "FC207"] {
        assert!(!c.contains(bad), "{bad} on a healthy set-up: {c:?}");
    }
    r.shutdown(Duration::from_secs(1)).await;
}

/// A keep-alive connection opened by the parent, used by forked children, then by the parent
/// again: the connection lists every pid, and each export is pinned to its sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_opened_before_fork_lists_both_pids() {
    let r = receive::serve(Options::ephemeral()).await.unwrap();
    let endpoint = format!("http://{}", r.http_addr.unwrap());
    let (parent, kids) =
        tokio::task::spawn_blocking(move || run_py("inherited", "http", &endpoint, 2))
            .await
            .unwrap();
    let l = ledger_after(&r, 4).await;
    assert_eq!(l.totals.traces.requests, 4, "{:#?}", l.connections);
    // one connection carried everything
    let used: Vec<_> = l.connections.values().filter(|c| c.requests > 0).collect();
    assert_eq!(used.len(), 1, "{used:#?}");
    let c = used[0];
    assert!(c.holders.contains(&parent), "{c:#?}");
    for k in &kids {
        assert!(c.holders.contains(k), "child {k} not among holders {c:#?}");
        let p = &l.processes[k];
        assert_eq!(p.signals.traces.requests, 1, "pid {k}: {p:#?}");
        assert_eq!(p.pinned_by_resource, 1);
    }
    assert_eq!(l.processes[&parent].signals.traces.requests, 2);
    // Three identities on one connection: FC207, and nothing else.
    let c = codes(&l);
    assert!(c.contains("FC207"), "{c:?}");
    assert!(!c.contains("FC204"), "{c:?}");
    assert!(!c.contains("FC203"), "{c:?}");
    r.shutdown(Duration::from_secs(1)).await;
}
