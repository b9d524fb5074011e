//! Soak test of `otel-forkcheck receive` (run by scripts/soak.sh): many well-behaved exporters
//! beside hostile clients, for minutes; then nothing may be lost and the resident size must
//! have stayed flat.
//!
//! ```text
//! soak BIN SECONDS [HTTP_SENDERS] [GRPC_SENDERS]
//! ```
//! - HTTP_SENDERS (default 64) keep-alive OTLP/HTTP exporters, half of them gzip, and
//!   GRPC_SENDERS (default 8) OTLP/gRPC exporters, each sending metric exports back to back and
//!   retrying 503/RESOURCE_EXHAUSTED after the hint, as OTLP exporters do;
//! - hostile clients all along: connections that never finish a request (silent, HTTP/2
//!   preface alone, HEADERS without END_HEADERS) opened on both ports in waves, garbage bodies,
//!   a 1 MiB gzip bomb (1 GiB inflated) every 2 s, bodies trickled slower than the deadline.
//!
//! Verdict (exit 0 or 1): every export answered 200/OK is in the receiver's ledger, data point
//! for data point; the resident size stayed flat: its low points (10th percentile: bombs make
//! spikes up to the memory budget, the low points show what stays) in the last third of the
//! run are within 32 MiB of the first third's (after a 5 s warm-up), and two seconds after the
//! clients stop it is within 48 MiB of it; the peak stays under the budget plus 64 MiB.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::Message;
use sum_export::{kv_str, SumExport};
use tokio::io::AsyncWriteExt;

#[path = "../tests/common/sum_export.rs"]
mod sum_export;

const POINTS: usize = 3;
const BUDGET_MIB: u64 = 256;

fn metrics(sender: usize, seq: u64) -> ExportMetricsServiceRequest {
    SumExport {
        resource: vec![
            kv_str("service.name", "soak"),
            kv_str("service.instance.id", &format!("sender-{sender}")),
        ],
        metric: "soak.requests",
        points: POINTS,
        start: 1,
        time: 2 + seq,
    }
    .request(|_| seq as i64)
}

