//! FC107 worker-crash-loop.

use crate::diagnose::{fix, Facts, Finding, Rule, Severity};
use crate::proc::task::split_wait_status;

pub static RULE: Rule = Rule {
    code: "FC107",
    slug: "worker-crash-loop",
    severity: Severity::Error,
    summary: "workers die and are respawned repeatedly during the window",
    doc: DOC,
    silenced_by: &[],
    check,
};

const DOC: &str = "\
## What it means
While the tree was watched, at least two workers exited and the master started new ones.

## Why telemetry breaks
A worker that dies takes its unexported telemetry with it, and a new worker starts from the
master's state again. The usual cause in this area is the gRPC exporter created in the master with
fork support off: workers crash with SIGSEGV on their first export (see FC105). A stuck metric
reader that blocks shutdown until the server's timeout kills the worker looks the same.

## How it is detected
The master's children (/proc/<pid>/task/<tid>/children) are polled during the watch window,
every 10 ms for up to 64 children (less often for more, every 100 ms at most); pids that vanish
and pids that appear are counted, and a child caught as a zombie gives its exit status.

## Fix
Read the server's log for the cause ('Worker (pid:N) was sent SIGSEGV!' for gRPC), fix that, and
set the SDK up after fork.

## Known false alarms
A reload (SIGHUP) during the window. Planned recycling is told apart: gunicorn's
`max_requests`; Celery's `--max-tasks-per-child`, `--max-memory-per-child` and `--autoscale`;
uvicorn's `--limit-max-requests`; Hypercorn's `--max-requests`; uWSGI's `max-requests`,
`max-worker-lifetime`, `reload-on-rss`/`-as` and `cheaper`. Under `check --pid`, which reads an
exit status only when it catches the child as a zombie before its parent reaps it, a server with
any of these set up (the report's `root.recycling` says which, and where it was read) gets no
FC107 at all; `run` reads the exits. A multiprocessing pool's `maxtasksperchild` is set in code
and cannot be read: under `check --pid`, when the statuses caught (`churn.wait_statuses`) all
say a clean exit, one at least, and children were started in their place, the exits are
recycling; when none was caught (a parent that reaps at once), they still count. Under `run`,
a child seen leaving with exit status 0 (read from its zombie before the master reaped it), or a
Celery pool child leaving with billiard's recycle status 155 while its parent lived on, is
recycling and does not count. One reaped before its status could be read does not count
either when it was replaced while its parent lived on and every status that was read says
recycling, with one read at least or recycling set up; with no status read and no recycling set
up, or one read that says a crash (a signal, another code), it still counts. Nor are exits, with
none started in their place, of the children of a command that ended by itself under `run` (a
batch program winding its pool down). An `rq worker` forks a work horse per job, which leaves
when its job is done: its children coming and going is how it works. Only a horse killed by a
crash signal (SIGSEGV, SIGABRT, SIGBUS, SIGILL, SIGFPE, SIGSYS), which `run` reads, counts
there; under `check --pid` an `rq worker`'s churn gives no FC107 (the workers of `rq
worker-pool` do count).
Precedence: nothing silences it.

## References
- docs/failure-modes.md#grpc-fork-crash-loop (the usual cause)
- docs/failure-modes.md#shutdown-and-data-lost-on-exit (workers killed at stop)
- https://github.com/grpc/grpc/issues/22624 (gRPC's after-fork handling in the child)
- https://github.com/grpc/grpc/blob/master/doc/fork_support.md (gRPC's fork support, GRPC_ENABLE_FORK_SUPPORT)
";

/// billiard's exit status for a pool process that leaves to be replaced (`EX_RECYCLE`).
const BILLIARD_EX_RECYCLE: i32 = 155;

/// One exit can be a planned restart; two in one window is a pattern.
const MIN_EXITS: usize = 2;

/// Signals that end a process that crashed (they dump core by default), as opposed to one that
/// was stopped (SIGTERM, SIGKILL: RQ kills a horse whose job timed out).
const CRASH_SIGNALS: [i32; 6] = [4, 6, 7, 8, 11, 31];

fn celery(snap: &crate::snapshot::Snapshot) -> bool {
    snap.framework == crate::snapshot::Framework::Celery
}

/// One child's exit, as far as it was read.
struct Exit {
    pid: i32,
    /// Exit status, or the signal that killed it, when read from its zombie.
    status: Option<i32>,
    signal: Option<i32>,
    /// Replaced while its parent lived on.
    recycled: bool,
}

/// The pids of exits that were recycling, not crashes. Exit status 0 is (Pool(maxtasksperchild=
/// ...)), and so is a Celery pool child leaving with billiard's EX_RECYCLE (155) to be replaced
/// (--max-tasks-per-child). Parents reap fast and some statuses are never read: when every one
/// read says recycling (one at least, or recycling set up) and none a crash, a replaced child
/// whose status was not read left the same way.
fn planned_exits(exits: &[Exit], celery: bool, configured: bool) -> Vec<i32> {
    let recycle_status = |e: &Exit| {
        e.status == Some(0) || (celery && e.recycled && e.status == Some(BILLIARD_EX_RECYCLE))
    };
    let unread = |e: &Exit| e.status.is_none() && e.signal.is_none();
    let mut read = exits.iter().filter(|e| !unread(e)).peekable();
    let planned = (read.peek().is_some() || configured) && read.all(recycle_status);
    exits
        .iter()
        .filter(|e| recycle_status(e) || (planned && e.recycled && unread(e)))
        .map(|e| e.pid)
        .collect()
}

fn check(facts: &Facts) -> Vec<Finding> {
    let Some(snap) = facts.snapshot else {
        return Vec::new();
    };
    let mut churn = snap.churn.clone();
    if churn.per_job {
        // Work horses leave by design: only one seen crashing counts, and `run` alone sees it.
        let crashed = |pid: &i32| {
            facts.ledger.is_some_and(|l| {
                l.children.iter().any(|c| {
                    c.pid == *pid && c.exit_signal.is_some_and(|s| CRASH_SIGNALS.contains(&s))
                })
            })
        };
        churn.exited.retain(crashed);
    }
    // `run` reads each child's exit from its zombie; `check --pid` only those it catches, and
    // with recycling set up (`root.recycling`) it judges no exit.
    let exits: Vec<Exit> = match facts.ledger {
        Some(l) => l
            .children
            .iter()
            .map(|c| Exit {
                pid: c.pid,
                status: c.exit_status,
                signal: c.exit_signal,
                recycled: c.recycled,
            })
            .collect(),
        None if snap.recycling.is_some() => return Vec::new(),
        None => churn
            .exited
            .iter()
            .map(|&pid| {
                let code = churn.wait_statuses.iter().find(|(p, _)| *p == pid);
                let (status, signal) = code.map_or((None, None), |(_, c)| split_wait_status(*c));
                Exit {
                    pid,
                    status,
                    signal,
                    recycled: !churn.spawned.is_empty(),
                }
            })
            .collect(),
    };
    let planned = planned_exits(&exits, celery(snap), snap.recycling.is_some());
    churn.exited.retain(|p| !planned.contains(p));
    // A command that ended by itself (a batch program) winds its children down as it ends:
    // exits with none started in their place are its end, not a crash loop.
    let ended = facts
        .ledger
        .and_then(|l| l.stop.as_ref())
        .is_some_and(|s| s.ended.is_some());
    if ended && churn.spawned.is_empty() {
        return Vec::new();
    }
    if churn.exited.len() < MIN_EXITS {
        return Vec::new();
    }
    let list = |pids: &[i32]| {
        pids.iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let secs = snap.window_ms as f64 / 1000.0;
    let mut fix = String::new();
    if snap
        .master()
        .and_then(|m| m.env.grpc_fork_support.as_deref())
        .is_some()
    {
        fix.push_str("GRPC_ENABLE_FORK_SUPPORT is set in the master's environment: see FC105.\n\n");
    }
    fix.push_str(&fix::init_after_fork(snap.framework));
    let title = match churn.per_job {
        true => format!(
            "{} work horses crashed (killed by a signal) in {:.1} s",
            churn.exited.len(),
            secs
        ),
        false => format!(
            "{} workers exited and {} were started in {:.1} s",
            churn.exited.len(),
            churn.spawned.len(),
            secs
        ),
    };
    vec![RULE.finding(
        churn.exited.iter().chain(&churn.spawned).copied().collect(),
        title,
        vec![
            format!("exited during the window: {}", list(&churn.exited)),
            format!("started during the window: {}", list(&churn.spawned)),
            format!(
                "children of pid {} polled {} times over {:.1} s",
                snap.root_pid, churn.polls, secs
            ),
        ],
        fix,
    )]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::testkit::*;

    #[test]
    fn repeated_exits_are_a_crash_loop() {
        let mut snap = gunicorn(main_only(100), vec![main_only(200)]);
        snap.churn.exited = vec![101, 105];
        snap.churn.spawned = vec![105, 106];
        snap.churn.polls = 30;
        let found = check(&Facts::from_snapshot(&snap));
        assert_eq!(codes(&found), vec!["FC107"]);
        assert_eq!(found[0].pids, vec![101, 105, 106]);
        assert!(found[0].title.starts_with("2 workers exited"));
    }

    /// `check --pid` catches a few zombies: Pool(maxtasksperchild=...) leaves with 0.
    #[test]
    fn clean_statuses_caught_from_zombies_are_recycling_and_a_crash_still_counts() {
        let mut snap = gunicorn(main_only(100), vec![main_only(200)]);
        snap.framework = crate::snapshot::Framework::Multiprocessing;
        snap.churn.exited = vec![101, 102, 103];
        snap.churn.spawned = vec![104, 105, 106];
        snap.churn.wait_statuses = vec![(102, 0)];
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
        // SIGABRT (6) caught for one: a crash; the one not caught still counts with it.
        snap.churn.wait_statuses = vec![(102, 0), (103, 6)];
        let found = check(&Facts::from_snapshot(&snap));
        assert_eq!(codes(&found), vec!["FC107"]);
        assert!(
            found[0].evidence[0].ends_with("101, 103"),
            "{:?}",
            found[0].evidence
        );
        // Exit status 1 is no recycling either.
        snap.churn.wait_statuses = vec![(102, 1 << 8)];
        assert_eq!(codes(&check(&Facts::from_snapshot(&snap))), vec!["FC107"]);
        // Nothing caught: as before.
        snap.churn.wait_statuses.clear();
        assert_eq!(codes(&check(&Facts::from_snapshot(&snap))), vec!["FC107"]);
        // Clean exits with none started in their place: not recycling.
        snap.churn.wait_statuses = vec![(101, 0), (102, 0), (103, 0)];
        snap.churn.spawned.clear();
        assert!(
            check(&Facts::from_snapshot(&snap)).is_empty(),
            "clean exits are no crash"
        );
    }

    #[test]
    fn clean_recycling_seen_by_run_is_not() {
        let mut snap = gunicorn(main_only(100), vec![main_only(200)]);
        snap.churn.exited = vec![101, 105];
        snap.churn.spawned = vec![105, 106];
        let mut l = crate::ledger::Ledger::default();
        let child = |pid, st| crate::ledger::ChildRecord {
            pid,
            exit_status: st,
            ..Default::default()
        };
        l.children = vec![child(101, Some(0)), child(105, Some(0))];
        assert!(check(&Facts::new(Some(&snap), Some(&l))).is_empty());
        l.children[0].exit_status = None;
        l.children[1].exit_status = Some(1);
        assert_eq!(
            codes(&check(&Facts::new(Some(&snap), Some(&l)))),
            vec!["FC107"]
        );
    }

    #[test]
    fn recycled_children_reaped_unread_follow_the_statuses_that_were_read() {
        let mut snap = gunicorn(main_only(100), vec![main_only(200)]);
        snap.framework = crate::snapshot::Framework::Celery;
        snap.churn.exited = vec![101, 102];
        snap.churn.spawned = vec![103];
        let mut l = crate::ledger::Ledger::default();
        let child = |pid, st: Option<i32>| crate::ledger::ChildRecord {
            pid,
            exit_status: st,
            recycled: true,
            ..Default::default()
        };
        // Two reaped before their status was read; the third left with billiard's 155.
        l.children = vec![child(101, None), child(102, None), child(103, Some(155))];
        assert!(check(&Facts::new(Some(&snap), Some(&l))).is_empty());
        // Nothing read: no evidence of planned recycling, unless Celery was told to recycle.
        l.children[2].exit_status = None;
        assert_eq!(
            codes(&check(&Facts::new(Some(&snap), Some(&l)))),
            vec!["FC107"]
        );
        snap.recycling = Some(crate::snapshot::Recycling {
            setting: "max_tasks_per_child 1".into(),
            source: "--max-tasks-per-child on the command line".into(),
        });
        assert!(check(&Facts::new(Some(&snap), Some(&l))).is_empty());
        // One read crash (SIGSEGV) among them: the unread ones count.
        l.children[2].exit_signal = Some(11);
        assert_eq!(
            codes(&check(&Facts::new(Some(&snap), Some(&l)))),
            vec!["FC107"]
        );
        // Not known as recycled (its parent did not live on): it counts.
        l.children[2] = child(103, Some(155));
        l.children[0].recycled = false;
        l.children[1].recycled = false;
        assert_eq!(
            codes(&check(&Facts::new(Some(&snap), Some(&l)))),
            vec!["FC107"]
        );
    }

    #[test]
    fn a_batch_program_winding_its_pool_down_is_not() {
        let mut snap = gunicorn(main_only(100), vec![main_only(200)]);
        snap.churn.exited = vec![101, 102, 103];
        let mut l = crate::ledger::Ledger::default();
        l.stop = Some(crate::ledger::StopRecord {
            ended: Some("exit status 0".into()),
            ..Default::default()
        });
        assert!(check(&Facts::new(Some(&snap), Some(&l))).is_empty());
        // respawns while it ran are still a loop
        snap.churn.spawned = vec![104, 105];
        assert_eq!(
            codes(&check(&Facts::new(Some(&snap), Some(&l)))),
            vec!["FC107"]
        );
    }

    /// gunicorn with `--max-requests 20` under load (recorded: 4 exits and 4 starts in a 5 s
    /// `check --pid`, a false crash loop before): planned, so no FC107 without exit statuses.
    #[test]
    fn recycling_set_up_is_no_crash_loop_under_check() {
        let mut snap = gunicorn(main_only(100), vec![main_only(200)]);
        snap.churn.exited = vec![14092, 14095, 14708, 14718];
        snap.churn.spawned = vec![14708, 14718, 14934, 14945];
        assert_eq!(codes(&check(&Facts::from_snapshot(&snap))), vec!["FC107"]);
        snap.recycling = Some(crate::snapshot::Recycling {
            setting: "max_requests 20".into(),
            source: "--max-requests on the command line".into(),
        });
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
        // Under `run` a crash it read still counts.
        let mut l = crate::ledger::Ledger::default();
        l.children = [14092, 14095]
            .map(|pid| crate::ledger::ChildRecord {
                pid,
                exit_signal: Some(11),
                recycled: true,
                ..Default::default()
            })
            .to_vec();
        assert_eq!(
            codes(&check(&Facts::new(Some(&snap), Some(&l)))),
            vec!["FC107"]
        );
    }

    /// An `rq worker`'s horses leave after each job (recorded: 12 in a 5 s `check --pid` of a
    /// busy worker, a false crash loop before); one killed by SIGSEGV, which `run` reads, counts.
    #[test]
    fn work_horses_leaving_are_not_unless_they_crash() {
        let mut snap = gunicorn(main_only(100), vec![main_only(200)]);
        snap.framework = crate::snapshot::Framework::Rq;
        snap.churn.per_job = true;
        snap.churn.exited = (101..113).collect();
        snap.churn.spawned = (102..114).collect();
        snap.churn.polls = 50;
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
        let mut l = crate::ledger::Ledger::default();
        let horse = |pid, status, signal| crate::ledger::ChildRecord {
            pid,
            exit_status: status,
            exit_signal: signal,
            per_job: true,
            ..Default::default()
        };
        // Jobs done (0), a job failed (1), a job timed out (SIGKILL from the worker).
        l.children = vec![horse(101, Some(0), None), horse(102, Some(1), None)];
        l.children.push(horse(103, None, Some(9)));
        assert!(check(&Facts::new(Some(&snap), Some(&l))).is_empty());
        l.children.push(horse(104, None, Some(11)));
        l.children.push(horse(105, None, Some(6)));
        let found = check(&Facts::new(Some(&snap), Some(&l)));
        assert_eq!(codes(&found), vec!["FC107"]);
        assert!(
            found[0].title.starts_with("2 work horses crashed"),
            "{}",
            found[0].title
        );
        assert!(found[0].pids.contains(&104) && found[0].pids.contains(&105));
        assert!(!found[0].pids.contains(&101));
    }

    #[test]
    fn one_planned_restart_is_not() {
        let mut snap = gunicorn(main_only(100), vec![main_only(200)]);
        snap.churn.exited = vec![101];
        snap.churn.spawned = vec![105];
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
    }
}
