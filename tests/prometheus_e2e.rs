//! FC109 end to end: real gunicorn 27 (2 sync workers) with a real Prometheus pull exporter
//! (OpenTelemetry's PrometheusMetricReader served by prometheus_client's start_http_server, or
//! prometheus_client's multiprocess mode) from venv `prometheus`, inspected by the built binary
//! (`check`, and `run` for the broken case). Each test also scrapes the exporter, so what the
//! finding says (or that nothing is wrong) is what a Prometheus server would see.

mod common;

use std::time::Duration;

use common::report::{check_json, findings_with, sorted_ints, Outcome};
use common::{free_port, http_get, launch, live_members, Gunicorn};
use serde_json::Value;

const VENV: &str = "prometheus";
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
const REQUESTS: usize = 8;

/// `fixture_requests_total` in a scrape of 127.0.0.1:port (0 when the series is absent).
fn scraped_requests(port: u16) -> f64 {
    let (status, body) = http_get(port, "/metrics").expect("scrape");
    assert_eq!(status, 200, "scrape of port {port}: {body}");
    body.lines()
        .filter(|l| l.starts_with("fixture_requests_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The listening sockets of `pid` in the report: (port, holders, polled_by).
fn listeners(o: &Outcome, pid: i32) -> Vec<(u16, Vec<i64>, Vec<i64>)> {
    let ints = |v: &Value| -> Vec<i64> {
        v.as_array()
            .map(|a| a.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default()
    };
    o.process(pid)["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "LISTEN")
        .map(|s| {
            let port = s["local"].as_str().unwrap().rsplit(':').next().unwrap();
            (
                port.parse().unwrap(),
                ints(&s["shared_with"]),
                ints(&s["polled_by"]),
            )
        })
        .collect()
}

fn stop(mut g: Gunicorn) {
    let pgid = g.pgid();
    assert!(g.terminate_master(STOP_TIMEOUT), "{}", g.log_tail(20));
    drop(g);
    assert_eq!(live_members(pgid), Vec::<i32>::new());
}

#[test]
fn exporter_set_up_before_fork_is_fc109_naming_every_holder() {
    let prom_port = free_port();
    let port_s = prom_port.to_string();
    let g = Gunicorn::start(VENV, "prometheus_preload", 2, &[("PROM_PORT", &port_s)]);
    let workers = g.worker_pids();
    let served = g.hit("/", REQUESTS);
    assert!(served.iter().all(|p| workers.contains(p)), "{served:?}");

    let o = check_json(g.master_pid, "1s");
    assert_eq!(o.status, 1, "{}", o.stderr);
    assert_eq!(o.code_set(), vec!["FC109"], "{:#}", o.report["findings"]);
    let mut holders: Vec<i64> = workers.iter().map(|&w| w as i64).collect();
    holders.push(g.master_pid as i64);
    holders.sort();
    assert_eq!(o.pids_of("FC109"), vec![holders.clone()]);
    let f = o.finding("FC109");
    let title = f["title"].as_str().unwrap();
    assert!(title.contains(&format!("port {prom_port}")), "{title}");
    assert!(
        title.contains(&format!("master (pid {}) alone", g.master_pid)),
        "{title}"
    );
    // The exporter's listener is answered by one thread of the master, and by no worker;
    // gunicorn's own listener (held by all three too) by no thread the check recognises.
    let master_l = listeners(&o, g.master_pid);
    let prom = master_l
        .iter()
        .find(|l| l.0 == prom_port)
        .expect("listener");
    assert_eq!(prom.1, holders);
    assert_eq!(prom.2.len(), 1, "{master_l:?}");
    let app = master_l
        .iter()
        .find(|l| l.0 == g.port)
        .expect("app listener");
    assert!(app.2.is_empty(), "{master_l:?}");
    let serving = o.process(g.master_pid)["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tid"] == prom.2[0])
        .expect("serving thread");
    assert!(
        serving["name"].as_str().unwrap().contains("serve_forever"),
        "{serving}"
    );
    for &w in &workers {
        let l = listeners(&o, w);
        assert!(l.iter().all(|x| x.2.is_empty()), "worker {w}: {l:?}");
    }
    assert_eq!(
        o.process(g.master_pid)["prometheus"]["client_version"],
        "0.26.0"
    );
    // What the finding says: the scrape reads the master's registry, without the requests.
    assert_eq!(scraped_requests(prom_port), 0.0);
    stop(g);
}

#[test]
fn exporter_per_worker_after_fork_passes_and_counts_every_request() {
    let g = Gunicorn::start(VENV, "prometheus_postfork", 2, &[("PROM_PORT", "0")]);
    let workers = g.worker_pids();
    // Each worker binds its own port in post_fork: wait until both answer a listener.
    let mut o = check_json(g.master_pid, "0");
    for _ in 0..50 {
        let ready = workers
            .iter()
            .all(|&w| listeners(&o, w).iter().any(|l| !l.2.is_empty()));
        if ready {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        o = check_json(g.master_pid, "0");
    }
    let served = g.hit("/", REQUESTS);
    std::thread::sleep(Duration::from_millis(2100));
    let o2 = check_json(g.master_pid, "0");
    o2.assert_clean();
    let mut total = 0.0;
    for &w in &workers {
        let own: Vec<_> = listeners(&o2, w)
            .into_iter()
            .filter(|l| l.1 == vec![w as i64] && !l.2.is_empty())
            .collect();
        assert_eq!(own.len(), 1, "worker {w}: {:?}", listeners(&o2, w));
        total += scraped_requests(own[0].0);
    }
    assert_eq!(total, served.len() as f64);
    stop(g);
}

#[test]
fn multiprocess_mode_passes_and_the_master_counts_every_worker() {
    let dir = tempfile::tempdir().unwrap();
    let prom_port = free_port();
    let port_s = prom_port.to_string();
    let dir_s = dir.path().display().to_string();
    let g = Gunicorn::start(
        VENV,
        "prometheus_multiproc",
        2,
        &[("PROM_PORT", &port_s), ("PROMETHEUS_MULTIPROC_DIR", &dir_s)],
    );
    let served = g.hit("/", REQUESTS);
    let o = check_json(g.master_pid, "1s");
    o.assert_clean();
    // The same shape as the broken case (the master answers a listener its workers hold)...
    let l = listeners(&o, g.master_pid);
    let prom = l.iter().find(|x| x.0 == prom_port).expect("listener");
    assert_eq!(prom.1.len(), 3, "{l:?}");
    assert_eq!(prom.2.len(), 1, "{l:?}");
    assert_eq!(
        o.process(g.master_pid)["prometheus"]["multiproc_dir"],
        dir_s.as_str()
    );
    // ...but its registry reads every worker's files.
    assert_eq!(scraped_requests(prom_port), served.len() as f64);
    stop(g);
}

/// `run` sees it too, and sends its requests to gunicorn's port, not the exporter's (which the
/// master opened first).
#[test]
fn run_reports_fc109_and_hits_the_application_port() {
    let prom_port = free_port();
    let bin = common::venv(VENV).join("bin");
    let conf = common::root().join("fixtures/gunicorn/prometheus_preload.conf.py");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let gunicorn = bin.join("gunicorn").display().to_string();
    let conf = conf.display().to_string();
    let command = [&gunicorn, "-c", &conf, "-b", "127.0.0.1:0", "-w", "2"].map(String::from);
    let r = launch::run(
        &[
            "--requests",
            "6",
            "--window",
            "1s",
            "--format",
            "json",
            "--signals",
            "metrics",
        ],
        &command,
        &[("PROM_PORT", &prom_port.to_string()), ("PATH", &path)],
        &[],
    );
    let stderr = &r.stderr;
    let report = r.json();
    let fc109 = findings_with(&report, "FC109");
    assert_eq!(fc109.len(), 1, "{:#}\n{stderr}", report["findings"]);
    let master = report["run"]["master"].as_i64().unwrap();
    let mut want = sorted_ints(&report["run"]["workers_at_start"]);
    want.push(master);
    want.sort();
    assert_eq!(fc109[0]["pids"], serde_json::json!(want));
    let targets = report["run"]["targets"].to_string();
    assert!(
        !targets.contains(&format!(":{prom_port}/")),
        "run sent requests to the exporter's port {prom_port}: {targets}"
    );
    assert_eq!(report["run"]["requests"]["answered"], 6, "{stderr}");
    assert_eq!(report["run"]["requests"]["attributed"], 6, "{stderr}");
}
