//! `otel-forkcheck --pid` end to end on the servers people run besides sync gunicorn (venv
//! `asgi`, fixtures/requirements/asgi.txt): uvicorn and Hypercorn `--workers 2` (spawned
//! workers), Granian (forked workers on Python 3.11), and gunicorn with the
//! `uvicorn_worker.UvicornWorker` and `gevent` worker classes; the real OpenTelemetry SDK
//! 1.45.2, the ASGI fixture `fixtures/asgi/asgi_app.py` and the built binary. Each test asserts
//! the framework, the roles and start methods, the exact codes and pids, and the exit status.
//! Every server runs in its own process group, ended on drop.
mod common;

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::report::{check_json, threads_of_kind, Outcome};
use common::{children_of, free_port, http_get, root, venv, Collector, Group, Gunicorn, QUIET};
use serde_json::Value;

const WORKERS: usize = 2;
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// FC102 and FC108 leave workers younger than 2 s alone (they may still be setting up).
const SETTLE: Duration = Duration::from_millis(2500);

const SDK_KINDS: [&str; 3] = ["metric-reader", "span-processor", "log-processor"];

/// A server started from `fixtures/asgi` with the venv `asgi`, leading its own process group.
struct Server {
    // Fields drop in order: the processes end before their temp dir goes.
    group: Group,
    root: i32,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// `argv[0]` is a program of the venv's bin/ (`python`, `uvicorn`, ...); `{port}` in an
    /// argument becomes a free port. Returns once `WORKERS` children of the root have imported
    /// the app (the fixture prints `APP_IMPORTED pid=N`) and the port answers, plus [`SETTLE`].
    fn start(argv: &[&str], collector: &Collector, env: &[(&str, &str)]) -> Server {
        let s = Server::start_unsettled(argv, collector, env);
        sleep(SETTLE);
        s
    }

