//! `otel-forkcheck run -- rq worker` end to end with real components and the built binary: RQ
//! 2.x on a real Redis (Debian's `redis-server`, started here on a free port) with the worker
//! class of `fixtures/rq/rqworker.py` (venv `queues`; once with setproctitle, venv `titled`),
//! driven by `--drive fixtures/rq/enqueue.py`.
//! The worker forks one work horse per job, which leaves with os._exit: horses come and go and
//! are tracked one by one. Broken (SDK set up in the worker, nothing flushes in the horse): FC209
//! exactly for each horse that ran a job, and FC101 for the worker. Fixed (SDK set up and shut
//! down in the horse, in `perform_job`): no finding. Nothing of a run is left afterwards: not the
//! worker's group, not the driver's, and no horse (each leads its own process group).
mod common;

use std::collections::BTreeSet;

use common::queues::{
    assert_driven_run, fc209_pids, findings, lost_in_children, python, run, task_pids, Redis, Run,
};
use common::{root, venv};
use serde_json::Value;

const JOBS: usize = 3;

/// How RQ is started.
#[derive(Clone, Copy, PartialEq)]
enum Rq {
    /// `rq worker`: the worker forks a horse per job.
    Worker,
    /// `rq worker --with-scheduler`: besides the horses, the scheduler, a fork that polls Redis
    /// (50 times a second here: what a minute of a real run costs, in a second).
    WithScheduler,
    /// `rq worker-pool -n 2`: two workers, each forking a horse per job (horses are the
    /// master's grandchildren).
    Pool,
}

/// `run --window 1s --drive "enqueue.py JOBS 0.4" -- rq worker ...` (or `rq worker-pool -n 2`)
/// with a fresh Redis; the pids that ran a job (from the fixture's task log).
fn rq(mode: &str, how: Rq) -> (Run, Value, BTreeSet<i64>) {
    rq_in("queues", mode, how)
}

/// [`rq`] with venv `venv`'s RQ.
fn rq_in(venv_name: &str, mode: &str, how: Rq) -> (Run, Value, BTreeSet<i64>) {
    let redis = Redis::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("tasks.log");
    let drive = format!(
        "{} {} {JOBS} 0.4",
        python(venv_name),
        root().join("fixtures/rq/enqueue.py").display()
    );
    let url = redis.url();
    let mut cmd: Vec<String> = vec![venv(venv_name).join("bin/rq").display().to_string()];
    cmd.extend(match how {
        Rq::Worker => vec!["worker".to_string()],
        Rq::WithScheduler => vec!["worker".into(), "--with-scheduler".into()],
        Rq::Pool => vec!["worker-pool".into(), "-n".into(), "2".into()],
    });
    cmd.extend([
        "--url".into(),
        url.clone(),
        "--path".into(),
        root().join("fixtures/rq").display().to_string(),
        "--worker-class".into(),
        "rqworker.FixtureWorker".into(),
    ]);
    let log_s = log.display().to_string();
    let mut flags = vec!["--window", "1s", "--drive", &drive];
    if how == Rq::Pool {
        flags.extend(["--workers", "2"]);
    }
    let r = run(
        &flags,
        &cmd,
        &[
            ("FIXTURE_MODE", mode),
            ("FIXTURE_BROKER", &url),
            ("FIXTURE_TASK_LOG", &log_s),
            ("FIXTURE_SCHEDULER_SPEEDUP", "50"),
        ],
    );
    let v = r.json();
    let ran = task_pids(&log);
    assert_driven_run(&r, &v, "rq");
    assert_eq!(ran.len(), JOBS, "one horse per job: {}", r.explain());
    // Every horse was tracked, one by one, and worked.
    let children = v["run"]["children"].as_array().unwrap();
    let pids = |f: &dyn Fn(&Value) -> bool| -> BTreeSet<i64> {
        children
            .iter()
            .filter(|c| f(c))
            .map(|c| c["pid"].as_i64().unwrap())
            .collect()
    };
    let worked = pids(&|c| c["worked"] == true);
    assert_eq!(worked, ran, "{}", r.explain());
    match how {
        // No other child.
        Rq::Worker => assert_eq!(pids(&|_| true), ran, "{}", r.explain()),
        // And the scheduler: no horse, and its CPU (past the threshold) is not work.
        Rq::WithScheduler => {
            let others: Vec<&Value> = children
                .iter()
                .filter(|c| !ran.contains(&c["pid"].as_i64().unwrap()))
                .collect();
            assert_eq!(others.len(), 1, "{}", r.explain());
            let s = others[0];
            assert_ne!(s["per_job"], true, "{}", r.explain());
            assert!(
                s["cpu_since_seen_ms"].as_u64().unwrap() >= 50,
                "{}",
                r.explain()
            );
            assert_eq!(pids(&|c| c["per_job"] == true), ran, "{}", r.explain());
        }
        // Besides the horses: the two workers, and each worker's scheduler (a fork that works
        // no job), none of them working.
        Rq::Pool => {
            let workers = ints(&v["run"]["workers_at_start"]);
            assert_eq!(workers.len(), 2, "{}", r.explain());
            assert!(workers.iter().all(|w| !worked.contains(w)));
            let horses = pids(&|c| c["per_job"] == true);
            assert!(horses.is_superset(&ran), "{}", r.explain());
            assert!(workers.iter().all(|w| !horses.contains(w)));
        }
    }
    r.assert_no_leftovers(&v);
    for pid in &ran {
        assert!(!alive(*pid), "horse {pid} left behind\n{}", r.explain());
    }
    (r, v, ran)
}

