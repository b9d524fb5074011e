//! `otel-forkcheck --pid` end to end: real gunicorn, the real OpenTelemetry SDK, the built binary.
//! Each test asserts the exact codes and pids, and the exit status.
mod common;

use std::process::Command;
use std::time::Duration;

use common::report::{check_json, forkcheck, Outcome};
use common::{Collector, GrpcReceiver, Gunicorn, QUIET};

fn check(g: &Gunicorn, window: &str) -> Outcome {
    check_json(g.master_pid, window)
}

fn pids(v: &[i32]) -> Vec<i64> {
    let mut p: Vec<i64> = v.iter().map(|&x| x as i64).collect();
    p.sort();
    p
}

fn env<'a>(collector: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut e = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", collector)];
    e.extend_from_slice(extra);
    e
}

/// The broken set-up: the SDK set up at import in the preloading master, which exports (and so
/// opens its collector connections) before it forks `workers` workers.
fn preload_exporting(collector: &Collector, venv: &str, workers: usize) -> Gunicorn {
    let url = collector.url();
    let mut extra = QUIET.to_vec();
    extra.push(("FIXTURE_EXPORT_BEFORE_FORK", "1"));
    Gunicorn::start(venv, "preload", workers, &env(&url, &extra))
}

#[test]
fn preload_exporting_before_fork_is_fc101_and_fc103() {
    let collector = Collector::start(0.0);
    let g = preload_exporting(&collector, "current", 3);
    let workers = g.worker_pids();
    assert_eq!(workers.len(), 3);
    std::thread::sleep(Duration::from_secs(1));

    let o = check(&g, "1s");
    assert_eq!(o.status, 1, "{}", o.stderr);
    assert_eq!(o.report["verdict"], "fail");
    assert_eq!(o.report["root"]["framework"], "gunicorn");
    let master = g.master_pid as i64;
    assert_eq!(o.pids_of("FC101"), vec![vec![master]]);
    let mut holders = workers.clone();
    holders.push(g.master_pid);
    // one finding: the master's connections (one per signal) held by the master and all workers
    assert_eq!(o.pids_of("FC103"), vec![pids(&holders)]);
    assert_eq!(o.pids_of("FC302"), vec![vec![master]]);
    assert_eq!(o.codes(), vec!["FC103", "FC101", "FC302"]);
}

/// The same broken set-up with the collector endpoint set in the gunicorn config file
/// (`os.environ[...]`), not in the environment the server started with: /proc/<pid>/environ has
/// no endpoint, so the shared connections were not known to lead to the collector. FC103 was
/// missed and the check gave warnings only (exit 0). The environment is read from memory.
#[test]
fn endpoint_set_in_the_config_file_is_still_the_collector() {
    let collector = Collector::start(0.0);
    let url = collector.url();
    let mut extra = QUIET.to_vec();
    extra.extend([
        ("FIXTURE_EXPORT_BEFORE_FORK", "1"),
        ("FIXTURE_COLLECTOR", url.as_str()),
    ]);
    let g = Gunicorn::start("current", "preload_endpoint_in_config", 2, &extra);
    std::thread::sleep(Duration::from_secs(1));
    let started = std::fs::read(format!("/proc/{}/environ", g.master_pid)).unwrap();
    let started = String::from_utf8_lossy(&started);
    assert!(
        !started.contains("OTEL_EXPORTER_OTLP_ENDPOINT="),
        "{started}"
    );

    let o = check(&g, "1s");
    assert_eq!(o.status, 1, "{}", o.stderr);
    let endpoints = o.report["collector_endpoints"].to_string();
    assert!(
        endpoints.contains(&collector.port.to_string()),
        "{endpoints}"
    );
    // The evidence says where it was read: not /proc/<pid>/environ, which does not have it.
    assert_eq!(
        o.report["collector_endpoints"][0]["source"],
        format!(
            "OTEL_EXPORTER_OTLP_ENDPOINT in pid {}'s environment, read from its memory",
            g.master_pid
        ),
        "{endpoints}"
    );
    let mut holders = g.worker_pids();
    holders.push(g.master_pid);
    assert_eq!(o.pids_of("FC103"), vec![pids(&holders)]);
    assert_eq!(o.codes(), vec!["FC103", "FC101", "FC302"]);
}

