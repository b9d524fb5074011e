//! `otel-forkcheck --pid` against gunicorn in a container made of namespaces (new pid, network
//! and mount namespaces; gunicorn is pid 1 of its pid namespace; the venv and the app sit at
//! paths the host does not have: `fixtures/containers/sandbox.sh`), run from the host, from
//! inside the container (`nsenter` into its namespaces) and from a sidecar (the container's pid
//! and network namespaces, a filesystem of its own). Each view must give the same diagnosis
//! (docs/failure-modes.md#containers-and-pid-namespaces).
//!
//! Root only (CI runs as root); without root each test says SKIPPED and returns.
mod common;
mod sandbox;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use common::report::Outcome;
use sandbox::{bin, json_outcome, require_root, GunicornBox, BOX};

/// Long intervals, so nothing reconnects or exports while the tree is inspected.
const QUIET: [(&str, &str); 3] = [
    ("OTEL_METRIC_EXPORT_INTERVAL", "30000"),
    ("OTEL_BSP_SCHEDULE_DELAY", "30000"),
    ("OTEL_BLRP_SCHEDULE_DELAY", "30000"),
];

const SDK_THREADS: [&str; 3] = [
    "OtelBatchLogRecordProcessor",
    "OtelBatchSpanRecordProcessor",
    "OtelPeriodicExportingMetricReader",
];

fn preload_box() -> GunicornBox {
    let mut env = QUIET.to_vec();
    env.push(("FIXTURE_EXPORT_BEFORE_FORK", "1"));
    let b = GunicornBox::start("preload", 2, &env);
    assert_eq!(b.workers().len(), 2, "{}", b.log());
    // The import-time exports are done and their connections open before we look.
    std::thread::sleep(Duration::from_secs(1));
    b
}

/// `otel-forkcheck --pid <pid> --window 1s --format json` from the host.
fn from_host(pid: i32) -> Outcome {
    json_outcome(Command::new(bin()).args([
        "--pid",
        &pid.to_string(),
        "--window",
        "1s",
        "--format",
        "json",
    ]))
}

fn sorted(mut v: Vec<i64>) -> Vec<i64> {
    v.sort_unstable();
    v
}

fn processes(o: &Outcome) -> &Vec<Value> {
    o.report["processes"].as_array().unwrap()
}

