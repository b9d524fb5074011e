//! The process tree as the kernel has it: children of a pid, the walk under a root, the few
//! stat/status facts of one process, and the one definition of a worker (a fork of its parent,
//! a spawned interpreter, or a helper that is neither) that observe, receive and run share.
//!
//! Children come from /proc/<pid>/task/<tid>/children (a child belongs to the thread that
//! forked it, so every thread's file is read); kernels without CONFIG_PROC_CHILDREN fall back
//! to one scan of /proc by ppid.

use std::collections::{HashMap, VecDeque};

use super::file::{
    numeric_entries, parse_cmdline, read_bytes, read_link, read_text, Clock, ReadError, ReadResult,
};
use super::task::{parse_stat, parse_status, TaskStat};

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
pub fn proc_basics(pid: i32, clock: &Clock) -> ReadResult<ProcBasics> {
    let stat = read_text(format!("/proc/{pid}/stat"))?;
    let st = parse_stat(&stat)
        .ok_or_else(|| ReadError::Other(format!("unparsable /proc/{pid}/stat")))?;
    let status = parse_status(&read_text(format!("/proc/{pid}/status"))?);
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

/// Every pid of the tree under `root` (the root and all its descendants); empty when it is gone.
pub fn tree_pids(root: i32) -> Vec<i32> {
    let index = ChildIndex::for_root(root);
    walk(&index, root)
        .map(|t| t.into_iter().map(|(p, _)| p).collect())
        .unwrap_or_default()
}

/// Identity of an address-space layout as far as py-spy's parsed addresses are concerned.
///
/// Built from /proc/<pid>/stat (already read for the threads), not from maps (whose path
/// formatting is the single most expensive /proc read per process): the executable plus the
/// start of its code, of the heap and of argv. A fork inherits all three; an exec randomises
/// the heap and stack even for a non-PIE executable, so two exec'd interpreters do not share a
/// key. When the kernel hides the addresses (no ptrace access), the pid keeps keys apart.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LayoutKey {
    pub exe: String,
    pub start_code: u64,
    pub start_brk: u64,
    pub arg_start: u64,
    /// Set only when the addresses are hidden.
    pub pid: i32,
}

/// The layout key of a process from its main thread's stat.
pub fn layout_key(pid: i32, exe: &str, stat: &TaskStat) -> LayoutKey {
    let hidden = stat.start_code == 0 && stat.start_brk == 0 && stat.arg_start == 0;
    LayoutKey {
        exe: exe.to_string(),
        start_code: stat.start_code,
        start_brk: stat.start_brk,
        arg_start: stat.arg_start,
        pid: if hidden { pid } else { 0 },
    }
}

/// What a process runs, as far as kinship is concerned: its executable and layout key (None
/// when its stat is unreadable), and its command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Image {
    pub exe: String,
    pub layout: Option<LayoutKey>,
    pub cmdline: Vec<String>,
}

impl Image {
    /// Reads /proc/<pid>/{stat,exe,cmdline}; None when the process is gone or a zombie.
    pub fn read(pid: i32) -> Option<Image> {
        let stat = parse_stat(&read_text(format!("/proc/{pid}/stat")).ok()?)?;
        if stat.state == "Z" || stat.state == "X" {
            return None;
        }
        let exe = read_link(format!("/proc/{pid}/exe")).ok()?;
        let cmdline = read_bytes(format!("/proc/{pid}/cmdline"))
            .map(|b| parse_cmdline(&b))
            .unwrap_or_default();
        Some(Image {
            layout: Some(layout_key(pid, &exe, &stat)),
            exe,
            cmdline,
        })
    }
}

