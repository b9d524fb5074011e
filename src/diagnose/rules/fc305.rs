//! FC305 tree-unreadable.

use crate::diagnose::evidence::{server_processes, version_lt, who};
use crate::diagnose::{Facts, Finding, Rule, Severity};
use crate::snapshot::Process;

pub static RULE: Rule = Rule {
    code: "FC305",
    slug: "tree-unreadable",
    severity: Severity::Error,
    summary: "the server's processes could not be read (permission denied): what decides the verdict was not seen",
    doc: DOC,
    silenced_by: &[],
    check,
};

const DOC: &str = "\
## What it means
otel-forkcheck was refused parts of /proc for the server's master or workers: their executable,
memory map, memory, environment or open files. It runs as another user than the server, or as
root without `CAP_SYS_PTRACE` while the server's processes hold capabilities it lacks (a sidecar
or debug container, Docker's and Kubernetes' default capability set), or as the server's user
where Yama's `ptrace_scope` is 1 (Ubuntu's default), which refuses the memory of a process that
is not its descendant.

## Why telemetry breaks
Nothing breaks in the server; the check is blind. The facts the other findings stand on come
from what was refused: the exporter threads' names (interpreter memory, before Python 3.14),
the sockets to the collector (fds), the OTLP settings and preload (environ), whether a process
is Python at all (executable, memory map). Without them no finding can arise, so an empty
report would read as a pass while a master that exports for its workers goes unseen.

## How it is detected
Each read of /proc/<pid>/exe, maps, environ and fd, and each process_vm_readv, that fails with
EACCES or EPERM is recorded in the process's `unreadable` list. Reported for the master and
workers (every process of the tree when none could be told apart), unless the process exited
during the window. Memory alone is not needed from Python 3.14, whose threads carry their names
in /proc. A process that is merely not Python is not this; an interpreter whose
names could not be read though nothing was refused is FC307.

## Fix
Give the check the access the server's processes allow:
- run it as the server's user, or as root with `CAP_SYS_PTRACE` (with Yama's `ptrace_scope` at 1,
  the server's user is not enough for memory: root, or `sudo`);
- Docker: `docker run --cap-add SYS_PTRACE` (with `--pid=container:APP` beside the server);
- Kubernetes: `securityContext.capabilities.add: [\"SYS_PTRACE\"]` for the container that runs
  it, as root, or `kubectl debug --profile=general`;
- or let the check start the server itself: `otel-forkcheck run -- <server command>` runs it as
  its own child, with nothing to be refused.

## Known false alarms
None known: a refused read is read from the kernel's answer. A helper process of the tree run
as another user (a sidecar script started by the master) is reported only when no master or
worker could be told apart.
Precedence: nothing silences it.

## References
- docs/failure-modes.md#reading-the-tree-without-permission (what was measured)
- https://man7.org/linux/man-pages/man2/ptrace.2.html (ptrace access mode checks, which govern these reads)
";

fn check(facts: &Facts) -> Vec<Finding> {
    let Some(snap) = facts.snapshot else {
        return Vec::new();
    };
    let blind: Vec<&Process> = server_processes(snap)
        .filter(|p| !p.gone && !refused(p).is_empty())
        .collect();
    if blind.is_empty() {
        return Vec::new();
    }
    let evidence = blind
        .iter()
        .map(|p| {
            format!(
                "{}: {} refused (permission denied)",
                who(p),
                refused(p)
                    .iter()
                    .map(|u| match u.as_str() {
                        "memory" => "its memory (process_vm_readv)".to_string(),
                        other => format!("/proc/{}/{other}", p.pid),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect();
    let mut pids: Vec<i32> = blind.iter().map(|p| p.pid).collect();
    pids.sort_unstable();
    vec![RULE.finding(
        pids,
        format!(
            "{} of the server's processes could not be read: the check did not see what it judges",
            blind.len()
        ),
        evidence,
        "Run otel-forkcheck as root with CAP_SYS_PTRACE (or as the server's user where Yama's \
         ptrace_scope is 0): `sudo otel-forkcheck ...`, \
         `docker run --cap-add SYS_PTRACE`, `securityContext.capabilities.add: [\"SYS_PTRACE\"]` \
         in Kubernetes, or `kubectl debug --profile=general`; or let it start the server: \
         `otel-forkcheck run -- <server command>`."
            .to_string(),
    )]
}

/// What was refused that the rules need. Memory is not needed from Python 3.14, which gives
/// threads their names in /proc (comm).
fn refused(p: &Process) -> Vec<&String> {
    let named_in_comm = p
        .python
        .version
        .as_deref()
        .and_then(|v| version_lt(v, "3.14"))
        == Some(false);
    p.unreadable
        .iter()
        .filter(|u| !(named_in_comm && u.as_str() == "memory"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::testkit::*;

    fn refused(what: &[&str]) -> Snapshot {
        let mut snap = gunicorn(sdk_threads(100), vec![main_only(200), main_only(201)]);
        snap.processes[1].unreadable = what.iter().map(|s| s.to_string()).collect();
        snap
    }

    #[test]
    fn a_worker_whose_fds_and_memory_were_refused_is_flagged_by_pid() {
        let snap = refused(&["fd", "memory"]);
        let pid = snap.processes[1].pid;
        let found = check(&Facts::from_snapshot(&snap));
        assert_eq!(codes(&found), vec!["FC305"]);
        assert_eq!(found[0].pids, vec![pid]);
        let fd = format!("/proc/{pid}/fd");
        assert!(found[0].evidence[0].contains(&fd), "{:?}", found[0]);
        assert!(
            found[0].evidence[0].contains("its memory"),
            "{:?}",
            found[0]
        );
    }

    #[test]
    fn memory_alone_is_not_needed_from_python_3_14() {
        let mut snap = refused(&["memory"]);
        snap.processes[1].python.version = Some("3.14.0".into());
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
        snap.processes[1].python.version = Some("3.13.1".into());
        assert_eq!(codes(&check(&Facts::from_snapshot(&snap))), vec!["FC305"]);
    }

    #[test]
    fn nothing_refused_is_silent() {
        assert!(check(&Facts::from_snapshot(&refused(&[]))).is_empty());
    }

    #[test]
    fn a_worker_that_exited_during_the_window_is_not_judged() {
        let mut snap = refused(&["fd"]);
        snap.processes[1].gone = true;
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
    }

    #[test]
    fn an_unreadable_helper_counts_only_when_no_role_is_known() {
        let mut snap = refused(&[]);
        snap.processes[2].role = Role::Other;
        snap.processes[2].unreadable = vec!["environ".into()];
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
        for p in snap.processes.iter_mut() {
            p.role = Role::Other;
        }
        let found = check(&Facts::from_snapshot(&snap));
        assert_eq!(found[0].pids, vec![snap.processes[2].pid]);
    }
}