    /// [`Server::start`] without the [`SETTLE`]: returns as soon as the workers are up.
    fn start_unsettled(argv: &[&str], collector: &Collector, env: &[(&str, &str)]) -> Server {
        let bin = venv("asgi").join("bin");
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("server.log");
        let log_file = File::create(&log).expect("create server log");
        let port = free_port();
        let args: Vec<String> = argv[1..]
            .iter()
            .map(|a| a.replace("{port}", &port.to_string()))
            .collect();
        let mut cmd = Command::new(bin.join(argv[0]));
        cmd.args(&args)
            .current_dir(root().join("fixtures/asgi"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup log"))
            .stderr(log_file);
        // Only what the test asks for reaches the SDK.
        common::strip_env(&mut cmd, &["OTEL_*", "FIXTURE_*", "PYTHONPATH"]);
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url())
            .envs(QUIET.iter().copied())
            .envs(env.iter().copied());
        let group = Group::spawn(&mut cmd);
        let root_pid = group.pgid;
        let deadline = Instant::now() + START_TIMEOUT;
        let mut s = Server {
            root: root_pid,
            group,
            port,
            log,
            _dir: dir,
        };
        loop {
            let workers = s.workers();
            let text = std::fs::read_to_string(&s.log).unwrap_or_default();
            let imported = workers.len() == WORKERS
                && workers
                    .iter()
                    .all(|w| text.contains(&format!("APP_IMPORTED pid={w}\n")));
            if imported && matches!(http_get(port, "/health"), Ok((200, _))) {
                break;
            }
            if s.group.leader_exited() {
                panic!("{argv:?} exited during start-up:\n{text}");
            }
            if Instant::now() > deadline {
                panic!("{argv:?}: workers {workers:?} not up in {START_TIMEOUT:?}:\n{text}");
            }
            sleep(Duration::from_millis(50));
        }
        s
    }

    /// The root's children that serve: spawned interpreters or forks (not the resource
    /// tracker), sorted.
    fn workers(&self) -> Vec<i32> {
        children_of(self.root)
            .into_iter()
            .filter(|c| !cmdline(*c).contains("resource_tracker"))
            .collect()
    }

    /// The root's multiprocessing resource tracker.
    fn tracker(&self) -> Option<i32> {
        children_of(self.root)
            .into_iter()
            .find(|c| cmdline(*c).contains("multiprocessing.resource_tracker"))
    }

    fn check(&self) -> Outcome {
        let o = check_json(self.root, "1s");
        assert_eq!(o.report["root"]["pid"], self.root);
        o
    }
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn sorted(pids: &[i32]) -> Vec<i64> {
    let mut p: Vec<i64> = pids.iter().map(|&x| x as i64).collect();
    p.sort_unstable();
    p
}

/// One line for the test log: the tree and what was found, so a run shows the exact pids.
fn log_outcome(what: &str, root: i32, workers: &[i32], o: &Outcome) {
    let found: Vec<String> = o
        .findings()
        .map(|f| format!("{} {}", f["code"].as_str().unwrap(), f["pids"]))
        .collect();
    eprintln!(
        "{what}: root {root} ({}), workers {workers:?}, exit {}, findings [{}]",
        o.report["root"]["framework"],
        o.status,
        found.join("; ")
    );
}

fn sdk_kinds(p: &Value) -> Vec<usize> {
    SDK_KINDS
        .iter()
        .map(|k| threads_of_kind(p, k).len())
        .collect()
}

/// The roles every spawn-server tree has: the root a master with no start method, the workers
/// started by `how`, the resource tracker (when there is one) `other` and named by no finding.
fn assert_tree(o: &Outcome, s: &Server, workers: &[i32], how: &str) {
    assert_eq!(o.process(s.root)["role"], "master");
    assert!(o.process(s.root).get("started_by").is_none());
    for &w in workers {
        let p = o.process(w);
        assert_eq!(p["role"], "worker", "pid {w}");
        assert_eq!(p["started_by"], how, "pid {w}");
        assert_eq!(
            p["python"]["names_read"], true,
            "pid {w}: {}",
            p["python"]["names_error"]
        );
    }
    if let Some(t) = s.tracker() {
        let p = o.process(t);
        assert_eq!(p["role"], "other", "resource tracker {t}");
        assert!(p.get("started_by").is_none());
        assert_eq!(p["findings"], Value::Array(vec![]), "resource tracker {t}");
        assert!(o
            .findings()
            .all(|f| !f["pids"].as_array().unwrap().contains(&Value::from(t))));
    }
}

#[test]
fn uvicorn_launcher_with_the_sdk_under_main_is_fc108_for_exactly_the_workers() {
    let collector = Collector::start(0.0);
    let s = Server::start(
        &["python", "serve.py", "--port", "{port}", "--workers", "2"],
        &collector,
        &[],
    );
    let workers = s.workers();
    assert_eq!(workers.len(), WORKERS);
    assert!(s.tracker().is_some(), "uvicorn starts a resource tracker");
    for _ in 0..4 {
        let _ = http_get(s.port, "/");
    }

    let o = s.check();
    log_outcome("uvicorn launcher, SDK under __main__", s.root, &workers, &o);
    assert_eq!(o.status, 1, "{}", o.stderr);
    assert_eq!(o.report["verdict"], "fail");
    assert_eq!(o.report["root"]["framework"], "uvicorn");
    assert_tree(&o, &s, &workers, "spawn");
    // No fork finding where nothing forked: FC108 alone, naming exactly the two workers.
    assert_eq!(o.codes(), vec!["FC108"], "{:#}", o.report["findings"]);
    assert_eq!(o.pids_of("FC108"), vec![sorted(&workers)]);
    let fix = o.finding("FC108")["fix"].as_str().unwrap().to_string();
    assert!(fix.contains("lifespan"), "{fix}");
    assert!(
        !fix.contains("initializer") && !fix.contains("post_fork"),
        "{fix}"
    );
    // The facts behind it: the parent runs the three SDK threads, the workers none.
    assert_eq!(sdk_kinds(o.process(s.root)), vec![1, 1, 1]);
    for &w in &workers {
        assert_eq!(sdk_kinds(o.process(w)), vec![0, 0, 0], "worker {w}");
    }
    // Where the framework was read: the launcher's imports.
    let notes = o.report["notes"].to_string();
    assert!(
        notes.contains("framework uvicorn: the root runs"),
        "{notes}"
    );
    assert!(notes.contains("serve.py"), "{notes}");
}

/// The same launcher checked with `--window 0` the moment its workers are up: they are too
/// young to judge (FC108 waits 2 s), and the check passed with no finding. It now waits until
/// they have been up 2 s, says so in a note, and finds FC108 for exactly the workers.
#[test]
fn a_tree_checked_right_after_it_started_is_judged_after_a_wait() {
    let collector = Collector::start(0.0);
    let s = Server::start_unsettled(
        &["python", "serve.py", "--port", "{port}", "--workers", "2"],
        &collector,
        &[],
    );
    let workers = s.workers();
    let youngest_ms = workers.iter().map(|w| common::age_ms(*w)).min().unwrap();
    let o = check_json(s.root, "0");
    log_outcome("uvicorn launcher, checked at once", s.root, &workers, &o);
    // The case is exercised: a worker was younger than 2 s when the check started.
    assert!(youngest_ms < 2000, "youngest worker {youngest_ms} ms old");
    assert_eq!(o.codes(), vec!["FC108"], "{:#}", o.report);
    assert_eq!(o.pids_of("FC108"), vec![sorted(&workers)]);
    assert_eq!(o.status, 1, "{}", o.stderr);
    let notes = o.report["notes"].to_string();
    assert!(
        notes.contains("before the first sample: a child of pid"),
        "{notes}"
    );
}

/// A server whose workers set the SDK up themselves, so `check` passes.
struct Passing<'a> {
    what: &'a str,
    argv: &'a [&'a str],
    env: &'a [(&'a str, &'a str)],
    framework: &'a str,
    /// How the workers were started (`spawn`, `fork`).
    started_by: &'a str,
    /// The server is known to start a resource tracker.
    tracker: bool,
    /// The SDK threads of each kind the root runs, where known.
    root_sdk: Option<[usize; 3]>,
}

