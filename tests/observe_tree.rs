//! observe() against real forking Python trees (stdlib only, no mocks).
//!
//! The script below plays a pre-fork server: the master connects to a listener this test owns
//! (the "collector"), starts a thread named like the SDK's metric reader that blocks on a Lock
//! with no timeout (docs/failure-modes.md#metric-reader-stuck-on-an-inherited-lock) and a thread
//! that sleeps 0.1 s in a loop, then forks workers that start a span-processor-named thread, and
//! respawns any worker that dies.
//! Mode `os` forks with `os.fork` (Python's at-fork handling runs, as in gunicorn); mode `c`
//! calls libc `fork()` directly while holding the GIL, as uWSGI does without
//! `py-call-osafterfork`, which leaves the master's thread states in the workers (ghosts).
//!
//! Every tree runs in its own process group (`common::Group`), ended as a group on drop.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use otel_forkcheck::observe::{observe, ObserveError, Options};
use otel_forkcheck::snapshot::{Framework, NameSource, Process, Role, Snapshot, ThreadKind};

use common::Group;

const SCRIPT: &str = r#"
import ctypes, os, socket, sys, threading, time

port, nworkers, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

def say(*words):
    os.write(1, (" ".join(str(w) for w in words) + "\n").encode())

conn = socket.create_connection(("127.0.0.1", port))
lock = threading.Lock()
lock.acquire()
threading.Thread(target=lock.acquire, name="OtelPeriodicExportingMetricReader", daemon=True).start()

def sleeper():
    while True:
        time.sleep(0.1)

# A raw C fork while another thread may be inside take_gil can leave the GIL's mutex locked in
# the child (the hazard uWSGI has too), so mode c keeps only the reader, parked in sem_wait.
if mode == "os":
    threading.Thread(target=sleeper, name="Sleeper", daemon=True).start()
libc = ctypes.PyDLL(None)  # PyDLL keeps the GIL held across the call, like uWSGI's C fork

def worker():
    threading.Thread(target=sleeper, name="OtelBatchSpanRecordProcessor", daemon=True).start()
    say("worker", os.getpid())
    while True:
        time.sleep(1)

def spawn():
    pid = os.fork() if mode == "os" else libc.fork()
    if pid == 0:
        try:
            worker()
        finally:
            os._exit(0)
    return pid

time.sleep(0.2)  # let both threads reach their blocking calls before forking
kids = [spawn() for _ in range(nworkers)]
say("master", os.getpid(), *kids)
while True:
    pid, _ = os.wait()
    say("respawned", pid, spawn())
"#;

/// A running tree; the whole process group is ended on drop.
struct Tree {
    _group: Group,
    master: i32,
    workers: Vec<i32>,
    lines: Receiver<String>,
}

impl Tree {
    fn start(port: u16, workers: usize, mode: &str) -> Tree {
        let mut group = Group::spawn(
            Command::new("python3")
                .arg("-c")
                .arg(SCRIPT)
                .arg(port.to_string())
                .arg(workers.to_string())
                .arg(mode)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        );
        let stdout = group.child.stdout.take().expect("piped stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut tree = Tree {
            master: group.pgid,
            _group: group,
            workers: Vec::new(),
            lines,
        };
        let (mut listed, mut ready) = (Vec::new(), 0);
        while listed.is_empty() || ready < workers {
            let line = tree.next_line();
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.first() {
                Some(&"master") => {
                    assert_eq!(words[1].parse::<i32>().unwrap(), tree.master);
                    listed = words[2..].iter().map(|w| w.parse().unwrap()).collect();
                }
                Some(&"worker") => ready += 1,
                _ => panic!("unexpected line {line:?}"),
            }
        }
        listed.sort_unstable();
        tree.workers = listed;
        // Let the workers' threads reach their sleeps.
        std::thread::sleep(Duration::from_millis(200));
        tree
    }

    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(15))
            .expect("the tree reports within 15 s")
    }

    fn all_pids(&self) -> Vec<i32> {
        let mut all = self.workers.clone();
        all.push(self.master);
        all.sort_unstable();
        all
    }
}