#[test]
fn post_fork_set_up_passes() {
    let collector = Collector::start(0.0);
    let url = collector.url();
    let g = Gunicorn::start("current", "postfork", 2, &env(&url, &QUIET));
    g.hit("/", 6);
    std::thread::sleep(Duration::from_secs(2));

    let o = check(&g, "1s");
    assert_eq!(o.status, 0, "{}", o.stderr);
    assert_eq!(o.report["verdict"], "pass");
    assert_eq!(o.codes(), Vec::<String>::new());
    // the facts behind the pass: each worker runs its own three SDK threads, the master none
    for p in o.report["processes"].as_array().unwrap() {
        let kinds: Vec<&str> = p["threads"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["kind"].as_str().unwrap())
            .filter(|k| *k != "other")
            .collect();
        match p["role"].as_str().unwrap() {
            "master" => assert!(kinds.is_empty(), "master threads {kinds:?}"),
            "worker" => assert_eq!(kinds.len(), 3, "worker {} threads {kinds:?}", p["pid"]),
            r => panic!("unexpected role {r}"),
        }
    }
}

#[test]
fn sdk_1_6_2_workers_have_no_exporter_thread() {
    let collector = Collector::start(0.0);
    let g = preload_exporting(&collector, "sdk-1.6.2", 2);
    let workers = g.worker_pids();
    std::thread::sleep(Duration::from_millis(2500));

    let o = check(&g, "0");
    assert_eq!(o.status, 1, "{}", o.stderr);
    let master = g.master_pid as i64;
    let per_worker: Vec<Vec<i64>> = workers.iter().map(|w| vec![master, *w as i64]).collect();
    assert_eq!(o.pids_of("FC102"), per_worker);
    let mut all = workers.clone();
    all.push(g.master_pid);
    assert_eq!(o.pids_of("FC106"), vec![pids(&all)]);
}

#[test]
fn slow_collector_while_forking_leaves_worker_readers_stuck() {
    // Each export takes 3 s, the reader exports every 0.5 s, and the master forks 1 s after
    // recording a measurement (fixtures/gunicorn/preload_fork_mid_export.conf.py): the reader
    // holds its export lock at fork, and every worker inherits it locked
    // (docs/failure-modes.md#metric-reader-stuck-on-an-inherited-lock).
    let collector = Collector::start(3.0);
    let url = collector.url();
    let extra = [("OTEL_METRIC_EXPORT_INTERVAL", "500")];
    let g = Gunicorn::start("current", "preload_fork_mid_export", 2, &env(&url, &extra));
    let workers = g.worker_pids();
    std::thread::sleep(Duration::from_secs(2));

    let o = check(&g, "3s");
    assert_eq!(o.status, 1, "{}", o.stderr);
    let stuck: Vec<Vec<i64>> = workers.iter().map(|w| vec![*w as i64]).collect();
    assert_eq!(o.pids_of("FC104"), stuck, "{:#}", o.report["processes"]);
    assert!(o
        .pids_of("FC104")
        .iter()
        .all(|p| p[0] != g.master_pid as i64));
}

#[test]
fn saved_snapshot_gives_the_same_findings_offline() {
    let collector = Collector::start(0.0);
    let g = preload_exporting(&collector, "current", 2);
    std::thread::sleep(Duration::from_secs(1));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snap.json");
    let file = file.to_str().unwrap();
    let pid = g.master_pid.to_string();

    let live = forkcheck(&[
        "--pid",
        &pid,
        "--window",
        "0",
        "--format",
        "json",
        "--save-snapshot",
        file,
    ]);
    drop(g);
    let offline = forkcheck(&["check", "--snapshot", file, "--format", "json"]);
    assert_eq!(live.status, 1);
    assert_eq!(offline.status, 1);
    assert_eq!(live.report["findings"], offline.report["findings"]);
    assert_eq!(offline.codes(), vec!["FC103", "FC101", "FC302"]);
}

