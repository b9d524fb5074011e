//! `run` owns its server whatever happens: a server that daemonizes (`gunicorn --daemon`) is
//! watched, judged and stopped like any other, and a SIGKILLed `otel-forkcheck run` whose
//! server ignores SIGTERM (with workers and a daemonized grandchild) leaves no process.
//!
//! Every process a test starts carries a marker in its environment (inherited by everything
//! below it); the test looks for the marker in `/proc/*/environ` to find what is left, and
//! SIGKILLs what it finds on its way out if an assertion failed, so a failing test cleans up
//! after itself and touches no process it did not start.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{launch, Group};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_otel-forkcheck");
const MARKER_VAR: &str = "OTEL_FORKCHECK_TEST_MARKER";

/// The processes (not zombies) whose environment holds this test's marker.
struct Marked(String);

impl Marked {
    fn new(name: &str) -> Marked {
        Marked(format!(
            "{name}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ))
    }

    fn pids(&self) -> Vec<(i32, String)> {
        let needle = format!("{MARKER_VAR}={}", self.0);
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
            })
            .filter_map(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let state = stat[stat.rfind(')')? + 1..].split_whitespace().next()?;
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
                (state != "Z").then(|| (pid, comm.trim().to_string()))
            })
            .collect()
    }

    fn wait_until(&self, timeout: Duration, done: impl Fn(&[(i32, String)]) -> bool) -> bool {
        common::wait_until(timeout, || done(&self.pids()))
    }
}

impl Drop for Marked {
    fn drop(&mut self) {
        // Only after a failure is anything left: these are processes this test started.
        for (pid, _) in self.pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

#[test]
fn a_daemonizing_server_is_judged_and_stopped() {
    let marked = Marked::new("daemon");
    let venv = common::venv("current");
    let conf = common::root().join("fixtures/gunicorn/postfork.conf.py");
    let gunicorn = venv.join("bin/gunicorn").display().to_string();
    let conf = conf.display().to_string();
    let command = [
        &gunicorn,
        "--daemon",
        "-c",
        &conf,
        "-b",
        "127.0.0.1:0",
        "-w",
        "2",
    ];
    let r = launch::run(
        &["--window", "1s", "--requests", "10", "--format", "json"],
        &command.map(String::from),
        &[(MARKER_VAR, &marked.0), ("PYTHONDONTWRITEBYTECODE", "1")],
        &["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL"],
    );
    let stderr = &r.stderr;
    let report = r.json();
    assert_eq!(r.code(), 0, "{stderr}");
    assert_eq!(report["verdict"], "pass", "{stderr}");
    assert!(stderr.contains("daemonized"), "{stderr}");
    assert_eq!(report["run"]["requests"]["answered"], 10, "{stderr}");
    let left = marked.pids();
    assert!(left.is_empty(), "left behind: {left:?}\n{stderr}");
}

/// A pre-fork "server" that ignores SIGTERM everywhere: a master, two workers, and a
/// grandchild that daemonizes (new session) from the second worker.
const STUBBORN: &str = r#"
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
for i in range(2):
    if os.fork() == 0:
        if i == 1 and os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                while True:
                    time.sleep(1)
            os._exit(0)
        while True:
            time.sleep(1)
while True:
    time.sleep(1)
"#;

#[test]
fn a_sigkilled_run_leaves_no_process() {
    let marked = Marked::new("sigkill");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("stubborn.py");
    std::fs::write(&script, STUBBORN).unwrap();
    let mut tool = Group::spawn(
        Command::new(BIN)
            .args(["run", "--startup-timeout", "120s", "--"])
            .arg("python3")
            .arg(&script)
            .env(MARKER_VAR, &marked.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    // The tool, its supervisor, the master, two workers and the daemonized grandchild.
    let ready = marked.wait_until(Duration::from_secs(30), |p| {
        p.iter().filter(|(_, c)| c.starts_with("python")).count() >= 4
    });
    assert!(ready, "the server did not come up: {:?}", marked.pids());
    let before = marked.pids();
    eprintln!("before SIGKILL: {before:?}");
    assert!(
        before.iter().any(|(_, c)| c == "forkcheck-sup"),
        "{before:?}"
    );
    let killed = Instant::now();
    kill(Pid::from_raw(tool.pgid), Signal::SIGKILL).unwrap();
    let _ = tool.child.wait();
    let gone = marked.wait_until(Duration::from_secs(10), |p| p.is_empty());
    eprintln!(
        "everything gone {:.2} s after the SIGKILL",
        killed.elapsed().as_secs_f64()
    );
    assert!(gone, "left behind: {:?}", marked.pids());
}