/// How a child relates to its parent: the one definition of "worker" for every command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kin {
    /// A fork without exec: same executable and the same address-space layout (gunicorn,
    /// uWSGI, billiard and fork-context multiprocessing workers).
    Fork,
    /// A fresh interpreter started by multiprocessing's spawn (fork + exec of
    /// `python -c "from multiprocessing.spawn import spawn_main; ..." --multiprocessing-fork`:
    /// uvicorn and Hypercorn `--workers`, spawn-context pools): a worker, but nothing of the
    /// parent's memory came with it.
    Spawn,
    /// A fork of multiprocessing's forkserver process (a pool or Process started with the
    /// `forkserver` start method, the default on Linux from Python 3.14): a worker of the
    /// forkserver's owner, though the kernel shows it as the forkserver's child. Nothing of the
    /// owner's memory came with it; what the forkserver itself imported did.
    Forkserver,
    /// multiprocessing's resource tracker or forkserver process: never a worker.
    Helper,
    /// Anything else (a shell, a wrapper, an unrelated program).
    Other,
}

impl Kin {
    pub fn is_worker(self) -> bool {
        matches!(self, Kin::Fork | Kin::Spawn | Kin::Forkserver)
    }
}

/// Whether the arguments start multiprocessing's forkserver process.
pub fn is_forkserver(cmdline: &[String]) -> bool {
    cmdline
        .iter()
        .any(|a| a.contains("multiprocessing.forkserver"))
        && !cmdline.iter().any(|a| a.contains("multiprocessing.spawn"))
}

/// Whether the arguments start a multiprocessing helper (resource tracker or forkserver).
pub fn is_mp_helper(cmdline: &[String]) -> bool {
    cmdline.iter().any(|a| {
        a.contains("multiprocessing.resource_tracker") || a.contains("multiprocessing.forkserver")
    }) && !cmdline.iter().any(|a| a.contains("multiprocessing.spawn"))
}

/// Whether the arguments are those of a spawned multiprocessing child.
fn is_mp_spawn(cmdline: &[String]) -> bool {
    cmdline
        .iter()
        .any(|a| a.contains("multiprocessing.spawn") || a == "--multiprocessing-fork")
}

/// The relation of `child` to `parent`. Forks are told by executable and layout; when the
/// layout is hidden (no ptrace access) the executable is all there is. A fork of the
/// forkserver is [`Kin::Forkserver`] (it has the forkserver's command line, so it is told
/// by its parent, not by its arguments).
pub fn kin(parent: &Image, child: &Image) -> Kin {
    if is_forkserver(&parent.cmdline) && is_fork(parent, child) {
        return Kin::Forkserver;
    }
    if is_mp_helper(&child.cmdline) {
        return Kin::Helper;
    }
    if is_mp_spawn(&child.cmdline) {
        return Kin::Spawn;
    }
    if is_fork(parent, child) {
        Kin::Fork
    } else {
        Kin::Other
    }
}

/// The program's name from the command line: argv[0]'s (or a retitled line's first word's)
/// last path part.
fn argv0(img: &Image) -> String {
    let first = img
        .cmdline
        .first()
        .and_then(|a| a.split_whitespace().next())
        .unwrap_or("");
    first
        .rsplit('/')
        .next()
        .unwrap_or(first)
        .trim_end_matches(':')
        .to_string()
}

