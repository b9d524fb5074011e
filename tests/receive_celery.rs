//! Plain `otel-forkcheck receive` (no `--pid`) while a real Celery 5.x prefork worker (Redis
//! broker, venv `queues`) with the SDK set up in MainProcess runs tasks: MainProcess records a
//! count and exports its metrics before the pool forks (`FIXTURE_EXPORT_METRICS_BEFORE_FORK`),
//! so every pool child inherits that keep-alive connection and exports its metrics over it
//! under its own service.instance.id, which also arrives from the child on its traces and logs
//! connections, opened by the child alone. The identity learned there pins the child's metrics
//! on the shared connection to the child: they are its own (not "possible" for all three pids),
//! with the evidence, and FC206 names exactly the children that ran tasks (each re-exports the
//! pre-fork count); FC208 (metrics stalled) names none of them.
//!
//! Each child exports its metrics when its first task ends and tasks are sent one by one
//! (`FIXTURE_FLUSH_METRICS_AFTER_FIRST_TASK`, `enqueue.py --one-by-one`), with a 30 s interval:
//! no two processes write on the inherited socket at once (they would corrupt each other's
//! requests and stall, which is another story: docs/failure-modes.md#inherited-exporter-connection).
mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::queues::{python, Redis};
use common::{live_members, root, wait_until, Group};
use serde_json::Value;

#[test]
fn childrens_metrics_on_the_inherited_connection_are_pinned_by_their_identity() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger_path = dir.path().join("ledger.json");
    let log = dir.path().join("tasks.log");
    let mut receiver = Group::spawn(
        Command::new(env!("CARGO_BIN_EXE_otel-forkcheck"))
            .args(["receive", "--http", "127.0.0.1:0", "--grpc", "off"])
            .args(["--format", "json", "--timeout", "120s", "--save-ledger"])
            .arg(&ledger_path)
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    // "... listening: OTLP/HTTP http://127.0.0.1:PORT ..." on stderr.
    let mut err = receiver.child.stderr.take().expect("stderr");
    let mut said = String::new();
    let mut buf = [0u8; 512];
    while !said.contains("http://")
        || !said[said.find("http://").unwrap()..].contains(|c: char| c.is_whitespace())
    {
        let n = err.read(&mut buf).expect("receive's stderr");
        assert!(n > 0, "receive said: {said}");
        said.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let at = said.find("http://").unwrap();
    let url: String = said[at..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != ',')
        .collect();
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));

    let py = python("queues");
    let broker = redis.url();
    let log_s = log.display().to_string();
    let env = [
        ("FIXTURE_MODE", "broken"),
        ("FIXTURE_EXPORT_METRICS_BEFORE_FORK", "1"),
        ("FIXTURE_FLUSH_METRICS_AFTER_FIRST_TASK", "1"),
        ("FIXTURE_BROKER", broker.as_str()),
        ("FIXTURE_TASK_LOG", log_s.as_str()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "30000"),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ("OTEL_BLRP_SCHEDULE_DELAY", "200"),
        ("PYTHONDONTWRITEBYTECODE", "1"),
    ];
    let mut worker = Group::spawn(
        Command::new(&py)
            .args(["-m", "celery", "--workdir"])
            .arg(root().join("fixtures/celery"))
            .args(["-A", "tasks", "worker", "--pool=prefork", "--concurrency=2"])
            .args(["--loglevel=warning", "--without-gossip", "--without-mingle"])
            .arg("--without-heartbeat")
            .envs(env)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let master = worker.pgid as i64;
    let enqueue = Command::new(&py)
        .arg(root().join("fixtures/celery/enqueue.py"))
        .args(["4", "0.1", "--one-by-one"])
        .envs(env)
        .output()
        .expect("enqueue");
    assert!(enqueue.status.success(), "enqueue: {enqueue:?}");
    let ran: BTreeSet<i64> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert!(!ran.is_empty() && !ran.contains(&master), "{ran:?}");
    // The children's spans and logs (200 ms schedule) are on their way.
    std::thread::sleep(Duration::from_millis(1500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(receiver.pgid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM to receive");
    let mut stdout = String::new();
    receiver
        .child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("receive's report");
    let _ = receiver.child.wait();
    // Warm shutdown: SIGTERM to MainProcess only.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.pgid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM to celery");
    let pgid = worker.pgid;
    assert!(
        wait_until(Duration::from_secs(20), || worker.leader_exited()
            && live_members(pgid).is_empty()),
        "celery left {:?}",
        live_members(pgid)
    );

    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    common::schema::assert_valid(&report);
    let ledger: Value =
        serde_json::from_slice(&std::fs::read(&ledger_path).expect("ledger")).expect("ledger JSON");
    let explain = format!("tasks ran in {ran:?}; master {master}\n{stdout}");
    // The inherited connection: held by MainProcess and both children.
    let conns = ledger["connections"].as_object().unwrap();
    let shared: Vec<i64> = conns
        .values()
        .filter(|c| c["holders"].as_array().unwrap().len() == 3)
        .map(|c| c["id"].as_i64().unwrap())
        .collect();
    assert_eq!(shared.len(), 1, "{explain}");
    for pid in &ran {
        let p = &ledger["processes"][pid.to_string()];
        assert!(
            p["signals"]["metrics"]["items"].as_u64().unwrap() > 0,
            "pid {pid}'s metrics are its own: {explain}"
        );
        let pins = p["identity_pins"].as_array().expect("identity_pins");
        assert_eq!(pins.len(), 1, "{explain}");
        assert_eq!(
            pins[0]["shared_conns"],
            serde_json::json!(shared),
            "{explain}"
        );
        let learned = pins[0]["learned_conn"].as_i64().unwrap().to_string();
        assert_eq!(
            conns[&learned]["holders"],
            serde_json::json!([pid]),
            "learned on a connection pid {pid} held alone: {explain}"
        );
        assert_eq!(
            p["pinned_by_identity"].as_u64().unwrap(),
            pins[0]["blocks"].as_u64().unwrap(),
            "{explain}"
        );
        // Its one export, at its first task's end: nothing of it left possible.
        assert_eq!(p["possible"]["metrics"]["requests"], 0, "{explain}");
    }
    // FC206 exactly for the children that ran tasks (the pre-fork count re-exported by each),
    // with the pin as evidence; no FC208, FC201 for them.
    let findings = report["findings"].as_array().unwrap();
    let codes: Vec<(String, BTreeSet<i64>)> = common::queues::findings(&report)
        .into_iter()
        .map(|(code, pids)| (code, pids.into_iter().collect()))
        .collect();
    let fc206: Vec<&Value> = findings.iter().filter(|f| f["code"] == "FC206").collect();
    assert_eq!(fc206.len(), 1, "{explain}");
    assert_eq!(
        codes.iter().find(|(c, _)| c == "FC206").unwrap().1,
        ran,
        "{explain}"
    );
    let evidence = fc206[0]["evidence"].to_string();
    assert!(evidence.contains("service.instance.id="), "{evidence}");
    // And nothing else: the shared connection (FC207) and the master's own exports (FC202),
    // but no FC208 or FC201 for a child whose metrics are its own.
    let mut all: BTreeSet<i64> = ran.clone();
    all.extend(
        report["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["pid"].as_i64().unwrap()),
    );
    all.insert(master);
    let mut want = vec![
        ("FC202".to_string(), BTreeSet::from([master])),
        ("FC206".to_string(), ran.clone()),
        ("FC207".to_string(), all),
    ];
    want.sort();
    let mut got = codes.clone();
    got.sort();
    assert_eq!(got, want, "{explain}");
    drop(worker);
}
