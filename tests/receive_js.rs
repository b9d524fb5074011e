//! `receive --format json` against real OpenTelemetry JS SDK clients from the npm registry, three
//! generations pinned in fixtures/js/<generation>/ (experimental 0.34 with sdk-metrics 1.8, no
//! logs; 0.52 with sdk-metrics 1.25; 0.301 with sdk-metrics 3.1): nine sender processes forked
//! by one Node parent, over OTLP/HTTP JSON, OTLP/HTTP protobuf and OTLP/gRPC, gzip on and off,
//! cumulative and delta temporality, each exporting known amounts over several rounds
//! (fixtures/js/forked_senders.js says which child does what). Every sender's pid, its spans,
//! log records and metric totals (`exports.sums`) are exactly what it sent.
//!
//! Needs node and npm; the SDKs are installed by `scripts/setup-js.sh` (cached under target/js).

mod common;

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

const SENDERS: usize = 9;
const ROUNDS: u64 = 3;

/// target/js/<generation>/node_modules, installed (or found up to date) by scripts/setup-js.sh
/// once per generation in this binary; the script locks across test binaries.
fn node_modules(generation: &str) -> PathBuf {
    static DONE: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if !done.iter().any(|d| d == generation) {
        let out = Command::new("bash")
            .arg(common::root().join("scripts/setup-js.sh"))
            .arg(generation)
            .output()
            .expect("run bash scripts/setup-js.sh");
        assert!(
            out.status.success(),
            "scripts/setup-js.sh {generation} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        done.push(generation.to_string());
    }
    common::root()
        .join("target/js")
        .join(generation)
        .join("node_modules")
}

/// One child of the fixture, as it described itself.
#[derive(Debug)]
struct Sender {
    pid: i64,
    i: u64,
    proto: String,
    gzip: bool,
    delta: bool,
    logs: bool,
}

/// `otel-forkcheck receive --format json` in its own process group, stdout and stderr in files.
struct Receive {
    group: common::Group,
    dir: tempfile::TempDir,
    http: String,
    grpc: String,
}

impl Receive {
    fn start(one_port: bool) -> Receive {
        let dir = tempfile::tempdir().unwrap();
        let grpc = if one_port {
            "127.0.0.1:0"
        } else {
            "127.0.0.2:0"
        };
        let group = common::Group::spawn(
            Command::new(env!("CARGO_BIN_EXE_otel-forkcheck"))
                .args(["receive", "--http", "127.0.0.1:0", "--grpc", grpc])
                .args(["--format", "json", "--timeout", "300s"])
                .stdin(Stdio::null())
                .stdout(File::create(dir.path().join("out")).unwrap())
                .stderr(File::create(dir.path().join("err")).unwrap()),
        );
        let err = dir.path().join("err");
        let mut line = String::new();
        assert!(
            common::wait_until(Duration::from_secs(30), || {
                line = std::fs::read_to_string(&err).unwrap_or_default();
                line.contains('\n')
            }),
            "receive did not start: {line:?}"
        );
        let addr = |after: &str| -> Option<String> {
            let rest = &line[line.find(after)? + after.len()..];
            let a: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
            Some(format!("http://{a}"))
        };
        let (http, grpc) = match addr("one port: http://") {
            Some(both) => (both.clone(), both),
            None => (
                addr("OTLP/HTTP on http://").expect(&line),
                addr("OTLP/gRPC on ").expect(&line),
            ),
        };
        Receive {
            group,
            dir,
            http,
            grpc,
        }
    }

    /// SIGTERM, then the JSON report it printed at its end (exit status 0 checked: the
    /// findings expected here are warnings).
    fn finish(mut self) -> Value {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.group.pgid),
            nix::sys::signal::Signal::SIGTERM,
        );
        assert!(
            common::wait_until(Duration::from_secs(30), || self.group.leader_exited()),
            "receive did not stop on SIGTERM"
        );
        let status = self.group.child.wait().unwrap();
        let out = std::fs::read(self.dir.path().join("out")).unwrap();
        let err = std::fs::read_to_string(self.dir.path().join("err")).unwrap_or_default();
        assert!(status.success(), "receive: {status}; stderr:\n{err}");
        let report: Value = serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("no JSON report ({e}); stderr:\n{err}"));
        common::schema::assert_valid(&report);
        report
    }
}

