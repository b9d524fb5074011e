//! `otel-forkcheck --pid` end to end on a real Python `multiprocessing` pool (fork start method,
//! `fixtures/multiprocessing/pool.py`, venv `current`), the real OpenTelemetry SDK and the built
//! binary. Each test asserts the framework, the roles, the exact codes and pids, the exit status,
//! and that the whole process group is gone after a graceful stop (SIGTERM to the parent).
mod common;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::report::{check_json, threads_of_kind, Outcome};
use common::{children_of, live_members, root, venv, wait_until, Collector, Group};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// Long intervals, so nothing reconnects or exports while the tree is inspected.
const QUIET: [(&str, &str); 3] = [
    ("OTEL_METRIC_EXPORT_INTERVAL", "30000"),
    ("OTEL_BSP_SCHEDULE_DELAY", "30000"),
    ("OTEL_BLRP_SCHEDULE_DELAY", "30000"),
];

/// Pool processes in the fixture.
const PROCESSES: usize = 2;

/// How long a graceful stop may take: close + join of the pool, each pool process flushing.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// `pool.py <mode>` running: the parent leads its own process group.
struct Pool {
    // Fields drop in order: the processes end before their temp dir goes.
    group: Group,
    parent: i32,
    children: Vec<i32>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Pool {
    /// Starts the fixture against `collector` and returns once it printed `READY` (the pool
    /// processes exist and have run tasks).
    fn start(mode: &str, collector: &Collector) -> Pool {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("pool.log");
        let mut cmd = Command::new(venv("current").join("bin/python"));
        cmd.arg(root().join("fixtures/multiprocessing/pool.py"))
            .args([mode, "--processes", &PROCESSES.to_string()])
            .current_dir(root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).expect("create pool log"));
        // Only what the test asks for reaches the SDK.
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("OTEL_") || k.starts_with("FIXTURE_") || k == "PYTHONPATH" {
                cmd.env_remove(&key);
            }
        }
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url())
            .envs(QUIET.iter().copied());
        let mut group = Group::spawn(&mut cmd);
        let parent = group.pgid;
        let stdout = group.child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        // READY comes once the pool ran its tasks, or stdout closes because the fixture failed.
        let _ = BufReader::new(stdout).read_line(&mut line);
        let read = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            line.starts_with("READY "),
            "pool.py {mode} did not start (first line {line:?}):\n{read}"
        );
        let mut ready: Vec<i32> = line
            .split_whitespace()
            .skip(1)
            .map_while(|p| p.parse().ok())
            .collect();
        ready.sort_unstable();
        let children = children_of(parent);
        assert_eq!(children, ready, "pool.py {mode}: {line}");
        assert_eq!(children.len(), PROCESSES, "pool.py {mode}: {line}");
        Pool {
            group,
            parent,
            children,
            log,
            _dir: dir,
        }
    }

    fn log_tail(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM to the parent only (as an operator stops it): the pool is closed and joined, and
    /// nothing of the group may be left.
    fn stop(mut self) {
        let pgid = self.group.pgid;
        let _ = kill(Pid::from_raw(self.parent), Signal::SIGTERM);
        let gone = wait_until(STOP_TIMEOUT, || {
            self.group.leader_exited() && live_members(pgid).is_empty()
        });
        assert!(
            gone,
            "pool group {pgid} still has {:?} {STOP_TIMEOUT:?} after SIGTERM to the parent:\n{}",
            live_members(pgid),
            self.log_tail()
        );
    }
}

fn check(pool: &Pool) -> Outcome {
    check_json(pool.parent, "1s")
}

