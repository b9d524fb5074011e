//! Load generator for scripts/bench-receive.sh: OTLP exports over keep-alive connections, one
//! at a time per connection, as fast as the server answers.
//!
//! ```text
//! bench_load body  KIND SIGNAL ADDR FILE CONNS SECONDS [THREADS]
//!     KIND pb|json (OTLP/HTTP, HTTP/1.1) or grpc (OTLP/gRPC, HTTP/2); SIGNAL
//!     metrics|traces|logs; FILE a recorded body (scripts/make-otlp-bodies.py) in protobuf
//!     (pb, grpc) or OTLP/JSON, sent as this process's own (process.pid) with its metric
//!     points' times moving forward on every request (see body.rs). CONNS connections for
//!     SECONDS. Prints `requests=.. ok=.. errors=.. secs=.. rps=.. items_per_s=..
//!     cpu_us_per_req=.. sleeps_per_req=..` (the generator's own CPU per answered request,
//!     and how often it waited for an answer: voluntary context switches).
//! bench_load pids-body KIND SIGNAL ADDR FILE PROCS REQUESTS
//!     PROCS forked processes, each with its own connection sending FILE as its own,
//!     REQUESTS times, all at once. Prints `procs=.. requests=.. ok=.. points=.. secs=..`.
//! bench_load rate  URL CONNS SECONDS POINTS [THREADS]
//!     a synthetic body: one ExportMetricsServiceRequest with POINTS data points (a cumulative
//!     Sum, one series per point), OTLP/HTTP protobuf.
//! bench_load pids  URL PROCS REQUESTS POINTS
//!     the synthetic body from PROCS forked processes (process.pid = each one's pid).
//! ```
//! A minimal HTTP/1.1 client (Content-Length, chunked and close-delimited responses; reconnects
//! when the server closes) and hyper's HTTP/2 client for gRPC, so the generator costs little
//! and needs nothing beyond the project's own dependencies. Only 2xx answers (gRPC: status 0)
//! count as `ok`.

mod body;
mod grpc;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use body::Kind;

#[path = "../../tests/common/sum_export.rs"]
mod sum_export;

use sum_export::{kv_int, kv_str, SumExport};

/// The synthetic export as `pid`, its points' times now.
fn body(pid: i64, points: usize) -> Vec<u8> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    SumExport {
        resource: vec![kv_str("service.name", "bench"), kv_int("process.pid", pid)],
        metric: "bench.requests",
        points,
        start: now,
        time: now + 1,
    }
    .request(|i| i as i64)
    .encode_to_vec()
}

struct Target {
    host_port: String,
    path: String,
}

fn parse_url(url: &str) -> Target {
    let rest = url.strip_prefix("http://").expect("http:// URL");
    let (hp, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/v1/metrics"),
    };
    Target {
        host_port: hp.to_string(),
        path: path.to_string(),
    }
}