/// Starts `c`'s server and asserts exit 0 with no finding, the framework and the tree, and the
/// three SDK threads in every worker.
fn assert_passes(c: Passing) {
    let collector = Collector::start(0.0);
    let s = Server::start(c.argv, &collector, c.env);
    let workers = s.workers();
    if c.tracker {
        assert!(
            s.tracker().is_some(),
            "{} starts a resource tracker",
            c.what
        );
    }

    let o = s.check();
    log_outcome(c.what, s.root, &workers, &o);
    assert_eq!(o.status, 0, "{}", o.stderr);
    assert_eq!(o.report["verdict"], "pass");
    o.assert_no_findings();
    assert_eq!(o.report["root"]["framework"], c.framework);
    assert_tree(&o, &s, &workers, c.started_by);
    if let Some(want) = c.root_sdk {
        assert_eq!(sdk_kinds(o.process(s.root)), want);
    }
    for &w in &workers {
        assert_eq!(sdk_kinds(o.process(w)), vec![1, 1, 1], "worker {w}");
    }
}

#[test]
fn uvicorn_workers_with_the_sdk_at_import_pass() {
    assert_passes(Passing {
        what: "uvicorn CLI, SDK at import",
        argv: &[
            "uvicorn",
            "asgi_app:app",
            "--workers",
            "2",
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
        ],
        env: &[],
        framework: "uvicorn",
        started_by: "spawn",
        tracker: true,
        root_sdk: Some([0, 0, 0]),
    });
}

#[test]
fn hypercorn_workers_with_the_sdk_in_the_lifespan_startup_pass() {
    assert_passes(Passing {
        what: "hypercorn, SDK in lifespan",
        argv: &[
            "hypercorn",
            "asgi_app:app",
            "--workers",
            "2",
            "--bind",
            "127.0.0.1:{port}",
        ],
        env: &[("FIXTURE_SETUP", "lifespan")],
        framework: "hypercorn",
        started_by: "spawn",
        tracker: false,
        root_sdk: None,
    });
}

#[test]
fn granian_workers_are_forks_and_pass_with_the_sdk_at_import() {
    assert_passes(Passing {
        what: "granian, SDK at import",
        argv: &[
            "granian",
            "--interface",
            "asgi",
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--workers",
            "2",
            "asgi_app:app",
        ],
        env: &[],
        framework: "granian",
        // Python 3.11: multiprocessing's default start method, fork (Granian keeps it).
        started_by: "fork",
        tracker: false,
        root_sdk: Some([0, 0, 0]),
    });
}