/// Same executable and, when both are readable, the same layout key.
fn is_fork(parent: &Image, child: &Image) -> bool {
    // Without ptrace access /proc/<pid>/exe is unreadable: the program named by argv[0] (the
    // first word of a retitled `gunicorn: worker [app]`) is all there is.
    let (a, b) = if parent.exe.is_empty() || child.exe.is_empty() {
        (argv0(parent), argv0(child))
    } else {
        (parent.exe.clone(), child.exe.clone())
    };
    if a != b || a.is_empty() {
        return false;
    }
    match (&parent.layout, &child.layout) {
        // Addresses readable in both (the key's pid is set only when they are hidden).
        (Some(a), Some(b)) if a.pid == 0 && b.pid == 0 => a == b,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forks_share_a_layout_key() {
        let stat = TaskStat {
            start_code: 0x55d0c0a01000,
            start_brk: 0x55d0c1000000,
            arg_start: 0x7ffd00001000,
            ..TaskStat::default()
        };
        let a = layout_key(10, "/usr/bin/python3.11", &stat);
        let b = layout_key(11, "/usr/bin/python3.11", &stat);
        assert_eq!(a, b, "forks share a key");
        let exec = TaskStat {
            arg_start: 0x7ffe00001000,
            ..stat.clone()
        };
        assert_ne!(a, layout_key(12, "/usr/bin/python3.11", &exec));
        let hidden = TaskStat::default();
        assert_ne!(layout_key(10, "/x", &hidden), layout_key(11, "/x", &hidden));
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

    fn img(exe: &str, brk: u64, args: &[&str]) -> Image {
        Image {
            exe: exe.into(),
            layout: Some(LayoutKey {
                exe: exe.into(),
                start_code: 1,
                start_brk: brk,
                arg_start: 3,
                pid: 0,
            }),
            cmdline: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn kinship() {
        let py = "/usr/bin/python3.11";
        let parent = img(py, 2, &["python", "app.py"]);
        assert_eq!(kin(&parent, &img(py, 2, &["python", "app.py"])), Kin::Fork);
        // Same executable, exec'd again (another heap start): not a fork.
        assert_eq!(
            kin(&parent, &img(py, 9, &["python", "other.py"])),
            Kin::Other
        );
        let spawn = [
            "python",
            "-c",
            "from multiprocessing.spawn import spawn_main; spawn_main()",
            "--multiprocessing-fork",
        ];
        assert_eq!(kin(&parent, &img(py, 9, &spawn)), Kin::Spawn);
        let tracker = [
            "python",
            "-c",
            "from multiprocessing.resource_tracker import main;main(5)",
        ];
        assert_eq!(kin(&parent, &img(py, 9, &tracker)), Kin::Helper);
        assert_eq!(kin(&parent, &img("/bin/sh", 2, &["sh"])), Kin::Other);
        // Layout hidden: the executable decides.
        let mut hidden = img(py, 9, &["python"]);
        hidden.layout.as_mut().unwrap().pid = 7;
        assert_eq!(kin(&parent, &hidden), Kin::Fork);
        assert!(Kin::Spawn.is_worker() && !Kin::Helper.is_worker());
        // Executables unreadable (no ptrace access): argv[0] decides.
        let blind = |args: &[&str]| Image {
            exe: String::new(),
            layout: None,
            cmdline: args.iter().map(|s| s.to_string()).collect(),
        };
        let master = blind(&["gunicorn: master [app]"]);
        assert_eq!(kin(&master, &blind(&["gunicorn: worker [app]"])), Kin::Fork);
        assert_eq!(kin(&master, &blind(&["/bin/sh", "-c", "x"])), Kin::Other);
        assert_eq!(kin(&blind(&[]), &blind(&[])), Kin::Other);
    }

    #[test]
    fn forkserver_children_are_workers_and_the_forkserver_a_helper() {
        let py = "/usr/bin/python3.14";
        let owner = img(py, 2, &["python", "pool.py"]);
        let fs_args = [
            "python",
            "-c",
            "from multiprocessing.forkserver import main; main(8, 9, ['__main__'], **{})",
        ];
        let forkserver = img(py, 7, &fs_args);
        assert_eq!(kin(&owner, &forkserver), Kin::Helper);
        // A pool child: a fork of the forkserver, with its command line and layout.
        assert_eq!(kin(&forkserver, &img(py, 7, &fs_args)), Kin::Forkserver);
        assert!(Kin::Forkserver.is_worker());
        // Something the forkserver ran that is not its fork.
        assert_eq!(
            kin(&forkserver, &img(py, 9, &["python", "x.py"])),
            Kin::Other
        );
        assert!(is_forkserver(&forkserver.cmdline) && !is_forkserver(&owner.cmdline));
    }
}
