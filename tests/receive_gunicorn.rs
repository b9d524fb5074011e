//! End to end: a real gunicorn (SDK 1.42.x, OTLP/HTTP exporters, resource detector `process`)
//! exporting to the real `otel-forkcheck receive --pid <master>` binary, on ephemeral ports.
//!
//! - `--preload` with the SDK set up at import: the Resource is built in the master, so every
//!   worker reports the master's `process.pid` -> FC203 and FC204 naming the worker pids.
//! - `post_fork` set-up: every worker pid attributed with its own identity, and no FC203,
//!   FC204, FC205 or FC207.
//!
//! Traffic is driven so that every worker serves requests: for each round one connection per
//! worker sends half a request and waits, so each sync worker is busy reading one of them and
//! the next connection has to go to another worker. The response body names the worker's pid,
//! so the test knows exactly how many spans and log records each pid must have sent.
//!
//! Every process is started in its own process group and the group is ended on drop.
//! Needs the `sdk-1.42` venv (`scripts/setup-venvs.sh sdk-1.42`, built on first use).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::process::{ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use common::receiver::{lines_of, wait_line, Receiver};
use common::{children_of, root, venv, Group};

const WORKERS: usize = 3;
const ROUNDS: usize = 4;

/// Per-pid totals from the receiver's ndjson export events (exports pinned to one pid).
#[derive(Debug, Default, Clone)]
struct Seen {
    items: BTreeMap<(i32, String), u64>,
    requests: BTreeMap<(i32, String), u64>,
    resource_pids: BTreeMap<i32, BTreeSet<i64>>,
    summary: Option<serde_json::Value>,
    other: Vec<String>,
}

impl Seen {
    fn add(&mut self, line: &str) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            self.other.push(line.to_string());
            return;
        };
        match v["event"].as_str() {
            Some("export") => {
                let pids: Vec<i32> = v["pids"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|p| p.as_i64())
                            .map(|p| p as i32)
                            .collect()
                    })
                    .unwrap_or_default();
                if let [pid] = pids.as_slice() {
                    let sig = v["signal"].as_str().unwrap_or("?").to_string();
                    *self.items.entry((*pid, sig.clone())).or_default() +=
                        v["items"].as_u64().unwrap_or(0);
                    *self.requests.entry((*pid, sig)).or_default() += 1;
                    for id in v["identities"].as_array().into_iter().flatten() {
                        if let Some(rp) = id["process_pid"].as_i64() {
                            self.resource_pids.entry(*pid).or_default().insert(rp);
                        }
                    }
                }
            }
            Some("summary") => self.summary = Some(v),
            _ => self.other.push(line.to_string()),
        }
    }

    fn items(&self, pid: i32, sig: &str) -> u64 {
        self.items
            .get(&(pid, sig.to_string()))
            .copied()
            .unwrap_or(0)
    }

    fn requests(&self, pid: i32, sig: &str) -> u64 {
        self.requests
            .get(&(pid, sig.to_string()))
            .copied()
            .unwrap_or(0)
    }
}

/// One round: a connection per worker, each sends half a request and holds it so that every
/// sync worker is busy with one, then all finish. Returns the pids that answered.
fn round(port: u16) -> Vec<i32> {
    use std::net::TcpStream;
    let mut conns: Vec<TcpStream> = (0..WORKERS)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to gunicorn");
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: fixture\r\n").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for s in conns.iter_mut() {
        s.write_all(b"Connection: close\r\n\r\n").unwrap();
    }
    conns
        .into_iter()
        .map(|mut s| {
            let mut body = String::new();
            let _ = s.read_to_string(&mut body);
            assert!(body.starts_with("HTTP/1.1 200"), "{body:?}");
            body.split("ok pid=")
                .nth(1)
                .and_then(|t| t.split_whitespace().next())
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("no pid in {body:?}"))
        })
        .collect()
}