#[test]
fn no_such_pid_and_bad_arguments_exit_2_with_a_cause() {
    // a pid that exited: our own short-lived child
    let mut child = Command::new("true").spawn().unwrap();
    let gone = child.id().to_string();
    child.wait().unwrap();
    let o = forkcheck(&["--pid", &gone]);
    assert_eq!(o.status, 2);
    assert!(
        o.stderr.contains(&format!("no process with pid {gone}")),
        "{}",
        o.stderr
    );
    assert!(o.stderr.contains("hint:"), "{}", o.stderr);

    // A tree that runs no Python (a shell and its two children): nothing to check, not a pass.
    let g = common::Group::spawn(Command::new("sh").args(["-c", "sleep 30 & sleep 30"]));
    let shell = g.pgid;
    assert!(common::wait_until(Duration::from_secs(5), || {
        common::children_of(shell).len() == 2
    }));
    let exe = std::fs::read_link(format!("/proc/{shell}/exe")).unwrap();
    let program = exe.file_name().unwrap().to_string_lossy();
    let o = forkcheck(&["--pid", &shell.to_string(), "--window", "0"]);
    assert_eq!(o.status, 2, "{}", o.stderr);
    assert!(
        o.stderr.contains(&format!(
            "pid {shell} ({program}) and its 2 descendant(s) run no Python: nothing here to check"
        )),
        "{}",
        o.stderr
    );
    assert!(
        o.stderr.contains("hint: give the pid of the Python server"),
        "{}",
        o.stderr
    );
    // `receive --pid` of that tree served, judged nothing and passed ("No findings", exit 0).
    // It still serves (a wrapper may wait for the receiver before it runs the server), but a
    // tree that ran no Python while it ran is refused at the end, the ledger saved first.
    let ledger = std::env::temp_dir().join(format!("forkcheck-nopython-{shell}.json"));
    let r = forkcheck(&[
        "receive",
        "--pid",
        &shell.to_string(),
        "--http",
        "127.0.0.1:0",
        "--grpc",
        "off",
        "--timeout",
        "1500ms",
        "--save-ledger",
        ledger.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(r.status, 2, "{}", r.stderr);
    assert!(r.report.is_null(), "a verdict was printed: {}", r.report);
    assert!(
        r.stderr.contains("listening")
            && r.stderr.contains(&format!(
                "pid {shell} ({program}) and its 2 descendant(s) ran no Python while the \
                 receiver ran: nothing here to judge"
            )),
        "{}",
        r.stderr
    );
    assert!(std::fs::metadata(&ledger).is_ok_and(|m| m.len() > 0));
    let _ = std::fs::remove_file(&ledger);
    drop(g);

    let o = forkcheck(&["--pid", "1", "--window", "soon"]);
    assert_eq!(o.status, 2);
    let o = forkcheck(&["check", "--snapshot", "/nonexistent/snap.json"]);
    assert_eq!(o.status, 2);
    assert!(o.stderr.contains("cannot read snapshot"), "{}", o.stderr);
    let o = forkcheck(&["explain", "FC999"]);
    assert_eq!(o.status, 2);
}

#[test]
fn fail_on_moves_the_threshold() {
    let collector = Collector::start(0.0);
    let url = collector.url();
    let g = Gunicorn::start_instrumented("current", 2, &env(&url, &QUIET));
    g.hit("/", 4);
    std::thread::sleep(Duration::from_secs(1));
    let pid = g.master_pid.to_string();
    // opentelemetry-instrument with SDK 1.45: warnings only (FC101, FC301)
    let o = forkcheck(&["--pid", &pid, "--window", "0", "--format", "json"]);
    assert_eq!(o.codes(), vec!["FC101", "FC301"], "{}", o.stderr);
    assert_eq!(o.status, 0);
    assert_eq!(o.report["verdict"], "warn");
    let o = forkcheck(&["--pid", &pid, "--window", "0", "--fail-on", "warning"]);
    assert_eq!(o.status, 1);
    let o = forkcheck(&["--pid", &pid, "--window", "0", "--fail-on", "never"]);
    assert_eq!(o.status, 0);
}

#[test]
fn grpc_exporter_from_the_master_with_fork_support_off_crash_loops() {
    // docs/failure-modes.md#grpc-fork-crash-loop: workers inherit a gRPC channel whose threads
    // do not exist, and die with SIGSEGV when they use it; gunicorn respawns them.
    let receiver = GrpcReceiver::start(env!("CARGO_BIN_EXE_otel-forkcheck"));
    let url = receiver.url();
    let extra = [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ("GRPC_ENABLE_FORK_SUPPORT", "0"),
        ("FIXTURE_EXPORT_BEFORE_FORK", "1"),
    ];
    let g = Gunicorn::start("current", "preload", 2, &env(&url, &extra));
    // spans from served requests are exported on the inherited channel
    for _ in 0..4 {
        let _ = common::http_get(g.port, "/");
    }
    let o = check(&g, "6s");
    assert_eq!(o.status, 1, "{}", o.stderr);
    let master = g.master_pid as i64;
    let fc105 = o.pids_of("FC105");
    assert_eq!(fc105.len(), 1, "{:?}", o.codes());
    assert_eq!(fc105[0][0], master);
    let evidence = o.findings().find(|f| f["code"] == "FC105").unwrap()["evidence"].to_string();
    assert!(
        evidence.contains("GRPC_ENABLE_FORK_SUPPORT=0"),
        "{evidence}"
    );
    // The crash loop itself comes and goes with timing (some respawned workers live for
    // seconds), so FC107 is held to what was watched: it is reported exactly when at least
    // two workers died in the window (its rule and the churn polling have their own tests).
    let churn = &o.report["churn"];
    let exited = churn["exited"].as_array().unwrap();
    assert!(exited.iter().all(|p| p.as_i64() != Some(master)));
    let want_fc107 = usize::from(exited.len() >= 2);
    assert_eq!(o.pids_of("FC107").len(), want_fc107, "churn {churn}");
}

/// gunicorn with `--max-requests 5` (fixed set-up) under load: workers are recycled every few
/// requests, which `check --pid` took for a crash loop (FC107 "4 workers exited and 4 were
/// started in 5.0 s", a failed check of a healthy server). The report says the recycling and
/// where it was read; a note says what a check cannot tell; no finding.
#[test]
fn max_requests_recycling_under_load_is_no_crash_loop() {
    let collector = Collector::start(0.0);
    let url = collector.url();
    let g = Gunicorn::start_with_args(
        "current",
        "postfork",
        &["--max-requests", "5"],
        2,
        &env(&url, &[]),
    );
    let o = common::while_loaded(g.port, "/", || check(&g, "3s"));
    let r = &o.report;
    assert_eq!(r["root"]["recycling"]["setting"], "max_requests 5", "{r:#}");
    assert_eq!(
        r["root"]["recycling"]["source"],
        "--max-requests on the command line"
    );
    // Recycled in the window: the case is exercised.
    assert!(r["churn"]["exited"].as_array().unwrap().len() >= 2, "{r:#}");
    assert_eq!(o.codes(), Vec::<String>::new(), "{r:#}");
    assert_eq!(o.status, 0, "{}", o.stderr);
    let notes = r["notes"].to_string();
    assert!(
        notes.contains("recycles its workers (max_requests 5"),
        "{notes}"
    );
}

/// `sh -c "<servers>"` in its own group, the shell staying their parent (as a container whose
/// command is a script, or tini); waits until `masters` gunicorn masters have 2 workers each.
fn wrapped(script: &str, masters: usize, collector: &str) -> (common::Group, Vec<i32>) {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script])
        .current_dir(common::root())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    common::strip_env(&mut cmd, &["OTEL_*", "FIXTURE_*", "PYTHONPATH"]);
    cmd.envs(QUIET)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector)
        .env("FIXTURE_EXPORT_BEFORE_FORK", "1");
    let group = common::Group::spawn(&mut cmd);
    let sh = group.pgid;
    let ready = common::wait_until(Duration::from_secs(30), || {
        let m = common::children_of(sh);
        m.len() == masters && m.iter().all(|&p| common::children_of(p).len() == 2)
    });
    assert!(
        ready,
        "the wrapped servers did not start: {:?}",
        common::children_of(sh)
    );
    let mut m = common::children_of(sh);
    m.sort();
    (group, m)
}