fn request(t: &Target, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-protobuf\r\n\
         Content-Length: {}\r\n\r\n",
        t.path,
        t.host_port,
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// One HTTP/1.1 client connection that reconnects when the server closes.
struct Client {
    addr: String,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

enum Framing {
    Length(usize),
    Chunked,
    Close,
}

impl Client {
    fn new(addr: &str) -> Client {
        Client {
            addr: addr.to_string(),
            stream: None,
            buf: Vec::with_capacity(8192),
        }
    }

    /// Sends one request; Ok(status) or Err on a transport error.
    async fn send(&mut self, req: &[u8]) -> std::io::Result<u16> {
        if self.stream.is_none() {
            let s = TcpStream::connect(&self.addr).await?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
            self.buf.clear();
        }
        let r = self.exchange(req).await;
        match r {
            Ok((status, keep)) => {
                if !keep {
                    self.stream = None;
                }
                Ok(status)
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        let s = self.stream.as_mut().expect("connected");
        let mut tmp = [0u8; 16384];
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }

    async fn exchange(&mut self, req: &[u8]) -> std::io::Result<(u16, bool)> {
        self.stream
            .as_mut()
            .expect("connected")
            .write_all(req)
            .await?;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut keep = !status_line.starts_with("http/1.0");
        let mut framing = Framing::Close;
        for l in lines {
            if let Some(v) = l.strip_prefix("content-length:") {
                framing = Framing::Length(v.trim().parse().unwrap_or(0));
            } else if l.starts_with("transfer-encoding:") && l.contains("chunked") {
                framing = Framing::Chunked;
            } else if let Some(v) = l.strip_prefix("connection:") {
                let v = v.trim();
                if v == "close" {
                    keep = false;
                } else if v == "keep-alive" {
                    keep = true;
                }
            }
        }
        self.buf.drain(..head_end);
        match framing {
            Framing::Length(n) => {
                while self.buf.len() < n {
                    self.fill().await?;
                }
                self.buf.drain(..n);
            }
            Framing::Chunked => loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    self.fill().await?;
                };
                let size = usize::from_str_radix(
                    String::from_utf8_lossy(&self.buf[..line_end])
                        .split(';')
                        .next()
                        .unwrap_or("0")
                        .trim(),
                    16,
                )
                .unwrap_or(0);
                let need = line_end + 2 + size + 2;
                while self.buf.len() < need {
                    self.fill().await?;
                }
                self.buf.drain(..need);
                if size == 0 {
                    break;
                }
            },
            Framing::Close => {
                keep = false;
                while self.fill().await.is_ok() {}
                self.buf.clear();
            }
        }
        Ok((status, keep))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
}

/// What `load` counted: requests sent, answered ok, failed, in `secs` seconds.
struct Totals {
    requests: u64,
    ok: u64,
    errors: u64,
    secs: f64,
}

impl Totals {
    /// Prints the totals, with `unit` per second for `per_request` of them in each ok request.
    fn print(&self, unit: &str, per_request: u64) {
        println!(
            "requests={} ok={} errors={} secs={:.3} rps={:.0} {unit}_per_s={:.0} \
             cpu_us_per_req={:.1} sleeps_per_req={:.3}",
            self.requests,
            self.ok,
            self.errors,
            self.secs,
            self.ok as f64 / self.secs,
            (self.ok * per_request) as f64 / self.secs,
            own_cpu_secs() * 1e6 / self.ok.max(1) as f64,
            own_sleeps() as f64 / self.ok.max(1) as f64
        );
    }
}

/// `conns` connections made by `connect`, each sending one request at a time for `secs`
/// seconds on `threads` runtime threads; `next(buf)` turns the connection's copy of `first`
/// into its next request.
fn load(
    conns: usize,
    secs: f64,
    threads: usize,
    connect: impl Fn() -> Sender,
    first: &[u8],
    next: impl Fn(&mut Vec<u8>) + Send + Sync + 'static,
) -> Totals {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .unwrap();
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(next);
    let started = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let (counts, stop, next) = (counts.clone(), stop.clone(), next.clone());
            let mut s = connect();
            let mut buf = first.to_vec();
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    next(&mut buf);
                    counts.requests.fetch_add(1, Ordering::Relaxed);
                    if s.send(&buf).await {
                        counts.ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    });
    Totals {
        requests: counts.requests.load(Ordering::Relaxed),
        ok: counts.ok.load(Ordering::Relaxed),
        errors: counts.errors.load(Ordering::Relaxed),
        secs: started.elapsed().as_secs_f64(),
    }
}

/// In a forked child: `requests` requests on one connection made by `connect`, request `n`
/// (from 1) made by `prepare(buf, n)` from `first`; returns how many were answered ok.
fn send_n(
    connect: impl FnOnce() -> Sender,
    first: &[u8],
    requests: usize,
    prepare: impl Fn(&mut Vec<u8>, u64),
) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut s = connect();
        let mut buf = first.to_vec();
        let mut ok = 0u64;
        for n in 1..=requests {
            prepare(&mut buf, n as u64);
            ok += s.send(&buf).await as u64;
        }
        ok
    })
}