/// The framework and roles both modes share: a multiprocessing parent (master) whose pool
/// processes are its workers, nothing else in the tree, and Python thread names read everywhere.
fn assert_tree(o: &Outcome, pool: &Pool) {
    assert_eq!(o.report["root"]["pid"], pool.parent);
    assert_eq!(o.report["root"]["framework"], "multiprocessing");
    let mut listed: Vec<i64> = o.report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_i64().unwrap())
        .collect();
    listed.sort_unstable();
    let mut tree: Vec<i64> = pool.children.iter().map(|&c| c as i64).collect();
    tree.push(pool.parent as i64);
    tree.sort_unstable();
    assert_eq!(listed, tree);
    assert_eq!(o.process(pool.parent)["role"], "master");
    for &c in &pool.children {
        assert_eq!(o.process(c)["role"], "worker", "pid {c}");
    }
    for p in o.report["processes"].as_array().unwrap() {
        assert_eq!(
            p["python"]["names_read"], true,
            "pid {}: Python thread names not read: {}",
            p["pid"], p["python"]["names_error"]
        );
    }
    // The pool's own threads in the parent (`Thread-N (_handle_workers)`, `_handle_tasks`,
    // `_handle_results`) are framework threads, not exporters.
    let parent = o.process(pool.parent);
    let handlers: Vec<&Value> = parent["threads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"].as_str().unwrap_or("").contains("(_handle_"))
        .collect();
    assert_eq!(handlers.len(), 3, "parent threads {:#}", parent["threads"]);
    for t in handlers {
        assert_eq!(t["kind"], "other", "{t}");
    }
}

#[test]
fn sdk_set_up_in_the_parent_is_fc101_and_fc103_with_the_pool_fix() {
    let collector = Collector::start(0.0);
    let pool = Pool::start("broken", &collector);

    let o = check(&pool);
    assert_eq!(o.status, 1, "{}", o.stderr);
    assert_eq!(o.report["verdict"], "fail");
    assert_tree(&o, &pool);
    assert_eq!(
        o.code_set(),
        vec!["FC101", "FC103"],
        "{:#}",
        o.report["findings"]
    );
    let parent = pool.parent as i64;
    assert_eq!(o.pids_of("FC101"), vec![vec![parent]]);
    // one finding: the parent's keep-alive connections (one per signal), inherited by both
    // pool processes
    let mut holders: Vec<i64> = pool.children.iter().map(|&c| c as i64).collect();
    holders.push(parent);
    holders.sort_unstable();
    assert_eq!(o.pids_of("FC103"), vec![holders]);

    // The multiprocessing fix (initializer + Finalize), not gunicorn's post_fork.
    let fix = o.finding("FC101")["fix"].as_str().unwrap().to_string();
    assert!(fix.contains("initializer"), "FC101 fix: {fix}");
    assert!(fix.contains("Finalize"), "FC101 fix: {fix}");
    assert!(!fix.contains("post_fork"), "FC101 fix: {fix}");

    // The parent's own SDK threads.
    let parent_p = o.process(pool.parent);
    for kind in ["metric-reader", "span-processor", "log-processor"] {
        assert_eq!(threads_of_kind(parent_p, kind).len(), 1, "parent {kind}");
    }

    pool.stop();
}

#[test]
fn sdk_set_up_in_the_pool_initializer_passes() {
    let collector = Collector::start(0.0);
    let pool = Pool::start("fixed", &collector);

    let o = check(&pool);
    assert_eq!(o.status, 0, "{}", o.stderr);
    assert_eq!(o.report["verdict"], "pass");
    assert_tree(&o, &pool);
    assert_eq!(
        o.code_set(),
        Vec::<String>::new(),
        "{:#}",
        o.report["findings"]
    );

    // The facts behind the pass: the parent runs no SDK thread, each pool process its own three.
    let parent = o.process(pool.parent);
    let mut seen_tids = Vec::new();
    for kind in ["metric-reader", "span-processor", "log-processor"] {
        assert_eq!(threads_of_kind(parent, kind), vec![], "parent {kind}");
        for &c in &pool.children {
            let t = threads_of_kind(o.process(c), kind);
            assert_eq!(t.len(), 1, "pool process {c} {kind}: {t:?}");
            assert!(!seen_tids.contains(&t[0].0), "tid {} listed twice", t[0].0);
            seen_tids.push(t[0].0);
        }
    }

    pool.stop();
}
