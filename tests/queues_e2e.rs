//! `otel-forkcheck run` without HTTP, end to end with real components and the built binary:
//! a multiprocessing fork Pool program that ends by itself (`fixtures/multiprocessing/pool.py
//! --batch`, venv `current`), and Celery 5.x prefork on a real Redis broker (Debian's
//! `redis-server`, started here on a free port, no persistence, in its own process group) driven
//! by `--drive fixtures/celery/enqueue.py` (venv `queues`). For each, the broken set-up (SDK in
//! the parent, no flush when a child leaves) gets FC209 exactly for the children that ran tasks,
//! and the fixed one passes. Nothing of a run (server group, driver groups) is left afterwards.
mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, live_members, root, venv, wait_until, Group};
use serde_json::Value;

/// The user's own intervals (longer than the run): what is recorded is pending at exit.
const LONG: [(&str, &str); 3] = [
    ("OTEL_METRIC_EXPORT_INTERVAL", "30000"),
    ("OTEL_BSP_SCHEDULE_DELAY", "30000"),
    ("OTEL_BLRP_SCHEDULE_DELAY", "30000"),
];

struct Run {
    out: Output,
    took: Duration,
    stdout: String,
    stderr: String,
}

impl Run {
    fn code(&self) -> i32 {
        self.out.status.code().unwrap_or(-1)
    }

    fn json(&self) -> Value {
        let v: Value = serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.explain()));
        common::schema::assert_valid(&v);
        v
    }

    fn explain(&self) -> String {
        format!(
            "exit {:?} after {:.1} s\n--- stdout\n{}\n--- stderr\n{}",
            self.out.status.code(),
            self.took.as_secs_f64(),
            self.stdout,
            self.stderr
        )
    }

    /// Nothing of the server's group nor of any driver's group is left.
    fn assert_no_leftovers(&self, report: &Value) {
        let mut groups = vec![report["run"]["launched_pid"].as_i64().unwrap() as i32];
        for d in report["run"]["drivers"].as_array().into_iter().flatten() {
            groups.push(d["pid"].as_i64().unwrap() as i32);
        }
        for g in groups {
            let left = live_members(g);
            assert!(
                left.is_empty(),
                "group {g} left {left:?}\n{}",
                self.explain()
            );
        }
    }
}

fn run(flags: &[&str], command: &[String], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_otel-forkcheck"));
    cmd.arg("run")
        .args(["--format", "json"])
        .args(flags)
        .arg("--")
        .args(command)
        .current_dir(root())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("NO_COLOR", "1");
    for (k, _) in std::env::vars_os() {
        let s = k.to_string_lossy();
        if s.starts_with("OTEL_") || s.starts_with("FIXTURE_") || s == "WEB_CONCURRENCY" {
            cmd.env_remove(&k);
        }
    }
    cmd.envs(LONG.iter().copied()).envs(env.iter().copied());
    let start = Instant::now();
    let out = cmd.output().expect("run otel-forkcheck");
    Run {
        took: start.elapsed(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        out,
    }
}

/// (code, pids) of every finding, sorted.
fn findings(report: &Value) -> Vec<(String, Vec<i64>)> {
    let mut out: Vec<(String, Vec<i64>)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["code"].as_str().unwrap().to_string(),
                f["pids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_i64().unwrap())
                    .collect(),
            )
        })
        .collect();
    out.sort();
    out
}

fn fc209_pids(report: &Value) -> BTreeSet<i64> {
    findings(report)
        .into_iter()
        .filter(|(c, _)| c == "FC209")
        .flat_map(|(_, p)| p)
        .collect()
}

fn python(venv_name: &str) -> String {
    venv(venv_name).join("bin/python").display().to_string()
}

// ---------------------------------------------------------------- multiprocessing, ends by itself

/// pool.py --batch: 3 pool processes, 2 tasks of 0.5 s CPU (one child stays idle); the pids that
/// ran a task, from its `TASKS` line (the program's stdout is the run's captured output, so the
/// test asks the run's JSON for it via the children it tracked and the line on stderr).
fn pool_batch(mode: &str) -> (Run, Value) {
    let cmd = vec![
        python("current"),
        root()
            .join("fixtures/multiprocessing/pool.py")
            .display()
            .to_string(),
        mode.into(),
        "--processes".into(),
        "3".into(),
        "--batch".into(),
        "2".into(),
    ];
    let r = run(&["--workers", "3", "--window", "30s"], &cmd, &[]);
    let v = r.json();
    (r, v)
}

#[test]
fn pool_batch_broken_loses_exactly_the_working_children() {
    let (r, v) = pool_batch("broken");
    assert_eq!(r.code(), 1, "{}", r.explain());
    let run = &v["run"];
    assert_eq!(run["ended"], "exit status 0", "{}", r.explain());
    assert_eq!(run["exit_code"], 0);
    assert_eq!(run["http"], false);
    assert_eq!(run["stop"]["ended"], "exit status 0");
    assert_eq!(run["requests"]["sent"], 0);
    let master = run["master"].as_i64().unwrap();
    let children = run["children"].as_array().unwrap();
    assert_eq!(children.len(), 3, "{}", r.explain());
    let worked: BTreeSet<i64> = children
        .iter()
        .filter(|c| c["worked"] == true)
        .map(|c| c["pid"].as_i64().unwrap())
        .collect();
    assert_eq!(worked.len(), 2, "two tasks, chunksize 1: {}", r.explain());
    assert_eq!(fc209_pids(&v), worked, "{}", r.explain());
    // Plus the parent's own SDK, and nothing else.
    let mut want: Vec<(String, Vec<i64>)> = worked
        .iter()
        .map(|p| ("FC209".to_string(), vec![*p]))
        .collect();
    want.push(("FC101".to_string(), vec![master]));
    want.sort();
    assert_eq!(findings(&v), want, "{}", r.explain());
    r.assert_no_leftovers(&v);
}