/// Runs the fixture under `generation` against `r`; the senders by child number, after checking
/// that each one's own pid is the one fork returned to the parent.
fn run_senders(generation: &str, r: &Receive) -> Vec<Sender> {
    let modules = node_modules(generation);
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut cmd = Command::new("node");
    cmd.arg(common::root().join("fixtures/js/forked_senders.js"))
        .args([&r.http, &r.grpc, &SENDERS.to_string(), &ROUNDS.to_string()])
        .env("NODE_PATH", &modules)
        .env_remove("NODE_OPTIONS")
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("OTEL_") {
            cmd.env_remove(&key);
        }
    }
    let mut node = common::Group::spawn(&mut cmd);
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(
        common::wait_until(Duration::from_secs(120), || node.leader_exited()),
        "{generation}: the senders did not finish in 120 s:\n{}\n{}",
        read(&out_path),
        read(&err_path)
    );
    let status = node.child.wait().unwrap();
    let (stdout, stderr) = (read(&out_path), read(&err_path));
    assert!(
        status.success(),
        "{generation}: senders failed ({status}):\n{stdout}\n{stderr}"
    );
    let mut forked = [0i64; SENDERS];
    let mut senders: Vec<Option<Sender>> = (0..SENDERS).map(|_| None).collect();
    for l in stdout.lines() {
        match l.split_whitespace().collect::<Vec<_>>()[..] {
            ["forked", pid, "child", i] => {
                forked[i.parse::<usize>().unwrap()] = pid.parse().unwrap()
            }
            ["pid", pid, "child", i, proto, gzip, temporality, logs] => {
                let i: usize = i.parse().unwrap();
                senders[i] = Some(Sender {
                    pid: pid.parse().unwrap(),
                    i: i as u64,
                    proto: proto.to_string(),
                    gzip: gzip == "gzip=1",
                    delta: temporality == "delta",
                    logs: logs == "logs=1",
                });
            }
            _ => {}
        }
    }
    let senders: Vec<Sender> = senders
        .into_iter()
        .map(|s| s.unwrap_or_else(|| panic!("{generation}: a child did not say:\n{stdout}")))
        .collect();
    for s in &senders {
        assert_eq!(s.pid, forked[s.i as usize], "{generation}: {s:?}\n{stdout}");
    }
    senders
}

/// The report's entry for `pid`.
fn process(report: &Value, pid: i64) -> &Value {
    report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("pid {pid} not in the report"))
}

fn num(v: &Value, what: &str) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{what}: {v}"))
}