struct Outcome {
    master: i32,
    workers: Vec<i32>,
    served: BTreeMap<i32, u64>,
    seen: Seen,
    status: i32,
    findings: Vec<serde_json::Value>,
}

impl Outcome {
    fn finding(&self, code: &str) -> Option<&serde_json::Value> {
        self.findings.iter().find(|f| f["code"] == code)
    }

    fn pids_of(&self, code: &str) -> BTreeSet<i32> {
        self.finding(code)
            .and_then(|f| f["pids"].as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_i64())
                    .map(|p| p as i32)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn codes(&self) -> BTreeSet<String> {
        self.findings
            .iter()
            .filter_map(|f| f["code"].as_str().map(str::to_string))
            .collect()
    }
}

/// Starts gunicorn with `conf` (its master's pid known before it runs: a shell waits for the
/// receiver's endpoint on stdin, then execs gunicorn), the receiver on `--pid <master>`, drives
/// traffic, waits until every span and log record each worker served has arrived, stops the
/// receiver and returns what it reported.
fn run_case(conf: &str) -> Outcome {
    let bin = venv("sdk-1.42").join("bin");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"read ep && OTEL_EXPORTER_OTLP_ENDPOINT="$ep" exec "$@""#)
        .arg("sh")
        .arg(bin.join("gunicorn"))
        .arg("-c")
        .arg(root().join("fixtures/gunicorn").join(conf))
        .args(["-b", "127.0.0.1:0", "-w", &WORKERS.to_string()])
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .env("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", "process")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_SERVICE_NAME", "fixture")
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .env("OTEL_BLRP_SCHEDULE_DELAY", "200")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "500")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut gunicorn = Group::spawn(&mut cmd);
    let master = gunicorn.pgid;
    let mut endpoint_in: ChildStdin = gunicorn.child.stdin.take().unwrap();
    let glog = lines_of(gunicorn.child.stderr.take().unwrap());

    let Receiver {
        group: mut receiver,
        stderr: rerr,
        log: mut rlog,
        url,
    } = Receiver::start(
        &[
            "--pid",
            &master.to_string(),
            "--format",
            "ndjson",
            "--timeout",
            "120s",
            "--color",
            "never",
        ],
        Duration::from_secs(10),
    );
    let rout = lines_of(receiver.child.stdout.take().unwrap());
    writeln!(endpoint_in, "{url}").unwrap();
    drop(endpoint_in);