/// A process `pid` that is not a zombie.
fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        let state = s[s.rfind(')').unwrap_or(0) + 1..].split_whitespace().next();
        state.is_some_and(|st| st != "Z" && st != "X")
    })
}

fn ints(v: &Value) -> BTreeSet<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_i64().unwrap())
        .collect()
}

#[test]
fn rq_broken_loses_exactly_every_work_horse() {
    broken_loses_exactly_every_work_horse(Rq::Worker);
}

/// `rq worker-pool`: the horses are the master's grandchildren, tracked all the same (a wrong
/// pass before: only the pool's workers were tracked, and they work no job themselves).
#[test]
fn rq_worker_pool_broken_loses_exactly_every_work_horse() {
    broken_loses_exactly_every_work_horse(Rq::Pool);
}

#[test]
fn rq_worker_pool_fixed_passes() {
    fixed_passes(Rq::Pool);
}

/// Fixed: recognised as RQ, a pass, no finding.
fn fixed_passes(how: Rq) {
    let (r, v, _) = rq("fixed", how);
    assert_eq!(r.code(), 0, "{}", r.explain());
    assert_eq!(v["root"]["framework"], "rq");
    assert_eq!(v["verdict"], "pass");
    assert_eq!(findings(&v), vec![], "{}", r.explain());
}

/// With setproctitle installed (venv `titled`), RQ retitles the worker
/// `rq:worker:<name>: Listening on default` (and each horse `rq:horse:...`), where
/// /proc/<pid>/cmdline said `python .../rq worker ...`: still RQ, the same findings.
#[test]
fn rq_retitled_by_setproctitle_broken_loses_exactly_every_work_horse() {
    let (r, v, ran) = rq_in("titled", "broken", Rq::Worker);
    assert_eq!(r.code(), 1, "{}", r.explain());
    assert_eq!(fc209_pids(&v), ran, "{}", r.explain());
    assert_eq!(findings(&v), lost_in_children(&v, &ran), "{}", r.explain());
    let master = v["run"]["master"].as_i64().unwrap();
    let title = v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == master)
        .map(|p| p["cmdline"][0].as_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    assert!(title.starts_with("rq:worker:"), "{title}\n{}", r.explain());
}

