//! Python thread names on every interpreter from 3.8 to 3.13 (pyenv's, under
//! `$PYENV_ROOT/versions` or `~/.pyenv/versions`), against what each thread says about itself.
//!
//! `fixtures/pythons/threads.py` (stdlib only) runs a master with five named threads (SDK names,
//! a non-ASCII name, a name longer than the first read of a name) and two workers: one forked
//! with os.fork, one with libc's fork() under the GIL (the master's thread states stay behind in
//! it). Each thread prints its native tid and name; observe must give exactly those names per
//! tid (3.11+ from the thread state's native id, 3.8-3.10 through glibc's struct pthread), the
//! interpreter's version, and the left-behind states as ghosts with the master's tids and names.
//!
//! `fixtures/pythons/reader_then_fork.py` (an SDK-named thread in a master that then forks,
//! stdlib only) checked with the built binary: FC101 and FC102 on 3.6, 3.7 (names from py-spy,
//! placed through glibc's struct pthread) and 3.8; FC307 for every process on 2.7, whose names
//! py-spy does not find (before FC307 and the placement on 3.6/3.7, each passed). And the real
//! SDK (1.21, venv `py37`) in a preloading gunicorn on 3.7: FC103, FC101, FC302 as on 3.11.
//! `fixtures/pythons/leaving_worker.py`: a worker whose interpreter is exiting is seen so
//! (`python.exiting`, 3.9-3.13) and left alone by FC102, as a worker leaving is while its SDK
//! flushes at exit.
//!
//! A version with no interpreter says SKIPPED on the terminal (not through the captured test
//! output) and passes: the machine image carries all nine.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::time::Duration;

use otel_forkcheck::observe::python::{OsThread, PythonReader, Target};
use otel_forkcheck::observe::{observe, Options};
use otel_forkcheck::proc::task::parse_stat;
use otel_forkcheck::proc::tree::layout_key;
use otel_forkcheck::snapshot::{NameSource, ThreadKind};

use common::report::{check_json, Outcome};
use common::{Collector, Group, Gunicorn, QUIET};

