//! The process tree under `--pid`, each process's role, and the framework of the root.
//!
//! Children come from /proc/<pid>/task/<tid>/children (a child belongs to the thread that
//! forked it, so every thread's file is read); kernels without CONFIG_PROC_CHILDREN fall back
//! to one scan of /proc by ppid.
//!
//! Roles are structural: the root is the `master` when it has children; its direct children
//! running the same executable are `worker`s (gunicorn, uWSGI, billiard and multiprocessing all
//! fork workers as direct children); everything else is `other`.

use std::collections::{HashMap, VecDeque};

use crate::snapshot::{Framework, Role};

use super::procfile::{numeric_entries, read_text, ReadError, ReadResult};
use super::threads::parse_stat;

/// How children are found on this kernel.
pub enum ChildIndex {
    /// /proc/<pid>/task/<tid>/children exists.
    ChildrenFiles,
    /// ppid -> children from one /proc scan.
    Scan(HashMap<i32, Vec<i32>>),
}

impl ChildIndex {
    /// Picks the children files when the root has them, else scans /proc once.
    pub fn for_root(root: i32) -> ChildIndex {
        let probe = format!("/proc/{root}/task/{root}/children");
        if std::path::Path::new(&probe).exists() {
            ChildIndex::ChildrenFiles
        } else {
            ChildIndex::Scan(scan_ppids())
        }
    }

    /// The same source, current: the scan fallback is a snapshot of /proc and must be taken
    /// again to see children come and go (the children files are always current).
    pub fn refreshed(&self) -> ChildIndex {
        match self {
            ChildIndex::ChildrenFiles => ChildIndex::ChildrenFiles,
            ChildIndex::Scan(_) => ChildIndex::Scan(scan_ppids()),
        }
    }

    /// Direct children of `pid`, sorted. `Gone` when the process went away.
    pub fn children(&self, pid: i32) -> ReadResult<Vec<i32>> {
        match self {
            ChildIndex::ChildrenFiles => {
                let mut out = Vec::new();
                for tid in numeric_entries(format!("/proc/{pid}/task"))? {
                    match read_text(format!("/proc/{pid}/task/{tid}/children")) {
                        Ok(text) => out.extend(
                            text.split_whitespace()
                                .filter_map(|c| c.parse::<i32>().ok()),
                        ),
                        Err(ReadError::Gone) => continue,
                        Err(e) => return Err(e),
                    }
                }
                out.sort_unstable();
                out.dedup();
                Ok(out)
            }
            ChildIndex::Scan(map) => {
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    return Err(ReadError::Gone);
                }
                Ok(map.get(&pid).cloned().unwrap_or_default())
            }
        }
    }
}

fn scan_ppids() -> HashMap<i32, Vec<i32>> {
    let mut map: HashMap<i32, Vec<i32>> = HashMap::new();
    for pid in numeric_entries("/proc").unwrap_or_default() {
        if let Some(st) = read_text(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|t| parse_stat(&t))
        {
            map.entry(st.ppid).or_default().push(pid);
        }
    }
    for v in map.values_mut() {
        v.sort_unstable();
    }
    map
}

/// Every pid under `root` (root first, then breadth-first), with each one's parent in the tree.
/// Processes that vanish while walking are skipped.
pub fn walk(index: &ChildIndex, root: i32) -> ReadResult<Vec<(i32, i32)>> {
    let mut out = vec![(root, 0)];
    let mut queue = VecDeque::new();
    queue.push_back(root);
    while let Some(pid) = queue.pop_front() {
        let kids = match index.children(pid) {
            Ok(k) => k,
            Err(ReadError::Gone) if pid != root => continue,
            Err(e) => return Err(e),
        };
        for k in kids {
            // A pid seen twice would mean pid reuse mid-walk; keep the first.
            if !out.iter().any(|(p, _)| *p == k) {
                out.push((k, pid));
                queue.push_back(k);
            }
        }
    }
    Ok(out)
}

