//! `receive --pid` under sustained churn: a real master forks many short-lived children, each
//! exporting with the real OpenTelemetry SDK, and the receiver's re-read tree keeps only the
//! latest --keep-exited exited ones, counting the rest (`churn.aged_out`), while every child's
//! export stays counted in the ledger.
//!
//! Needs the `current` venv (built on first use by scripts/setup-venvs.sh).

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::receiver::{lines_of, wait_line, Receiver};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// Children in all, alive at once, and each one's life: long enough for the receiver's
/// once-a-second re-read to see every child alive, and for its attribution (a /proc scan) to
/// find each sender before it exits, even on a machine loaded far beyond its cores.
const CHILDREN: usize = 80;
const AT_ONCE: usize = 16;
const LIFE_SECS: &str = "8";
const KEEP: usize = 12;

/// The next line with `prefix`, within `timeout`; every line read is kept in `seen`.
fn next_line(
    rx: &mpsc::Receiver<String>,
    prefix: &str,
    timeout: Duration,
    seen: &mut Vec<String>,
) -> String {
    wait_line(rx, |l| l.starts_with(prefix), timeout, seen).unwrap_or_else(|| {
        panic!(
            "no line {prefix:?} within {timeout:?}; saw:\n{}",
            seen.join("\n")
        )
    })
}

#[test]
fn exited_children_are_aged_out_of_the_tree_and_counted_while_every_export_counts() {
    let python = common::venv("current").join("bin/python");
    let mut master = common::Group::spawn(
        Command::new(python)
            .arg(common::root().join("fixtures/receive/churn.py"))
            .args([&CHILDREN.to_string(), &AT_ONCE.to_string(), LIFE_SECS])
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let out = lines_of(master.child.stdout.take().unwrap());
    let mut said = Vec::new();
    let first = next_line(&out, "pid ", Duration::from_secs(60), &mut said);
    let master_pid: i32 = first.split_whitespace().nth(1).unwrap().parse().unwrap();

    let Receiver {
        group: mut recv,
        stderr: err,
        url,
        ..
    } = Receiver::start(
        &[
            "--pid",
            &master_pid.to_string(),
            "--keep-exited",
            &KEEP.to_string(),
            "--format",
            "json",
        ],
        Duration::from_secs(30),
    );
    let mut report_text = String::new();
    let mut stdout = recv.child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let _ = stdout.read_to_string(&mut report_text);
        report_text
    });
    let mut stdin = master.child.stdin.take().unwrap();
    writeln!(stdin, "{url}").unwrap();
    drop(stdin);

    let done = next_line(&out, "done", Duration::from_secs(240), &mut said);
    assert_eq!(
        done,
        "done failed=0",
        "a child's export failed:\n{}",
        said.join("\n")
    );
    let children: Vec<i32> = said
        .iter()
        .filter(|l| l.ends_with(" child"))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(children.len(), CHILDREN);
    // Two re-reads after the last exit, then stop it as a user would.
    std::thread::sleep(Duration::from_millis(2500));
    kill(Pid::from_raw(recv.pgid), Signal::SIGTERM).unwrap();
    let status = recv.child.wait().unwrap();
    let text = reader.join().unwrap();
    let report: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        let rest: Vec<String> = err.try_iter().collect();
        panic!(
            "no JSON report ({e}; {status}): {text}\n{}",
            rest.join("\n")
        )
    });
    common::schema::assert_valid(&report);
    assert!(matches!(status.code(), Some(0 | 1)), "{status}");

    let procs = report["processes"].as_array().unwrap();
    let role = |r: &str| -> Vec<i32> {
        procs
            .iter()
            .filter(|p| p["role"] == r)
            .map(|p| p["pid"].as_i64().unwrap() as i32)
            .collect()
    };
    // The tree kept: its root and the KEEP children that exited last; the others counted.
    assert_eq!(report["root"]["pid"], master_pid);
    assert!(procs.iter().any(|p| p["pid"] == master_pid));
    let kept = role("worker");
    assert_eq!(kept.len(), KEEP, "{kept:?}");
    assert_eq!(
        report["churn"]["aged_out"].as_u64(),
        Some((CHILDREN - KEEP) as u64),
        "{}",
        report["churn"]
    );
    let last: BTreeSet<i32> = children[CHILDREN - AT_ONCE - KEEP..]
        .iter()
        .copied()
        .collect();
    assert!(
        kept.iter().all(|p| last.contains(p)),
        "kept {kept:?}, not among the last exits"
    );
    // Every child's export is still counted (those aged out of the tree as senders).
    for c in &children {
        let p = procs.iter().find(|p| p["pid"] == *c).unwrap_or_else(|| {
            let unresolved: Vec<&Value> = report["receiver"]["connections"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|k| k["holders"].as_array().unwrap().is_empty())
                .map(|k| &k["attribution_error"])
                .collect();
            panic!(
                "child {c} missing from the report; connections without a holder: {unresolved:?}"
            )
        });
        // (A connection the receiver could not attribute within its bound says why here.)
        let conns: Vec<&Value> = report["receiver"]["connections"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["holders"].as_array().unwrap().contains(&Value::from(*c)))
            .collect();
        assert_eq!(
            p["exports"]["signals"]["metrics"]["requests"], 1,
            "child {c}: {}\nits connections: {conns:?}\nunattributed: {}",
            p["exports"], report["receiver"]["unattributed"]["signals"]
        );
    }
    assert_eq!(
        report["receiver"]["totals"]["metrics"]["requests"].as_u64(),
        Some(CHILDREN as u64)
    );
}