fn gunicorn_line(collector_conf: &str) -> String {
    let bin = common::venv("current").join("bin/gunicorn");
    let conf = common::root().join(format!("fixtures/gunicorn/{collector_conf}.conf.py"));
    format!(
        "{} -c {} -b 127.0.0.1:0 -w 2",
        bin.display(),
        conf.display()
    )
}

#[test]
fn a_wrapper_pid_is_checked_through_the_master_below_it() {
    let collector = Collector::start(0.0);
    let (g, masters) = wrapped(
        &format!("{}; true", gunicorn_line("preload")),
        1,
        &collector.url(),
    );
    std::thread::sleep(Duration::from_secs(1));
    let master = masters[0] as i64;
    // Named as the shell, the tree had no master: before, no role, no framework and no
    // finding that needs a master (FC101, FC302; without a collector, verdict pass).
    let o = check_json(g.pgid, "1s");
    assert_eq!(o.status, 1, "{}", o.stderr);
    assert_eq!(o.report["root"]["pid"], master);
    assert_eq!(o.report["root"]["framework"], "gunicorn");
    assert_eq!(o.codes(), vec!["FC103", "FC101", "FC302"]);
    assert_eq!(o.pids_of("FC101"), vec![vec![master]]);
    let note = o.report["notes"][0].as_str().unwrap_or_default();
    assert!(
        note.starts_with(&format!("pid {} (sh -c ", g.pgid))
            && note.contains(&format!("checked its descendant pid {master} ")),
        "{note}"
    );
    // `receive --pid` looks through the wrapper the same way.
    let sh = g.pgid.to_string();
    let r = forkcheck(&[
        "receive",
        "--pid",
        &sh,
        "--http",
        "127.0.0.1:0",
        "--grpc",
        "off",
        "--timeout",
        "1s",
        "--format",
        "json",
    ]);
    assert_eq!(r.report["root"]["pid"], master, "{}", r.stderr);
    let roles: Vec<(i64, &str)> = r.report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["pid"].as_i64().unwrap(), p["role"].as_str().unwrap()))
        .collect();
    let mut want = vec![(master, "master")];
    for w in common::children_of(masters[0]) {
        want.push((w as i64, "worker"));
    }
    let (mut roles, mut want) = (roles, want);
    roles.sort();
    want.sort();
    assert_eq!(roles, want);
    assert!(r.report["notes"][0]
        .as_str()
        .unwrap_or_default()
        .contains("checked its descendant"));
}

