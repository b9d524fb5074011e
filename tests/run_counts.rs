//! `otel-forkcheck run --expect-count` end to end on real gunicorn (2 sync workers) and the
//! fixture app, whose `fixture.requests` counter counts every request to `/`: the documented
//! set-up adds up to exactly the requests served (per worker too); pre-fork counts make FC211
//! name every worker; no flush at exit with a long interval makes FC212 name the workers that
//! served.
//!
//! Serialised (one gunicorn at a time), like tests/run_gunicorn.rs.

mod common;

use std::sync::Mutex;

use common::launch::{self, Run};
use serde_json::Value;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// `otel-forkcheck run --window 2s --requests 20 --format json <flags> -- gunicorn -c CONF`.
fn run(conf: &str, flags: &[&str], env: &[(&str, &str)]) -> Run {
    let gunicorn = common::venv("current").join("bin/gunicorn");
    let conf = common::root().join("fixtures/gunicorn").join(conf);
    let flags = [
        &["--window", "2s", "--requests", "20", "--format", "json"][..],
        flags,
    ]
    .concat();
    let command = [
        &gunicorn.display().to_string(),
        "-c",
        &conf.display().to_string(),
    ]
    .into_iter()
    .chain(["-b", "127.0.0.1:0", "-w", "2"])
    .map(String::from)
    .collect::<Vec<_>>();
    let env = [&[("PYTHONDONTWRITEBYTECODE", "1")][..], env].concat();
    let strip = [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_METRIC_EXPORT_INTERVAL",
        "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS",
        "FIXTURE_SETUP",
        "WEB_CONCURRENCY",
    ];
    launch::run(&flags, &command, &env, &strip)
}

fn finding<'a>(report: &'a Value, code: &str) -> Option<&'a Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == code)
}

/// (pid, requests served) of each worker of the run.
fn served(report: &Value) -> Vec<(i64, u64)> {
    report["run"]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let pid = w["pid"].as_i64().unwrap();
            (pid, w["requests_served"].as_u64().unwrap_or(0))
        })
        .collect()
}

fn exports(report: &Value, pid: i64) -> &Value {
    let p = report["processes"].as_array().unwrap();
    &p.iter().find(|p| p["pid"] == pid).unwrap()["exports"]
}

#[test]
fn postfork_with_worker_exit_counts_exactly_the_requests_served() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let r = run(
        "postfork.conf.py",
        &["--expect-count", "fixture.requests=served"],
        &[],
    );
    assert_eq!(r.code(), 0, "{}", r.explain());
    let report = r.json();
    assert_eq!(report["verdict"], "pass", "{}", r.explain());
    let c = &report["counts"][0];
    assert_eq!(c["metric"], "fixture.requests");
    assert_eq!(
        (c["expected"].as_u64(), c["total"].as_u64()),
        (Some(20), Some(20))
    );
    assert_eq!(c["met"], true);
    // and per worker: what it counted is what it served
    for (pid, n) in served(&report) {
        let counted = exports(&report, pid)["sums"]["fixture.requests"]
            .as_u64()
            .unwrap_or(0);
        assert_eq!(counted, n, "worker {pid}: {}", r.explain());
    }
}

#[test]
fn preload_with_prefork_counts_is_fc211_naming_every_worker() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // The process detector puts each process's own pid in its resource (re-run after fork
    // since SDK 1.44), so exports on the master's inherited connection are pinned to their
    // senders.
    let r = run(
        "preload.conf.py",
        &["--expect-count", "fixture.requests"],
        &[
            ("FIXTURE_EXPORT_BEFORE_FORK", "1"),
            ("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", "otel,process"),
        ],
    );
    assert_eq!(r.code(), 1, "{}", r.explain());
    let report = r.json();
    let f = finding(&report, "FC211").unwrap_or_else(|| panic!("no FC211: {}", r.explain()));
    let master = report["run"]["master"].as_i64().unwrap();
    let named: Vec<i64> = f["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_i64().unwrap())
        .collect();
    for (w, _) in served(&report) {
        assert!(named.contains(&w), "worker {w} not named: {f:#}");
    }
    assert!(
        named.contains(&master),
        "the master counts its pre-fork 1: {f:#}"
    );
    // 20 served, plus the pre-fork count once from the master and once from each worker
    let c = &report["counts"][0];
    assert_eq!(
        (c["expected"].as_u64(), c["total"].as_u64()),
        (Some(20), Some(23)),
        "{c:#}"
    );
    assert!(finding(&report, "FC212").is_none());
}

#[test]
fn no_flush_at_exit_with_a_long_interval_is_fc212_naming_the_serving_workers() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let r = run(
        "postfork_noflush.conf.py",
        &["--expect-count", "fixture.requests=served"],
        &[("OTEL_METRIC_EXPORT_INTERVAL", "60000")],
    );
    assert_eq!(r.code(), 1, "{}", r.explain());
    let report = r.json();
    let f = finding(&report, "FC212").unwrap_or_else(|| panic!("no FC212: {}", r.explain()));
    let mut serving: Vec<i64> = served(&report)
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(p, _)| p)
        .collect();
    serving.sort_unstable();
    assert_eq!(f["pids"], serde_json::json!(serving), "{f:#}");
    assert!(f["title"]
        .as_str()
        .unwrap()
        .contains("adds up to 0, expected 20: 20 count(s) never arrived"));
}