fn opts(pid: i32, window_ms: u64) -> Options {
    Options {
        pid,
        window: Duration::from_millis(window_ms),
        python_names: true,
    }
}

fn thread_named<'a>(p: &'a Process, name: &str) -> &'a otel_forkcheck::snapshot::Thread {
    p.threads
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("pid {} has no thread {name}: {:#?}", p.pid, p.threads))
}

fn worker_pids(snap: &Snapshot) -> Vec<i32> {
    let mut w: Vec<i32> = snap.workers().map(|p| p.pid).collect();
    w.sort_unstable();
    w
}

#[test]
fn tree_roles_shared_socket_names_and_stuck_reader() {
    let collector = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = collector.local_addr().unwrap().port();
    let tree = Tree::start(port, 3, "os");

    let snap = observe(&opts(tree.master, 1000)).expect("observe works");

    // Tree and roles.
    assert_eq!(snap.root_pid, tree.master);
    assert_eq!(snap.processes[0].pid, tree.master);
    assert_eq!(snap.processes[0].role, Role::Master);
    assert_eq!(worker_pids(&snap), tree.workers);
    assert_eq!(snap.processes.len(), 4);
    assert_eq!(snap.framework, Framework::Multiprocessing);
    assert!(snap.window_ms >= 1000);
    assert!(snap.churn.polls >= 5, "{:?}", snap.churn);
    assert!(snap.churn.exited.is_empty() && snap.churn.spawned.is_empty());
    for p in snap.workers() {
        assert_eq!(p.ppid, tree.master);
        assert!(p.started_at_ms >= snap.processes[0].started_at_ms);
    }

    // The master's connection to the collector: one inode, held by all four.
    let master = snap.master().unwrap();
    let remote = format!("127.0.0.1:{port}");
    let sock = master
        .sockets
        .iter()
        .find(|s| s.state == "ESTABLISHED" && s.remote == remote)
        .unwrap_or_else(|| panic!("no connection to {remote}: {:#?}", master.sockets));
    assert_eq!(sock.proto, "tcp");
    assert_eq!(sock.shared_with, tree.all_pids());
    for w in snap.workers() {
        let ws = w.sockets.iter().find(|s| s.inode == sock.inode).unwrap();
        assert_eq!(ws.shared_with, tree.all_pids());
        assert_eq!(ws.remote, remote);
    }

    // Python names, kinds, and the stuck reader vs the sleeper.
    assert!(master.python.names_read, "{:?}", master.python.names_error);
    assert!(master.python.version.as_deref().unwrap().starts_with("3."));
    let reader = thread_named(master, "OtelPeriodicExportingMetricReader");
    assert_eq!(reader.name_source, NameSource::Python);
    assert_eq!(reader.kind, ThreadKind::MetricReader);
    let sc = reader.syscall.as_ref().expect("syscall readable as root");
    assert_eq!(sc.name, "futex", "{sc:?}");
    assert_eq!(sc.args[3], 0, "no timeout: {sc:?}");
    assert_eq!(reader.wakeups_in_window(), Some(0), "{reader:?}");
    assert_eq!(
        reader.syscall_end.as_ref().map(|s| s.name.as_str()),
        Some("futex")
    );
    let sleeper = thread_named(master, "Sleeper");
    assert_eq!(sleeper.kind, ThreadKind::Other);
    assert!(sleeper.wakeups_in_window().unwrap() >= 3, "{sleeper:?}");
    let main = thread_named(master, "MainThread");
    assert_eq!(main.tid, tree.master);

    for w in snap.workers() {
        assert!(w.python.names_read, "{:?}", w.python.names_error);
        let sp = thread_named(w, "OtelBatchSpanRecordProcessor");
        assert_eq!(sp.name_source, NameSource::Python);
        assert_eq!(sp.kind, ThreadKind::SpanProcessor);
        assert!(sp.wakeups_in_window().unwrap() >= 3);
        assert_eq!(thread_named(w, "MainThread").tid, w.pid);
        // os.fork runs CPython's after-fork cleanup: no thread states of the master survive.
        assert!(
            w.python.ghost_threads.is_empty(),
            "{:?}",
            w.python.ghost_threads
        );
        assert_eq!(w.threads.len(), 2, "{:#?}", w.threads);
    }
    // Nothing unreadable or odd; at most the wait for workers that had just started.
    let waited = format!(
        "before the first sample: a child of pid {} had just started",
        tree.master
    );
    assert!(
        snap.notes.iter().all(|n| n.contains(&waited)),
        "{:?}",
        snap.notes
    );
    assert_eq!(snap.collector_endpoints.len(), 2);

    // Survives a JSON round trip (it is what --save-snapshot writes).
    let json = serde_json::to_string(&snap).unwrap();
    let back: Snapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, snap);
}

