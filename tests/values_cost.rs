//! What the receiver's per-request work costs with exports as real exporters send them: the
//! same cumulative series every time, with a new time and new values (as scripts/bench-receive.sh
//! sends the SDK's body over the network). Summarise (protobuf walker) and account into the
//! ledger, on one thread, no HTTP.
//!
//!   cargo test --release --test values_cost -- --ignored --nocapture [POINTS]
//!
//! Prints ns per request; asserts nothing. Uses only the API that was there before metric
//! values, so the same file measures both.

use std::time::Instant;

use otel_forkcheck::ledger::{Export, Holder, Ledger, Proto, Signal};
use otel_forkcheck::otlp::metrics::{summarize_metrics, NameCache};
use prost::Message;

#[path = "common/sum_export.rs"]
mod sum_export;

use sum_export::{kv_int, kv_str, SumExport};

/// Export number `n` of a process: `points` series, time and values moving on.
fn body(points: usize, n: u64) -> Vec<u8> {
    let start = 1_700_000_000_000_000_000u64;
    SumExport {
        resource: vec![kv_str("service.name", "bench"), kv_int("process.pid", 4242)],
        metric: "bench.requests",
        points,
        start,
        time: start + n * 1_000_000_000,
    }
    .request(|i| (n + i as u64) as i64)
    .encode_to_vec()
}

#[test]
#[ignore]
fn cost_per_request() {
    let points: usize = std::env::args()
        .filter_map(|a| a.parse().ok())
        .next()
        .unwrap_or(100);
    // Every request a new export (new time, new values), as from an exporter: 2,048 of them
    // per ledger, ten ledgers.
    let bodies: Vec<Vec<u8>> = (1..=2_048).map(|n| body(points, n)).collect();
    let me = Holder {
        pid: 4242,
        nspid: vec![4242],
        started_at_ns: 1,
        comm: "bench".into(),
        ..Default::default()
    };
    // VALUES_COST_SUMMARISE_ONLY=1: the walker alone.
    let account = std::env::var_os("VALUES_COST_SUMMARISE_ONLY").is_none();
    for (what, ledgers) in [("warm-up", 1usize), ("measured", 10)] {
        let t = Instant::now();
        for _ in 0..ledgers {
            let mut ledger = Ledger::new(0);
            ledger.open_conn(1, Proto::Http, "127.0.0.1:1".into(), 0);
            ledger.set_holders(1, Some(1), std::slice::from_ref(&me), None);
            let mut cache = NameCache::default();
            for (r, b) in bodies.iter().enumerate() {
                let resources = summarize_metrics(b, &mut cache, Some((4242, &[4242]))).unwrap();
                let ex = Export {
                    at_ms: r as u64,
                    conn: 1,
                    proto: Proto::Http,
                    signal: Some(Signal::Metrics),
                    bytes: b.len() as u64,
                    resources,
                };
                if account {
                    ledger.record(&ex, std::slice::from_ref(&me));
                }
            }
        }
        let rounds = ledgers * bodies.len();
        let ns = t.elapsed().as_nanos() as f64 / rounds as f64;
        println!(
            "{what}: {points} points per request: {ns:.0} ns per request (summarise + account), {:.0} requests/s on one core",
            1e9 / ns
        );
    }
}
