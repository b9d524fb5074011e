//! FC210 worker-exit-blocked.

use crate::diagnose::{fix, Facts, Finding, Rule, Severity};
use crate::ledger::WorkerExit;

pub static RULE: Rule = Rule {
    code: "FC210",
    slug: "worker-exit-blocked",
    severity: Severity::Error,
    summary: "a worker needed longer than the graceful timeout to exit (exporter shutdown blocked) or was killed, losing its last data",
    doc: DOC,
    silenced_by: &[],
    check,
};

const DOC: &str = "\
## What it means
After the graceful stop (`run` sends SIGTERM to the master), a worker did not leave by itself in
time: the server SIGKILLed it when its graceful timeout ran out (gunicorn's `graceful_timeout`,
uWSGI's `worker-reload-mercy`), or it was still there when `run` killed the group after
`--grace`, or it left only after the server's graceful timeout.

## Why telemetry breaks
A worker's last data leaves in its exit flush (the SDK's atexit handler, a `worker_exit` hook).
When that flush blocks (joining an exporter thread that does not exist in the worker, measured
~30 s for uWSGI workers without fork hooks; waiting for a lock copied mid-export by fork
(FC104); retrying a collector that does not answer), the server kills the worker before the
flush ends and everything recorded since the last export is lost. Deployments stop the same
way (a pod's termination grace period), so the loss is not a test artefact.

## How it is detected
`run` polls the master's children about every 50 ms from the SIGTERM on, and keeps for each
worker the time from the SIGTERM until it was gone and, when its zombie was seen before it was
reaped, its exit status or the signal that killed it. Reported: a worker killed by SIGKILL, one
still alive when `run` SIGKILLed the group, and one that left after the server's graceful
timeout (read from the command line, its environment or its config file; defaults 30 s for
gunicorn, 60 s for uWSGI). What the server printed about killing workers is quoted. `check`
does not report it: a worker in shutdown cannot be told from /proc (nothing marks Python's exit
handlers running, and a main thread waiting on a lock looks the same in a request); FC104 (a
metric reader blocked without timeout) is the warning sign there.

## Fix
Make the exit flush finish within the graceful timeout, and flush where it can run:
- uWSGI: set the SDK up after fork (`lazy-apps = true` or a `@postfork` function), so the
  workers' exporter threads exist and `shutdown()` does not wait 30 s for a thread that is not
  there.
- Any server: no SDK set-up in the master before fork (FC101), so no lock is inherited held.
- Keep the graceful timeout above what a flush can take (the exporters' timeout, 10 s by
  default), and lower the exporters' timeout (`OTEL_EXPORTER_OTLP_TIMEOUT`) if the collector
  may be slow.

## Known false alarms
A worker busy with a long request at the stop is killed for that, not for its telemetry: the
evidence gives the exit time; compare it with the request. A worker SIGKILLed by someone else
during the stop.
Precedence: nothing silences it.

## References
- docs/failure-modes.md#shutdown-and-data-lost-on-exit (what was measured)
- docs/failure-modes.md#uwsgi-without-fork-hooks (the 30 s exit of uWSGI workers)
- https://docs.gunicorn.org/en/stable/settings.html#graceful-timeout (gunicorn's graceful_timeout)
- https://uwsgi-docs.readthedocs.io/en/latest/Options.html#worker-reload-mercy (uWSGI's worker-reload-mercy)
";

/// A worker seen gone this close to the graceful timeout was killed at it.
const SLACK_MS: u64 = 250;

fn check(facts: &Facts) -> Vec<Finding> {
    let Some(stop) = facts.ledger.and_then(|l| l.stop.as_ref()) else {
        return Vec::new();
    };
    let timeout = facts.snapshot.and_then(|s| s.graceful_timeout.as_ref());
    let late = |e: &WorkerExit| timeout.is_some_and(|t| e.after_ms + SLACK_MS >= t.ms);
    let blocked: Vec<&WorkerExit> = stop
        .exits
        .iter()
        .filter(|e| e.killed() || late(e))
        .collect();
    if blocked.is_empty() {
        return Vec::new();
    }
    let mut evidence: Vec<String> = blocked
        .iter()
        .map(|e| {
            format!(
                "pid {} left {:.2} s after SIGTERM to the master (pid {}): {}",
                e.pid,
                e.after_ms as f64 / 1000.0,
                stop.master,
                e.how()
            )
        })
        .collect();
    match timeout {
        Some(t) => evidence.push(format!(
            "the server's graceful timeout is {:.1} s ({})",
            t.ms as f64 / 1000.0,
            t.source
        )),
        None => evidence.push("the server's graceful timeout is not known".into()),
    }
    let others: Vec<String> = stop
        .exits
        .iter()
        .filter(|e| !blocked.iter().any(|b| b.pid == e.pid))
        .map(|e| format!("{} ({:.2} s)", e.pid, e.after_ms as f64 / 1000.0))
        .collect();
    if !others.is_empty() {
        evidence.push(format!(
            "the other workers left in time: {}",
            others.join(", ")
        ));
    }
    evidence.extend(
        stop.notes
            .iter()
            .filter(|n| !n.contains("Overriding of current"))
            .map(|n| format!("the server said: {n}")),
    );
    let killed = blocked.iter().filter(|e| e.killed()).count();
    let slowest = blocked.iter().map(|e| e.after_ms).max().unwrap_or(0);
    let framework = facts.framework();
    vec![RULE.finding(
        blocked.iter().map(|e| e.pid).collect(),
        format!(
            "{} worker(s) did not finish their exit in time after the graceful stop ({killed} \
             killed, the last gone {:.1} s after SIGTERM): what they recorded since their last \
             export is lost",
            blocked.len(),
            slowest as f64 / 1000.0
        ),
        evidence,
        format!(
            "Keep the exit flush short enough to finish within the graceful timeout:\n\n{}",
            fix::init_after_fork(framework)
        ),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::testkit::*;
    use crate::ledger::{Ledger, StopRecord};

    fn ledger(exits: Vec<WorkerExit>, graceful: bool) -> Ledger {
        let mut l = Ledger::default();
        l.stop = Some(StopRecord {
            master: 100,
            requested_ms: NOW_MS,
            graceful,
            waited_ms: 4_000,
            notes: vec!["worker 1 (pid: 101) is taking too much time to die...NO MERCY !!!".into()],
            ended: None,
            exits,
        });
        l
    }

    fn exit(pid: i32, after_ms: u64, status: Option<i32>, signal: Option<i32>) -> WorkerExit {
        WorkerExit {
            pid,
            after_ms,
            exit_status: status,
            exit_signal: signal,
            killed_by_run: false,
        }
    }

    fn uwsgi_snap(timeout_ms: u64) -> Snapshot {
        let mut snap = gunicorn(main_only(100), vec![main_only(200), main_only(300)]);
        snap.framework = Framework::Uwsgi;
        snap.graceful_timeout = Some(GracefulTimeout {
            ms: timeout_ms,
            source: "worker-reload-mercy in broken.ini".into(),
        });
        snap
    }

    #[test]
    fn killed_and_late_workers_are_named_with_their_exit_times() {
        let snap = uwsgi_snap(3_000);
        // 101 SIGKILLed at 3.1 s; 102 reaped unseen at 3.05 s (at the timeout); 103 in time.
        let l = ledger(
            vec![
                exit(101, 3_100, None, Some(9)),
                exit(102, 3_050, None, None),
                exit(103, 200, Some(0), None),
            ],
            true,
        );
        let found = check(&Facts::new(Some(&snap), Some(&l)));
        assert_eq!(codes(&found), vec!["FC210"]);
        assert_eq!(found[0].pids, vec![101, 102]);
        assert!(found[0].title.contains("1 killed"), "{}", found[0].title);
        assert!(
            found[0].title.contains("3.1 s after SIGTERM"),
            "{}",
            found[0].title
        );
        assert!(found[0].evidence[0].contains("pid 101 left 3.10 s after"));
        assert!(found[0].evidence[0].contains("killed by SIGKILL"));
        assert!(found[0].evidence[1].contains("exit status not seen"));
        assert!(found[0].evidence[2].contains("3.0 s (worker-reload-mercy"));
        assert!(found[0].evidence[3].contains("103 (0.20 s)"));
        assert!(found[0].evidence[4].contains("NO MERCY"));
        assert!(found[0].fix.contains("postfork"), "{}", found[0].fix);
    }

    #[test]
    fn still_running_at_runs_sigkill_is_named_without_a_known_timeout() {
        let snap = gunicorn(main_only(100), vec![main_only(200)]);
        let mut e = exit(101, 35_000, None, Some(9));
        e.killed_by_run = true;
        let l = ledger(vec![e], false);
        let found = check(&Facts::new(Some(&snap), Some(&l)));
        assert_eq!(found[0].pids, vec![101]);
        assert!(found[0].evidence[0].contains("run SIGKILLed the group"));
        assert!(found[0].evidence[1].contains("not known"));
    }

    #[test]
    fn prompt_exits_and_no_stop_pass() {
        let snap = uwsgi_snap(3_000);
        let l = ledger(
            vec![
                exit(101, 400, Some(0), None),
                exit(102, 2_500, Some(0), None),
            ],
            true,
        );
        assert!(check(&Facts::new(Some(&snap), Some(&l))).is_empty());
        assert!(check(&Facts::new(Some(&snap), Some(&Ledger::default()))).is_empty());
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
    }

    #[test]
    fn exits_from_the_tracked_children() {
        use crate::ledger::{worker_exits, ChildRecord};
        let child = |pid, exited_ms: Option<u64>, left_before_stop| ChildRecord {
            pid,
            exited_ms,
            exit_signal: (pid == 101).then_some(9),
            left_before_stop,
            ..ChildRecord::default()
        };
        let stop = StopRecord {
            master: 100,
            requested_ms: 10_000,
            graceful: false,
            waited_ms: 5_000,
            ..StopRecord::default()
        };
        let exits = worker_exits(
            &[
                child(101, Some(13_000), false),
                child(102, None, false),
                child(103, Some(9_000), true),
                child(104, Some(10_300), false),
            ],
            &stop,
        );
        let got: Vec<(i32, u64, bool)> = exits
            .iter()
            .map(|e| (e.pid, e.after_ms, e.killed()))
            .collect();
        assert_eq!(
            got,
            vec![(101, 3_000, true), (102, 5_000, true), (104, 300, false)]
        );
        assert!(exits[1].killed_by_run);
        // A command that ended by itself had no graceful stop.
        let ended = StopRecord {
            ended: Some("exit status 0".into()),
            ..stop
        };
        assert!(worker_exits(&[child(102, None, false)], &ended).is_empty());
    }
}