fn broken_loses_exactly_every_work_horse(how: Rq) {
    let (r, v, ran) = rq("broken", how);
    assert_eq!(r.code(), 1, "{}", r.explain());
    assert_eq!(fc209_pids(&v), ran, "{}", r.explain());
    assert_eq!(findings(&v), lost_in_children(&v, &ran), "{}", r.explain());
    // The fix printed with FC209 is RQ's: set-up and shutdown in the horse.
    let fix = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "FC209")
        .map(|f| f["fix"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    assert!(
        fix.contains("perform_job") && fix.contains("--worker-class"),
        "{fix}"
    );
}

/// `rq worker --with-scheduler`: the scheduler polls Redis for the whole run, which made it a
/// horse that worked and lost its data (a false FC209, on the fixed set-up too).
#[test]
fn rq_with_scheduler_broken_loses_exactly_every_work_horse() {
    broken_loses_exactly_every_work_horse(Rq::WithScheduler);
}

#[test]
fn rq_with_scheduler_fixed_passes() {
    fixed_passes(Rq::WithScheduler);
}

#[test]
fn rq_fixed_passes() {
    fixed_passes(Rq::Worker);
}

/// `check --pid` of a busy `rq worker` (fixed set-up, exporting to a collector): its horses
/// come and go, one per job, which was FC107 worker-crash-loop before ("12 workers exited and
/// 12 were started in 5.0 s": a failed check on a healthy worker). Now the churn is recorded as
/// per-job and counts only for horses seen crashing, which `check` cannot see: a pass.
#[test]
fn rq_check_of_a_busy_worker_is_no_crash_loop() {
    let redis = Redis::start();
    let collector = common::Collector::start(0.0);
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("tasks.log");
    let worker_log = dir.path().join("worker.log");
    let (url, endpoint) = (redis.url(), collector.url());
    let env = [
        ("FIXTURE_MODE", "fixed"),
        ("FIXTURE_BROKER", url.as_str()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
    ];
    let mut cmd = std::process::Command::new(venv("queues").join("bin/rq"));
    cmd.args(["worker", "--url", &url, "--path"])
        .arg(root().join("fixtures/rq"))
        .args(["--worker-class", "rqworker.FixtureWorker"])
        .envs(env)
        .env("FIXTURE_TASK_LOG", &log)
        .stdout(std::fs::File::create(&worker_log).expect("worker log"))
        .stderr(std::process::Stdio::null());
    let worker = common::Group::spawn(&mut cmd);
    let listening = common::wait_until(std::time::Duration::from_secs(30), || {
        std::fs::read_to_string(&worker_log).is_ok_and(|l| l.contains("Listening on"))
    });
    let tail = || std::fs::read_to_string(&worker_log).unwrap_or_default();
    assert!(listening, "rq worker did not start:\n{}", tail());
    // 40 jobs of 0.1 s: horses one after the other for the whole window.
    let mut producer = std::process::Command::new(python("queues"));
    producer
        .arg(root().join("fixtures/rq/enqueue.py"))
        .args(["40", "0.1"])
        .envs(env)
        .env("FIXTURE_TASK_LOG", &log)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _producer = common::Group::spawn(&mut producer);
    assert!(
        common::wait_until(std::time::Duration::from_secs(20), || task_pids(&log).len()
            >= 2),
        "no job ran:\n{}",
        tail()
    );
    let o = common::report::check_json(worker.pgid, "3s");
    let r = &o.report;
    assert_eq!(r["root"]["framework"], "rq", "{}", o.stderr);
    assert_eq!(r["churn"]["per_job"], true, "{r:#}");
    let exited = r["churn"]["exited"].as_array().unwrap().len();
    assert!(exited >= 2, "horses came and went: {r:#}");
    assert_eq!(o.codes(), Vec::<String>::new(), "{r:#}");
    assert_eq!((o.status, &r["verdict"]), (0, &"pass".into()), "{r:#}");
}
