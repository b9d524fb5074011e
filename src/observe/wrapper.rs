//! A `--pid` that only wraps the server: `sh -c "gunicorn ..."`, tini or dumb-init as a
//! container's pid 1, `uv run`, a supervisor. The pre-fork master is below it. Checked as named,
//! the tree has no master and no workers, no rule can speak, and the verdict is a pass that
//! saw nothing; the master below is checked instead, and a note says so. The same for a
//! `--pid` that names one of the workers (`pgrep -n gunicorn`): its master is checked.

use std::collections::HashMap;

use super::tree::tree_snapshot;
use crate::proc::file::read_text;
use crate::proc::task::parse_stat;
use crate::proc::tree::{is_forkserver, kin, ChildIndex, Image};
use crate::snapshot::{Process, Snapshot};

/// The pid to check for `root`, and the note that says why when it is another: `root` itself
/// (a master, or nothing better known), the one pre-fork master below a wrapper, or the master
/// of a named worker. Err (what to tell the user) for a wrapper of several servers.
pub fn resolve(root: i32) -> Result<(i32, Option<String>), String> {
    if first_child_is_a_worker(root) {
        // The usual case, answered with two reads: the root is the master.
        return Ok((root, None));
    }
    let Ok(snap) = tree_snapshot(root) else {
        return Ok((root, None));
    };
    if snap.master().is_some_and(|m| m.pid == root) {
        return Ok((root, None));
    }
    let root_cmd = snap.processes[0].cmdline.join(" ");
    match &masters_below(&snap)[..] {
        [] => Ok(match master_above(root) {
            Some(up) => (up.0, Some(note_above(root, &up))),
            None => (root, None),
        }),
        [one] => Ok((one.0, Some(note(root, &root_cmd, one)))),
        several => Err(several_note(root, several)),
    }
}

/// The shallowest pre-fork masters in `snap` (of a root that is not one), each with its command
/// line: several when the wrapper runs several servers.
fn masters_below(snap: &Snapshot) -> Vec<(i32, String)> {
    let root = snap.root_pid;
    // Depth of each process below the root (the tree lists parents before children).
    let mut depth: HashMap<i32, usize> = HashMap::from([(root, 0)]);
    for p in &snap.processes {
        if let Some(d) = depth.get(&p.ppid).copied() {
            depth.entry(p.pid).or_insert(d + 1);
        }
    }
    let has_children = |p: &Process| snap.processes.iter().any(|c| c.ppid == p.pid);
    let mut candidates: Vec<&Process> = snap.processes[1..]
        .iter()
        .filter(|p| has_children(p) && depth.contains_key(&p.pid))
        .collect();
    candidates.sort_by_key(|p| (depth[&p.pid], p.pid));
    let mut found: Vec<(i32, String)> = Vec::new();
    let mut at_depth = None;
    for c in candidates {
        if at_depth.is_some_and(|d| depth[&c.pid] > d) {
            break;
        }
        let Ok(sub) = tree_snapshot(c.pid) else {
            continue;
        };
        if sub.master().is_some_and(|m| m.pid == c.pid) {
            at_depth = Some(depth[&c.pid]);
            found.push((c.pid, c.cmdline.join(" ")));
        }
    }
    found
}

/// The pre-fork master whose worker `root` (not a master itself) is, with its command line.
fn master_above(root: i32) -> Option<(i32, String)> {
    let ppid_of = |pid: i32| Some(parse_stat(&read_text(format!("/proc/{pid}/stat")).ok()?)?.ppid);
    let mut ppid = ppid_of(root)?;
    let parent = Image::read(ppid)?;
    if ppid <= 1 || !kin(&parent, &Image::read(root)?).is_worker() {
        return None;
    }
    if is_forkserver(&parent.cmdline) {
        // A forkserver's forks are the workers of the process that started it.
        ppid = ppid_of(ppid)?;
    }
    let up = tree_snapshot(ppid).ok()?;
    let m = up.master().filter(|m| m.pid == ppid)?;
    Some((ppid, m.cmdline.join(" ")))
}

/// The note that says the master of a named worker was checked.
fn note_above(root: i32, (pid, cmd): &(i32, String)) -> String {
    format!(
        "pid {root} is a worker of the pre-fork master pid {pid} ({}): checked the master's tree",
        short(cmd)
    )
}

/// Whether `root`'s first child is its fork or spawned interpreter (then `root` is a master).
fn first_child_is_a_worker(root: i32) -> bool {
    let first = ChildIndex::for_root(root)
        .children(root)
        .ok()
        .and_then(|c| c.first().copied());
    match (Image::read(root), first.and_then(Image::read)) {
        (Some(parent), Some(child)) => kin(&parent, &child).is_worker(),
        _ => false,
    }
}

/// The note that says which pid was checked instead of the one named.
fn note(root: i32, root_cmd: &str, (pid, cmd): &(i32, String)) -> String {
    format!(
        "pid {root} ({}) is not a pre-fork master but runs one: checked its descendant pid {pid} \
         ({}) instead",
        short(root_cmd),
        short(cmd)
    )
}

/// Several servers below one wrapper: checking one would judge the others unseen.
fn several_note(root: i32, masters: &[(i32, String)]) -> String {
    let list: Vec<String> = masters
        .iter()
        .map(|(p, c)| format!("{p} ({})", short(c)))
        .collect();
    format!(
        "pid {root} is not a pre-fork master and runs {} of them: {}; check each with --pid",
        masters.len(),
        list.join(", ")
    )
}

fn short(cmd: &str) -> String {
    const MAX: usize = 60;
    if cmd.chars().count() <= MAX {
        cmd.to_string()
    } else {
        format!("{}...", cmd.chars().take(MAX).collect::<String>())
    }
}
