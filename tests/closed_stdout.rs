//! A reader that goes away (`| true`, `| head -1`) ends every command quietly, with the exit
//! status its findings give (never 101), after stopping whatever it started. Each command runs
//! as the built binary with stdout a pipe whose read end is closed before it writes (or after
//! the first line).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::Group;

const BIN: &str = env!("CARGO_BIN_EXE_otel-forkcheck");

fn snapshot(name: &str) -> String {
    common::root()
        .join("fixtures/snapshots")
        .join(name)
        .display()
        .to_string()
}

/// Waits for `child` (at most `limit`).
fn wait(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let until = Instant::now() + limit;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() > until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

/// `args` with stdout to /dev/null: the status to expect.
fn status_with_devnull(args: &[&str]) -> i32 {
    Command::new(BIN)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .code()
        .unwrap()
}

/// `args` with stdout a pipe nobody reads from (closed before the command writes).
fn closed_stdout(args: &[&str]) -> (Option<i32>, String) {
    let mut g = Group::spawn(
        Command::new(BIN)
            .args(args)
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    drop(g.child.stdout.take());
    let st = wait(&mut g.child, Duration::from_secs(60)).expect("ended");
    (st.code(), stderr_of(&mut g.child))
}

#[test]
fn check_with_a_closed_stdout_keeps_its_status_and_says_nothing() {
    for snap in ["postfork.json", "preload-http.json"] {
        let path = snapshot(snap);
        for format in ["json", "human"] {
            let args = ["check", "--snapshot", &path, "--format", format];
            let want = status_with_devnull(&args);
            assert!(want == 0 || want == 1, "{snap}: {want}");
            let (code, stderr) = closed_stdout(&args);
            assert_eq!(code, Some(want), "{snap} {format}: {stderr}");
            assert_eq!(stderr, "", "{snap} {format}");
        }
    }
}

#[test]
fn explain_with_a_closed_stdout_is_quiet() {
    let (code, stderr) = closed_stdout(&["explain"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stderr, "");
}

/// `receive` with stdout piped; its OTLP/HTTP address.
fn receive(format: &str, timeout: &str) -> (Group, String) {
    let mut g = Group::spawn(
        Command::new(BIN)
            .args(["receive", "--http", "127.0.0.1:0", "--grpc", "off"])
            .args(["--timeout", timeout, "--format", format])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut err = BufReader::new(g.child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .map(|a| a.trim().to_string())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    // Keep stderr readable for the assertions: put it back.
    g.child.stderr = Some(err.into_inner());
    (g, addr)
}

/// One OTLP/HTTP JSON export (an empty request is a valid one).
fn export(addr: &str) {
    let mut s = TcpStream::connect(addr).unwrap();
    let body = br#"{"resourceMetrics":[]}"#;
    write!(
        s,
        "POST /v1/metrics HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

#[test]
fn receive_ndjson_piped_to_head_ends_when_head_does() {
    let (mut g, addr) = receive("ndjson", "120s");
    let mut out = BufReader::new(g.child.stdout.take().unwrap());
    export(&addr);
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.contains("\"event\":\"export\""), "{first}");
    // `head -1` exits.
    drop(out);
    let closed = Instant::now();
    // The next line finds the reader gone.
    export(&addr);
    let st = wait(&mut g.child, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("receive still running 10 s after its reader left"));
    eprintln!(
        "receive ended {:.2} s after its reader left",
        closed.elapsed().as_secs_f64()
    );
    let stderr = stderr_of(&mut g.child);
    assert_eq!(st.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn receive_json_with_a_closed_stdout_keeps_its_status() {
    for format in ["json", "ndjson", "human"] {
        let (mut g, addr) = receive(format, "1s");
        drop(g.child.stdout.take());
        export(&addr);
        let st = wait(&mut g.child, Duration::from_secs(20)).expect("ended");
        let stderr = stderr_of(&mut g.child);
        assert_eq!(st.code(), Some(0), "{format}: {stderr}");
        assert!(!stderr.contains("panicked"), "{format}: {stderr}");
    }
}

#[test]
fn run_with_a_closed_stdout_keeps_its_status_and_leaves_no_process() {
    let venv = common::venv("current");
    let gunicorn = venv.join("bin/gunicorn").display().to_string();
    let conf = common::root()
        .join("fixtures/gunicorn/postfork.conf.py")
        .display()
        .to_string();
    let mut g = Group::spawn(
        Command::new(BIN)
            .args([
                "run",
                "--window",
                "1s",
                "--requests",
                "6",
                "--format",
                "json",
            ])
            .args(["--", &gunicorn, "-c", &conf, "-b", "127.0.0.1:0", "-w", "2"])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    drop(g.child.stdout.take());
    let st = wait(&mut g.child, Duration::from_secs(120)).expect("run ended");
    let stderr = stderr_of(&mut g.child);
    assert_eq!(st.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let launched: i32 = stderr
        .lines()
        .find_map(|l| {
            l.split("` as pid ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no launch line:\n{stderr}"));
    assert!(
        common::live_members(launched).is_empty(),
        "server processes left:\n{stderr}"
    );
}

#[test]
fn output_written_after_a_quiet_spell_reaches_its_reader_whole() {
    // Nothing on stdout for 3 s, then the whole report: the relay must pass all of it on
    // before the process exits.
    let out = Command::new(BIN)
        .args(["receive", "--http", "127.0.0.1:0", "--grpc", "off"])
        .args(["--timeout", "3s", "--format", "json"])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&out.stdout)));
    assert!(v.is_object());
}
