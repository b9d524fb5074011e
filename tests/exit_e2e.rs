//! FC210 and FC304 end to end with the built binary, real servers and the real SDK 1.45.2:
//! uWSGI 2.0.31 workers that block at exit under `run` (SIGKILLed by uWSGI after its 3 s
//! `worker-reload-mercy`) and the same with `lazy-apps` (they leave in time); gunicorn 27 with
//! the SDK set up both at import (preloaded) and in `post_fork`, whose second set-up the API
//! refuses (`check` and `run`). Runs are serialised: exit times are what is measured.

mod common;

use std::process::Output;
use std::sync::Mutex;

use common::report::{check_json, findings_with, sorted_ints};
use common::{free_port, launch, live_members, Collector, Gunicorn};
use serde_json::Value;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// `otel-forkcheck run <flags> --format json -- <command>`, the test's own OTEL_*, FIXTURE_*
/// and UWSGI_* variables removed; nothing of the launched group may be left.
fn run(flags: &[&str], command: &[String]) -> (Output, Value, String) {
    let flags = [flags, &["--format", "json"][..]].concat();
    let r = launch::run(&flags, command, &[], &["OTEL_*", "FIXTURE_*", "UWSGI_*"]);
    let report = r.json();
    if let Some(pgid) = r.launched() {
        assert_eq!(
            live_members(pgid),
            Vec::<i32>::new(),
            "left over: {}",
            r.stderr
        );
    }
    (r.out, report, r.stderr)
}

fn uwsgi(ini: &str) -> Vec<String> {
    vec![
        common::venv("uwsgi")
            .join("bin/uwsgi")
            .display()
            .to_string(),
        "--set-ph".into(),
        format!("port={}", free_port()),
        "--ini".into(),
        format!("fixtures/uwsgi/{ini}.ini"),
    ]
}

/// (pid, after_ms, exit_signal) of each worker exit `run` timed.
fn exits(report: &Value) -> Vec<(i64, u64, Option<i64>)> {
    report["run"]["stop"]["exits"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["pid"].as_i64().unwrap(),
                        e["after_ms"].as_u64().unwrap(),
                        e["exit_signal"].as_i64(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn uwsgi_workers_blocked_at_exit_are_fc210_with_their_exit_times() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (out, report, stderr) = run(
        &["--workers", "2", "--requests", "10", "--window", "2s"],
        &uwsgi("broken"),
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(report["root"]["framework"], "uwsgi");
    assert_eq!(report["root"]["graceful_timeout"]["ms"], 3000, "{stderr}");
    let workers = sorted_ints(&report["run"]["workers_at_start"]);
    assert_eq!(workers.len(), 2, "{stderr}");
    let fc210 = findings_with(&report, "FC210");
    assert_eq!(fc210.len(), 1, "{:#}\n{stderr}", report["findings"]);
    assert_eq!(sorted_ints(&fc210[0]["pids"]), workers);
    // Both were timed, and neither left before uWSGI's 3 s mercy ran out (with 250 ms of
    // slack for the 50 ms polling); uWSGI's own words are quoted.
    let timed = exits(&report);
    assert_eq!(
        timed.iter().map(|e| e.0).collect::<Vec<_>>(),
        workers,
        "{timed:?}"
    );
    for (pid, after_ms, _) in &timed {
        assert!(
            (2_750..35_000).contains(after_ms),
            "pid {pid} left {after_ms} ms after SIGTERM"
        );
        let line = format!(
            "pid {pid} left {:.2} s after SIGTERM",
            *after_ms as f64 / 1000.0
        );
        assert!(
            fc210[0]["evidence"].to_string().contains(&line),
            "{line}: {:#}",
            fc210[0]["evidence"]
        );
    }
    assert!(
        fc210[0]["evidence"].to_string().contains("NO MERCY"),
        "{:#}",
        fc210[0]["evidence"]
    );
    assert!(
        report["run"]["stop"]["graceful"].as_bool().unwrap(),
        "{stderr}"
    );
}

#[test]
fn uwsgi_lazy_apps_workers_leave_in_time() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (_out, report, stderr) = run(
        &["--workers", "2", "--requests", "10", "--window", "2s"],
        &uwsgi("lazy"),
    );
    assert_eq!(
        findings_with(&report, "FC210").len(),
        0,
        "{:#}",
        report["findings"]
    );
    let timed = exits(&report);
    assert_eq!(timed.len(), 2, "{stderr}");
    for (pid, after_ms, signal) in &timed {
        assert!(*after_ms < 2_750, "pid {pid} took {after_ms} ms");
        assert_ne!(*signal, Some(9), "pid {pid} was killed");
    }
}

/// SDK 1.45.2 set up at import (preloaded, so in the master) and again in post_fork.
const REFUSED_CONF: &str = "preload_and_postfork";

#[test]
fn a_second_set_up_in_post_fork_is_fc304_for_check() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let collector = Collector::start(0.0);
    let url = collector.url();
    let g = Gunicorn::start(
        "current",
        REFUSED_CONF,
        2,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "30000"),
        ],
    );
    let mut want: Vec<i64> = g.worker_pids().iter().map(|&p| p as i64).collect();
    want.push(g.master_pid as i64);
    want.sort();
    let o = check_json(g.master_pid, "1s");
    assert_eq!(
        o.code_set(),
        vec!["FC101", "FC302", "FC304"],
        "{:#}",
        o.report["findings"]
    );
    assert_eq!(o.pids_of("FC304"), vec![want]);
    let ev = o.finding("FC304")["evidence"].to_string();
    assert!(
        ev.contains("metric reader: 1 in the master, 2 running"),
        "{ev}"
    );
    assert!(
        g.log_tail(40)
            .contains("Overriding of current MeterProvider is not allowed"),
        "{}",
        g.log_tail(40)
    );
}

#[test]
fn a_second_set_up_in_post_fork_is_fc304_for_run_with_the_sdks_words() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let conf = common::root().join(format!("fixtures/gunicorn/{REFUSED_CONF}.conf.py"));
    let cmd = vec![
        common::venv("current")
            .join("bin/gunicorn")
            .display()
            .to_string(),
        "-c".into(),
        conf.display().to_string(),
        "-b".into(),
        "127.0.0.1:0".into(),
        "-w".into(),
        "2".into(),
    ];
    let (_out, report, stderr) = run(&["--requests", "10", "--window", "1s"], &cmd);
    let fc304 = findings_with(&report, "FC304");
    assert_eq!(fc304.len(), 1, "{:#}\n{stderr}", report["findings"]);
    let mut want = sorted_ints(&report["run"]["workers_at_start"]);
    want.push(report["run"]["master"].as_i64().unwrap());
    want.sort();
    assert_eq!(sorted_ints(&fc304[0]["pids"]), want);
    assert!(
        fc304[0]["evidence"]
            .to_string()
            .contains("Overriding of current"),
        "{:#}",
        fc304[0]["evidence"]
    );
    // gunicorn's workers left promptly: no FC210.
    assert_eq!(
        findings_with(&report, "FC210").len(),
        0,
        "{:#}",
        report["findings"]
    );
}
