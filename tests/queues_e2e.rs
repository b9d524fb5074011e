//! `otel-forkcheck run` without HTTP, end to end with real components and the built binary:
//! a multiprocessing fork Pool program that ends by itself (`fixtures/multiprocessing/pool.py
//! --batch`, venv `current`), and Celery 5.x prefork on a real Redis broker (Debian's
//! `redis-server`, started here on a free port, no persistence, in its own process group) and on
//! kombu's filesystem transport (a temporary folder, no Redis), driven by
//! `--drive fixtures/celery/enqueue.py` (venv `queues`; once with setproctitle, venv `titled`).
//! For each, the broken set-up (SDK in the parent, no flush when a child leaves) gets FC209
//! exactly for the children that ran tasks, and the fixed one passes. Nothing of a run (server group, driver groups) is left afterwards.
mod common;

use std::collections::BTreeSet;

use common::queues::{
    assert_driven_run, fc209_pids, findings, lost_in_children, python, run, task_pids, Redis, Run,
};
use common::root;
use serde_json::Value;

// ---------------------------------------------------------------- multiprocessing, ends by itself

/// pool.py --batch: 3 pool processes, 2 tasks of 0.5 s CPU (one child stays idle); the pids that
/// ran a task, from its `TASKS` line (the program's stdout is the run's captured output, so the
/// test asks the run's JSON for it via the children it tracked and the line on stderr).
/// Also the run's snapshot (`--save-ledger`).
fn pool_batch(mode: &str, start_method: &str) -> (Run, Value, Value) {
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
        "--start-method".into(),
        start_method.into(),
        // Idle children between their set-up and the tasks: what tells set-up from work (the
        // tracker's idle baseline). A forkserver child imports the SDK in the initializer (a
        // fork child inherits it): three at once on two busy cores took over 4 s of wall time
        // at a load average of 14.
        "--prepare".into(),
        if start_method == "fork" { "1.5" } else { "6" }.into(),
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = dir.path().join("ledger.json");
    let flags = ["--workers", "3", "--window", "30s", "--save-ledger"];
    let r = run(
        &[&flags[..], &[ledger.to_str().unwrap()]].concat(),
        &cmd,
        &[],
    );
    let v = r.json();
    let snap = std::fs::read(dir.path().join("ledger.snapshot.json"))
        .map(|b| serde_json::from_slice(&b).expect("snapshot JSON"))
        .unwrap_or_else(|e| panic!("snapshot not saved ({e}): {}", r.explain()));
    (r, v, snap)
}

#[test]
fn pool_batch_broken_loses_exactly_the_working_children() {
    let (r, v, snap) = pool_batch("broken", "fork");
    assert_eq!(r.code(), 1, "{}", r.explain());
    let run = &v["run"];
    assert_eq!(run["ended"], "exit status 0", "{}", r.explain());
    assert_eq!(run["exit_code"], 0);
    assert_eq!(run["http"], false);
    assert_eq!(run["stop"]["ended"], "exit status 0");
    assert_eq!(run["requests"]["sent"], 0);
    let children = run["children"].as_array().unwrap();
    assert_eq!(children.len(), 3, "{}", r.explain());
    let worked: BTreeSet<i64> = children
        .iter()
        .filter(|c| c["worked"] == true)
        .map(|c| c["pid"].as_i64().unwrap())
        .collect();
    assert_eq!(worked.len(), 2, "two tasks, chunksize 1: {}", r.explain());
    assert_eq!(fc209_pids(&v), worked, "{}", r.explain());
    // Plus the parent's own SDK, and FC102 exactly for each pool process that the snapshot
    // caught, with its Python thread names, at least 2 s old (the rule's grace for a worker
    // setting the SDK up) and without an exporter thread kind the master has. The SDK
    // re-creates them at fork, so the run usually finds none; a loaded machine can delay the
    // sample until a pool process is stopping its threads (a full-suite run did). The facts
    // are the saved snapshot's, as the rule read them.
    let (fc102, rest): (Vec<_>, Vec<_>) = findings(&v).into_iter().partition(|(c, _)| c == "FC102");
    assert_eq!(rest, lost_in_children(&v, &worked), "{}", r.explain());
    let pool: BTreeSet<i64> = children
        .iter()
        .map(|c| c["pid"].as_i64().unwrap())
        .collect();
    let master = run["master"].as_i64().unwrap();
    let processes = snap["processes"].as_array().unwrap();
    let kinds = |p: &Value| -> BTreeSet<String> {
        let threads = p["threads"].as_array().unwrap();
        let exporters = ["metric-reader", "span-processor", "log-processor"];
        threads
            .iter()
            .map(|t| t["kind"].as_str().unwrap().to_string())
            .filter(|k| exporters.contains(&k.as_str()))
            .collect()
    };
    let in_master = kinds(processes.iter().find(|p| p["pid"] == master).unwrap());
    assert_eq!(in_master.len(), 3, "the parent's SDK: {}", r.explain());
    let end = snap["taken_at_ms"].as_i64().unwrap() + snap["window_ms"].as_i64().unwrap();
    let want: Vec<(String, Vec<i64>)> = processes
        .iter()
        .filter(|p| pool.contains(&p["pid"].as_i64().unwrap()))
        .filter(|p| end - p["started_at_ms"].as_i64().unwrap() >= 2_000)
        // Judged only while there, with its Python thread names read.
        .filter(|p| p["gone"] != true && p["python"]["names_read"] == true)
        .filter(|p| !kinds(p).is_superset(&in_master))
        .map(|p| {
            (
                "FC102".to_string(),
                vec![master, p["pid"].as_i64().unwrap()],
            )
        })
        .collect();
    assert_eq!(fc102, want, "{}", r.explain());
    r.assert_no_leftovers(&v);
}