#[test]
fn pool_batch_fixed_passes() {
    let (r, v) = pool_batch("fixed");
    assert_eq!(r.code(), 0, "{}", r.explain());
    assert_eq!(v["verdict"], "pass");
    assert_eq!(findings(&v), vec![], "{}", r.explain());
    assert_eq!(v["run"]["ended"], "exit status 0");
    assert_eq!(v["run"]["children"].as_array().unwrap().len(), 3);
    r.assert_no_leftovers(&v);
}

// ---------------------------------------------------------------- Celery prefork on Redis

/// A redis-server on a free port, no persistence, leading its own process group (ended on drop).
struct Redis {
    _group: Group,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = free_port();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let group = Group::spawn(&mut cmd);
        let up = wait_until(Duration::from_secs(10), || ping(port));
        assert!(
            up,
            "redis-server did not answer PING on port {port} (is Debian's redis-server installed? \
             .ci/run installs it)"
        );
        Redis {
            _group: group,
            port,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 16];
    s.write_all(b"PING\r\n").is_ok()
        && s.read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
}

/// `run --workers 2 --drive "enqueue.py TASKS" -- celery worker --concurrency=2 [extra]` with a
/// fresh broker; the pids that ran tasks (from the fixture's task log).
fn celery(mode: &str, tasks: usize, extra: &[&str]) -> (Run, Value, BTreeSet<i64>) {
    let redis = Redis::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("tasks.log");
    let py = python("queues");
    let drive = format!(
        "{py} {} {tasks}",
        root().join("fixtures/celery/enqueue.py").display()
    );
    let mut cmd = vec![
        py.clone(),
        "-m".into(),
        "celery".into(),
        "--workdir".into(),
        root().join("fixtures/celery").display().to_string(),
        "-A".into(),
        "tasks".into(),
        "worker".into(),
        "--pool=prefork".into(),
        "--concurrency=2".into(),
        "--loglevel=info".into(),
        "--without-gossip".into(),
        "--without-mingle".into(),
        "--without-heartbeat".into(),
    ];
    cmd.extend(extra.iter().map(|s| s.to_string()));
    let broker = redis.url();
    let log_s = log.display().to_string();
    let r = run(
        &["--workers", "2", "--window", "2s", "--drive", &drive],
        &cmd,
        &[
            ("FIXTURE_MODE", mode),
            ("FIXTURE_BROKER", &broker),
            ("FIXTURE_TASK_LOG", &log_s),
        ],
    );
    let v = r.json();
    let ran: BTreeSet<i64> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    let d = &v["run"]["drivers"][0];
    assert_eq!(d["exit_code"], 0, "driver: {}", r.explain());
    assert_eq!(d["stopped_by_run"], false);
    assert_eq!(v["root"]["framework"], "celery", "{}", r.explain());
    assert_eq!(v["run"]["http"], false);
    assert_eq!(v["run"]["stop"]["graceful"], true, "{}", r.explain());
    (r, v, ran)
}

#[test]
fn celery_prefork_broken_loses_exactly_the_working_children() {
    let (r, v, ran) = celery("broken", 4, &[]);
    assert_eq!(r.code(), 1, "{}", r.explain());
    assert!(!ran.is_empty(), "no task ran: {}", r.explain());
    assert_eq!(fc209_pids(&v), ran, "{}", r.explain());
    let master = v["run"]["master"].as_i64().unwrap();
    let mut want: Vec<(String, Vec<i64>)> = ran
        .iter()
        .map(|p| ("FC209".to_string(), vec![*p]))
        .collect();
    want.push(("FC101".to_string(), vec![master]));
    want.sort();
    assert_eq!(findings(&v), want, "{}", r.explain());
    r.assert_no_leftovers(&v);
}

#[test]
fn celery_prefork_fixed_passes() {
    let (r, v, ran) = celery("fixed", 4, &[]);
    assert_eq!(r.code(), 0, "{}", r.explain());
    assert_eq!(findings(&v), vec![], "{}", r.explain());
    assert!(!ran.is_empty());
    r.assert_no_leftovers(&v);
}

#[test]
fn celery_prefork_fixed_recycling_every_task_passes_without_fc107() {
    let (r, v, ran) = celery("fixed", 4, &["--max-tasks-per-child=1"]);
    assert_eq!(r.code(), 0, "{}", r.explain());
    assert_eq!(findings(&v), vec![], "{}", r.explain());
    assert_eq!(ran.len(), 4, "one child per task: {}", r.explain());
    // Every child that ran a task was tracked, worked and was recycled.
    let recycled: BTreeSet<i64> = v["run"]["children"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["recycled"] == true && c["worked"] == true)
        .map(|c| c["pid"].as_i64().unwrap())
        .collect();
    assert!(
        recycled.is_superset(&ran),
        "{recycled:?} vs {ran:?}\n{}",
        r.explain()
    );
    r.assert_no_leftovers(&v);
}

#[test]
fn celery_prefork_broken_recycling_loses_every_task() {
    let (r, v, ran) = celery("broken", 4, &["--max-tasks-per-child=1"]);
    assert_eq!(r.code(), 1, "{}", r.explain());
    assert_eq!(ran.len(), 4, "{}", r.explain());
    assert_eq!(fc209_pids(&v), ran, "{}", r.explain());
    assert!(
        !findings(&v).iter().any(|(c, _)| c == "FC107"),
        "{}",
        r.explain()
    );
    r.assert_no_leftovers(&v);
}
