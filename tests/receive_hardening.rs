//! `otel-forkcheck receive` as the built binary, under attack, with its default limits: every
//! connection that never finishes a request is closed ten seconds after accept on both
//! listeners while real exporters are served; 24 concurrent gzip bombs keep the process's
//! peak resident size under the memory budget (plus a margin) while every valid export sent
//! at the same time is counted; the memory goes back after the attack.
//!
//! The receiver runs in its own process group (killed on drop); the ledger it saves at the end
//! (`--save-ledger`) says what its limits did.

mod common;
#[path = "common/sum_export.rs"]
mod sum_export;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::hostile::{status_kib, wait_closed, Unfinished};
use common::Group;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::Message;
use serde_json::Value;
use sum_export::{kv_str, SumExport};

const BIN: &str = env!("CARGO_BIN_EXE_otel-forkcheck");
/// The receiver's default memory budget (receive::limits::DEFAULT_MEMORY_BUDGET).
const BUDGET_MIB: u64 = 256;

struct Receiver {
    group: Group,
    http: SocketAddr,
    grpc: SocketAddr,
    ledger: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    fn start() -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("ledger.json");
        // Two listeners (the same address twice would be one port serving both).
        let grpc = format!("127.0.0.1:{}", common::free_port());
        let mut group = Group::spawn(
            Command::new(BIN)
                .args(["receive", "--http", "127.0.0.1:0", "--grpc", &grpc])
                .args(["--timeout", "300s", "--format", "json", "--save-ledger"])
                .arg(&ledger)
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        );
        let stderr = group.child.stderr.take().expect("stderr");
        let mut line = String::new();
        BufReader::new(stderr).read_line(&mut line).unwrap();
        let addr = |tag: &str| -> SocketAddr {
            line.split(tag)
                .nth(1)
                .and_then(|r| r.split([',', '\n']).next())
                .and_then(|a| a.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {tag:?} in {line:?}"))
        };
        let (http, grpc) = (addr("OTLP/HTTP on http://"), addr("OTLP/gRPC on "));
        Receiver {
            group,
            http,
            grpc,
            ledger,
            _dir: dir,
        }
    }

    fn pid(&self) -> i32 {
        self.group.pgid
    }

    /// SIGTERM, then the ledger it saved.
    fn finish(mut self) -> Value {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = self.group.child.wait().unwrap();
        assert!(
            status.code().is_some(),
            "receive ended by a signal: {status}"
        );
        read_json(&self.ledger)
    }
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn metrics(points: usize) -> ExportMetricsServiceRequest {
    SumExport {
        resource: vec![kv_str("service.name", "t")],
        metric: "requests",
        points,
        start: 1,
        time: 2,
    }
    .request(|_| 1)
}

fn gzip(b: &[u8], level: u32) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// Posts `body` as an OTLP/HTTP metrics export the way OTLP exporters do: 503 and 429 are
/// retried after their Retry-After. Returns the final status and how many tries it took.
async fn export_retrying(
    c: &reqwest::Client,
    addr: SocketAddr,
    body: Vec<u8>,
    gz: bool,
) -> (u16, u32) {
    let mut tries = 0;
    loop {
        tries += 1;
        let mut rb = c
            .post(format!("http://{addr}/v1/metrics"))
            .header("content-type", "application/x-protobuf")
            .body(body.clone());
        if gz {
            rb = rb.header("content-encoding", "gzip");
        }
        let r = rb.send().await.expect("export sent");
        let st = r.status().as_u16();
        if (st == 503 || st == 429) && tries < 30 {
            let after = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .expect("Retry-After on a 503");
            tokio::time::sleep(Duration::from_secs(after)).await;
            continue;
        }
        return (st, tries);
    }
}

#[test]
fn unfinished_connections_are_closed_ten_seconds_after_accept_by_default() {
    let r = Receiver::start();
    let (http, grpc) = (r.http, r.grpc);
    let opened = Instant::now();
    let mut attackers: Vec<(SocketAddr, Unfinished, std::net::TcpStream)> = Vec::new();
    for a in Unfinished::ALL {
        attackers.push((http, a, a.open(http)));
    }
    for a in Unfinished::H2 {
        attackers.push((grpc, a, a.open(grpc)));
    }
    // Real exporters, both protocols, while the attackers hang.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = reqwest::Client::new();
        let (st, _) = export_retrying(&c, http, metrics(2).encode_to_vec(), false).await;
        assert_eq!(st, 200);
        let mut g = MetricsServiceClient::connect(format!("http://{grpc}"))
            .await
            .expect("gRPC connect");
        g.export(metrics(2)).await.expect("gRPC export");
    });
    assert!(opened.elapsed() < Duration::from_secs(5));
    let bound = Duration::from_secs(10);
    for (addr, a, s) in attackers.iter_mut() {
        let at = wait_closed(s, opened + bound + Duration::from_millis(1500))
            .unwrap_or_else(|| panic!("{a:?} to {addr} still open after 11.5 s"));
        let after = at.duration_since(opened);
        eprintln!(
            "{a:?} to {addr}: closed {:.2} s after accept",
            after.as_secs_f64()
        );
        assert!(
            after >= bound - Duration::from_millis(100),
            "{a:?} closed at {after:?}"
        );
    }
    let ledger = r.finish();
    assert_eq!(
        ledger["limits"]["first_request_timeouts"],
        attackers.len() as u64,
        "{}",
        ledger["limits"]
    );
    assert_eq!(ledger["totals"]["metrics"]["requests"], 2);
}