/// gunicorn `--preload` with the SDK set up at import and an export before fork, under worker
/// class `class`: the same findings as sync workers (FC103 FC101 FC302), the class reported.
fn preloaded_gunicorn_is_judged_as_sync(conf: &str, class: &str, kind: &str) {
    let collector = Collector::start(0.0);
    let url = collector.url();
    let mut env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str())];
    env.extend_from_slice(&QUIET);
    env.push(("FIXTURE_EXPORT_BEFORE_FORK", "1"));
    let g = Gunicorn::start_with_args("asgi", conf, &["-k", class], WORKERS, &env);
    let workers = g.worker_pids();
    assert_eq!(workers.len(), WORKERS);
    sleep(Duration::from_secs(1));

    let o = check_json(g.master_pid, "1s");
    log_outcome(
        &format!("gunicorn --preload -k {class}"),
        g.master_pid,
        &g.worker_pids(),
        &o,
    );
    assert_eq!(o.status, 1, "{}", o.stderr);
    assert_eq!(o.report["root"]["framework"], "gunicorn");
    let wc = &o.report["root"]["worker_class"];
    assert_eq!(wc["name"], class, "{wc}");
    assert_eq!(wc["kind"], kind, "{wc}");
    assert_eq!(wc["source"], "-k on the command line", "{wc}");
    let master = g.master_pid as i64;
    assert_eq!(o.pids_of("FC101"), vec![vec![master]]);
    let mut holders = workers.clone();
    holders.push(g.master_pid);
    assert_eq!(o.pids_of("FC103"), vec![sorted(&holders)]);
    assert_eq!(o.pids_of("FC302"), vec![vec![master]]);
    assert_eq!(o.codes(), vec!["FC103", "FC101", "FC302"]);
    for &w in &workers {
        assert_eq!(o.process(w)["started_by"], "fork", "worker {w}");
        // At-fork hooks ran before any patching: real OS threads in every worker.
        assert_eq!(sdk_kinds(o.process(w)), vec![1, 1, 1], "worker {w}");
    }
}

#[test]
fn gunicorn_uvicorn_worker_with_preload_is_fc101_and_fc103_as_for_sync() {
    preloaded_gunicorn_is_judged_as_sync("asgi_preload", "uvicorn_worker.UvicornWorker", "uvicorn");
}

#[test]
fn gunicorn_gevent_with_preload_is_fc101_and_fc103_as_for_sync() {
    preloaded_gunicorn_is_judged_as_sync("preload", "gevent", "gevent");
}

#[test]
fn gunicorn_gevent_with_post_fork_passes_with_os_exporter_threads() {
    let collector = Collector::start(0.0);
    let url = collector.url();
    let mut env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str())];
    env.extend_from_slice(&QUIET);
    let g = Gunicorn::start_with_args("asgi", "postfork", &["-k", "gevent"], WORKERS, &env);
    g.hit("/", 4);
    sleep(Duration::from_secs(2));

    let o = check_json(g.master_pid, "1s");
    log_outcome(
        "gunicorn -k gevent post_fork",
        g.master_pid,
        &g.worker_pids(),
        &o,
    );
    o.assert_clean();
    assert_eq!(o.report["root"]["worker_class"]["kind"], "gevent");
    assert_eq!(sdk_kinds(o.process(g.master_pid)), vec![0, 0, 0]);
    // post_fork runs before gevent patches the standard library: three OS threads per worker.
    for w in g.worker_pids() {
        assert_eq!(sdk_kinds(o.process(w)), vec![1, 1, 1], "worker {w}");
    }
}

/// uvicorn `--limit-max-requests` and Hypercorn `--max-requests` under load: each worker leaves
/// after a few requests and the supervisor starts another, which `check --pid` took for a crash
/// loop (FC107 "2 workers exited and 2 were started in 4.0 s" for uvicorn, 5 for Hypercorn: a
/// failed check of a healthy server). The report names the recycling; no finding.
#[test]
fn recycling_after_max_requests_under_load_is_no_crash_loop() {
    let collector = Collector::start(0.0);
    for (argv, env, setting) in [
        (
            &[
                "uvicorn",
                "asgi_app:app",
                "--workers",
                "2",
                "--host",
                "127.0.0.1",
                "--port",
                "{port}",
                "--limit-max-requests",
                "5",
            ][..],
            &[][..],
            "limit_max_requests 5",
        ),
        (
            &[
                "hypercorn",
                "asgi_app:app",
                "--workers",
                "2",
                "--bind",
                "127.0.0.1:{port}",
                "--max-requests",
                "5",
            ],
            &[("FIXTURE_SETUP", "lifespan")],
            "max_requests 5",
        ),
    ] {
        let s = Server::start(argv, &collector, env);
        // uvicorn's supervisor notices a worker that left about a second later, and the pid
        // leaves the children only then (a zombie until reaped): a window of several.
        let o = common::while_loaded(s.port, "/", || check_json(s.root, "8s"));
        let r = &o.report;
        assert_eq!(
            r["root"]["recycling"]["setting"], setting,
            "{argv:?}: {r:#}"
        );
        // Recycled in the window: the case is exercised.
        let exited = r["churn"]["exited"].as_array().unwrap().len();
        let log = std::fs::read_to_string(&s.log).unwrap_or_default();
        assert!(exited >= 2, "{argv:?}: {r:#}\n{log}");
        assert_eq!(o.codes(), Vec::<String>::new(), "{argv:?}: {r:#}");
        assert_eq!(o.status, 0, "{argv:?}: {}", o.stderr);
    }
}

