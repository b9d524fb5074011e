//! The receiver under connections that never finish a request, floods and idle keep-alive
//! connections, on real sockets: each one is closed within its bound (counted from accept, on
//! either listener, HTTP/1, HTTP/2 and gRPC alike), a flood on one port locks nobody out, and
//! real exporters are served all along.

mod common;
#[path = "common/sum_export.rs"]
mod sum_export;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::hostile::{h2_unfinished_grpc, is_closed, wait_closed, Unfinished};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use otel_forkcheck::ledger::Ledger;
use otel_forkcheck::receive::{self, Options, Receiver};
use prost::Message;
use sum_export::{kv_int, kv_str, SumExport};

fn metrics(points: usize) -> ExportMetricsServiceRequest {
    SumExport {
        resource: vec![
            kv_str("service.name", "t"),
            kv_int("process.pid", std::process::id() as i64),
        ],
        metric: "requests",
        points,
        start: 1,
        time: 2,
    }
    .request(|_| 1)
}

async fn http_export(addr: SocketAddr) -> u16 {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    c.post(format!("http://{addr}/v1/metrics"))
        .header("content-type", "application/x-protobuf")
        .body(metrics(3).encode_to_vec())
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or_else(|e| panic!("OTLP/HTTP export to {addr}: {e}"))
}

/// One OTLP/gRPC metrics export (gzip when asked) on a fresh channel.
async fn grpc_export(addr: SocketAddr, gzip: bool) -> Result<(), tonic::Status> {
    grpc_export_points(addr, gzip, 3).await
}

/// The same with `points` data points.
async fn grpc_export_points(
    addr: SocketAddr,
    gzip: bool,
    points: usize,
) -> Result<(), tonic::Status> {
    let mut c = tokio::time::timeout(
        Duration::from_secs(10),
        MetricsServiceClient::connect(format!("http://{addr}")),
    )
    .await
    .expect("gRPC connect in time")
    .expect("gRPC connect");
    if gzip {
        c = c.send_compressed(tonic::codec::CompressionEncoding::Gzip);
    }
    tokio::time::timeout(Duration::from_secs(10), c.export(metrics(points)))
        .await
        .expect("gRPC export in time")
        .map(|_| ())
}

async fn start(o: Options) -> Receiver {
    receive::serve(o).await.expect("serve")
}