/// `.../versions/3.9.18/bin/python3.9` for `3.9`, the newest patch release installed.
fn interpreter(minor: &str) -> Option<PathBuf> {
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pyenv")))?;
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(root.join("versions"))
        .ok()?
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            let patch: u32 = name.strip_prefix(&format!("{minor}."))?.parse().ok()?;
            let bin = root
                .join("versions")
                .join(&name)
                .join(format!("bin/python{minor}"));
            bin.exists().then_some((patch, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// What the tree printed: tid -> name per pid, version per pid, pids in order of readiness.
#[derive(Default)]
struct Said {
    threads: BTreeMap<i32, BTreeMap<i32, String>>,
    versions: BTreeMap<i32, String>,
    ready: Vec<i32>,
}

fn start(python: &PathBuf) -> (Group, Said) {
    let script = common::root().join("fixtures/pythons/threads.py");
    let mut group = Group::spawn(
        Command::new(python)
            .arg(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    );
    let stdout = group.child.stdout.take().expect("piped stdout");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut said = Said::default();
    while said.ready.len() < 3 {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the tree reports within 20 s");
        let (word, rest) = line.split_once(' ').expect("a word and its fields");
        let (pid, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let pid: i32 = pid.parse().expect("a pid");
        match word {
            "thread" => {
                let (tid, name) = rest.split_once(' ').expect("tid and name");
                said.threads
                    .entry(pid)
                    .or_default()
                    .insert(tid.parse().unwrap(), name.to_string());
            }
            "version" => {
                said.versions.insert(pid, rest.to_string());
            }
            "ready" => said.ready.push(pid),
            _ => panic!("unexpected line {line:?}"),
        }
    }
    assert!(said.ready.contains(&group.pgid), "the master is ready");
    (group, said)
}

fn read(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap()
}

/// The interpreter for `minor`, or None after saying SKIPPED.
fn interpreter_or_skip(minor: &str) -> Option<PathBuf> {
    let found = interpreter(minor);
    if found.is_none() {
        // Straight to stderr in one write: the harness captures eprintln! of passing tests.
        let line = format!(
            "\nSKIPPED python_versions {minor}: no Python {minor} under $PYENV_ROOT/versions or \
             ~/.pyenv/versions\n"
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
    found
}

fn check(minor: &str) {
    let Some(python) = interpreter_or_skip(minor) else {
        return;
    };
    let (tree, said) = start(&python);
    let master = tree.pgid;
    let snap = observe(&Options {
        pid: master,
        window: Duration::ZERO,
        python_names: true,
    })
    .expect("observe works");

    let pids: BTreeSet<i32> = snap.processes.iter().map(|p| p.pid).collect();
    assert_eq!(pids, said.ready.iter().copied().collect(), "{python:?}");
    for p in &snap.processes {
        let want_version = &said.versions[&p.pid];
        assert!(want_version.starts_with(&format!("{minor}.")));
        assert_eq!(
            p.python.version.as_ref(),
            Some(want_version),
            "pid {}",
            p.pid
        );
        assert!(
            p.python.names_read,
            "pid {}: {:?}",
            p.pid, p.python.names_error
        );
        assert_eq!(p.python.names_error, None);
        let got: BTreeMap<i32, String> = p
            .threads
            .iter()
            .map(|t| {
                assert_eq!(t.name_source, NameSource::Python, "{t:?}");
                (t.tid, t.name.clone())
            })
            .collect();
        assert_eq!(
            got, said.threads[&p.pid],
            "Python {want_version}, pid {}",
            p.pid
        );
    }
    // The interpreter was found from _PyRuntime, not by py-spy's full attach; and a worker of
    // the learnt layout costs a handful of reads (issue 13: at most 40).
    let mut reader = PythonReader::new();
    for (i, p) in snap.processes.iter().enumerate() {
        let tasks: Vec<OsThread> = p
            .threads
            .iter()
            .map(|t| OsThread {
                tid: t.tid,
                ns_tid: t.tid,
            })
            .collect();
        let calls = reader.calls;
        reader
            .read(&Target {
                pid: p.pid,
                ppid: p.ppid,
                exe: &p.exe,
                layout: &layout_key(p.pid, &p.exe, &parse_stat(&read(p.pid)).unwrap()),
                tasks: &tasks,
            })
            .unwrap();
        if i > 0 {
            let n = reader.calls - calls;
            assert!(n <= 40, "Python {minor}: {n} reads for pid {}", p.pid);
        }
    }
    assert_eq!(
        (reader.attaches, reader.py_spy_attaches),
        (1, 0),
        "Python {minor}"
    );

    let m = snap.process(master).unwrap();
    let reader = m
        .threads
        .iter()
        .find(|t| t.name == "OtelPeriodicExportingMetricReader")
        .unwrap();
    assert_eq!(reader.kind, ThreadKind::MetricReader);
    assert!(m.python.ghost_threads.is_empty());

    // The os.fork worker keeps nothing of the master; the C-forked one lists the master's
    // threads, by the master's tids and names.
    let worker_with = |name: &str| {
        let pid = said
            .threads
            .iter()
            .find(|(_, ts)| ts.values().any(|n| n == name))
            .map(|(pid, _)| *pid)
            .unwrap();
        snap.process(pid).unwrap()
    };
    let os_forked = worker_with("OsForkedWorkerThread");
    assert!(
        os_forked.python.ghost_threads.is_empty(),
        "{:?}",
        os_forked.python.ghost_threads
    );
    let c_forked = worker_with("CForkedWorkerThread");
    let ghosts: BTreeMap<i64, String> = c_forked
        .python
        .ghost_threads
        .iter()
        .map(|g| (g.os_tid, g.name.clone()))
        .collect();
    let masters_others: BTreeMap<i64, String> = said.threads[&master]
        .iter()
        .filter(|(tid, _)| **tid != master)
        .map(|(tid, name)| (*tid as i64, name.clone()))
        .collect();
    assert_eq!(ghosts, masters_others, "Python {minor}");
}

#[test]
fn python_3_8() {
    check("3.8");
}

#[test]
fn python_3_9() {
    check("3.9");
}

#[test]
fn python_3_10() {
    check("3.10");
}

#[test]
fn python_3_11() {
    check("3.11");
}

#[test]
fn python_3_12() {
    check("3.12");
}

#[test]
fn python_3_13() {
    check("3.13");
}

/// `fixtures/pythons/<script>` on `minor`, checked with the built binary (`--window 0`) once it
/// printed `ready <pids>`: the report and the tree's pids, master first.
fn check_fixture(minor: &str, script: &str) -> Option<(Outcome, Vec<i64>)> {
    let python = interpreter_or_skip(minor)?;
    let mut tree = Group::spawn(
        Command::new(python)
            .arg(common::root().join("fixtures/pythons").join(script))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    );
    let mut line = String::new();
    BufReader::new(tree.child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("the tree reports");
    let mut pids = vec![i64::from(tree.pgid)];
    pids.extend(
        line.strip_prefix("ready ")
            .unwrap_or_else(|| panic!("{script} on Python {minor}: {line:?}"))
            .split_whitespace()
            .map(|p| p.parse::<i64>().unwrap()),
    );
    assert_eq!(pids.len(), 3, "{line:?}");
    Some((check_json(tree.pgid, "0"), pids))
}

/// `reader_then_fork.py` on `minor`: the report and the tree's pids, master first.
fn check_reader_then_fork(minor: &str) -> Option<(Outcome, Vec<i64>)> {
    check_fixture(minor, "reader_then_fork.py")
}

/// Names that could not be read fail the check (FC307) for every process, naming the version:
/// before FC307 this tree passed.
#[test]
fn python_2_7_names_unread_fail_the_check() {
    let Some((out, pids)) = check_reader_then_fork("2.7") else {
        return;
    };
    assert_eq!(out.code_set(), vec!["FC307"], "{:#}", out.report);
    assert_eq!(out.status, 1);
    let f = out.finding("FC307");
    assert_eq!(f["pids"], serde_json::json!(pids));
    for e in f["evidence"].as_array().unwrap() {
        let e = e.as_str().unwrap();
        assert!(
            e.contains("py-spy found no thread names in Python 2.7."),
            "{e}"
        );
    }
}

/// The tree judged from its names: the master's reader before the fork, none in the workers.
fn judged(minor: &str) {
    let Some((out, pids)) = check_reader_then_fork(minor) else {
        return;
    };
    assert_eq!(out.code_set(), vec!["FC101", "FC102"], "{:#}", out.report);
    assert_eq!(out.pids_of("FC101"), vec![vec![pids[0]]]);
    assert_eq!(
        out.pids_of("FC102"),
        vec![vec![pids[0], pids[1]], vec![pids[0], pids[2]]]
    );
    assert_eq!(out.status, 1);
    for p in out.report["processes"].as_array().unwrap() {
        assert_eq!(p["python"]["names_read"], true, "{p:#}");
    }
}

#[test]
fn python_3_6_names_placed_through_pthread_judge_the_tree() {
    judged("3.6");
}

#[test]
fn python_3_7_names_placed_through_pthread_judge_the_tree() {
    judged("3.7");
}

#[test]
fn python_3_8_names_judge_the_same_tree() {
    judged("3.8");
}

/// The real SDK 1.21 set up at import in a preloading gunicorn on Python 3.7, exporting before
/// the fork: the master's three SDK threads are seen (FC101), its connection shared by every
/// worker (FC103), the preload named (FC302). Before the placement on 3.7 this passed.
#[test]
fn python_3_7_gunicorn_preload_with_the_real_sdk() {
    if interpreter_or_skip("3.7").is_none() {
        return;
    }
    let collector = Collector::start(0.0);
    let url = collector.url();
    let mut env = QUIET.to_vec();
    env.extend([
        ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
        ("FIXTURE_EXPORT_BEFORE_FORK", "1"),
    ]);
    let g = Gunicorn::start("py37", "preload", 2, &env);
    let mut all: Vec<i64> = g.worker_pids().iter().map(|p| i64::from(*p)).collect();
    all.push(i64::from(g.master_pid));
    all.sort_unstable();
    std::thread::sleep(Duration::from_secs(1));
    let out = check_json(g.master_pid, "1s");
    assert_eq!(
        out.codes(),
        vec!["FC103", "FC101", "FC302"],
        "{:#}",
        out.report
    );
    let master = i64::from(g.master_pid);
    assert_eq!(out.pids_of("FC101"), vec![vec![master]]);
    assert_eq!(out.pids_of("FC103"), vec![all]);
    assert_eq!(out.status, 1);
    let m = &out.report["processes"][0];
    assert_eq!(m["python"]["version"], "3.7.16", "{m:#}");
    let kinds: Vec<&str> = m["threads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .filter(|k| *k != "other")
        .collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
}

/// `leaving_worker.py` on `minor`, checked once its second worker is exiting: the report, the
/// master, the staying and the leaving worker.
fn check_leaving(minor: &str) -> Option<(Outcome, [i64; 3])> {
    let (out, pids) = check_fixture(minor, "leaving_worker.py")?;
    Some((out, [pids[0], pids[1], pids[2]]))
}

/// The leaving worker is read as exiting and not judged; the staying one is (FC102).
fn leaving(minor: &str) {
    let Some((out, [master, staying, leaving])) = check_leaving(minor) else {
        return;
    };
    assert_eq!(out.codes(), vec!["FC102", "FC101"], "{:#}", out.report);
    assert_eq!(out.pids_of("FC102"), vec![vec![master, staying]]);
    assert_eq!(out.status, 1);
    let exiting = |pid: i64| {
        out.report["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == pid)
            .map(|p| p["python"]["exiting"] == true)
            .unwrap()
    };
    assert!(exiting(leaving), "{:#}", out.report);
    assert!(!exiting(staying) && !exiting(master));
}

#[test]
fn python_3_9_a_leaving_worker_is_not_judged() {
    leaving("3.9");
}

#[test]
fn python_3_11_a_leaving_worker_is_not_judged() {
    leaving("3.11");
}

#[test]
fn python_3_13_a_leaving_worker_is_not_judged() {
    leaving("3.13");
}

/// Python 3.8 has no `threading._SHUTTING_DOWN`: its leaving worker is judged as any other.
#[test]
fn python_3_8_a_leaving_worker_is_judged_as_any() {
    let Some((out, [master, staying, leaving])) = check_leaving("3.8") else {
        return;
    };
    assert_eq!(
        out.pids_of("FC102"),
        vec![vec![master, staying], vec![master, leaving]]
    );
}
