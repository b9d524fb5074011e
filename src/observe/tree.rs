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
    let has_children = tree.iter().any(|(_, parent)| *parent == root);
    let root_exe = exes.get(&root).map(String::as_str).unwrap_or("");
    out.insert(
        root,
        if has_children {
            Role::Master
        } else {
            Role::Other
        },
    );
    for &(pid, parent) in &tree[1..] {
        let same_exe = exes.get(&pid).map(String::as_str) == Some(root_exe) && !root_exe.is_empty();
        let role = if parent == root && same_exe {
            Role::Worker
        } else {
            Role::Other
        };
        out.insert(pid, role);
    }
    out
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
    }
}