#[test]
fn a_wrapper_of_several_servers_is_not_judged_by_one_of_them() {
    let collector = Collector::start(0.0);
    let line = gunicorn_line("postfork");
    let (g, masters) = wrapped(&format!("{line} & {line} & wait"), 2, &collector.url());
    let o = forkcheck(&["--pid", &g.pgid.to_string(), "--window", "0"]);
    assert_eq!(o.status, 2, "{}", o.stderr);
    let first = o.stderr.lines().next().unwrap_or_default();
    for m in &masters {
        assert!(
            first.contains(&format!("{m} (")),
            "{m} not named: {}",
            o.stderr
        );
    }
    assert!(first.contains("check each with --pid"), "{}", o.stderr);
}

#[test]
fn a_worker_pid_is_checked_through_its_master() {
    let collector = Collector::start(0.0);
    let g = preload_exporting(&collector, "current", 2);
    std::thread::sleep(Duration::from_secs(1));
    let worker = g.worker_pids()[0];
    // Named alone, a worker has no children: before, a tree of one, no finding about the master.
    let o = check_json(worker, "0");
    assert_eq!(o.status, 1, "{}", o.stderr);
    let master = g.master_pid as i64;
    assert_eq!(o.report["root"]["pid"], master);
    assert_eq!(o.codes(), vec!["FC103", "FC101", "FC302"]);
    assert_eq!(o.pids_of("FC101"), vec![vec![master]]);
    let note = o.report["notes"][0].as_str().unwrap_or_default();
    assert!(
        note.starts_with(&format!(
            "pid {worker} is a worker of the pre-fork master pid {master} "
        )),
        "{note}"
    );
}