fn gzip(b: &[u8], level: u32) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    refused_then_retried: AtomicU64,
    failed: AtomicU64,
    hostile: AtomicU64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: soak BIN SECONDS [HTTP_SENDERS] [GRPC_SENDERS]");
        std::process::exit(2);
    }
    let bin = PathBuf::from(&args[1]);
    let secs: u64 = args[2].parse().expect("SECONDS");
    let http_senders: usize = args.get(3).map_or(64, |a| a.parse().expect("HTTP_SENDERS"));
    let grpc_senders: usize = args.get(4).map_or(8, |a| a.parse().expect("GRPC_SENDERS"));

    let dir = std::env::temp_dir().join(format!("otel-forkcheck-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ledger_path = dir.join("ledger.json");
    let grpc_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(&bin)
        .args(["receive", "--http", "127.0.0.1:0", "--grpc"])
        .arg(format!("127.0.0.1:{grpc_port}"))
        .args(["--timeout", &format!("{}s", secs + 120), "--format", "json"])
        .arg("--save-ledger")
        .arg(&ledger_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start the receiver");
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = |tag: &str| -> SocketAddr {
        line.split(tag)
            .nth(1)
            .and_then(|r| r.split([',', '\n']).next())
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {tag:?} in {line:?}"))
    };
    let (http, grpc) = (addr("OTLP/HTTP on http://"), addr("OTLP/gRPC on "));
    eprintln!(
        "soak: receiver pid {pid} on {http} and {grpc}; {http_senders} HTTP + {grpc_senders} gRPC \
         senders and hostile clients for {secs} s"
    );

    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let rss: Arc<Mutex<Vec<u64>>> = Arc::default();
    let sampler = {
        let (stop, rss) = (stop.clone(), rss.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut last_print = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let Some(k) = status_kib(pid, "VmRSS") {
                    rss.lock().unwrap().push(k);
                    if last_print.elapsed() >= Duration::from_secs(10) {
                        last_print = Instant::now();
                        eprintln!(
                            "soak: {:>4.0} s  RSS {} MiB",
                            start.elapsed().as_secs_f64(),
                            k >> 10
                        );
                    }
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for s in 0..http_senders {
            let (stop, counts) = (stop.clone(), counts.clone());
            tasks.push(tokio::spawn(async move {
                let c = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .timeout(Duration::from_secs(30))
                    .build()
                    .unwrap();
                let gz = s % 2 == 0;
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let body = metrics(s, seq).encode_to_vec();
                    let body = if gz { gzip(&body, 6) } else { body };
                    loop {
                        let mut rb = c
                            .post(format!("http://{http}/v1/metrics"))
                            .header("content-type", "application/x-protobuf")
                            .body(body.clone());
                        if gz {
                            rb = rb.header("content-encoding", "gzip");
                        }
                        match rb.send().await {
                            Ok(r) if r.status().as_u16() == 200 => {
                                counts.ok.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Ok(r) if r.status().as_u16() == 503 => {
                                counts.refused_then_retried.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                            _ => {
                                counts.failed.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                }
            }));
        }
        for s in 0..grpc_senders {
            let (stop, counts) = (stop.clone(), counts.clone());
            tasks.push(tokio::spawn(async move {
                let Ok(mut c) = MetricsServiceClient::connect(format!("http://{grpc}")).await
                else {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                if s % 2 == 0 {
                    c = c.send_compressed(tonic::codec::CompressionEncoding::Gzip);
                }
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    loop {
                        match c.export(metrics(1000 + s, seq)).await {
                            Ok(_) => {
                                counts.ok.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Err(st) if st.code() == tonic::Code::ResourceExhausted => {
                                counts.refused_then_retried.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                            Err(_) => {
                                counts.failed.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                }
            }));
        }
        tasks.push(tokio::spawn(hostile(
            http,
            grpc,
            stop.clone(),
            counts.clone(),
        )));
        tokio::time::sleep(Duration::from_secs(secs)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(40), t).await;
        }
    });
    let ran = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let hwm = status_kib(pid, "VmHWM").unwrap_or(0);
    let settled = status_kib(pid, "VmRSS").unwrap_or(0);
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    let ledger: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ledger_path).expect("ledger saved"))
            .expect("ledger JSON");
    let _ = std::fs::remove_dir_all(&dir);

    let ok = counts.ok.load(Ordering::Relaxed);
    let counted = ledger["totals"]["metrics"]["requests"]
        .as_u64()
        .unwrap_or(0);
    let points = ledger["totals"]["metrics"]["items"].as_u64().unwrap_or(0);
    // Samples every 250 ms; the first 5 s are warm-up.
    let samples: Vec<u64> = rss.lock().unwrap().iter().skip(20).copied().collect();
    let third = (samples.len() / 3).max(1);
    let low = |s: &[u64]| {
        let mut v = s.to_vec();
        v.sort_unstable();
        v.get(v.len() / 10).copied().unwrap_or(0)
    };
    let first = low(&samples[..third.min(samples.len())]);
    let last = low(&samples[samples.len().saturating_sub(third)..]);
    println!(
        "soak: {:.0} s; exports answered OK {ok}, in the ledger {counted} ({points} points); \
         retried after 503/RESOURCE_EXHAUSTED {}; failed {}; hostile actions {}; \
         RSS low points: first third {} MiB, last third {} MiB; {} MiB once the clients \
         stopped; peak {} MiB; limits {}",
        ran.as_secs_f64(),
        counts.refused_then_retried.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
        counts.hostile.load(Ordering::Relaxed),
        first >> 10,
        last >> 10,
        settled >> 10,
        hwm >> 10,
        ledger["limits"]
    );
    let mut bad = Vec::new();
    if counted != ok || points != ok * POINTS as u64 {
        bad.push(format!(
            "lost: {ok} answered OK, {counted} counted, {points} points"
        ));
    }
    if counts.failed.load(Ordering::Relaxed) > 0 {
        bad.push("some well-behaved exports failed outright".into());
    }
    if last > first + (32 << 10) {
        bad.push(format!(
            "RSS grew: low points {} MiB -> {} MiB",
            first >> 10,
            last >> 10
        ));
    }
    if settled > first + (48 << 10) {
        bad.push(format!(
            "RSS did not come back: {} MiB after the clients stopped (low point at the start {} MiB)",
            settled >> 10,
            first >> 10
        ));
    }
    if hwm > first + ((BUDGET_MIB + 64) << 10) {
        bad.push(format!("peak RSS {} MiB", hwm >> 10));
    }
    if bad.is_empty() {
        println!("soak: PASS");
    } else {
        for b in &bad {
            println!("soak: FAIL: {b}");
        }
        std::process::exit(1);
    }
}

use std::os::unix::process::CommandExt;

/// Hostile clients until `stop`: waves of connections that never finish a request, garbage,
/// bombs, trickled bodies.
async fn hostile(http: SocketAddr, grpc: SocketAddr, stop: Arc<AtomicBool>, counts: Arc<Counts>) {
    let bomb = {
        let member = gzip(&vec![0u8; 8 << 20], 9);
        let mut b = Vec::new();
        for _ in 0..128 {
            b.extend_from_slice(&member);
        }
        b
    };
    let preface = {
        let mut b = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        b.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
        b
    };
    let mut headers_open = preface.clone();
    headers_open.extend([0, 0, 3, 1, 1, 0, 0, 0, 1, 0x83, 0x86, 0x84]);
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut held: Vec<(Instant, tokio::net::TcpStream)> = Vec::new();
    let mut tick = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick += 1;
        // A wave of unfinished connections on both ports, kept open for 15 s by us (the
        // receiver closes them after its first-request bound).
        for i in 0..20 {
            let addr = if i % 2 == 0 { http } else { grpc };
            if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                let bytes: &[u8] = match i % 3 {
                    0 => &[],
                    1 => &preface,
                    _ => &headers_open,
                };
                let _ = s.write_all(bytes).await;
                held.push((Instant::now(), s));
                counts.hostile.fetch_add(1, Ordering::Relaxed);
            }
        }
        held.retain(|(t, _)| t.elapsed() < Duration::from_secs(15));
        // Garbage.
        let garbage: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let _ = c
            .post(format!("http://{http}/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .body(garbage)
            .send()
            .await;
        counts.hostile.fetch_add(1, Ordering::Relaxed);
        // A bomb every other second, in the background.
        if tick % 2 == 0 {
            let (c, b) = (c.clone(), bomb.clone());
            tokio::spawn(async move {
                let _ = c
                    .post(format!("http://{http}/v1/metrics"))
                    .header("content-type", "application/x-protobuf")
                    .header("content-encoding", "gzip")
                    .body(b)
                    .send()
                    .await;
            });
            counts.hostile.fetch_add(1, Ordering::Relaxed);
        }
        // A body trickled slower than any deadline, in the background.
        if tick % 5 == 0 {
            let stop = stop.clone();
            tokio::spawn(async move {
                if let Ok(mut s) = tokio::net::TcpStream::connect(http).await {
                    let _ = s
                        .write_all(
                            b"POST /v1/logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n\
                              Content-Length: 1048576\r\n\r\n",
                        )
                        .await;
                    for _ in 0..60 {
                        if stop.load(Ordering::Relaxed) || s.write_all(&[0u8; 64]).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            });
            counts.hostile.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
