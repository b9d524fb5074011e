//! The process tree under `--pid`, read from /proc for the receiver's rules (roles, start times,
//! NSpid). A light stand-in for `observe` (which also reads threads, sockets and Python names):
//! the receiver re-reads it often to see new workers, so it reads only what the FC2xx rules use.

use crate::snapshot::{Framework, Process, Role, Snapshot, SNAPSHOT_SCHEMA};

fn ppid_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, tail) = stat.rsplit_once(')')?;
    tail.split_whitespace().nth(1)?.parse().ok()
}

fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Framework guessed from the master's command line.
pub fn framework_of(cmd: &[String]) -> Framework {
    let joined = cmd.join(" ");
    if joined.contains("gunicorn") {
        Framework::Gunicorn
    } else if joined.contains("uwsgi") {
        Framework::Uwsgi
    } else if joined.contains("celery") {
        Framework::Celery
    } else if joined.contains("multiprocessing") {
        Framework::Multiprocessing
    } else {
        Framework::Unknown
    }
}

/// The tree rooted at `root`: the root is the master, its children are workers, deeper
/// descendants are `other`. None when `root` does not exist.
pub fn read_tree(root: i32) -> Option<Snapshot> {
    let master = super::attribution::holder_info(root)?;
    let mut all: Vec<(i32, i32)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
                if let Some(pp) = ppid_of(pid) {
                    all.push((pid, pp));
                }
            }
        }
    }
    let mut processes = Vec::new();
    let master_cmd = cmdline(root);
    processes.push(Process {
        pid: root,
        ppid: ppid_of(root).unwrap_or(0),
        nspid: master.nspid.clone(),
        role: Role::Master,
        started_at_ms: master.started_at_ns / 1_000_000,
        cmdline: master_cmd.clone(),
        ..Default::default()
    });
    // Breadth-first over descendants.
    let mut frontier = vec![(root, 0usize)];
    while let Some((parent, depth)) = frontier.pop() {
        for (pid, _) in all.iter().filter(|(_, pp)| *pp == parent) {
            let Some(h) = super::attribution::holder_info(*pid) else {
                continue;
            };
            processes.push(Process {
                pid: *pid,
                ppid: parent,
                nspid: h.nspid,
                role: if depth == 0 {
                    Role::Worker
                } else {
                    Role::Other
                },
                started_at_ms: h.started_at_ns / 1_000_000,
                cmdline: cmdline(*pid),
                ..Default::default()
            });
            if depth < 8 {
                frontier.push((*pid, depth + 1));
            }
        }
    }
    Some(Snapshot {
        schema: SNAPSHOT_SCHEMA,
        taken_at_ms: super::now_ms(),
        window_ms: 0,
        root_pid: root,
        framework: framework_of(&master_cmd),
        processes,
        notes: vec!["tree read by the receiver (roles and start times only)".into()],
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_tree_with_a_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        let t = super::read_tree(me).unwrap();
        assert_eq!(t.processes[0].pid, me);
        assert!(
            t.workers()
                .any(|w| w.pid == child.id() as i32
                    && w.started_at_ms >= t.processes[0].started_at_ms)
        );
        let _ = child.kill();
        let _ = child.wait();
        assert!(super::read_tree(i32::MAX - 1).is_none());
    }
}