#[test]
fn ghost_threads_after_a_c_level_fork() {
    let collector = TcpListener::bind("127.0.0.1:0").unwrap();
    let tree = Tree::start(collector.local_addr().unwrap().port(), 3, "c");

    let snap = observe(&opts(tree.master, 0)).expect("observe works");
    assert_eq!(worker_pids(&snap), tree.workers);
    let master = snap.master().unwrap();
    let reader_tid = thread_named(master, "OtelPeriodicExportingMetricReader").tid as i64;
    for w in snap.workers() {
        assert!(w.python.names_read, "{:?}", w.python.names_error);
        // The interpreter still lists the master's threads; their OS threads are not here.
        // (glibc gives the worker's new thread the dead reader's stack, hence its pthread id,
        // so the interpreter's name for the ghost is the new thread's; observe takes the
        // master's name for that OS thread instead.)
        let ghosts: Vec<(i64, &str)> = w
            .python
            .ghost_threads
            .iter()
            .map(|g| (g.os_tid, g.name.as_str()))
            .collect();
        assert_eq!(
            ghosts,
            vec![(reader_tid, "OtelPeriodicExportingMetricReader")],
            "worker {}",
            w.pid
        );
        // Ghosts are not listed as threads; the worker's own threads are, with Python names.
        assert!(w.threads.iter().all(|t| t.kind != ThreadKind::MetricReader));
        assert_eq!(w.threads.len(), 2, "{:#?}", w.threads);
        let sp = thread_named(w, "OtelBatchSpanRecordProcessor");
        assert_eq!(sp.name_source, NameSource::Python);
        // The forking thread's state still carries the master's id; it is the worker's main.
        assert_eq!(thread_named(w, "MainThread").tid, w.pid);
    }
}

#[test]
fn churn_when_a_worker_dies_and_is_respawned() {
    let collector = TcpListener::bind("127.0.0.1:0").unwrap();
    let tree = Tree::start(collector.local_addr().unwrap().port(), 3, "os");
    let victim = tree.workers[0];

    let master = tree.master;
    let watcher = std::thread::spawn(move || observe(&opts(master, 2000)));
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill has no memory-safety preconditions; victim is a worker of our own tree.
    unsafe {
        libc::kill(victim, libc::SIGKILL);
    }
    let line = tree.next_line();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words[..2], ["respawned", victim.to_string().as_str()]);
    let replacement: i32 = words[2].parse().unwrap();
    let snap = watcher.join().unwrap().expect("observe works");

    assert_eq!(snap.churn.exited, vec![victim], "{:?}", snap.churn);
    assert_eq!(snap.churn.spawned, vec![replacement], "{:?}", snap.churn);
    assert!(snap.process(victim).is_none(), "dead worker dropped");
    let mut want = tree.workers[1..].to_vec();
    want.push(replacement);
    want.sort_unstable();
    assert_eq!(worker_pids(&snap), want);
    // The replacement got a full observation at the end of the window.
    let new = snap.process(replacement).unwrap();
    assert!(new.python.names_read, "{:?}", new.python.names_error);
    assert_eq!(new.role, Role::Worker);
    assert!(new.sockets.iter().any(|s| s.state == "ESTABLISHED"
        && s.shared_with.contains(&master)
        && s.shared_with.contains(&replacement)));
}