/// The launcher with the SDK under `__main__` (broken: FC108) and `limit_max_requests=3` under
/// load: each spawned worker leaves after three requests, about as soon as it has started, so
/// none is ever up the 2 s FC108 waits for. `check` passed such a tree ("0 worker(s)", exit 0);
/// now it fails with FC306, naming what came and went. Which of FC306 and FC108 it is follows
/// from the ages in the saved snapshot: a worker up 2 s at the end (a start-up slowed down by a
/// busy machine) is judged, and then FC108 names it.
#[test]
fn uvicorn_workers_recycled_faster_than_they_start_are_not_a_pass() {
    let collector = Collector::start(0.0);
    let s = Server::start(
        &[
            "python",
            "serve.py",
            "--port",
            "{port}",
            "--workers",
            "2",
            "--limit-max-requests",
            "3",
        ],
        &collector,
        &[],
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let saved = dir.path().join("snapshot.json");
    let root = s.root.to_string();
    let first = s.workers();
    let o = common::while_loaded(s.port, "/", || {
        // The workers up since the start (old enough to judge) leave after their three
        // requests; the check starts once they have.
        let deadline = Instant::now() + START_TIMEOUT;
        while first.iter().any(|w| running(*w)) {
            assert!(
                Instant::now() < deadline,
                "workers {first:?} never recycled"
            );
            sleep(Duration::from_millis(50));
        }
        // uvicorn's supervisor pings each worker before it reaps and replaces one (up to 5 s
        // for a worker that does not answer): a window long enough to see replacements.
        common::report::forkcheck(&[
            "--pid",
            &root,
            "--window",
            "8s",
            "--format",
            "json",
            "--save-snapshot",
            saved.to_str().unwrap(),
        ])
    });
    let r = &o.report;
    let snap: Value =
        serde_json::from_str(&std::fs::read_to_string(&saved).expect("snapshot saved")).unwrap();
    let end = snap["taken_at_ms"].as_u64().unwrap() + snap["window_ms"].as_u64().unwrap();
    let workers: Vec<(i64, u64)> = snap["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["role"] == "worker")
        .map(|p| {
            let pid = p["pid"].as_i64().unwrap();
            // One gone by the end was last seen at the first sample.
            let seen = match p["gone"] == true {
                true => snap["taken_at_ms"].as_u64().unwrap(),
                false => end,
            };
            (
                pid,
                seen.saturating_sub(p["started_at_ms"].as_u64().unwrap()),
            )
        })
        .collect();
    let spawned: Vec<i64> = r["churn"]["spawned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_i64().unwrap())
        .collect();
    let exited = r["churn"]["exited"].as_array().unwrap().len();
    let log = std::fs::read_to_string(&s.log).unwrap_or_default();
    eprintln!(
        "workers at the end (pid, age ms): {workers:?}; started {spawned:?}; exited {exited}"
    );
    // Recycled during the window: the case is exercised (how many were replaced in it
    // depends on uvicorn's supervisor, which reaps after its pings).
    assert!(exited >= 1, "{r:#}\n{log}");
    assert_eq!(r["root"]["framework"], "uvicorn");
    assert_eq!(o.status, 1, "{r:#}\n{}", o.stderr);
    assert_eq!(r["verdict"], "fail");
    let old: Vec<i64> = workers
        .iter()
        .filter(|(_, age)| *age >= 2000)
        .map(|(pid, _)| *pid)
        .collect();
    if old.is_empty() {
        assert_eq!(o.codes(), vec!["FC306"], "{r:#}");
        let named = &o.pids_of("FC306")[0];
        for pid in workers.iter().map(|(p, _)| p).chain(&spawned) {
            assert!(named.contains(pid), "FC306 {named:?} lacks {pid}: {r:#}");
        }
        let f = o.finding("FC306");
        assert!(
            f["title"]
                .as_str()
                .unwrap()
                .contains("no worker was up 2 s"),
            "{f:#}"
        );
        assert!(
            f["fix"].as_str().unwrap().contains("otel-forkcheck run"),
            "{f:#}"
        );
    } else {
        assert_eq!(o.codes(), vec!["FC108"], "{r:#}");
        assert_eq!(o.pids_of("FC108"), vec![old], "{r:#}");
    }
}

/// Alive and not yet exited: a zombie (exited, not reaped) is not running.
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| otel_forkcheck::proc::task::parse_cpu_exit(&s))
        .is_some_and(|s| s.state != 'Z')
}