async fn ledger_when(r: &Receiver, done: impl Fn(&Ledger) -> bool) -> Ledger {
    for _ in 0..250 {
        let l = r.ledger();
        if done(&l) {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    r.ledger()
}

/// Opens every kind of unfinished connection to each listener, serves real exports while they
/// hang, and checks each was closed `bound` after accept (not before, not much after).
async fn unfinished_are_closed(o: Options, bound: Duration) {
    let r = start(o).await;
    let http = r.http_addr.unwrap();
    let grpc = r.grpc_addr.unwrap();
    let mut targets: Vec<(SocketAddr, Unfinished)> =
        Unfinished::ALL.iter().map(|a| (http, *a)).collect();
    if grpc != http {
        // The gRPC-only listener speaks HTTP/2 alone.
        targets.extend(Unfinished::H2.iter().map(|a| (grpc, *a)));
    }
    let opened = Instant::now();
    let attackers: Vec<(SocketAddr, Unfinished, TcpStream)> = targets
        .iter()
        .map(|(addr, a)| (*addr, *a, a.open(*addr)))
        .collect();
    // Served while they hang.
    assert_eq!(http_export(http).await, 200);
    grpc_export(grpc, false).await.expect("gRPC export");
    let served_at = opened.elapsed();
    assert!(
        served_at < bound,
        "exports took {served_at:?} during the attack"
    );
    let slack = Duration::from_millis(1500);
    let closed = tokio::task::spawn_blocking(move || {
        attackers
            .into_iter()
            .map(|(addr, a, mut s)| (addr, a, wait_closed(&mut s, opened + bound + slack)))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for (addr, a, at) in &closed {
        let Some(at) = at else {
            panic!(
                "{a:?} to {addr} still open {:?} after accept",
                bound + slack
            )
        };
        let after = at.duration_since(opened);
        eprintln!(
            "{a:?} to {addr}: closed {:.2} s after accept",
            after.as_secs_f64()
        );
        // Counted from accept, give or take the timer's granularity.
        assert!(
            after + Duration::from_millis(100) >= bound,
            "{a:?} closed too early: {after:?}"
        );
    }
    let l = ledger_when(&r, |l| {
        l.limits.first_request_timeouts >= closed.len() as u64
    })
    .await;
    assert_eq!(l.limits.first_request_timeouts, closed.len() as u64);
    assert_eq!(l.totals.metrics.requests, 2, "both exports counted");
    r.shutdown(Duration::from_millis(100)).await;
}

fn quick(bound: Duration) -> Options {
    Options {
        first_request_timeout: bound,
        ..Options::ephemeral()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_connections_are_closed_from_accept_on_both_listeners() {
    let bound = Duration::from_secs(1);
    unfinished_are_closed(quick(bound), bound).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_connections_are_closed_from_accept_on_the_shared_port() {
    let bound = Duration::from_secs(1);
    let o = Options {
        one_port: true,
        ..quick(bound)
    };
    unfinished_are_closed(o, bound).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_one_port_locks_out_neither_port() {
    let o = Options {
        max_conns_per_listener: 16,
        max_conns_per_peer: 16,
        ..Options::ephemeral()
    };
    let r = start(o).await;
    let (http, grpc) = (r.http_addr.unwrap(), r.grpc_addr.unwrap());
    let flood: Vec<TcpStream> = (0..60).map(|_| Unfinished::Silent.open(grpc)).collect();
    ledger_when(&r, |l| l.limits.evicted_listener_cap >= 44).await;
    assert!(r.open_connections().1 <= 16, "{:?}", r.open_connections());
    // The other port is untouched, and a new exporter on the flooded one gets in.
    assert_eq!(http_export(http).await, 200);
    grpc_export(grpc, false)
        .await
        .expect("gRPC export on the flooded port");
    let l = ledger_when(&r, |l| l.totals.metrics.requests >= 2).await;
    assert_eq!(l.totals.metrics.requests, 2);
    // The oldest went first: 44 by the flood itself and one for the exporter.
    assert!(l.limits.evicted_listener_cap >= 45, "{:?}", l.limits);
    let mut flood = flood;
    let closed =
        tokio::task::spawn_blocking(move || flood.iter_mut().map(is_closed).collect::<Vec<bool>>())
            .await
            .unwrap();
    let first_open = closed.iter().position(|c| !c).unwrap_or(closed.len());
    assert!(
        first_open >= 45,
        "the first 45 connections were closed first: {closed:?}"
    );
    r.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_gets_its_own_cap_and_busy_connections_are_never_evicted() {
    let o = Options {
        max_conns_per_listener: 32,
        max_conns_per_peer: 8,
        ..Options::ephemeral()
    };
    let r = start(o).await;
    let http = r.http_addr.unwrap();
    let _flood: Vec<TcpStream> = (0..20).map(|_| Unfinished::Silent.open(http)).collect();
    let l = ledger_when(&r, |l| l.limits.evicted_peer_cap >= 12).await;
    assert_eq!(l.limits.evicted_peer_cap, 12, "{:?}", l.limits);
    assert_eq!(r.open_connections().0, 8);
    r.shutdown(Duration::from_millis(100)).await;

    // Every connection busy with a request (a body still coming): a new one is refused, not
    // one of them.
    let o = Options {
        max_conns_per_listener: 4,
        max_conns_per_peer: 4,
        ..Options::ephemeral()
    };
    let r = start(o).await;
    let http = r.http_addr.unwrap();
    let mut busy = Vec::new();
    for _ in 0..4 {
        use std::io::Write;
        let mut s = TcpStream::connect(http).unwrap();
        s.write_all(
            b"POST /v1/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n\
              Content-Length: 100\r\n\r\nabc",
        )
        .unwrap();
        busy.push(s);
    }
    ledger_when(&r, |l| l.connections.len() >= 4).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = Unfinished::Silent.open(http);
    let l = ledger_when(&r, |l| l.limits.refused_connections >= 1).await;
    assert_eq!(l.limits.refused_connections, 1, "{:?}", l.limits);
    assert_eq!(l.limits.evicted_listener_cap, 0);
    let refused = tokio::task::spawn_blocking(move || {
        wait_closed(&mut extra, Instant::now() + Duration::from_secs(2))
    })
    .await
    .unwrap();
    assert!(refused.is_some(), "the new connection was closed");
    r.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_after_the_idle_bound() {
    let idle = Duration::from_secs(1);
    let o = Options {
        idle_timeout: idle,
        ..Options::ephemeral()
    };
    let r = start(o).await;
    let http = r.http_addr.unwrap();
    let body = metrics(1).encode_to_vec();
    let (took, served) = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect(http).unwrap();
        let mut req = format!(
            "POST /v1/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend(&body);
        s.write_all(&req).unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        let answered = Instant::now();
        let closed = wait_closed(&mut s, answered + idle + Duration::from_secs(3));
        (
            closed.map(|c| c.duration_since(answered)),
            String::from_utf8_lossy(&head).into_owned(),
        )
    })
    .await
    .unwrap();
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    let took = took.expect("idle connection closed");
    assert!(took + Duration::from_millis(100) >= idle, "{took:?}");
    let l = ledger_when(&r, |l| l.limits.idle_timeouts >= 1).await;
    assert_eq!(l.limits.idle_timeouts, 1);
    assert_eq!(l.limits.first_request_timeouts, 0);
    r.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_grpc_messages_are_inflated_within_the_budget() {
    let r = start(Options::ephemeral()).await;
    let grpc = r.grpc_addr.unwrap();
    grpc_export(grpc, true).await.expect("gzip gRPC export");
    grpc_export(grpc, false).await.expect("gRPC export");
    let l = ledger_when(&r, |l| l.totals.metrics.requests >= 2).await;
    assert_eq!(l.totals.metrics.requests, 2);
    assert_eq!(l.totals.metrics.items, 6);
    assert_eq!(l.malformed_total, 0);
    assert!(l.limits.budget_peak_bytes > 0);
    assert_eq!(r.budget_in_use(), 0, "every reservation was returned");
    r.shutdown(Duration::from_millis(100)).await;
}

/// A message's bytes are counted as they arrived, compressed when they were, as for OTLP/HTTP
/// bodies (they were counted re-encoded, so a gzip message looked uncompressed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bytes_are_counted_as_they_arrived() {
    let r = start(Options::ephemeral()).await;
    let grpc = r.grpc_addr.unwrap();
    let plain = metrics(500).encoded_len() as u64;
    grpc_export_points(grpc, false, 500)
        .await
        .expect("gRPC export");
    let l = ledger_when(&r, |l| l.totals.metrics.requests >= 1).await;
    assert_eq!(l.totals.metrics.bytes, plain);
    grpc_export_points(grpc, true, 500)
        .await
        .expect("gzip gRPC export");
    let l = ledger_when(&r, |l| l.totals.metrics.requests >= 2).await;
    assert_eq!(l.totals.metrics.items, 1000);
    let gzipped = l.totals.metrics.bytes - plain;
    assert!(
        gzipped > 0 && gzipped * 4 < plain,
        "{gzipped} bytes counted for a gzip message of {plain} bytes inflated"
    );
    r.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_grpc_messages_hold_little_and_not_for_long() {
    // 16 streams on one connection, each declaring a 64 MiB message and sending 2 KiB of it.
    let read = Duration::from_secs(2);
    let o = Options {
        read_timeout: read,
        ..Options::ephemeral()
    };
    let r = start(o).await;
    let grpc = r.grpc_addr.unwrap();
    let attack = h2_unfinished_grpc(16, 64 << 20, 2048);
    let mut s = tokio::net::TcpStream::connect(grpc).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, &attack)
        .await
        .unwrap();
    let l = ledger_when(&r, |_| r.budget_in_use() > 0).await;
    let held = r.budget_in_use();
    eprintln!("16 unfinished 64 MiB messages hold {held} bytes of the budget");
    // A first slice each (256 KiB), never what the prefixes announce.
    assert!(held > 0 && held <= 16 * (256 << 10), "{held}");
    assert_eq!(l.malformed_total, 0);
    // Served meanwhile.
    grpc_export(grpc, false)
        .await
        .expect("gRPC export during the attack");
    // Each is cut off at the body deadline (from accept on a connection's first requests) and
    // counted; the memory comes back.
    let l = ledger_when(&r, |l| l.malformed_total >= 16).await;
    assert_eq!(l.malformed_total, 16, "{:?}", l.connections);
    assert_eq!(r.budget_in_use(), 0);
    assert_eq!(l.totals.metrics.requests, 1);
    let reasons: Vec<String> = l
        .connections
        .values()
        .flat_map(|c| c.malformed_reasons.clone())
        .collect();
    assert!(
        reasons.iter().all(|r| r.contains("not received within")),
        "{reasons:?}"
    );
    drop(s);
    r.shutdown(Duration::from_millis(100)).await;
}