/// A gzip body of `members` members, each 1 MiB zeros... rather 1 GiB / `members`: about
/// 1 MiB on the wire, about 1 GiB inflated. Several members (which OTLP gzip readers accept,
/// as the receiver does) keep building it cheap in a debug build.
fn bomb() -> Vec<u8> {
    let member = gzip(&vec![0u8; 8 << 20], 9);
    let n = (1usize << 30) / (8 << 20);
    let mut b = Vec::with_capacity(member.len() * n);
    for _ in 0..n {
        b.extend_from_slice(&member);
    }
    b
}

#[test]
fn gzip_bombs_stay_within_the_memory_budget_and_valid_exports_are_all_counted() {
    let r = Receiver::start();
    let (http, pid) = (r.http, r.pid());
    let bomb = bomb();
    assert!(
        (900 << 10..1200 << 10).contains(&bomb.len()),
        "bomb of {} bytes",
        bomb.len()
    );
    // Settled before the attack.
    std::thread::sleep(Duration::from_millis(300));
    let base_kib = status_kib(pid, "VmRSS").unwrap();

    // Resident size over time, for the report.
    let stop = Arc::new(AtomicBool::new(false));
    let top = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, top) = (stop.clone(), top.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(k) = status_kib(pid, "VmRSS") {
                    top.fetch_max(k, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    const VALID_SENDERS: usize = 4;
    const VALID_EACH: usize = 25;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let (bomb_statuses, valid) = rt.block_on(async {
        let c = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let bombs: Vec<_> = (0..24)
            .map(|_| {
                let (c, b) = (c.clone(), bomb.clone());
                tokio::spawn(async move {
                    let r = c
                        .post(format!("http://{http}/v1/metrics"))
                        .header("content-type", "application/x-protobuf")
                        .header("content-encoding", "gzip")
                        .body(b)
                        .send()
                        .await;
                    r.map(|r| r.status().as_u16()).unwrap_or(0)
                })
            })
            .collect();
        let valid: Vec<_> = (0..VALID_SENDERS)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    for j in 0..VALID_EACH {
                        let body = metrics(5).encode_to_vec();
                        // Half of them gzip, as exporters configured with compression send.
                        let gz = (i + j) % 2 == 0;
                        let body = if gz { gzip(&body, 6) } else { body };
                        out.push(export_retrying(&c, http, body, gz).await);
                    }
                    out
                })
            })
            .collect();
        let mut bs = Vec::new();
        for b in bombs {
            bs.push(b.await.unwrap());
        }
        let mut vs = Vec::new();
        for v in valid {
            vs.extend(v.await.unwrap());
        }
        (bs, vs)
    });
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let hwm_kib = status_kib(pid, "VmHWM").unwrap();
    // Memory goes back once the bodies are gone.
    std::thread::sleep(Duration::from_secs(1));
    let after_kib = status_kib(pid, "VmRSS").unwrap();
    eprintln!(
        "RSS before {} MiB, sampled top {} MiB, VmHWM {} MiB, after {} MiB; attack took {:.1} s; \
         bombs answered {:?}; valid exports' tries: {:?}",
        base_kib >> 10,
        top.load(Ordering::Relaxed) >> 10,
        hwm_kib >> 10,
        after_kib >> 10,
        took.as_secs_f64(),
        bomb_statuses,
        valid.iter().map(|v| v.1).collect::<Vec<_>>()
    );
    let ledger = r.finish();
    eprintln!("limits: {}", ledger["limits"]);

    // Every bomb refused: too large (413) or no memory now (503), never served or dropped.
    assert!(
        bomb_statuses.iter().all(|s| *s == 413 || *s == 503),
        "{bomb_statuses:?}"
    );
    // Every valid export answered 200 (after retries the exporter would make) and counted.
    assert!(valid.iter().all(|(st, _)| *st == 200), "{valid:?}");
    let n = (VALID_SENDERS * VALID_EACH) as u64;
    assert_eq!(ledger["totals"]["metrics"]["requests"], n);
    assert_eq!(ledger["totals"]["metrics"]["items"], n * 5);
    // Peak resident size: the budget, plus a margin for what the budget does not count: the
    // process as it started (base), and up to 64 MiB of connection buffers (hyper's read
    // buffers and HTTP/2 windows of 24 + 4 connections, about 1.4 MiB each at most), inflater
    // states, thread stacks and allocator slack.
    let limit_kib = base_kib + ((BUDGET_MIB + 64) << 10);
    assert!(
        hwm_kib < limit_kib,
        "peak RSS {} MiB over {} MiB",
        hwm_kib >> 10,
        limit_kib >> 10
    );
    let peak = ledger["limits"]["budget_peak_bytes"].as_u64().unwrap();
    assert!(peak <= BUDGET_MIB << 20, "reserved {peak}");
    assert!(
        after_kib < base_kib + (64 << 10),
        "RSS {} MiB a second after the attack (started at {} MiB)",
        after_kib >> 10,
        base_kib >> 10
    );
}
