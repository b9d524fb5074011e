//! Metric values from the real OpenTelemetry Python SDK in forked processes: each child counts
//! known amounts over several export rounds, and the receiver's totals per pid (and per
//! identity) are exactly those amounts, with the HTTP exporter (the protobuf walker) and the
//! gRPC exporter (the decoded message), cumulative and delta temporality.
//!
//! Needs the `current` venv: `scripts/setup-venvs.sh current`.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use otel_forkcheck::ledger::{Ledger, MetricKind, PidExports, Temporality};
use otel_forkcheck::receive::{self, Options};

const CHILDREN: usize = 3;
const ROUNDS: u64 = 4;

fn python() -> PathBuf {
    common::venv("current").join("bin/python")
}

/// Runs the fixture; returns each child's pid, by child number.
fn run_py(proto: &str, temporality: &str, endpoint: &str) -> Vec<i32> {
    let out = Command::new(python())
        .arg(common::root().join("fixtures/receive/forked_counters.py"))
        .args([
            proto,
            temporality,
            endpoint,
            &CHILDREN.to_string(),
            &ROUNDS.to_string(),
        ])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut kids = vec![0; CHILDREN];
    for l in stdout.lines() {
        if let ["pid", pid, "child", i] = l.split_whitespace().collect::<Vec<_>>()[..] {
            kids[i.parse::<usize>().unwrap()] = pid.parse().unwrap();
        }
    }
    assert!(kids.iter().all(|k| *k > 0), "{stdout}");
    kids
}

fn sum(p: &PidExports, name: &str) -> f64 {
    p.sums
        .get(name)
        .unwrap_or_else(|| panic!("pid {}: no {name} in {:?}", p.sender.pid, p.sums))
        .0
}

async fn counted_exactly(proto: &str, temporality: &str) {
    let r = receive::serve(Options::ephemeral()).await.unwrap();
    let endpoint = match proto {
        "http" => format!("http://{}", r.http_addr.unwrap()),
        _ => r.grpc_addr.unwrap().to_string(),
    };
    let (p, t) = (proto.to_string(), temporality.to_string());
    let kids = tokio::task::spawn_blocking(move || run_py(&p, &t, &endpoint))
        .await
        .unwrap();
    // Every export was answered, so accounted, before the children exited.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let l: Ledger = r.ledger();
    assert_eq!(l.malformed_total, 0, "{:#?}", l.connections);
    assert!(!l.unattributed.signals.metrics.any());
    let want_t = if temporality == "delta" {
        Temporality::Delta
    } else {
        Temporality::Cumulative
    };
    for (i, pid) in kids.iter().enumerate() {
        let p = l
            .processes
            .get(pid)
            .unwrap_or_else(|| panic!("child {i} (pid {pid}) not attributed"));
        let c = (i + 1) as u64;
        // (i + 1) * (1 + 2 + ... + ROUNDS) on route /, 1 a round on /health
        let mut requests = (c * ROUNDS * (ROUNDS + 1) / 2 + ROUNDS) as f64;
        if i == 0 {
            requests += (5 * ROUNDS) as f64; // the second identity's
        }
        let ctx = format!(
            "{proto}/{temporality} child {i} pid {pid}: {:#?}",
            p.metrics
        );
        assert_eq!(sum(p, "forkcheck.requests"), requests, "{ctx}");
        assert_eq!(sum(p, "forkcheck.inflight"), ROUNDS as f64, "{ctx}");
        assert_eq!(sum(p, "forkcheck.latency"), (2 * ROUNDS) as f64, "{ctx}");
        assert_eq!(p.metrics["forkcheck.latency"].value.0, 0.75 * ROUNDS as f64);
        assert_eq!(p.metrics["forkcheck.latency"].kind, MetricKind::Histogram);
        assert_eq!(
            sum(p, "forkcheck.queue"),
            (10 * i as u64 + ROUNDS - 1) as f64,
            "{ctx}"
        );
        let m = &p.metrics["forkcheck.requests"];
        assert_eq!((m.temporality, m.monotonic), (want_t, true), "{ctx}");
        assert_eq!(m.restarts, 0);
        assert!(!p.metrics["forkcheck.inflight"].monotonic);
        assert_eq!(p.metrics["forkcheck.queue"].kind, MetricKind::Gauge);
        // several export rounds arrived (one a flush, one more at shutdown)
        assert!(p.signals.metrics.requests >= ROUNDS, "{ctx}");
        // per identity: child 0 sent under two
        let by_id: Vec<(Option<String>, f64)> = p
            .identities
            .iter()
            .map(|s| {
                let v = s.sums.get("forkcheck.requests").map_or(0.0, |v| v.0);
                (s.identity.service_instance_id.clone(), v)
            })
            .filter(|(id, _)| id.as_deref() == Some("second"))
            .collect();
        if i == 0 {
            assert_eq!(
                by_id,
                [(Some("second".into()), (5 * ROUNDS) as f64)],
                "{ctx}"
            );
        } else {
            assert!(by_id.is_empty());
        }
    }
    r.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_cumulative_totals_per_pid() {
    counted_exactly("http", "cumulative").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_delta_totals_per_pid() {
    counted_exactly("http", "delta").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_cumulative_totals_per_pid() {
    counted_exactly("grpc", "cumulative").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_delta_totals_per_pid() {
    counted_exactly("grpc", "delta").await;
}

/// `receive --expect-count` as a collector-side check: the binary, the fixture's children over
/// HTTP, two expectations met and one not (FC212), and the exit status that follows.
#[test]
fn receive_expect_count_judges_the_totals_at_the_end() {
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    // 2 rounds: forkcheck.requests = (1*3 + 2) + (2*3 + 2) + (3*3 + 2) + 5*2 (second
    // identity) = 34; forkcheck.latency counts 2 a round in each child = 12; forkcheck.inflight
    // ends at 2 in each child = 6, not 7.
    let receiver = Command::new(env!("CARGO_BIN_EXE_otel-forkcheck"))
        .args([
            "receive",
            "--http",
            &addr,
            "--grpc",
            "off",
            "--timeout",
            "8s",
        ])
        .args([
            "--format",
            "json",
            "--expect-count",
            "forkcheck.requests=34",
        ])
        .args(["--expect-count", "forkcheck.latency=12"])
        .args(["--expect-count", "forkcheck.inflight=7"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start receive");
    assert!(common::wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(&addr).is_ok()
    }));
    let out = Command::new(python())
        .arg(common::root().join("fixtures/receive/forked_counters.py"))
        .args(["http", "cumulative", &format!("http://{addr}"), "3", "2"])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = receiver.wait_with_output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
    });
    common::schema::assert_valid(&report);
    let counts: Vec<(String, bool, f64)> = report["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let m = c["metric"].as_str().unwrap().to_string();
            (m, c["met"].as_bool().unwrap(), c["total"].as_f64().unwrap())
        })
        .collect();
    assert_eq!(
        counts,
        [
            ("forkcheck.requests".to_string(), true, 34.0),
            ("forkcheck.latency".to_string(), true, 12.0),
            ("forkcheck.inflight".to_string(), false, 6.0),
        ]
    );
    let codes: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["FC212"], "{:#}", report["findings"]);
    assert_eq!(out.status.code(), Some(1));
}
