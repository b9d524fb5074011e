//! FC105 grpc-fork-unsafe.

use crate::diagnose::evidence::{age_s, judgeable, thread, who};
use crate::diagnose::{fix, Facts, Finding, Rule, Severity};
use crate::snapshot::{Process, ThreadKind};

pub static RULE: Rule = Rule {
    code: "FC105",
    slug: "grpc-fork-unsafe",
    severity: Severity::Error,
    summary: "gRPC exporter initialised in master with fork support off / gRPC threads missing in workers",
    doc: DOC,
    silenced_by: &[],
    check,
};

const DOC: &str = "\
## What it means
The master created a gRPC channel (the OTLP/gRPC exporter) before forking, and either gRPC's fork
support is turned off (GRPC_ENABLE_FORK_SUPPORT=0/false) or the workers have no gRPC threads.

## Why telemetry breaks
gRPC's C core runs its own threads and holds a connection. With fork support on (the default in
grpcio) it shuts them down before fork and re-creates them in each child. With it off, the child
inherits a channel whose threads do not exist: workers crash with SIGSEGV when they export
('Worker (pid:N) was sent SIGSEGV!'), are respawned, and crash again (see FC107).

## How it is detected
gRPC names its C threads itself, so /proc/<pid>/task/<tid>/comm shows them on every Python:
grpc_global_tim, event_engine, lifeguard. The master has them; GRPC_ENABLE_FORK_SUPPORT is read
from its environment (as its code left it, from memory; else /proc/<pid>/environ); forked
workers older than 2 s without any gRPC thread are listed.
Only when at least one worker is a fork of the master: spawned workers inherit no channel.

## Fix
Create the gRPC exporter after fork, leave fork support on, or use the HTTP exporter.

## Known false alarms
A worker that has not exported yet may not have started gRPC threads when the SDK was set up
lazily; with the SDK set up in the master they appear right at fork.
Precedence: nothing silences it.

## References
- docs/failure-modes.md#grpc-fork-crash-loop (fork support off)
- docs/failure-modes.md#grpc-with-fork-support-on (fork support on)
- https://github.com/grpc/grpc/blob/master/doc/fork_support.md (gRPC's fork support, GRPC_ENABLE_FORK_SUPPORT)
- https://github.com/grpc/grpc/issues/22624 (gRPC's after-fork handling in the child)
- https://github.com/open-telemetry/opentelemetry-python-contrib/issues/676 (gunicorn support for opentelemetry-instrument)
";

fn fork_support_off(p: &Process) -> Option<&str> {
    let v = p.env.grpc_fork_support.as_deref()?;
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "0" | "false" | "no" | "off"
    )
    .then_some(v)
}

fn check(facts: &Facts) -> Vec<Finding> {
    let Some((snap, master)) = facts.tree_master() else {
        return Vec::new();
    };
    let Some(grpc) = master.threads_of(ThreadKind::Grpc).next() else {
        return Vec::new();
    };
    if !snap.master_forked() {
        return Vec::new();
    }
    let mut evidence = vec![format!(
        "{} runs {}: a gRPC channel was created before fork",
        who(master),
        thread(grpc)
    )];
    let mut pids = vec![master.pid];
    if let Some(v) = fork_support_off(master) {
        evidence.push(format!(
            "{}: GRPC_ENABLE_FORK_SUPPORT={v}",
            master.env.place(master.pid)
        ));
    }
    for w in snap.forked_workers() {
        if judgeable(snap, w) && w.threads_of(ThreadKind::Grpc).next().is_none() {
            pids.push(w.pid);
            evidence.push(format!(
                "{} has no gRPC thread (started {:.1} s ago)",
                who(w),
                age_s(snap, w)
            ));
        }
    }
    if evidence.len() == 1 {
        // gRPC in the master with fork support on and threads re-created: works (mode 9).
        return Vec::new();
    }
    vec![RULE.finding(
        pids,
        "the gRPC exporter was created in the master and is not safe across fork".to_string(),
        evidence,
        fix::grpc_fork(snap.framework),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::testkit::*;

    fn grpc_tree(worker_grpc: bool, fork_support: Option<&str>) -> Snapshot {
        let mut master = sdk_threads(100);
        master.push(th(110, "grpc_global_tim", ThreadKind::Grpc));
        let mut worker = sdk_threads(200);
        if worker_grpc {
            worker.push(th(210, "grpc_global_tim", ThreadKind::Grpc));
        }
        let mut snap = gunicorn(master, vec![worker]);
        snap.processes[0].env.grpc_fork_support = fork_support.map(str::to_string);
        snap
    }

    #[test]
    fn fork_support_off_is_flagged() {
        let found = check(&Facts::from_snapshot(&grpc_tree(false, Some("0"))));
        assert_eq!(codes(&found), vec!["FC105"]);
        assert_eq!(found[0].pids, vec![100, 101]);
        assert!(found[0]
            .evidence
            .iter()
            .any(|e| e.contains("GRPC_ENABLE_FORK_SUPPORT=0")));
    }

    #[test]
    fn grpc_threads_recreated_in_workers_pass() {
        assert!(check(&Facts::from_snapshot(&grpc_tree(true, None))).is_empty());
        assert!(check(&Facts::from_snapshot(&grpc_tree(true, Some("1")))).is_empty());
    }
}
