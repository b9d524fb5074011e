//! The process tree under `--pid`, each process's role, and the framework of the root.
//!
//! Roles are structural: the root is the `master` when it has workers (an RQ worker always: it
//! forks a work horse per job); its direct children
//! that are its forks or spawned interpreters are `worker`s (gunicorn, uWSGI, billiard,
//! multiprocessing, uvicorn, Hypercorn and Granian all start workers as direct children), and
//! so are the forks of a forkserver that is the root's child (multiprocessing's `forkserver`
//! start method: the pool's processes hang under the forkserver, not under the pool's owner);
//! everything else (the resource tracker, the forkserver itself) is `other`. What counts as a
//! worker, and how it was started, is decided once, in [`crate::proc::tree::kin`].

use std::collections::HashMap;

use crate::proc::file::{now_unix_ms, parse_cmdline, read_bytes, read_link, Clock, ReadError};
use crate::proc::tree::{is_forkserver, kin, proc_basics, walk, ChildIndex, Image, Kin};
use crate::snapshot::{Framework, Role, StartMethod};

fn basename(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// Words of a command line: the first argument's words (a process title rewrite puts its
/// title there, `gunicorn: master [app:app]`, with the arguments read back from memory after
/// it), then the other arguments as they are: a `python -c "..."` script mentioning "uWSGI" is
/// not uWSGI.
fn words(cmdline: &[String]) -> Vec<&str> {
    let mut w: Vec<&str> = cmdline
        .first()
        .map(|a| a.split_whitespace().collect())
        .unwrap_or_default();
    w.extend(cmdline.iter().skip(1).map(String::as_str));
    w
}

fn is_python(exe: &str) -> bool {
    basename(exe).starts_with("python")
}

/// An RQ worker that forks a work horse per job: `rq worker` (the console script, or
/// `python -m rq.cli worker`), the old `rqworker` script, or a title set by setproctitle
/// (`rq:worker:NAME: ...`); not `--worker-class ...SimpleWorker`, which runs jobs in itself.
pub fn is_rq_worker(cmdline: &[String]) -> bool {
    rq_command(cmdline) == Some("worker")
}

/// Whether the command line is `rq worker-pool` (RQ 1.14+): it forks `--num-workers` RQ
/// workers, each of which forks a work horse per job.
pub fn is_rq_worker_pool(cmdline: &[String]) -> bool {
    rq_command(cmdline) == Some("worker-pool")
}

/// `worker` for an RQ worker (`rq worker`, `rqworker`, `python -m rq.cli worker`, a
/// setproctitle'd `rq:worker:` title), `worker-pool` for `rq worker-pool`; None for anything
/// else, and for a SimpleWorker (it forks no horse: jobs run in the worker itself).
fn rq_command(cmdline: &[String]) -> Option<&'static str> {
    let w = words(cmdline);
    let names: Vec<&str> = w.iter().map(|x| basename(x)).collect();
    // The program itself, not a later argument (`otel-forkcheck run -- rq worker` is not RQ).
    let at = match names.as_slice() {
        [p, "-m", "rq.cli" | "rq", ..] if p.starts_with("python") => 3,
        [p, "rq" | "rqworker", ..] if p.starts_with("python") => 2,
        ["rq" | "rqworker", ..] => 1,
        [title, ..] if title.starts_with("rq:worker:") => return Some("worker"),
        _ => return None,
    };
    let command = if names[at - 1] == "rqworker" || names.get(at) == Some(&"worker") {
        "worker"
    } else if names.get(at) == Some(&"worker-pool") {
        "worker-pool"
    } else {
        return None;
    };
    (!w.iter().any(|a| a.contains("SimpleWorker"))).then_some(command)
}

/// Whether the command line is a Celery worker (`celery ... worker`, a `[celeryd` title).
pub fn is_celery_worker(cmdline: &[String]) -> bool {
    let w = words(cmdline);
    let names: Vec<&str> = w
        .iter()
        .map(|x| basename(x).trim_end_matches(':'))
        .collect();
    let at = names
        .iter()
        .position(|n| *n == "celery" || n.starts_with("[celeryd"));
    at.is_some_and(|at| names[at].starts_with("[celeryd") || names[at..].contains(&"worker"))
}