/// Names of a report process's SDK threads (not `other`), sorted.
fn sdk_thread_names(p: &Value) -> Vec<String> {
    let mut names: Vec<String> = p["threads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] != "other")
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

fn ghosts(p: &Value) -> usize {
    p["python"]["ghost_threads"]
        .as_array()
        .map_or(0, |g| g.len())
}

/// Host pid -> (pid inside the container, its threads' ids inside) from a host report.
fn inner_ids(o: &Outcome) -> BTreeMap<i64, (i64, Vec<i64>)> {
    processes(o)
        .iter()
        .map(|p| {
            let nspid = p["nspid"].as_array().unwrap();
            let mut tids: Vec<i64> = p["threads"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["nstid"].as_i64().expect("nstid"))
                .collect();
            tids.sort_unstable();
            (
                p["pid"].as_i64().unwrap(),
                (nspid.last().unwrap().as_i64().unwrap(), tids),
            )
        })
        .collect()
}

#[test]
fn preload_in_a_container_seen_from_the_host() {
    if !require_root("preload_in_a_container_seen_from_the_host") {
        return;
    }
    let b = preload_box();
    let master = b.master as i64;
    let workers: Vec<i64> = b.workers().iter().map(|&w| w as i64).collect();

    let o = from_host(b.master);
    assert_eq!(o.status, 1, "{}", o.stderr);
    assert_eq!(o.report["root"]["framework"], "gunicorn");
    // The master's three exporter threads are found (named, not ghosts): FC101 names it.
    assert_eq!(o.pids_of("FC101"), vec![vec![master]]);
    let mut holders = workers.clone();
    holders.push(master);
    assert_eq!(o.pids_of("FC103"), vec![sorted(holders)]);
    assert_eq!(o.pids_of("FC302"), vec![vec![master]]);
    assert_eq!(o.codes(), vec!["FC103", "FC101", "FC302"]);

    let m = o.process(b.master);
    assert_eq!(sdk_thread_names(m), SDK_THREADS, "{:#}", m["threads"]);
    for p in processes(&o) {
        let pid = p["pid"].as_i64().unwrap();
        assert_eq!(ghosts(p), 0, "pid {pid}: {:#}", p["python"]);
        // Host pid beside the container's: [host, inside]; the master is 1 inside.
        let nspid: Vec<i64> = p["nspid"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(nspid.len(), 2, "pid {pid}: {nspid:?}");
        assert_eq!(nspid[0], pid);
        if pid == master {
            assert_eq!(nspid[1], 1);
        }
        // Every thread shows its id inside the container; the main thread's is the pid's.
        for t in p["threads"].as_array().unwrap() {
            let nstid = t["nstid"]
                .as_i64()
                .unwrap_or_else(|| panic!("no nstid: {t:#}"));
            if t["tid"] == pid {
                assert_eq!(nstid, nspid[1], "{t:#}");
            }
        }
        // The SDK version comes from the venv at a path only the container has.
        let site = p["python"]["site_packages"].as_str().unwrap_or("");
        assert!(
            site.starts_with(&format!("{BOX}/venv/")),
            "pid {pid}: {site:?}"
        );
        assert!(!Path::new(site).exists(), "{site} exists on the host too");
        assert_eq!(p["python"]["sdk_version"], "1.45.2", "pid {pid}");
    }
    // The config file gunicorn named relative to its own working directory, read in its root.
    let evidence = o.finding("FC302")["evidence"].to_string();
    assert!(
        evidence.contains(&format!("{BOX}/app/gunicorn/preload.conf.py")),
        "{evidence}"
    );
}

#[test]
fn preload_in_a_container_seen_from_inside_and_from_a_sidecar() {
    if !require_root("preload_in_a_container_seen_from_inside_and_from_a_sidecar") {
        return;
    }
    let b = preload_box();
    let host = from_host(b.master);
    let ids = inner_ids(&host);
    let target = b.master.to_string();
    let tool = bin();
    let tool = tool.to_str().unwrap();
    let args = "--pid 1 --window 1s --format json";

    // Inside: the container's pid, network and mount namespaces (its /proc, its /mnt).
    let inside = json_outcome(Command::new("nsenter").args([
        "-t",
        &target,
        "--pid",
        "--net",
        "--mount",
        "--",
        "sh",
        "-c",
        &format!("test -d {BOX}/venv && exec {tool} {args}"),
    ]));
    // A sidecar: the container's pid and network namespaces (Kubernetes
    // shareProcessNamespace, a pod's network), its own filesystem with /proc for that pid
    // namespace, where the container's venv does not exist.
    let sidecar = json_outcome(Command::new("nsenter").args([
        "-t",
        &target,
        "--pid",
        "--net",
        "--",
        "unshare",
        "--mount",
        "--mount-proc",
        "--propagation",
        "private",
        "sh",
        "-c",
        &format!("test ! -e {BOX} && exec {tool} {args}"),
    ]));

    for (view, o) in [("inside", &inside), ("sidecar", &sidecar)] {
        assert_eq!(o.status, host.status, "{view}: {}", o.stderr);
        assert_eq!(o.codes(), host.codes(), "{view}");
        // The same pids, in the container's numbering.
        for code in ["FC101", "FC103", "FC302"] {
            let want: Vec<Vec<i64>> = host
                .pids_of(code)
                .into_iter()
                .map(|ps| sorted(ps.iter().map(|p| ids[p].0).collect()))
                .collect();
            assert_eq!(o.pids_of(code), want, "{view} {code}");
        }
        assert_eq!(processes(o).len(), ids.len(), "{view}");
        for (host_pid, (pid, tids)) in &ids {
            let p = o.process(*pid as i32);
            let hp = host.process(*host_pid as i32);
            assert_eq!(p["nspid"], serde_json::json!([pid]), "{view}");
            assert_eq!(p["role"], hp["role"], "{view} pid {pid}");
            assert_eq!(
                sdk_thread_names(p),
                sdk_thread_names(hp),
                "{view} pid {pid}"
            );
            assert_eq!(ghosts(p), 0, "{view} pid {pid}");
            // Thread ids inside are the host report's nstid; no nested namespace below.
            let mut got: Vec<i64> = p["threads"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    assert!(t.get("nstid").is_none(), "{view}: {t:#}");
                    t["tid"].as_i64().unwrap()
                })
                .collect();
            got.sort_unstable();
            // Threads may come and go between the runs (gunicorn's control-socket thread); the
            // SDK's and the main thread are there in both.
            for t in p["threads"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["kind"] != "other")
            {
                assert!(
                    tids.contains(&t["tid"].as_i64().unwrap()),
                    "{view}: {t:#} not in {tids:?}"
                );
            }
            assert!(got.contains(pid), "{view}: main thread {pid} in {got:?}");
            assert_eq!(p["python"]["sdk_version"], "1.45.2", "{view} pid {pid}");
            assert_eq!(
                p["python"]["site_packages"], hp["python"]["site_packages"],
                "{view}"
            );
        }
    }
}

#[test]
fn post_fork_in_a_container_passes() {
    if !require_root("post_fork_in_a_container_passes") {
        return;
    }
    let b = GunicornBox::start("postfork", 2, &QUIET);
    std::thread::sleep(Duration::from_secs(1));
    let o = from_host(b.master);
    assert_eq!(o.status, 0, "{}\n{:#}", o.stderr, o.report["findings"]);
    assert_eq!(o.report["verdict"], "pass");
    assert_eq!(o.codes(), Vec::<String>::new());
    // The facts behind the pass: each worker runs its own three SDK threads, the master none,
    // and no process lists a ghost.
    let mut seen_workers = 0;
    for p in processes(&o) {
        assert_eq!(ghosts(p), 0, "{:#}", p["python"]);
        match p["role"].as_str().unwrap() {
            "master" => assert!(sdk_thread_names(p).is_empty(), "{:#}", p["threads"]),
            "worker" => {
                seen_workers += 1;
                assert_eq!(sdk_thread_names(p), SDK_THREADS, "{:#}", p["threads"]);
            }
            r => panic!("unexpected role {r}"),
        }
    }
    assert_eq!(seen_workers, 2);
}
