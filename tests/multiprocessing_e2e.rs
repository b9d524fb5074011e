//! `otel-forkcheck --pid` end to end on a real Python `multiprocessing` pool (fork, spawn and
//! forkserver start methods, `fixtures/multiprocessing/pool.py`, venv `current`), the real
//! OpenTelemetry SDK and the built binary. Each test asserts the framework, the roles, the exact codes and pids, the exit status,
//! and that the whole process group is gone after a graceful stop (SIGTERM to the parent).
mod common;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::report::{check_json, threads_of_kind, Outcome};
use common::{children_of, live_members, root, venv, wait_until, Collector, Group, QUIET};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

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
    /// Starts the fixture (fork start method) against `collector` and returns once it printed
    /// `READY` (the pool processes exist and have run tasks).
    fn start(mode: &str, collector: &Collector) -> Pool {
        Self::start_with(mode, "fork", collector)
    }

    /// The same with another start method. The pool processes are the parent's children under
    /// fork and spawn (beside the resource tracker, under spawn), the forkserver's under
    /// forkserver.
    fn start_with(mode: &str, method: &str, collector: &Collector) -> Pool {
        let (group, line, log, dir) = launch(&[mode, "--start-method", method], collector);
        let parent = group.pgid;
        let mut ready: Vec<i32> = line
            .split_whitespace()
            .skip(1)
            .map_while(|p| p.parse().ok())
            .collect();
        ready.sort_unstable();
        let helpers: Vec<i32> = children_of(parent)
            .into_iter()
            .filter(|c| is_helper(*c))
            .collect();
        let children: Vec<i32> = if method == "forkserver" {
            assert_eq!(
                helpers.len(),
                2,
                "forkserver and resource tracker: {helpers:?}"
            );
            let mut kids: Vec<i32> = helpers.iter().flat_map(|h| children_of(*h)).collect();
            kids.sort_unstable();
            kids
        } else {
            children_of(parent)
                .into_iter()
                .filter(|c| !is_helper(*c))
                .collect()
        };
        assert_eq!(children, ready, "pool.py {mode} ({method}): {line}");
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

/// `pool.py ARGS` started against `collector`, once it printed `READY` (the pool processes
/// exist and have run tasks): its group, that line, its log and the temp dir the log is in.
fn launch(args: &[&str], collector: &Collector) -> (Group, String, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("pool.log");
    let mut cmd = Command::new(venv("current").join("bin/python"));
    cmd.arg(root().join("fixtures/multiprocessing/pool.py"))
        .args(args)
        .args(["--processes", &PROCESSES.to_string()])
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&log).expect("create pool log"));
    // Only what the test asks for reaches the SDK.
    common::strip_env(&mut cmd, &["OTEL_*", "FIXTURE_*", "PYTHONPATH"]);
    cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url())
        .envs(QUIET.iter().copied());
    let mut group = Group::spawn(&mut cmd);
    let stdout = group.child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    // READY comes once the pool ran its tasks, or stdout closes because the fixture failed.
    let _ = BufReader::new(stdout).read_line(&mut line);
    let read = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        line.starts_with("READY "),
        "pool.py {args:?} did not start (first line {line:?}):\n{read}"
    );
    (group, line, log, dir)
}

/// multiprocessing's resource tracker or forkserver process (or a fork of the forkserver,
/// which keeps its command line).
fn is_helper(pid: i32) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    cmdline.contains("multiprocessing.resource_tracker")
        || cmdline.contains("multiprocessing.forkserver")
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
    o.assert_no_findings();

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

