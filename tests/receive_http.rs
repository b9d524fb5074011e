//! OTLP/HTTP receiver against real HTTP clients: canonical JSON fixtures, protobuf, gzip, every
//! error status, and malformed input sent while well-formed exports go on (all of them must be
//! counted).

use std::io::Write;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use otel_forkcheck::ledger::Ledger;
use otel_forkcheck::receive::{self, Options};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/fixtures/otlp/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[path = "common/sum_export.rs"]
mod sum_export;

use sum_export::{kv_int, kv_str, SumExport};

fn resource(pid: i64) -> Vec<KeyValue> {
    vec![kv_str("service.name", "t"), kv_int("process.pid", pid)]
}

fn metrics_body(pid: i64, points: usize, start: u64) -> Vec<u8> {
    SumExport {
        resource: resource(pid),
        metric: "requests",
        points,
        start,
        time: start + 1,
    }
    .request(|_| 1)
    .encode_to_vec()
}

fn traces_body(pid: i64, spans: usize) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: resource(pid),
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: (0..spans)
                    .map(|i| Span {
                        trace_id: vec![1; 16],
                        span_id: vec![i as u8 + 1; 8],
                        name: "s".into(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// The OTLP/HTTP server alone, or (`one_port`) the port that serves gRPC too: everything that
/// is not gRPC must be answered there exactly as on the plain OTLP/HTTP port.
async fn start(mut o: Options, one_port: bool) -> receive::Receiver {
    o.http = Some("127.0.0.1:0".parse().unwrap());
    o.grpc = one_port.then(|| "127.0.0.1:0".parse().unwrap());
    o.one_port = one_port;
    let r = receive::serve(o).await.expect("serve");
    if one_port {
        assert_eq!(r.grpc_addr, r.http_addr);
    }
    r
}

fn url(r: &receive::Receiver, path: &str) -> String {
    format!("http://{}{}", r.http_addr.unwrap(), path)
}

async fn post(
    c: &reqwest::Client,
    u: &str,
    ct: &str,
    gz: bool,
    body: Vec<u8>,
) -> (u16, Vec<u8>, Option<String>) {
    let mut rb = c.post(u).header("content-type", ct).body(body);
    if gz {
        rb = rb.header("content-encoding", "gzip");
    }
    let r = rb.send().await.expect("send");
    let st = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    (st, r.bytes().await.unwrap().to_vec(), ct)
}

const PB: &str = "application/x-protobuf";
const JSON: &str = "application/json";

fn me() -> i32 {
    std::process::id() as i32
}

async fn settle(r: &receive::Receiver, want_malformed: u64) -> Ledger {
    for _ in 0..100 {
        let l = r.ledger();
        if l.malformed_total >= want_malformed {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    r.ledger()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canonical_json_protobuf_and_gzip_are_counted_against_this_pid() {
    canonical_json_protobuf_and_gzip_are_counted_against_this_pid_on(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canonical_json_protobuf_and_gzip_are_counted_against_this_pid_on_the_shared_port() {
    canonical_json_protobuf_and_gzip_are_counted_against_this_pid_on(true).await;
}

async fn canonical_json_protobuf_and_gzip_are_counted_against_this_pid_on(one_port: bool) {
    let r = start(Options::default(), one_port).await;
    let c = reqwest::Client::new();
    for (path, file) in [
        ("/v1/metrics", "metrics.json"),
        ("/v1/traces", "trace.json"),
        ("/v1/logs", "logs.json"),
    ] {
        let (st, body, ct) = post(&c, &url(&r, path), JSON, false, fixture(file)).await;
        assert_eq!(st, 200, "{path}: {}", String::from_utf8_lossy(&body));
        assert_eq!(ct.as_deref(), Some(JSON));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(v.is_object());
        // gzip JSON too
        let (st, _, _) = post(&c, &url(&r, path), JSON, true, gzip(&fixture(file))).await;
        assert_eq!(st, 200);
    }
    let (st, body, ct) = post(
        &c,
        &url(&r, "/v1/metrics"),
        PB,
        false,
        metrics_body(1, 4, 5),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(ct.as_deref(), Some(PB));
    assert!(body.is_empty(), "empty ExportMetricsServiceResponse");
    let (st, _, _) = post(
        &c,
        &url(&r, "/v1/traces"),
        PB,
        true,
        gzip(&traces_body(1, 3)),
    )
    .await;
    assert_eq!(st, 200);

    let l = r.ledger();
    let p = &l.processes[&me()];
    // metrics.json: 5 points, twice; plus 4 protobuf points.
    assert_eq!(p.signals.metrics.requests, 3);
    assert_eq!(p.signals.metrics.items, 14);
    assert_eq!(p.signals.traces.items, 2 + 2 + 3);
    assert_eq!(p.signals.logs.items, 4);
    assert_eq!(l.malformed_total, 0);
    // the fixture's identity is recorded
    assert!(p
        .identities
        .iter()
        .any(|i| i.identity.process_pid == Some(4242)
            && i.identity.service_name.as_deref() == Some("my.service")));
    r.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_path_method_type_encoding() {
    wrong_path_method_type_encoding_on(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_path_method_type_encoding_on_the_shared_port() {
    wrong_path_method_type_encoding_on(true).await;
}

async fn wrong_path_method_type_encoding_on(one_port: bool) {
    let r = start(Options::default(), one_port).await;
    let c = reqwest::Client::new();
    let (st, _, _) = post(&c, &url(&r, "/v1/profiles"), PB, false, vec![]).await;
    assert_eq!(st, 404);
    let g = c.get(url(&r, "/v1/metrics")).send().await.unwrap();
    assert_eq!(g.status().as_u16(), 405);
    assert_eq!(g.headers()["allow"], "POST");
    let (st, _, _) = post(&c, &url(&r, "/v1/metrics"), "text/plain", false, vec![1]).await;
    assert_eq!(st, 415);
    let rr = c
        .post(url(&r, "/v1/metrics"))
        .header("content-type", PB)
        .header("content-encoding", "br")
        .body(vec![1, 2])
        .send()
        .await
        .unwrap();
    assert_eq!(rr.status().as_u16(), 415);
    // an error body is a google.rpc.Status in the request's encoding
    let (st, body, ct) = post(
        &c,
        &url(&r, "/v1/traces"),
        JSON,
        false,
        b"{\"resourceSpans\": 5}".to_vec(),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(ct.as_deref(), Some(JSON));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(v["message"].as_str().unwrap().contains("undecodable"));
    let l = settle(&r, 3).await;
    assert_eq!(
        l.processes[&me()].malformed,
        3,
        "{:?}",
        l.processes[&me()].malformed_reasons
    );
    r.shutdown(Duration::from_secs(1)).await;
}

/// Malformed input of every kind, each sent while well-formed exports keep flowing on other
/// connections: every status is right and every good export is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_inputs_do_not_lose_good_exports() {
    malformed_inputs_do_not_lose_good_exports_on(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_inputs_do_not_lose_good_exports_on_the_shared_port() {
    malformed_inputs_do_not_lose_good_exports_on(true).await;
}

async fn malformed_inputs_do_not_lose_good_exports_on(one_port: bool) {
    let r = start(
        Options {
            max_body: 1 << 20,
            max_decompressed: 4 << 20,
            read_timeout: Duration::from_secs(2),
            ..Options::default()
        },
        one_port,
    )
    .await;
    let addr = r.http_addr.unwrap();
    let good_url = url(&r, "/v1/metrics");
    // Good traffic: 4 clients x 25 exports x 10 points, meanwhile.
    let mut good = Vec::new();
    for k in 0..4 {
        let u = good_url.clone();
        good.push(tokio::spawn(async move {
            let c = reqwest::Client::new();
            for _ in 0..25 {
                let (st, _, _) = post(
                    &c,
                    &u,
                    PB,
                    k % 2 == 0,
                    if k % 2 == 0 {
                        gzip(&metrics_body(7, 10, 1))
                    } else {
                        metrics_body(7, 10, 1)
                    },
                )
                .await;
                assert_eq!(st, 200);
            }
        }));
    }
    // An idle connection that never sends anything, and one that sends half a header slowly.
    let idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST /v1/metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();

    let c = reqwest::Client::new();
    // oversized (declared Content-Length)
    let (st, _, _) = post(&c, &good_url, PB, false, vec![0u8; (1 << 20) + 1]).await;
    assert_eq!(st, 413);
    // oversized, chunked (no Content-Length): the limit applies while reading
    {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /v1/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        let chunk = vec![0u8; 100_000];
        for _ in 0..20 {
            let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
            frame.extend_from_slice(&chunk);
            frame.extend_from_slice(b"\r\n");
            if s.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = s.write_all(b"0\r\n\r\n").await;
        let mut buf = vec![0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 413"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    // gzip bomb: 1 KiB-ish compressed, 8 MiB inflated, cap 4 MiB
    let bomb = gzip(&vec![0u8; 8 << 20]);
    assert!(bomb.len() < 64 << 10);
    let (st, _, _) = post(&c, &good_url, PB, true, bomb).await;
    assert_eq!(st, 413);
    // not gzip at all, though it says so
    let (st, _, _) = post(&c, &good_url, PB, true, b"plain".to_vec()).await;
    assert_eq!(st, 400);
    // truncated protobuf
    let mut t = metrics_body(7, 10, 1);
    t.truncate(t.len() / 2);
    let (st, _, _) = post(&c, &good_url, PB, false, t).await;
    assert_eq!(st, 400);
    // garbage protobuf
    let (st, _, _) = post(&c, &good_url, PB, false, vec![0xff; 64]).await;
    assert_eq!(st, 400);
    // truncated and garbage JSON
    let mut j = fixture("metrics.json");
    j.truncate(j.len() / 2);
    let (st, _, _) = post(&c, &good_url, JSON, false, j).await;
    assert_eq!(st, 400);
    let (st, _, _) = post(&c, &good_url, JSON, false, b"\x00\x01garbage".to_vec()).await;
    assert_eq!(st, 400);
    // a client that disconnects mid-body
    {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"POST /v1/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: 1000\r\n\r\n0123456789",
        )
        .await
        .unwrap();
        drop(s);
    }
    for g in good {
        g.await.unwrap();
    }
    // the slow client's request is dropped after the read timeout
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    drop(idle);

    // 413 x2, 413 bomb, 400 x5 (bad gzip, 2 protobuf, 2 JSON), cut-off body = 9
    let l = settle(&r, 9).await;
    let p = &l.processes[&me()];
    assert_eq!(p.signals.metrics.requests, 100, "{:?}", p.malformed_reasons);
    assert_eq!(p.signals.metrics.items, 1000);
    assert!(
        l.malformed_total == 9,
        "malformed {} {:?}",
        l.malformed_total,
        p.malformed_reasons
    );
    assert!(p
        .malformed_reasons
        .iter()
        .chain(
            l.connections
                .values()
                .flat_map(|c| c.malformed_reasons.iter())
        )
        .any(|m| m.contains("cut off")));
    r.shutdown(Duration::from_secs(1)).await;
}

/// A body that arrives in several frames (chunked, with pauses between the chunks) is gathered
/// whole: the same points are counted as for one sent at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_in_several_frames_is_counted_whole() {
    let r = start(Options::default(), false).await;
    let body = metrics_body(1, 40, 5);
    let mut s = tokio::net::TcpStream::connect(r.http_addr.unwrap())
        .await
        .unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(b"POST /v1/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let third = body.len() / 3 + 1;
    for chunk in body.chunks(third) {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(chunk);
        frame.extend_from_slice(b"\r\n");
        s.write_all(&frame).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let l = r.ledger();
    let p = &l.processes[&me()];
    assert_eq!(p.signals.metrics.requests, 1);
    assert_eq!(p.signals.metrics.items, 40);
    assert_eq!(p.metrics["requests"].points, 40);
    assert_eq!(l.malformed_total, 0);
    r.shutdown(Duration::from_secs(1)).await;
}

/// A worker whose resource names another pid (one made in the master before the fork) on a
/// connection it holds alone: after the first export the series cache skips unchanged starts
/// for it, as for its own pid; a moved start (a reset) must still reach the ledger, and every
/// point is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_resource_pid_on_a_sole_connection_keeps_every_start() {
    let r = start(Options::default(), false).await;
    // One keep-alive connection, as an exporter keeps it (the series cache is per connection).
    let mut s = tokio::net::TcpStream::connect(r.http_addr.unwrap())
        .await
        .unwrap();
    for start in [100, 100, 100, 100, 500, 500] {
        let body = metrics_body(4242, 3, start);
        let head = format!(
            "POST /v1/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: {PB}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(&[head.as_bytes(), &body].concat())
            .await
            .unwrap();
        // The answer: headers and an empty body (Content-Length: 0).
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(n, 1, "closed after {}", String::from_utf8_lossy(&got));
            got.push(b[0]);
        }
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        assert!(
            got.to_ascii_lowercase().contains("content-length: 0"),
            "{got}"
        );
    }
    let l = r.ledger();
    assert_eq!(l.connections.len(), 1);
    let p = &l.processes[&me()];
    assert_eq!(p.signals.metrics.requests, 6);
    assert_eq!(p.signals.metrics.items, 18);
    let mut starts: Vec<(String, u64)> = p
        .cumulative_series
        .iter()
        .map(|s| (s.series.to_string(), s.start_time_unix_nano))
        .collect();
    starts.sort();
    assert_eq!(
        starts,
        (0..3)
            .map(|i| (format!("requests{{i={i}}}"), 500))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        p.earliest_cumulative
            .as_ref()
            .map(|s| s.start_time_unix_nano),
        Some(100)
    );
    r.shutdown(Duration::from_secs(1)).await;
}