fn basename(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// Words of a command line: the arguments, or, when a process title rewrite joined everything
/// into one string (`gunicorn: master [app:app]`), its words. Arguments are not split
/// otherwise: a `python -c "..."` script mentioning "uWSGI" is not uWSGI.
fn words(cmdline: &[String]) -> Vec<&str> {
    if cmdline.len() == 1 {
        cmdline[0].split_whitespace().collect()
    } else {
        cmdline.iter().map(String::as_str).collect()
    }
}

fn is_python(exe: &str) -> bool {
    basename(exe).starts_with("python")
}

/// Framework of the root, from its command line and executable, and its children's command
/// lines. Recognises `gunicorn`, `python -m gunicorn`, `opentelemetry-instrument gunicorn`,
/// a setproctitle'd `gunicorn: master`, `uwsgi`, `celery ... worker`, and Python parents of
/// forked or spawned multiprocessing children.
pub fn detect_framework(
    root_cmdline: &[String],
    root_exe: &str,
    children_cmdlines: &[Vec<String>],
) -> Framework {
    let w = words(root_cmdline);
    let names: Vec<&str> = w
        .iter()
        .map(|x| basename(x).trim_end_matches(':'))
        .collect();
    if names.contains(&"gunicorn") {
        return Framework::Gunicorn;
    }
    if basename(root_exe).starts_with("uwsgi")
        || names.iter().any(|n| *n == "uwsgi" || *n == "uWSGI")
    {
        return Framework::Uwsgi;
    }
    let celery_at = names
        .iter()
        .position(|n| *n == "celery" || n.starts_with("[celeryd"));
    if let Some(at) = celery_at {
        if names[at].starts_with("[celeryd") || names[at..].contains(&"worker") {
            return Framework::Celery;
        }
    }
    if is_python(root_exe) && !children_cmdlines.is_empty() {
        let mp_marker = |c: &Vec<String>| {
            c.iter().any(|a| {
                a.contains("multiprocessing.spawn")
                    || a.contains("multiprocessing.forkserver")
                    || a.contains("multiprocessing.resource_tracker")
            })
        };
        if children_cmdlines
            .iter()
            .any(|c| c.as_slice() == root_cmdline || mp_marker(c))
        {
            return Framework::Multiprocessing;
        }
    }
    Framework::Unknown
}

/// Role of each process. `tree` is `(pid, parent_in_tree)` with the root first; `exes` gives
/// each pid's executable.
pub fn roles(tree: &[(i32, i32)], exes: &HashMap<i32, String>) -> HashMap<i32, Role> {
    let mut out = HashMap::new();
    let Some(&(root, _)) = tree.first() else {
        return out;
    };
    let root_exe = exes.get(&root).map(String::as_str).unwrap_or("");
    // Workers are the root's direct children running its executable (forks of it); the root
    // is a master only when it has at least one: a shell with a child is not a pre-fork master.
    let mut any_worker = false;
    for &(pid, parent) in &tree[1..] {
        let same_exe = exes.get(&pid).map(String::as_str) == Some(root_exe) && !root_exe.is_empty();
        let role = if parent == root && same_exe {
            any_worker = true;
            Role::Worker
        } else {
            Role::Other
        };
        out.insert(pid, role);
    }
    out.insert(
        root,
        if any_worker {
            Role::Master
        } else {
            Role::Other
        },
    );
    out
}

/// The few /proc facts of one process that need no thread, fd or memory read: stat and status
/// of the process itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcBasics {
    pub pid: i32,
    pub ppid: i32,
    pub comm: String,
    /// Kernel state letter (`Z`: exited, not yet reaped).
    pub state: String,
    /// Process start, Unix milliseconds.
    pub started_at_ms: u64,
    pub uid: u32,
    /// The pid in each pid namespace, outermost first (just `[pid]` when the kernel has no
    /// `NSpid:` line).
    pub nspid: Vec<i32>,
}

/// Reads /proc/<pid>/stat and /proc/<pid>/status.
pub fn proc_basics(pid: i32, clock: &super::procfile::Clock) -> ReadResult<ProcBasics> {
    let stat = read_text(format!("/proc/{pid}/stat"))?;
    let st = parse_stat(&stat)
        .ok_or_else(|| ReadError::Other(format!("unparsable /proc/{pid}/stat")))?;
    let status = super::threads::parse_status(&read_text(format!("/proc/{pid}/status"))?);
    Ok(ProcBasics {
        pid,
        ppid: st.ppid,
        comm: st.comm,
        state: st.state,
        started_at_ms: clock.ticks_to_unix_ms(st.starttime),
        uid: status.uid,
        nspid: if status.nspid.is_empty() {
            vec![pid]
        } else {
            status.nspid
        },
    })
}