#[test]
fn pool_batch_fixed_passes() {
    let (r, v, _) = pool_batch("fixed", "fork");
    assert_eq!(r.code(), 0, "{}", r.explain());
    assert_eq!(v["verdict"], "pass");
    assert_eq!(findings(&v), vec![], "{}", r.explain());
    assert_eq!(v["run"]["ended"], "exit status 0");
    assert_eq!(v["run"]["children"].as_array().unwrap().len(), 3);
    r.assert_no_leftovers(&v);
}

/// Under forkserver (the default from Python 3.14) the pool processes are the forkserver's
/// children, not the parent's: they are tracked all the same. Set up in the initializer without
/// the Finalize flushes, each that ran a task leaves with os._exit before its next export.
#[test]
fn forkserver_pool_batch_without_flush_loses_exactly_the_working_children() {
    let (r, v, _) = pool_batch("noflush", "forkserver");
    assert_eq!(r.code(), 1, "{}", r.explain());
    let children = v["run"]["children"].as_array().unwrap();
    assert_eq!(children.len(), 3, "{}", r.explain());
    let worked: BTreeSet<i64> = children
        .iter()
        .filter(|c| c["worked"] == true)
        .map(|c| c["pid"].as_i64().unwrap())
        .collect();
    assert_eq!(worked.len(), 2, "two tasks, chunksize 1: {}", r.explain());
    // They hang under the forkserver, itself a child of the master.
    let master = v["run"]["master"].as_i64().unwrap();
    for pid in &worked {
        let p = v["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == *pid);
        if let Some(p) = p {
            assert_ne!(p["ppid"].as_i64(), Some(master), "{p:#}");
        }
    }
    let want: Vec<(String, Vec<i64>)> = worked
        .iter()
        .map(|p| ("FC209".to_string(), vec![*p]))
        .collect();
    assert_eq!(findings(&v), want, "{}", r.explain());
    r.assert_no_leftovers(&v);
}

#[test]
fn forkserver_pool_batch_fixed_passes() {
    let (r, v, _) = pool_batch("fixed", "forkserver");
    assert_eq!(r.code(), 0, "{}", r.explain());
    assert_eq!(findings(&v), vec![], "{}", r.explain());
    assert_eq!(v["run"]["children"].as_array().unwrap().len(), 3);
    r.assert_no_leftovers(&v);
}

// ---------------------------------------------------------------- Celery prefork

/// Celery's broker: a real Redis, or kombu's filesystem transport (a folder, no Redis at all).
#[derive(Clone, Copy)]
enum Broker {
    Redis,
    Filesystem,
}

/// `run --workers 2 --drive "enqueue.py TASKS" -- celery worker --concurrency=2 [extra]` with a
/// fresh broker; the pids that ran tasks (from the fixture's task log).
fn celery(broker: Broker, mode: &str, tasks: usize, extra: &[&str]) -> (Run, Value, BTreeSet<i64>) {
    celery_in("queues", broker, mode, tasks, extra)
}

/// [`celery`] with the Python of venv `venv`.
fn celery_in(
    venv: &str,
    broker: Broker,
    mode: &str,
    tasks: usize,
    extra: &[&str],
) -> (Run, Value, BTreeSet<i64>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_redis, url) = match broker {
        Broker::Redis => {
            let redis = Redis::start();
            let url = redis.url();
            (Some(redis), url)
        }
        Broker::Filesystem => (None, "filesystem://".to_string()),
    };
    let folder = dir.path().join("broker");
    std::fs::create_dir(&folder).expect("broker folder");
    let folder = folder.display().to_string();
    let log = dir.path().join("tasks.log");
    let py = python(venv);
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
    let log_s = log.display().to_string();
    let r = run(
        &["--workers", "2", "--window", "2s", "--drive", &drive],
        &cmd,
        &[
            ("FIXTURE_MODE", mode),
            ("FIXTURE_BROKER", &url),
            ("FIXTURE_BROKER_DIR", &folder),
            ("FIXTURE_TASK_LOG", &log_s),
            // Used with `-B` only: beat sends a task every 0.2 s that nothing runs.
            ("FIXTURE_BEAT_EVERY", "0.2"),
        ],
    );
    let v = r.json();
    let ran = task_pids(&log);
    assert_driven_run(&r, &v, "celery");
    (r, v, ran)
}