fn rate(url: &str, conns: usize, secs: f64, points: usize, threads: usize) {
    let t = parse_url(url);
    let req = request(&t, &body(std::process::id() as i64, points));
    let connect = || Sender::H1(Client::new(&t.host_port));
    load(conns, secs, threads, connect, &req, |_| {}).print("points", points as u64);
}

fn pids(url: &str, procs: usize, requests: usize, points: usize) {
    let t = parse_url(url);
    fork_senders(
        procs,
        |pid| {
            let req = request(&t, &body(pid, points));
            send_n(
                || Sender::H1(Client::new(&t.host_port)),
                &req,
                requests,
                |_, _| {},
            )
        },
        requests,
        points,
    );
}

/// Forks `procs` children that each run `child(own pid)` (which returns the requests that
/// were answered ok), all at once; prints the totals.
fn fork_senders(procs: usize, child: impl Fn(i64) -> u64, requests: usize, points: usize) {
    let started = Instant::now();
    // Every child waits on this pipe so that all of them exist (256 distinct live pids) before
    // any sends; the parent closes the write end to start them.
    let (rd, wr) = nix::unistd::pipe().expect("pipe");
    let (res_rd, res_wr) = nix::unistd::pipe().expect("pipe");
    let mut kids = Vec::with_capacity(procs);
    for _ in 0..procs {
        // SAFETY: the child only runs its own single-threaded runtime and _exits; the parent
        // has no other threads yet.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => {
                drop(wr);
                drop(res_rd);
                let mut b = [0u8; 1];
                let _ = nix::unistd::read(&rd, &mut b);
                let ok = child(std::process::id() as i64);
                let mut f = std::fs::File::from(res_wr);
                let _ = f.write_all(format!("{ok}\n").as_bytes());
                drop(f);
                // SAFETY: leave without running the parent's atexit handlers.
                unsafe { libc::_exit(0) };
            }
            nix::unistd::ForkResult::Parent { child } => kids.push(child),
        }
    }
    drop(rd);
    drop(res_wr);
    drop(wr); // go
    let mut all = String::new();
    {
        use std::io::Read;
        let _ = std::fs::File::from(res_rd).read_to_string(&mut all);
    }
    for k in kids {
        let _ = nix::sys::wait::waitpid(k, None);
    }
    let ok: u64 = all
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .sum();
    println!(
        "procs={procs} requests={} ok={ok} points={} secs={:.3}",
        procs * requests,
        ok * points as u64,
        started.elapsed().as_secs_f64()
    );
}

/// A recorded body as this pid sends it, with its HTTP/1.1 head or gRPC frame header.
fn recorded(kind: Kind, signal: &str, addr: &str, file: &[u8], pid: i64) -> body::Template {
    let t = body::template(kind, signal, file, pid);
    if kind == Kind::Grpc {
        let h = grpc::frame_header(t.bytes.len());
        return t.prefixed(&h);
    }
    let ct = if kind == Kind::Json {
        "application/json"
    } else {
        "application/x-protobuf"
    };
    let head = format!(
        "POST /v1/{signal} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {ct}\r\n\
         Content-Length: {}\r\n\r\n",
        t.bytes.len()
    );
    t.prefixed(head.as_bytes())
}

/// One connection of either kind.
enum Sender {
    H1(Client),
    Grpc(grpc::Client),
}

impl Sender {
    fn new(kind: Kind, signal: &str, addr: &str) -> Sender {
        match kind {
            Kind::Grpc => Sender::Grpc(grpc::Client::new(addr, signal)),
            _ => Sender::H1(Client::new(addr)),
        }
    }