#[test]
fn no_such_pid() {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id() as i32;
    child.wait().unwrap();
    match observe(&opts(pid, 0)) {
        Err(ObserveError::NoSuchPid(p)) => assert_eq!(p, pid),
        other => panic!("expected NoSuchPid, got {other:?}"),
    }
    assert!(matches!(
        observe(&opts(-5, 0)),
        Err(ObserveError::NoSuchPid(-5))
    ));
}

/// A root that exits during the window (a batch program ending) is reported as first sampled,
/// with a note, instead of "no process": what was seen at its start is still true.
#[test]
fn root_that_exits_during_the_window_keeps_its_first_sample() {
    let mut g = Group::spawn(
        Command::new("sh")
            .args(["-c", "sleep 30 & sleep 0.5"])
            .stdout(Stdio::null()),
    );
    let root = g.child.id() as i32;
    // Its children: the background `sleep 30` and the foreground `sleep 0.5`.
    assert!(common::wait_until(Duration::from_secs(5), || {
        common::children_of(root).len() == 2
    }));
    let mut seen = vec![root];
    seen.extend(common::children_of(root));
    seen.sort_unstable();
    let snap = observe(&opts(root, 2_000)).expect("observed although the root ended");
    assert!(g.leader_exited());
    let mut pids: Vec<i32> = snap.processes.iter().map(|p| p.pid).collect();
    pids.sort_unstable();
    assert_eq!(pids, seen);
    assert!(snap.processes.iter().all(|p| p.gone), "all exited since");
    assert!(
        snap.notes
            .iter()
            .any(|n| n.contains(&format!("pid {root} exited during the 2.0 s window"))),
        "{:#?}",
        snap.notes
    );
}

/// A root whose children all exit during the window, none replacing them (a pool winding
/// down), is reported as first sampled: the end would show it alone. Reaped or not: the
/// second root never waits for its children (`exec sleep`), which stay zombies.
#[test]
fn tree_that_winds_down_during_the_window_keeps_its_first_sample() {
    for script in [
        "sleep 0.5 & sleep 0.5 & wait; exec sleep 30",
        "sleep 0.5 & sleep 0.5 & exec sleep 30",
    ] {
        winds_down(script);
    }
}

fn winds_down(script: &str) {
    let mut g = Group::spawn(
        Command::new("sh")
            .args(["-c", script])
            .stdout(Stdio::null()),
    );
    let root = g.child.id() as i32;
    assert!(common::wait_until(Duration::from_secs(5), || {
        common::children_of(root).len() == 2
    }));
    let mut kids = common::children_of(root);
    kids.sort_unstable();
    let mut seen = kids.clone();
    seen.push(root);
    seen.sort_unstable();
    let snap = observe(&opts(root, 2_000)).unwrap();
    assert!(!g.leader_exited(), "the root is still there");
    let mut pids: Vec<i32> = snap.processes.iter().map(|p| p.pid).collect();
    pids.sort_unstable();
    assert_eq!(pids, seen);
    let mut exited = snap.churn.exited.clone();
    exited.sort_unstable();
    assert_eq!(exited, kids);
    for p in &snap.processes {
        assert_eq!(p.gone, p.pid != root, "pid {}", p.pid);
    }
    assert!(
        snap.notes.iter().any(|n| n.contains(&format!(
            "every child of pid {root} exited during the 2.0 s window"
        ))),
        "{:#?}",
        snap.notes
    );
}