/// Broken (`tasks` tasks, `extra` worker flags): FC209 exactly for the children that ran
/// tasks, and FC101 for MainProcess's SDK; the run, for more checks.
fn celery_broken_loses_exactly_the_working_children(
    broker: Broker,
    tasks: usize,
    extra: &[&str],
) -> (Run, Value, BTreeSet<i64>) {
    let (r, v, ran) = celery(broker, "broken", tasks, extra);
    assert_eq!(r.code(), 1, "{}", r.explain());
    assert!(!ran.is_empty(), "no task ran: {}", r.explain());
    assert_eq!(fc209_pids(&v), ran, "{}", r.explain());
    assert_eq!(findings(&v), lost_in_children(&v, &ran), "{}", r.explain());
    r.assert_no_leftovers(&v);
    (r, v, ran)
}

/// Fixed: no finding.
fn celery_fixed_passes(
    broker: Broker,
    tasks: usize,
    extra: &[&str],
) -> (Run, Value, BTreeSet<i64>) {
    let (r, v, ran) = celery(broker, "fixed", tasks, extra);
    assert_eq!(r.code(), 0, "{}", r.explain());
    assert_eq!(findings(&v), vec![], "{}", r.explain());
    assert!(!ran.is_empty(), "no task ran: {}", r.explain());
    r.assert_no_leftovers(&v);
    (r, v, ran)
}

#[test]
fn celery_prefork_broken_loses_exactly_the_working_children() {
    celery_broken_loses_exactly_the_working_children(Broker::Redis, 4, &[]);
}

#[test]
fn celery_prefork_fixed_passes() {
    celery_fixed_passes(Broker::Redis, 4, &[]);
}

#[test]
fn celery_filesystem_transport_broken_loses_exactly_the_working_children() {
    celery_broken_loses_exactly_the_working_children(Broker::Filesystem, 4, &[]);
}

#[test]
fn celery_filesystem_transport_fixed_passes() {
    celery_fixed_passes(Broker::Filesystem, 4, &[]);
}