/// Every sender's exact totals in the report of one `receive` run.
fn totals_per_pid(generation: &str, one_port: bool, with_logs: bool) {
    let r = Receive::start(one_port);
    let senders = run_senders(generation, &r);
    let report = r.finish();
    let rcv = &report["receiver"];
    assert_eq!(
        rcv["malformed"], 0,
        "{generation}: {:#}",
        rcv["connections"]
    );
    for signal in ["metrics", "traces", "logs"] {
        let u = &rcv["unattributed"]["signals"][signal];
        assert_eq!(u["requests"], 0, "{generation}: unattributed {signal}: {u}");
    }
    // The senders and nobody else (the parent exports nothing).
    let exporting: BTreeSet<i64> = report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["exports"].is_object())
        .map(|p| p["pid"].as_i64().unwrap())
        .collect();
    let pids: BTreeSet<i64> = senders.iter().map(|s| s.pid).collect();
    assert_eq!(exporting, pids, "{generation}");
    let conns = rcv["connections"].as_array().unwrap();
    let r64 = ROUNDS as f64;
    for s in &senders {
        assert_eq!(s.logs, with_logs, "{generation}: {s:?}");
        let e = &process(&report, s.pid)["exports"];
        let ctx = format!("{generation} {s:?}: {e:#}");
        let sig = |name: &str, field: &str| e["signals"][name][field].as_u64().unwrap_or(0);
        assert_eq!(sig("traces", "items"), (s.i + 1) * ROUNDS, "{ctx}");
        assert_eq!(sig("traces", "requests"), ROUNDS, "{ctx}");
        let (logs, log_requests) = if s.logs {
            ((s.i + 2) * ROUNDS, ROUNDS)
        } else {
            (0, 0)
        };
        assert_eq!(sig("logs", "items"), logs, "{ctx}");
        assert_eq!(sig("logs", "requests"), log_requests, "{ctx}");
        // One export a round, and one more at shutdown where the SDK collects there.
        assert!(
            (ROUNDS..=ROUNDS + 1).contains(&sig("metrics", "requests")),
            "{ctx}"
        );
        let sums = &e["sums"];
        let requests = (s.i + 1) as f64 * r64 * (r64 + 1.0) / 2.0 + r64;
        assert_eq!(num(&sums["forkcheck.js.requests"], &ctx), requests, "{ctx}");
        assert_eq!(num(&sums["forkcheck.js.inflight"], &ctx), r64, "{ctx}");
        assert_eq!(num(&sums["forkcheck.js.latency"], &ctx), 2.0 * r64, "{ctx}");
        let queue = 10.0 * s.i as f64 + r64 - 1.0;
        assert_eq!(num(&sums["forkcheck.js.queue"], &ctx), queue, "{ctx}");
        let m = &e["metrics"];
        assert_eq!(num(&m["forkcheck.js.latency"]["value"], &ctx), 0.75 * r64);
        assert_eq!(m["forkcheck.js.latency"]["kind"], "histogram", "{ctx}");
        let want = if s.delta { "delta" } else { "cumulative" };
        assert_eq!(m["forkcheck.js.requests"]["temporality"], want, "{ctx}");
        assert_eq!(m["forkcheck.js.requests"]["monotonic"], true, "{ctx}");
        assert_eq!(m["forkcheck.js.requests"]["restarts"], 0, "{ctx}");
        assert_eq!(m["forkcheck.js.queue"]["kind"], "gauge", "{ctx}");
        // One identity; process.pid in it for the even children only.
        let ids = e["identities"].as_array().unwrap();
        assert_eq!(ids.len(), 1, "{ctx}");
        let id_pid = ids[0]["identity"]["process_pid"].as_i64();
        assert_eq!(id_pid, (s.i % 2 == 0).then_some(s.pid), "{ctx}");
        assert_eq!(ids[0]["sums"], *sums, "{ctx}");
        // Its connections: its own, over its protocol.
        let proto = if s.proto == "grpc" { "grpc" } else { "http" };
        let mine: Vec<&Value> = conns
            .iter()
            .filter(|c| c["holders"].as_array().unwrap().contains(&s.pid.into()))
            .collect();
        assert!(!mine.is_empty(), "{ctx}");
        for c in mine {
            assert_eq!(
                c["holders"],
                serde_json::json!([s.pid]),
                "{generation}: {c:#}"
            );
            assert_eq!(c["proto"], proto, "{generation}: {c:#}");
        }
    }
    // gzip was on the wire: a gzip sender's metrics arrived in well under the bytes per data
    // point of the plain senders of its protocol (the same instruments and rounds; measured
    // 0.3 to 0.6 of them with gzip, 0.9 to 1.1 without, cumulative against delta).
    let per_point = |s: &Sender| -> f64 {
        let m = &process(&report, s.pid)["exports"]["signals"]["metrics"];
        m["bytes"].as_f64().unwrap() / m["items"].as_f64().unwrap()
    };
    for proto in ["http/json", "http/protobuf", "grpc"] {
        let of = |gzip: bool| -> Vec<f64> {
            senders
                .iter()
                .filter(|s| s.proto == proto && s.gzip == gzip)
                .map(per_point)
                .collect()
        };
        let (zipped, plain) = (of(true), of(false));
        assert!(
            !zipped.is_empty() && !plain.is_empty(),
            "{generation} {proto}"
        );
        let least_plain = plain.iter().copied().fold(f64::MAX, f64::min);
        for z in zipped {
            assert!(
                z < 0.75 * least_plain,
                "{generation} {proto}: gzip metrics took {z:.0} bytes a point, plain ones {plain:.0?}"
            );
        }
    }
    // The odd children set no process.pid: FC205 names them, and nothing else is wrong.
    let codes: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["FC205"], "{generation}: {:#}", report["findings"]);
    let odd: Vec<i64> = senders
        .iter()
        .filter(|s| s.i % 2 == 1)
        .map(|s| s.pid)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        report["findings"][0]["pids"],
        serde_json::json!(odd),
        "{generation}"
    );
    assert_eq!(report["verdict"], "warn", "{generation}");
}

#[test]
fn sdk_0_34_over_separate_ports() {
    totals_per_pid("sdk-0.34", false, false);
}

#[test]
fn sdk_0_52_over_separate_ports() {
    totals_per_pid("sdk-0.52", false, true);
}

#[test]
fn sdk_0_301_over_one_port() {
    totals_per_pid("sdk-0.301", true, true);
}