/// Spawn and forkserver pools: the pool processes are workers started by that method (under
/// forkserver, though they hang under the forkserver), the helpers `other` and in no finding;
/// with the SDK in the parent only, FC108 names exactly the pool processes and no fork finding
/// speaks; with the SDK in the initializer, a pass.
fn spawned_pool(method: &str) {
    let collector = Collector::start(0.0);
    let broken = Pool::start_with("broken", method, &collector);
    // Workers younger than 2 s are not judged.
    std::thread::sleep(Duration::from_millis(2500));
    let o = check(&broken);
    assert_eq!(o.status, 1, "{}", o.stderr);
    assert_eq!(o.report["root"]["framework"], "multiprocessing");
    assert_eq!(o.process(broken.parent)["role"], "master");
    for &c in &broken.children {
        assert_eq!(o.process(c)["role"], "worker", "pid {c}");
        assert_eq!(o.process(c)["started_by"], method, "pid {c}");
    }
    let mut helpers = 0;
    for p in o.report["processes"].as_array().unwrap() {
        let pid = p["pid"].as_i64().unwrap() as i32;
        // The forkserver's forks keep its command line: only the parent's children are helpers.
        if p["ppid"] == broken.parent && is_helper(pid) {
            helpers += 1;
            assert_eq!(p["role"], "other", "helper {pid}");
            assert_eq!(p["findings"], Value::Array(vec![]), "helper {pid}");
        }
    }
    assert_eq!(helpers, if method == "forkserver" { 2 } else { 1 });
    eprintln!(
        "{method} pool, SDK in the parent only: root {}, workers {:?}, exit {}, codes {:?}, \
         FC108 pids {:?}",
        broken.parent,
        broken.children,
        o.status,
        o.codes(),
        o.pids_of("FC108")
    );
    assert_eq!(o.codes(), vec!["FC108"], "{:#}", o.report["findings"]);
    let mut pids: Vec<i64> = broken.children.iter().map(|&c| c as i64).collect();
    pids.sort_unstable();
    assert_eq!(o.pids_of("FC108"), vec![pids]);
    let fix = o.finding("FC108")["fix"].as_str().unwrap().to_string();
    assert!(fix.contains("initializer"), "{fix}");
    broken.stop();

    let fixed = Pool::start_with("fixed", method, &collector);
    std::thread::sleep(Duration::from_millis(2500));
    let o = check(&fixed);
    eprintln!(
        "{method} pool, SDK in the initializer: root {}, workers {:?}, exit {}, codes {:?}",
        fixed.parent,
        fixed.children,
        o.status,
        o.codes()
    );
    o.assert_clean();
    for &c in &fixed.children {
        assert_eq!(o.process(c)["started_by"], method, "pid {c}");
        for kind in ["metric-reader", "span-processor", "log-processor"] {
            assert_eq!(threads_of_kind(o.process(c), kind).len(), 1, "{c} {kind}");
        }
    }
    fixed.stop();
}

#[test]
fn spawn_pool_with_the_sdk_in_the_parent_only_is_fc108_and_the_initializer_passes() {
    spawned_pool("spawn");
}

#[test]
fn forkserver_pool_with_the_sdk_in_the_parent_only_is_fc108_and_the_initializer_passes() {
    spawned_pool("forkserver");
}

/// `Pool(maxtasksperchild=1)` kept busy: a pool process is replaced after every task, which is
/// how it was told to work, not a crash loop. The window catches the recycled processes as
/// zombies before the parent reaps them and reads their exit status (0); without those
/// statuses the same churn was FC107 worker-crash-loop.
#[test]
fn a_pool_recycling_its_processes_is_no_crash_loop() {
    let collector = Collector::start(0.0);
    let busy = ["fixed", "--max-tasks-per-child", "1", "--keep-busy"];
    let (group, _, _log, _dir) = launch(&busy, &collector);

    let o = check_json(group.pgid, "3s");
    let churn = &o.report["churn"];
    let exited: Vec<i64> = churn["exited"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_i64().unwrap())
        .collect();
    assert!(exited.len() >= 5, "recycled in the window: {churn}");
    let caught = churn["wait_statuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!caught.is_empty(), "no exit status caught: {churn}");
    for c in &caught {
        assert_eq!(c[1], 0, "a recycled process leaves with 0: {churn}");
        assert!(exited.contains(&c[0].as_i64().unwrap()), "{churn}");
    }
    assert_eq!(o.codes(), Vec::<String>::new(), "{}", o.stderr);
    assert_eq!(o.status, 0, "{}", o.stderr);
}