#[test]
fn celery_prefork_fixed_recycling_every_task_passes_without_fc107() {
    let (r, v, ran) = celery(Broker::Redis, "fixed", 4, &["--max-tasks-per-child=1"]);
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
    let (r, v, ran) = celery(Broker::Redis, "broken", 4, &["--max-tasks-per-child=1"]);
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

/// The one child of a `celery worker -B` run that is no pool process: its embedded beat, which
/// ran no task, worked (past the threshold) as beat, and is not counted as having worked.
fn assert_beat_did_not_work(r: &Run, v: &Value, ran: &BTreeSet<i64>) {
    let children = v["run"]["children"].as_array().unwrap();
    assert_eq!(
        children.len(),
        3,
        "two pool processes and beat: {}",
        r.explain()
    );
    let pids: BTreeSet<i64> = children
        .iter()
        .map(|c| c["pid"].as_i64().unwrap())
        .collect();
    assert!(!ran.is_empty() && pids.is_superset(ran), "{}", r.explain());
    // Beat: a child that ran no task but used CPU after it was first seen.
    let idle: Vec<&Value> = children
        .iter()
        .filter(|c| !ran.contains(&c["pid"].as_i64().unwrap()))
        .collect();
    let beat: Vec<&&Value> = idle
        .iter()
        .filter(|c| c["cpu_since_seen_ms"].as_u64().unwrap() >= 50)
        .collect();
    assert_eq!(beat.len(), 1, "beat's ticks cost CPU: {}", r.explain());
    assert_eq!(beat[0]["worked"], false, "{}", r.explain());
}

/// `celery worker -B`: the embedded beat is a child of MainProcess with the pool's command
/// line; its ticks made it a pool process that worked and lost its data (a false FC209 on the
/// fixed set-up).
#[test]
fn celery_prefork_with_beat_fixed_passes() {
    let (r, v, ran) = celery_fixed_passes(Broker::Redis, 4, &["-B"]);
    assert_beat_did_not_work(&r, &v, &ran);
}

#[test]
fn celery_prefork_with_beat_broken_loses_exactly_the_working_children() {
    let (r, v, ran) = celery_broken_loses_exactly_the_working_children(Broker::Redis, 4, &["-B"]);
    assert_beat_did_not_work(&r, &v, &ran);
}

/// `--autoscale=4,2`: the pool adds processes as tasks wait, and a process added for a waiting
/// task takes it at once and stands still only after it (its idle baseline holds the task).
/// Every child that ran a task lost it (one was missed before).
#[test]
fn celery_prefork_autoscale_broken_loses_exactly_the_working_children() {
    let (r, v, _) =
        celery_broken_loses_exactly_the_working_children(Broker::Redis, 8, &["--autoscale=4,2"]);
    assert_pool_grew(&r, &v);
}

#[test]
fn celery_prefork_autoscale_fixed_passes() {
    let (r, v, _) = celery_fixed_passes(Broker::Redis, 8, &["--autoscale=4,2"]);
    assert_pool_grew(&r, &v);
}

/// More children than the two the pool started with: 8 tasks of 0.3 s kept tasks waiting.
fn assert_pool_grew(r: &Run, v: &Value) {
    let children = v["run"]["children"].as_array().unwrap();
    assert!(children.len() > 2, "the pool grew: {}", r.explain());
}

/// With setproctitle installed (venv `titled`), MainProcess calls itself
/// `[celeryd: celery@host:MainProcess] -active- (...)` and each pool child
/// `[celeryd: celery@host:ForkPoolWorker-N]`, where /proc/<pid>/cmdline said
/// `python -m celery ... worker`: still Celery, its master and its children, and the same
/// findings as without the titles.
#[test]
fn celery_retitled_by_setproctitle_broken_loses_exactly_the_working_children() {
    let (r, v, ran) = celery_in("titled", Broker::Redis, "broken", 4, &[]);
    assert_eq!(r.code(), 1, "{}", r.explain());
    assert!(!ran.is_empty(), "no task ran: {}", r.explain());
    assert_eq!(fc209_pids(&v), ran, "{}", r.explain());
    assert_eq!(findings(&v), lost_in_children(&v, &ran), "{}", r.explain());
    // The titles were there: each process's first argument as the kernel showed it.
    let title = |pid: i64| -> String {
        let p = v["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == pid)
            .unwrap_or_else(|| panic!("pid {pid} not in the report: {}", r.explain()));
        p["cmdline"][0].as_str().unwrap_or_default().to_string()
    };
    let master = v["run"]["master"].as_i64().unwrap();
    assert!(
        title(master).starts_with("[celeryd: ") && title(master).contains(":MainProcess]"),
        "{}\n{}",
        title(master),
        r.explain()
    );
    for pid in &ran {
        assert!(
            title(*pid).contains(":ForkPoolWorker-"),
            "{}\n{}",
            title(*pid),
            r.explain()
        );
    }
    r.assert_no_leftovers(&v);
}
