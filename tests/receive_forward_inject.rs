//! `--forward` (to another receiver standing in for a collector) and `--inject`.

use std::time::Duration;

use otel_forkcheck::receive::{self, Inject, Options};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/fixtures/otlp/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn http_only() -> Options {
    Options {
        grpc: None,
        ..Options::ephemeral()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_with_encoding_kept_and_counts_failures() {
    let upstream = receive::serve(http_only()).await.unwrap();
    let mut inject = Inject::default();
    inject.add("partial=2").unwrap();
    let front = receive::serve(Options {
        forward: Some(format!("http://{}", upstream.http_addr.unwrap())),
        inject,
        ..http_only()
    })
    .await
    .unwrap();
    let c = reqwest::Client::new();
    let r = c
        .post(format!("http://{}/v1/traces", front.http_addr.unwrap()))
        .header("content-type", "application/json")
        .header("x-tenant", "t1")
        .body(fixture("trace.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(
        v["partialSuccess"]["rejectedSpans"]
            .as_i64()
            .or_else(|| v["partialSuccess"]["rejectedSpans"]
                .as_str()
                .and_then(|s| s.parse().ok())),
        Some(2),
        "{v}"
    );
    for _ in 0..100 {
        if upstream.ledger().totals.traces.items == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(upstream.ledger().totals.traces.items, 2);
    assert_eq!(front.ledger().forward.unwrap().sent, 1);
    // upstream gone: failures are counted, local accounting goes on
    upstream.shutdown(Duration::from_millis(100)).await;
    let r = c
        .post(format!("http://{}/v1/traces", front.http_addr.unwrap()))
        .header("content-type", "application/json")
        .body(fixture("trace.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for _ in 0..200 {
        if front.ledger().forward.unwrap().failed == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let l = front.ledger();
    assert_eq!(l.forward.as_ref().unwrap().failed, 1, "{:?}", l.forward);
    assert_eq!(l.totals.traces.items, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_status_and_delay() {
    let mut inject = Inject::default();
    inject.add("status=503,delay=300ms").unwrap();
    let r = receive::serve(Options {
        inject,
        ..http_only()
    })
    .await
    .unwrap();
    let t0 = std::time::Instant::now();
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/logs", r.http_addr.unwrap()))
        .header("content-type", "application/json")
        .body(fixture("logs.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert!(t0.elapsed() >= Duration::from_millis(300));
    // it did arrive, so it is counted
    assert_eq!(r.ledger().totals.logs.items, 2);
}
