//! The process tree under `--pid`, each process's role, and the framework of the root.
//!
//! Roles are structural: the root is the `master` when it has children; its direct children
//! that are its forks or spawned interpreters are `worker`s (gunicorn, uWSGI, billiard and
//! multiprocessing all start workers as direct children); everything else is `other`. What
//! counts as a worker is decided once, in [`crate::proc::tree::kin`].

use std::collections::HashMap;

use crate::proc::file::{now_unix_ms, parse_cmdline, read_bytes, read_link, Clock, ReadError};
use crate::proc::tree::{kin, proc_basics, walk, ChildIndex, Image};
use crate::snapshot::{Framework, Role};

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

/// Role of each process. `tree` is `(pid, parent_in_tree)` with the root first; `images`
/// gives each pid's executable, layout and arguments. Workers are the root's direct children
/// that are its forks or spawned interpreters ([`kin`]); the root is a master only when it has
/// at least one: a shell with a child is not a pre-fork master.
pub fn roles(tree: &[(i32, i32)], images: &HashMap<i32, Image>) -> HashMap<i32, Role> {
    let mut out = HashMap::new();
    let Some(&(root, _)) = tree.first() else {
        return out;
    };
    let none = Image::default();
    let root_img = images.get(&root).unwrap_or(&none);
    let mut any_worker = false;
    for &(pid, parent) in &tree[1..] {
        let is_worker =
            parent == root && kin(root_img, images.get(&pid).unwrap_or(&none)).is_worker();
        any_worker |= is_worker;
        out.insert(pid, if is_worker { Role::Worker } else { Role::Other });
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

/// Just the tree under `root`: pids, parents, roles, start times, NSpid, exe and cmdline of
/// each, and the framework; no threads, sockets, environment or interpreter memory, so it is
/// cheap enough to re-read every second (the receiver does, to see new workers). Processes
/// that exit while it is read are left out, as are exited-but-unreaped children.
pub fn tree_snapshot(root: i32) -> Result<crate::snapshot::Snapshot, super::ObserveError> {
    use super::ObserveError;
    use crate::snapshot::{Process, Snapshot, SNAPSHOT_SCHEMA};

    let clock = Clock::new();
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
    let taken_at_ms = now_unix_ms();
    let index = ChildIndex::for_root(root);
    let tree = walk(&index, root).map_err(|e| root_err(e, "task"))?;
    let mut processes: Vec<Process> = Vec::with_capacity(tree.len());
    let mut kept: Vec<(i32, i32)> = Vec::with_capacity(tree.len());
    let mut images: HashMap<i32, Image> = HashMap::new();
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
        let cmdline =
            parse_cmdline(&read_bytes(format!("/proc/{pid}/cmdline")).unwrap_or_default());
        let exe = read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        let layout = Image::read(pid).and_then(|i| i.layout);
        images.insert(
            pid,
            Image {
                exe: exe.clone(),
                layout,
                cmdline: cmdline.clone(),
            },
        );
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
    let role_of = roles(&kept, &images);
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
    fn role_assignment() {
        let tree = vec![(10, 0), (11, 10), (12, 10), (13, 11), (14, 10)];
        let exes: HashMap<i32, Image> = [
            (10, "/py"),
            (11, "/py"),
            (12, "/py"),
            (13, "/py"),
            (14, "/bin/sh"),
        ]
        .into_iter()
        .map(|(p, e)| {
            let img = Image {
                exe: e.to_string(),
                ..Default::default()
            };
            (p, img)
        })
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
