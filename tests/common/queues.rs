//! `otel-forkcheck run` on task queues (tests/queues_e2e.rs, tests/rq_e2e.rs): running the built
//! binary with `--format json` and the user's own long intervals, reading its findings, and a
//! real Redis broker (Debian's `redis-server` on a free port, no persistence, its own process
//! group, ended on drop).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

pub use super::launch::Run;
use super::{free_port, launch, venv, wait_until, Group};

/// The user's own intervals (longer than the run): what is recorded is pending at exit.
pub use super::QUIET as LONG;

impl Run {
    /// Nothing of the server's group nor of any driver's group is left.
    pub fn assert_no_leftovers(&self, report: &Value) {
        let mut groups = vec![report["run"]["launched_pid"].as_i64().unwrap() as i32];
        for d in report["run"]["drivers"].as_array().into_iter().flatten() {
            groups.push(d["pid"].as_i64().unwrap() as i32);
        }
        for g in groups {
            launch::assert_group_gone(g, &self.explain());
        }
    }
}

/// `run --format json <flags> -- <command>` with the user's long intervals and `env`.
pub fn run(flags: &[&str], command: &[String], env: &[(&str, &str)]) -> Run {
    let flags = [&["--format", "json"][..], flags].concat();
    let env = [&[("PYTHONDONTWRITEBYTECODE", "1")][..], &LONG[..], env].concat();
    launch::run(
        &flags,
        command,
        &env,
        &["OTEL_*", "FIXTURE_*", "WEB_CONCURRENCY"],
    )
}

/// (code, pids) of every finding, sorted.
pub fn findings(report: &Value) -> Vec<(String, Vec<i64>)> {
    let mut out: Vec<(String, Vec<i64>)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["code"].as_str().unwrap().to_string(),
                f["pids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_i64().unwrap())
                    .collect(),
            )
        })
        .collect();
    out.sort();
    out
}

/// What a run must find when the master set the SDK up and every child in `ran` lost what it
/// recorded: one FC209 a child, FC101 for the master; sorted as [`findings`] sorts.
pub fn lost_in_children(report: &Value, ran: &BTreeSet<i64>) -> Vec<(String, Vec<i64>)> {
    let master = report["run"]["master"].as_i64().unwrap();
    let mut want: Vec<(String, Vec<i64>)> = ran
        .iter()
        .map(|p| ("FC209".to_string(), vec![*p]))
        .collect();
    want.push(("FC101".to_string(), vec![master]));
    want.sort();
    want
}

pub fn fc209_pids(report: &Value) -> BTreeSet<i64> {
    findings(report)
        .into_iter()
        .filter(|(c, _)| c == "FC209")
        .flat_map(|(_, p)| p)
        .collect()
}

/// The pids a fixture's tasks wrote to its task log (`FIXTURE_TASK_LOG`), one per task run.
pub fn task_pids(log: &std::path::Path) -> BTreeSet<i64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// What every driven run without HTTP must show: the one driver ended by itself with status 0,
/// the framework was recognised, no requests were sent and the stop was graceful.
pub fn assert_driven_run(r: &Run, v: &Value, framework: &str) {
    let d = &v["run"]["drivers"][0];
    assert_eq!(d["exit_code"], 0, "driver: {}", r.explain());
    assert_eq!(d["stopped_by_run"], false);
    assert_eq!(v["root"]["framework"], framework, "{}", r.explain());
    assert_eq!(v["run"]["http"], false);
    assert_eq!(v["run"]["stop"]["graceful"], true, "{}", r.explain());
}

pub fn python(venv_name: &str) -> String {
    venv(venv_name).join("bin/python").display().to_string()
}

/// A redis-server on a free port, no persistence, leading its own process group (ended on drop).
pub struct Redis {
    _group: Group,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Redis {
        let port = free_port();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let group = Group::spawn(&mut cmd);
        let up = wait_until(Duration::from_secs(10), || ping(port));
        assert!(
            up,
            "redis-server did not answer PING on port {port} (is Debian's redis-server installed? \
             .ci/run installs it)"
        );
        Redis {
            _group: group,
            port,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 16];
    s.write_all(b"PING\r\n").is_ok()
        && s.read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
}