/// A process that is not Python and has no children: observed alone, with notes saying so.
#[test]
fn lone_non_python_process() {
    let g = Group::spawn(Command::new("sleep").arg("30"));
    let pid = g.pgid;
    std::thread::sleep(Duration::from_millis(50));
    let snap = observe(&opts(pid, 0)).unwrap();
    assert_eq!(snap.processes.len(), 1);
    assert_eq!(snap.processes[0].role, Role::Other);
    assert_eq!(snap.framework, Framework::Unknown);
    assert!(!snap.processes[0].python.names_read);
    assert!(snap.processes[0].python.not_python);
    assert!(snap
        .notes
        .iter()
        .any(|n| n.contains("not a pre-fork master")));
    assert!(snap
        .notes
        .iter()
        .any(|n| n.contains("Python thread names unavailable") && n.contains(&pid.to_string())));
}

/// Another user's process: environ/fd of the root are refused, which is exit status 2
/// upstream. Needs root to set up (a root-owned target and a child that drops to `nobody`).
#[test]
fn another_users_process_is_observed_with_what_could_not_be_read() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to create a process another user cannot read");
        return;
    }
    let mut target = Command::new("sleep")
        .arg("30")
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = target.id() as i32;
    // SAFETY: the child only drops privileges, calls observe and _exits; glibc's malloc is
    // fork-safe and nothing else shared with the parent's other threads is touched.
    let child = unsafe { libc::fork() };
    if child == 0 {
        let code = unsafe {
            if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                3
            } else {
                // The check goes on with /proc facts and says what it could not read (issue 8:
                // no CAP_SYS_PTRACE is the default in containers).
                match observe(&opts(pid, 0)) {
                    Ok(s)
                        if s.notes.iter().any(|n| {
                            n.contains("/proc/<pid>/fd") && n.contains("CAP_SYS_PTRACE")
                        }) && s.processes.iter().any(|p| p.pid == pid) =>
                    {
                        0
                    }
                    Ok(_) => 2,
                    Err(_) => 1,
                }
            }
        };
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for the child forked above.
    unsafe { libc::waitpid(child, &mut status, 0) };
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let _ = target.wait();
    assert!(libc::WIFEXITED(status), "child status {status}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "1: gave up, 2: observed without saying what it could not read, 3: could not drop privileges"
    );
}

/// The interpreter is found once, for the master; forked workers share its layout and are read
/// with what it taught, in a handful of calls each (docs/failure-modes.md#reading-the-evidence).
#[test]
fn interpreter_parsed_once_for_forked_workers() {
    use otel_forkcheck::observe::python::{OsThread, PythonReader, Target};
    use otel_forkcheck::proc::task::parse_stat;
    use otel_forkcheck::proc::tree::layout_key;

    let collector = TcpListener::bind("127.0.0.1:0").unwrap();
    let tree = Tree::start(collector.local_addr().unwrap().port(), 3, "os");
    let mut reader = PythonReader::new();
    let mut pids = vec![tree.master];
    pids.extend(&tree.workers);
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        let stat = parse_stat(&stat).unwrap();
        let key = layout_key(pid, &exe.to_string_lossy(), &stat);
        let tasks: Vec<OsThread> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
            .map(|tid| OsThread { tid, ns_tid: tid })
            .collect();
        let exe = exe.to_string_lossy();
        let target = Target {
            pid,
            ppid: stat.ppid,
            exe: &exe,
            layout: &key,
            tasks: &tasks,
        };
        let calls = reader.calls;
        let read = reader.read(&target).expect("interpreter readable");
        if pid != tree.master {
            // Issue 13: a worker of a known layout costs a handful of reads.
            let n = reader.calls - calls;
            assert!(
                (1..=40).contains(&n),
                "{n} process_vm_readv calls for worker {pid}"
            );
        }
        let want = if pid == tree.master {
            "OtelPeriodicExportingMetricReader"
        } else {
            "OtelBatchSpanRecordProcessor"
        };
        assert!(
            read.threads.iter().any(|t| t.name.as_deref() == Some(want)),
            "pid {pid}: {:?}",
            read.threads
        );
    }
    assert_eq!((reader.attaches, reader.reuses), (1, 3));
    // Found from _PyRuntime directly, without py-spy's full attach.
    assert_eq!(reader.py_spy_attaches, 0);
}
