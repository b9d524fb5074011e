//! `otel-forkcheck receive` without `--pid`: roles come from the senders' own /proc entries.
//! A real uWSGI 2.0.31 without fork hooks (fixtures/uwsgi/broken.ini: the SDK set up in the
//! master at import, workers forked in C): the workers' traces arrive, their metrics never do
//! (the metric reader is not re-created), and the uWSGI master runs no Python thread, so it
//! exports nothing. Plain `receive --signals metrics,traces,logs` finds the tree from the
//! senders (the master as a root, though it sent nothing) and reports FC208 for each worker
//! that served, with the roles `receive --pid MASTER` would give, and no FC202.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, live_members, Uwsgi};

#[test]
fn uwsgi_without_fork_hooks_under_plain_receive_is_fc208_per_worker() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let receiver = Command::new(env!("CARGO_BIN_EXE_otel-forkcheck"))
        .args([
            "receive",
            "--http",
            &addr,
            "--grpc",
            "off",
            "--signals",
            "metrics,traces,logs",
            "--timeout",
            "12s",
            "--format",
            "json",
        ])
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start receive");
    let url = format!("http://{addr}");
    assert!(
        common::wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(&addr).is_ok()
        }),
        "receive did not listen on {addr}"
    );
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
        ("OTEL_BSP_SCHEDULE_DELAY", "300"),
        ("OTEL_BLRP_SCHEDULE_DELAY", "300"),
    ];
    let mut u = Uwsgi::start("uwsgi", "broken", 2, &env);
    let workers = u.worker_pids();
    // Both workers serve (one connection per request; the kernel spreads them), again later so
    // their traces keep coming.
    let mut served = Vec::new();
    for _ in 0..4 {
        served.extend(u.hit("/", 8));
        std::thread::sleep(Duration::from_millis(700));
    }
    served.sort_unstable();
    served.dedup();
    let out = receiver
        .wait_with_output()
        .expect("receive ends at its timeout");
    let pgid = u.pgid();
    assert!(
        u.terminate_master(Duration::from_secs(20)),
        "uwsgi left {:?}",
        live_members(pgid)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    common::schema::assert_valid(&report);
    let sent: Vec<String> = report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{} {} {}", p["pid"], p["role"], p["exports"]["signals"]))
        .collect();
    let explain = format!("{:#}\n{sent:#?}", report["findings"]);
    assert_eq!(report["root"]["pid"], 0, "no --pid: no root");
    let role = |pid: i32| -> String {
        report["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == pid)
            .map(|p| p["role"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    assert_eq!(role(u.master_pid), "master");
    for w in &workers {
        assert_eq!(role(*w), "worker", "pid {w}");
    }
    let pids_of = |code: &str| -> Vec<Vec<i64>> {
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["code"] == code)
            .map(|f| {
                f["pids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_i64().unwrap())
                    .collect()
            })
            .collect()
    };
    let mut want: Vec<Vec<i64>> = served.iter().map(|w| vec![*w as i64]).collect();
    want.sort();
    let mut fc208 = pids_of("FC208");
    fc208.sort();
    assert_eq!(fc208, want, "{explain}");
    assert!(pids_of("FC202").is_empty(), "{explain}");
    assert_eq!(out.status.code(), Some(1), "{explain}");
}