/// Framework of the root, from its command line and executable, and its children's command
/// lines. Recognises `gunicorn`, `python -m gunicorn`, `opentelemetry-instrument gunicorn`,
/// a setproctitle'd `gunicorn: master`, `uwsgi`, `celery ... worker`, `rq worker`, `uvicorn`,
/// `hypercorn` and `granian` (as programs or `python -m`), and Python parents of forked or
/// spawned multiprocessing children. A Python script that starts a server itself
/// (`python serve.py` calling `uvicorn.run`) is told by [`super::env::script_framework`].
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
    // The server's own program (`/venv/bin/uvicorn`, `python -m hypercorn`, a process title
    // `granian worker-1`); `uvicorn_worker.UvicornWorker` under gunicorn was caught above.
    for (name, fw) in [
        ("uvicorn", Framework::Uvicorn),
        ("hypercorn", Framework::Hypercorn),
        ("granian", Framework::Granian),
    ] {
        if names.contains(&name) {
            return fw;
        }
    }
    if basename(root_exe).starts_with("uwsgi")
        || names.iter().any(|n| *n == "uwsgi" || *n == "uWSGI")
    {
        return Framework::Uwsgi;
    }
    if is_celery_worker(root_cmdline) {
        return Framework::Celery;
    }
    if is_rq_worker(root_cmdline) || is_rq_worker_pool(root_cmdline) {
        return Framework::Rq;
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

/// [`detect_framework`], and where the command line names only a Python script with children
/// (`python serve.py`), the server the script imports ([`super::env::script_framework`],
/// `read` reads a path as the root sees it: text and the path shown). Returns the framework
/// and, when the script decided it, a note saying where it was read.
pub fn framework_of(
    root_cmdline: &[String],
    root_exe: &str,
    children_cmdlines: &[Vec<String>],
    read: &mut dyn FnMut(&str) -> Option<(String, String)>,
) -> (Framework, Option<String>) {
    let fw = detect_framework(root_cmdline, root_exe, children_cmdlines);
    if !matches!(fw, Framework::Multiprocessing | Framework::Unknown)
        || children_cmdlines.is_empty()
    {
        return (fw, None);
    }
    let Some(script) = super::env::python_script(root_cmdline) else {
        return (fw, None);
    };
    match read(script).and_then(|(text, shown)| {
        super::env::script_framework(&text).map(|(f, line)| (f, shown, line))
    }) {
        Some((found, shown, line)) => (
            found,
            Some(format!(
                "framework {}: the root runs {shown}, which imports it ({line})",
                found.as_str()
            )),
        ),
        None => (fw, None),
    }
}

/// Role of each process. `tree` is `(pid, parent_in_tree)` with the root first; `images`
/// gives each pid's executable, layout and arguments. Workers are the root's direct children
/// that are its forks or spawned interpreters ([`kin`]), and the forks of a forkserver that is
/// the root's child; the root is a master only when it has at least one (a shell with a child
/// is not a pre-fork master), or when it is an RQ worker ([`is_rq_worker`]).
pub fn roles(tree: &[(i32, i32)], images: &HashMap<i32, Image>) -> HashMap<i32, Role> {
    placements(tree, images)
        .into_iter()
        .map(|(pid, (role, _))| (pid, role))
        .collect()
}

/// Role of each process and, for workers, how they were started (see [`roles`]).
pub fn placements(
    tree: &[(i32, i32)],
    images: &HashMap<i32, Image>,
) -> HashMap<i32, (Role, Option<StartMethod>)> {
    let mut out = HashMap::new();
    let Some(&(root, _)) = tree.first() else {
        return out;
    };
    let none = Image::default();
    let img = |pid: i32| images.get(&pid).unwrap_or(&none);
    // The root's children that are multiprocessing forkservers.
    let forkservers: Vec<i32> = tree[1..]
        .iter()
        .filter(|&&(pid, parent)| parent == root && is_forkserver(&img(pid).cmdline))
        .map(|&(pid, _)| pid)
        .collect();
    let mut any_worker = false;
    for &(pid, parent) in &tree[1..] {
        let started_by = if parent == root {
            match kin(img(root), img(pid)) {
                Kin::Fork => Some(StartMethod::Fork),
                Kin::Spawn => Some(StartMethod::Spawn),
                _ => None,
            }
        } else if forkservers.contains(&parent) && kin(img(parent), img(pid)) == Kin::Forkserver {
            Some(StartMethod::Forkserver)
        } else {
            None
        };
        any_worker |= started_by.is_some();
        let role = if started_by.is_some() {
            Role::Worker
        } else {
            Role::Other
        };
        out.insert(pid, (role, started_by));
    }
    // An RQ worker forks a work horse per job: a master between jobs too.
    let root_role = if any_worker || is_rq_worker(&img(root).cmdline) {
        Role::Master
    } else {
        Role::Other
    };
    out.insert(root, (root_role, None));
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
    let placed = placements(&kept, &images);
    for p in processes.iter_mut() {
        (p.role, p.started_by) = placed.get(&p.pid).copied().unwrap_or_default();
    }
    let children: Vec<Vec<String>> = kept
        .iter()
        .zip(&processes)
        .filter(|((pid, parent), _)| *parent == root && *pid != root)
        .map(|(_, p)| p.cmdline.clone())
        .collect();
    let mut files = super::env::FileCache::default();
    let (framework, note) = framework_of(
        &processes[0].cmdline,
        &processes[0].exe,
        &children,
        &mut |path| files.read_for(root, path),
    );
    let mut notes =
        vec!["tree only (roles, start times, NSpid): threads and sockets not read".into()];
    notes.extend(note);
    Ok(Snapshot {
        schema: SNAPSHOT_SCHEMA,
        taken_at_ms,
        window_ms: 0,
        root_pid: root,
        framework,
        processes,
        notes,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests;