    let mut gl = Vec::new();
    let at = wait_line(
        &glog,
        |l| l.contains("Listening at: http://"),
        Duration::from_secs(30),
        &mut gl,
    )
    .unwrap_or_else(|| panic!("gunicorn did not start: {gl:#?}"));
    let port: u16 = at
        .rsplit("127.0.0.1:")
        .next()
        .and_then(|t| t.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {at:?}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let workers = loop {
        let w = children_of(master);
        if w.len() >= WORKERS {
            break w;
        }
        assert!(
            Instant::now() < deadline,
            "workers of {master}: {w:?}\n{gl:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    let mut served: BTreeMap<i32, u64> = BTreeMap::new();
    for _ in 0..ROUNDS {
        for pid in round(port) {
            *served.entry(pid).or_default() += 1;
        }
    }
    // Some rounds may have gone to fewer workers; top up until every worker served.
    for _ in 0..10 {
        if workers.iter().all(|w| served.contains_key(w)) {
            break;
        }
        for pid in round(port) {
            *served.entry(pid).or_default() += 1;
        }
    }
    assert_eq!(
        served.keys().copied().collect::<Vec<_>>(),
        workers,
        "every worker (and only the workers) served requests"
    );

    // Wait until each worker's spans and log records and at least one metrics export arrived.
    let mut seen = Seen::default();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        while let Ok(l) = rout.try_recv() {
            seen.add(&l);
        }
        let done = served.iter().all(|(pid, n)| {
            seen.items(*pid, "traces") >= *n
                && seen.items(*pid, "logs") >= *n
                && seen.requests(*pid, "metrics") >= 1
        });
        if done || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Stop the receiver (not the server): it prints the summary with the findings.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(receiver.pgid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    while seen.summary.is_none() {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("receiver printed no summary");
        match rout.recv_timeout(left) {
            Ok(l) => seen.add(&l),
            Err(_) => break,
        }
    }
    let status = receiver
        .child
        .wait()
        .expect("receiver exit")
        .code()
        .unwrap_or(-1);
    let summary = seen.summary.clone().unwrap_or_else(|| {
        while let Ok(l) = rerr.try_recv() {
            rlog.push(l);
        }
        panic!("no summary; other lines {:?}; stderr {rlog:#?}", seen.other)
    });
    let findings = summary["findings"].as_array().cloned().unwrap_or_default();
    drop(gunicorn);
    // Shown with --nocapture (and on failure).
    eprintln!(
        "{conf}: master {master}, workers {workers:?}, served {served:?}, exit {status}\n  \
         items {:?}\n  requests {:?}\n  resource pids {:?}\n  findings {:?}",
        seen.items,
        seen.requests,
        seen.resource_pids,
        findings
            .iter()
            .map(|f| format!("{} {}", f["code"], f["pids"]))
            .collect::<Vec<_>>()
    );
    Outcome {
        master,
        workers,
        served,
        seen,
        status,
        findings,
    }
}

/// Counts are exact: every worker's spans and log records equal the requests it served.
fn assert_counts(o: &Outcome) {
    for (pid, n) in &o.served {
        assert_eq!(
            o.seen.items(*pid, "traces"),
            *n,
            "spans from worker {pid} (served {n}): {:#?}",
            o.seen.items
        );
        assert_eq!(
            o.seen.items(*pid, "logs"),
            *n,
            "log records from worker {pid}: {:#?}",
            o.seen.items
        );
        assert!(
            o.seen.requests(*pid, "metrics") >= 1,
            "metrics from worker {pid}: {:#?}",
            o.seen.requests
        );
    }
}

#[test]
fn preload_sdk_at_import_gives_fc203_and_fc204_with_the_worker_pids() {
    let o = run_case("preload.conf.py");
    assert_counts(&o);
    // Every worker reports the master's pid as its process.pid.
    for w in &o.workers {
        assert_eq!(
            o.seen.resource_pids.get(w),
            Some(&BTreeSet::from([o.master as i64])),
            "worker {w}"
        );
    }
    let workers: BTreeSet<i32> = o.workers.iter().copied().collect();
    let fc203 = o.pids_of("FC203");
    assert!(
        workers.is_subset(&fc203),
        "FC203 pids {fc203:?} lack workers {workers:?}: {:#?}",
        o.findings
    );
    assert!(fc203.iter().all(|p| *p == o.master || workers.contains(p)));
    let fc204 = o.pids_of("FC204");
    assert_eq!(fc204, workers, "FC204: {:#?}", o.finding("FC204"));
    assert_eq!(o.status, 1, "error findings: exit 1");
}

#[test]
fn post_fork_setup_attributes_every_worker_without_identity_findings() {
    let o = run_case("postfork.conf.py");
    assert_counts(&o);
    for w in &o.workers {
        assert_eq!(
            o.seen.resource_pids.get(w),
            Some(&BTreeSet::from([*w as i64])),
            "worker {w} reports its own pid"
        );
    }
    assert!(
        !o.seen.items.keys().any(|(p, _)| *p == o.master),
        "the master exports nothing: {:#?}",
        o.seen.items
    );
    let codes = o.codes();
    for bad in ["FC203", "FC204", "FC205", "FC207"] {
        assert!(!codes.contains(bad), "{bad}: {:#?}", o.findings);
    }
    assert_eq!(o.status, 0, "findings: {:#?}", o.findings);
}
