//! The cases of issue 11's test list that the other end-to-end files did not cover, with the
//! built binary, real servers and the real SDK 1.45.2: `run` on a uvicorn launcher with the SDK
//! under `__main__` (FC108 names every signal of the workers, so FC201 and FC209 do not repeat
//! them); `run` on a forkserver pool (the pool's owner is the master, never the forkserver or
//! the resource tracker); gunicorn `-k uvicorn_worker.UvicornWorker` fixed with `post_fork`.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::report::{check_json, sorted_ints, threads_of_kind};
use common::{free_port, launch, live_members, Collector, Gunicorn};
use serde_json::Value;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// `otel-forkcheck run <flags> --format json -- <command>`; the report, checked against the
/// schema, and stderr. Nothing of the server's group may be left.
fn run(flags: &[&str], command: &[String]) -> (Option<i32>, Value, String) {
    let flags = [flags, &["--format", "json"][..]].concat();
    let strip = ["OTEL_*", "FIXTURE_*", "WEB_CONCURRENCY"];
    let r = launch::run(&flags, command, &[], &strip);
    let report = r.json();
    let pgid = report["run"]["launched_pid"].as_i64().unwrap() as i32;
    assert_eq!(
        live_members(pgid),
        Vec::<i32>::new(),
        "left over: {}",
        r.stderr
    );
    (r.out.status.code(), report, r.stderr)
}

fn python(venv: &str) -> String {
    common::venv(venv).join("bin/python").display().to_string()
}

#[test]
fn run_on_a_uvicorn_launcher_is_fc108_and_nothing_repeats_it() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let serve = common::root().join("fixtures/asgi/serve.py");
    let cmd = vec![
        python("asgi"),
        serve.display().to_string(),
        "--port".into(),
        free_port().to_string(),
        "--workers".into(),
        "2".into(),
    ];
    let (code, report, stderr) = run(
        &["--workers", "2", "--requests", "20", "--window", "3s"],
        &cmd,
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(report["root"]["framework"], "uvicorn", "{stderr}");
    let workers = sorted_ints(&report["run"]["workers_at_start"]);
    assert_eq!(workers.len(), 2, "{stderr}");
    assert_eq!(report["run"]["master"], report["run"]["launched_pid"]);
    let findings = report["findings"].as_array().unwrap();
    let fc108: Vec<&Value> = findings.iter().filter(|f| f["code"] == "FC108").collect();
    assert_eq!(fc108.len(), 1, "{:#}\n{stderr}", report["findings"]);
    assert_eq!(sorted_ints(&fc108[0]["pids"]), workers);
    // FC108 is the closer cause for every signal of these workers: FC201 and FC209 yield.
    for f in findings {
        if f["code"] == "FC201" || f["code"] == "FC209" {
            let named = sorted_ints(&f["pids"]);
            assert!(
                !named.iter().any(|p| workers.contains(p)),
                "{} repeats FC108 for {named:?}",
                f["code"]
            );
        }
    }
    // Each worker that served requests fails its cells through FC108.
    let mut served = 0;
    for w in report["run"]["workers"].as_array().unwrap() {
        if w["requests_served"].as_u64().unwrap_or(0) == 0 {
            continue;
        }
        served += 1;
        for s in ["metrics", "traces", "logs"] {
            let cell = &w["signals"][s];
            assert_eq!(cell["findings"], serde_json::json!(["FC108"]), "{w:#}");
        }
    }
    assert!(served > 0, "no worker served a request: {stderr}");
}

#[test]
fn run_on_a_forkserver_pool_takes_the_owner_as_master() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let pool = common::root().join("fixtures/multiprocessing/pool.py");
    let cmd = vec![
        python("current"),
        pool.display().to_string(),
        "fixed".into(),
        "--start-method".into(),
        "forkserver".into(),
    ];
    let (_code, report, stderr) = run(&["--workers", "2", "--window", "2s"], &cmd);
    let launched = report["run"]["launched_pid"].as_i64().unwrap();
    assert_eq!(report["run"]["master"], launched, "{stderr}");
    let workers = sorted_ints(&report["run"]["workers_at_start"]);
    assert_eq!(workers.len(), 2, "{stderr}");
    // The workers hang under the forkserver, a child of the owner, and are judged as workers.
    let procs = report["processes"].as_array().unwrap();
    let role = |pid: i64| {
        procs.iter().find(|p| p["pid"] == pid).map(|p| {
            (
                p["role"].clone(),
                p["started_by"].clone(),
                p["ppid"].as_i64(),
            )
        })
    };
    for &w in &workers {
        let (r, by, ppid) = role(w).unwrap_or_else(|| panic!("{w} not in the report"));
        assert_eq!((r, by), ("worker".into(), "forkserver".into()), "{w}");
        let (helper_role, _, helper_parent) = role(ppid.unwrap()).unwrap();
        assert_eq!(helper_role, "other", "the forkserver {ppid:?} is a helper");
        assert_eq!(helper_parent, Some(launched));
    }
    assert_eq!(report["root"]["pid"], launched);
}

#[test]
fn gunicorn_uvicorn_worker_with_post_fork_passes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let collector = Collector::start(0.0);
    let url = collector.url();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "30000"),
        ("OTEL_BSP_SCHEDULE_DELAY", "30000"),
        ("OTEL_BLRP_SCHEDULE_DELAY", "30000"),
    ];
    let class = "uvicorn_worker.UvicornWorker";
    let g = Gunicorn::start_with_args("asgi", "asgi_postfork", &["-k", class], 2, &env);
    g.hit("/", 4);
    std::thread::sleep(Duration::from_secs(1));
    let o = check_json(g.master_pid, "1s");
    o.assert_clean();
    assert_eq!(o.report["root"]["worker_class"]["kind"], "uvicorn");
    for kind in ["metric-reader", "span-processor", "log-processor"] {
        assert_eq!(threads_of_kind(o.process(g.master_pid), kind).len(), 0);
        for w in g.worker_pids() {
            assert_eq!(threads_of_kind(o.process(w), kind).len(), 1, "{w} {kind}");
        }
    }
}