    /// Whether the server took it.
    async fn send(&mut self, req: &[u8]) -> bool {
        match self {
            Sender::H1(c) => c.send(req).await.is_ok_and(|s| (200..300).contains(&s)),
            Sender::Grpc(c) => c.send(bytes::Bytes::copy_from_slice(req)).await == Ok(0),
        }
    }
}

fn read_body_file(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| {
        eprintln!("bench_load: cannot read {path}: {e}");
        std::process::exit(2)
    })
}

#[allow(clippy::too_many_arguments)]
fn body_rate(
    kind: Kind,
    signal: &str,
    addr: &str,
    file: &str,
    conns: usize,
    secs: f64,
    threads: usize,
) {
    let t = Arc::new(recorded(
        kind,
        signal,
        addr,
        &read_body_file(file),
        std::process::id() as i64,
    ));
    if signal == "metrics" && t.stamps() == 0 {
        eprintln!("bench_load: no point time found to move in {file}");
        std::process::exit(2);
    }
    let next = AtomicU64::new(1);
    let stamped = t.clone();
    let stamp = move |buf: &mut Vec<u8>| stamped.stamp(buf, next.fetch_add(1, Ordering::Relaxed));
    let connect = || Sender::new(kind, signal, addr);
    load(conns, secs, threads, connect, &t.bytes, stamp).print("items", t.items);
}

/// This process's CPU time so far (user + system, every thread), seconds: what the generator
/// takes from the cores it shares with the server under test.
fn own_cpu_secs() -> f64 {
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    own_usage().map_or(0.0, |u| s(u.ru_utime) + s(u.ru_stime))
}

/// How often this process has waited so far (voluntary context switches, every thread): each
/// time it ran out of answers to read. Waking it again costs the server that answers next.
fn own_sleeps() -> i64 {
    own_usage().map_or(0, |u| u.ru_nvcsw)
}

fn own_usage() -> Option<libc::rusage> {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    (unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } == 0).then_some(u)
}

/// PROCS forked senders of a recorded body, each as its own pid.
fn pids_body(kind: Kind, signal: &str, addr: &str, file: &str, procs: usize, requests: usize) {
    let file = read_body_file(file);
    let items = recorded(kind, signal, addr, &file, 1).items;
    fork_senders(
        procs,
        |pid| {
            let t = recorded(kind, signal, addr, &file, pid);
            let connect = || Sender::new(kind, signal, addr);
            send_n(connect, &t.bytes, requests, |buf, n| t.stamp(buf, n))
        },
        requests,
        items as usize,
    );
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: usize| a.get(i).and_then(|v| v.parse().ok()).unwrap_or(d);
    let kind = || Kind::parse(&a[1]);
    match a.first().map(String::as_str) {
        Some("body") if a.len() >= 7 && kind().is_some() => body_rate(
            kind().expect("checked"),
            &a[2],
            &a[3],
            &a[4],
            num(5, 8),
            a[6].parse().unwrap_or(5.0),
            num(7, 1),
        ),
        Some("pids-body") if a.len() >= 7 && kind().is_some() => pids_body(
            kind().expect("checked"),
            &a[2],
            &a[3],
            &a[4],
            num(5, 256),
            num(6, 40),
        ),
        Some("rate") if a.len() >= 5 => rate(
            &a[1],
            num(2, 64),
            a[3].parse().unwrap_or(5.0),
            num(4, 100),
            num(5, 1),
        ),
        Some("pids") if a.len() >= 5 => pids(&a[1], num(2, 256), num(3, 40), num(4, 100)),
        _ => {
            eprintln!(
                "usage: bench_load body pb|json|grpc SIGNAL ADDR FILE CONNS SECONDS [THREADS] | \
                 bench_load pids-body pb|json|grpc SIGNAL ADDR FILE PROCS REQUESTS | \
                 bench_load rate URL CONNS SECONDS POINTS [THREADS] | \
                 bench_load pids URL PROCS REQUESTS POINTS"
            );
            std::process::exit(2);
        }
    }
}