/// Just the tree under `root`: pids, parents, roles, start times, NSpid, exe and cmdline of
/// each, and the framework; no threads, sockets, environment or interpreter memory, so it is
/// cheap enough to re-read every second (the receiver does, to see new workers). Processes
/// that exit while it is read are left out, as are exited-but-unreaped children.
pub fn tree_snapshot(root: i32) -> Result<crate::snapshot::Snapshot, super::ObserveError> {
    use super::ObserveError;
    use crate::snapshot::{Process, Snapshot, SNAPSHOT_SCHEMA};

    let clock = super::procfile::Clock::new();
    let root_err = |e: ReadError, what: &str| match e {
        ReadError::Gone => ObserveError::NoSuchPid(root),
        ReadError::Denied => ObserveError::PermissionDenied {
            pid: root,
            what: what.to_string(),
        },
        ReadError::Other(s) => ObserveError::Other(format!("/proc/{root}/{what}: {s}")),
    };
    if root <= 0 {
        return Err(ObserveError::NoSuchPid(root));
    }
    let taken_at_ms = super::procfile::now_unix_ms();
    let index = ChildIndex::for_root(root);
    let tree = walk(&index, root).map_err(|e| root_err(e, "task"))?;
    let mut processes: Vec<Process> = Vec::with_capacity(tree.len());
    let mut kept: Vec<(i32, i32)> = Vec::with_capacity(tree.len());
    let mut exes: HashMap<i32, String> = HashMap::new();
    for &(pid, parent) in &tree {
        let is_root = pid == root;
        let b = match proc_basics(pid, &clock) {
            Ok(b) => b,
            Err(e) if is_root => return Err(root_err(e, "stat")),
            Err(_) => continue,
        };
        if is_root && b.state == "Z" {
            return Err(ObserveError::NoSuchPid(root));
        }
        if !is_root && b.state == "Z" {
            continue;
        }
        let cmdline = super::env::parse_cmdline(
            &super::procfile::read_bytes(format!("/proc/{pid}/cmdline")).unwrap_or_default(),
        );
        let exe = super::procfile::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        exes.insert(pid, exe.clone());
        kept.push((pid, parent));
        processes.push(Process {
            pid,
            ppid: b.ppid,
            nspid: b.nspid,
            started_at_ms: b.started_at_ms,
            uid: b.uid,
            exe,
            cmdline,
            ..Default::default()
        });
    }
    let role_of = roles(&kept, &exes);
    for p in processes.iter_mut() {
        p.role = role_of.get(&p.pid).copied().unwrap_or_default();
    }
    let children: Vec<Vec<String>> = kept
        .iter()
        .zip(&processes)
        .filter(|((pid, parent), _)| *parent == root && *pid != root)
        .map(|(_, p)| p.cmdline.clone())
        .collect();
    let framework = detect_framework(&processes[0].cmdline, &processes[0].exe, &children);
    Ok(Snapshot {
        schema: SNAPSHOT_SCHEMA,
        taken_at_ms,
        window_ms: 0,
        root_pid: root,
        framework,
        processes,
        notes: vec!["tree only (roles, start times, NSpid): threads and sockets not read".into()],
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn frameworks() {
        let py = "/usr/bin/python3.11";
        assert_eq!(
            detect_framework(
                &s(&["/v/bin/python", "/v/bin/gunicorn", "-w", "2", "app:app"]),
                py,
                &[]
            ),
            Framework::Gunicorn
        );
        assert_eq!(
            detect_framework(&s(&["python3", "-m", "gunicorn", "app:app"]), py, &[]),
            Framework::Gunicorn
        );
        assert_eq!(
            detect_framework(
                &s(&[
                    "/v/bin/python",
                    "/v/bin/opentelemetry-instrument",
                    "gunicorn",
                    "app:app"
                ]),
                py,
                &[]
            ),
            Framework::Gunicorn
        );
        assert_eq!(
            detect_framework(&s(&["gunicorn: master [app:app]"]), py, &[]),
            Framework::Gunicorn
        );
        assert_eq!(
            detect_framework(&s(&["uwsgi", "--http", ":9090"]), "/v/bin/uwsgi", &[]),
            Framework::Uwsgi
        );
        assert_eq!(
            detect_framework(
                &s(&["/v/bin/python", "/v/bin/celery", "-A", "proj", "worker"]),
                py,
                &[]
            ),
            Framework::Celery
        );
        assert_eq!(
            detect_framework(
                &s(&["/v/bin/python", "/v/bin/celery", "-A", "proj", "beat"]),
                py,
                &[]
            ),
            Framework::Unknown
        );
        assert_eq!(
            detect_framework(
                &s(&["python3", "-c", "# not uWSGI nor celery worker"]),
                py,
                &[]
            ),
            Framework::Unknown
        );
        let cmd = s(&["python3", "pool.py"]);
        assert_eq!(
            detect_framework(&cmd, py, std::slice::from_ref(&cmd)),
            Framework::Multiprocessing
        );
        assert_eq!(
            detect_framework(
                &cmd,
                py,
                &[s(&[
                    "python3",
                    "-c",
                    "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5, pipe_handle=7)",
                    "--multiprocessing-fork"
                ])]
            ),
            Framework::Multiprocessing
        );
        assert_eq!(detect_framework(&cmd, py, &[]), Framework::Unknown);
    }

    #[test]
    fn scan_fallback_finds_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        let kid = child.id() as i32;
        let index = ChildIndex::Scan(HashMap::new()).refreshed();
        let found = index.children(me).unwrap().contains(&kid);
        let files = ChildIndex::ChildrenFiles
            .children(me)
            .unwrap()
            .contains(&kid);
        let _ = child.kill();
        let _ = child.wait();
        assert!(found && files);
        assert_eq!(
            ChildIndex::Scan(HashMap::new()).children(999_999_999),
            Err(ReadError::Gone)
        );
    }

    #[test]
    fn role_assignment() {
        let tree = vec![(10, 0), (11, 10), (12, 10), (13, 11), (14, 10)];
        let exes: HashMap<i32, String> = [
            (10, "/py"),
            (11, "/py"),
            (12, "/py"),
            (13, "/py"),
            (14, "/bin/sh"),
        ]
        .into_iter()
        .map(|(p, e)| (p, e.to_string()))
        .collect();
        let r = roles(&tree, &exes);
        assert_eq!(r[&10], Role::Master);
        assert_eq!(r[&11], Role::Worker);
        assert_eq!(r[&12], Role::Worker);
        assert_eq!(r[&13], Role::Other);
        assert_eq!(r[&14], Role::Other);
        let lone = roles(&[(10, 0)], &exes);
        assert_eq!(lone[&10], Role::Other);
        // a shell whose only child runs something else is not a master
        let shell = roles(&[(14, 0), (10, 14)], &exes);
        assert_eq!(shell[&14], Role::Other);
        assert_eq!(shell[&10], Role::Other);
    }

    #[test]
    fn tree_snapshot_of_a_forked_child() {
        // A forked child runs the same executable: a worker, as gunicorn's are.
        let me = std::process::id() as i32;
        // SAFETY: the child only sleeps and _exits (async-signal-safe).
        let child = unsafe { libc::fork() };
        assert!(child >= 0);
        if child == 0 {
            unsafe {
                libc::sleep(10);
                libc::_exit(0);
            }
        }
        let t = tree_snapshot(me);
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
        let t = t.unwrap();
        assert_eq!(t.processes[0].pid, me);
        assert_eq!(t.processes[0].role, Role::Master);
        assert!(t.processes[0].nspid.contains(&me));
        let w = t.process(child).expect("child listed");
        assert_eq!(w.role, Role::Worker);
        assert_eq!(w.ppid, me);
        assert!(w.started_at_ms >= t.processes[0].started_at_ms);
        assert!(!w.cmdline.is_empty() && !w.exe.is_empty());
        assert!(matches!(
            tree_snapshot(i32::MAX - 1),
            Err(super::super::ObserveError::NoSuchPid(_))
        ));
    }
}
