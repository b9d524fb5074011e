//! FC306 workers-not-judged.

use crate::diagnose::evidence::{age_s, judgeable, who, MIN_WORKER_AGE_S};
use crate::diagnose::{Facts, Finding, Rule, Severity};
use crate::snapshot::{Framework, Process, Role, Snapshot};

pub static RULE: Rule = Rule {
    code: "FC306",
    slug: "workers-not-judged",
    severity: Severity::Error,
    summary: "no worker was up long enough to be judged (too young, or recycled faster than it starts): the check did not see what it judges",
    doc: DOC,
    silenced_by: &["FC107", "FC305"],
    check,
};

const DOC: &str = "\
## What it means
`check` saw workers, or saw them come and go during the window, but none had been up 2 s by
the end of it and was staying. A worker that young may still be importing the application and
setting its SDK up, and one that is leaving (its interpreter exiting) shuts its SDK down thread by
thread, so the findings about a worker's own SDK, exporter and listener (FC102, FC105, FC108,
FC109) leave both alone. With no other worker, nothing decided the verdict.

## Why telemetry breaks
Nothing breaks because of it; the check is blind to the workers. Two ways get there:
- workers started during the window replaced every worker seen at its start, so the ones left
  at its end are young (a tree checked right after it started is given the time first: `check`
  waits, at most 2 s, until its youngest child has been up 2 s);
- workers are recycled faster than they start: uvicorn's `limit_max_requests` of a few requests
  (`uvicorn.run(..., workers=N, limit_max_requests=3)`), gunicorn's `--max-requests` under heavy
  traffic, `--max-tasks-per-child 1` on a busy queue. Each spawned worker then lives about its own
  start-up, and the one seen at the end is always the newest.
A broken set-up (an SDK only in the parent of spawned workers) would pass such a check.

## How it is detected
The master's children are polled during the window (every 10 ms for up to 64 children): each pid
that appeared or left is recorded. When the window ends with workers that all started in it,
the polling goes on (at most 2 s) until one has been up 2 s, or none is left. Then:
- the master runs an SDK thread (metric reader, span or log processor) or gRPC's, so a worker
  that was up would be judged against it (a master without them leaves nothing a young worker
  could change: a worker with or without an SDK of its own passes);
- every worker of the tree is younger than 2 s or leaving (`python.exiting`: its main thread had
  ended, `threading._SHUTTING_DOWN`), and there is one at least or one was started during the
  window.
Not for `run` and `receive --pid`, which judge what each worker exports however briefly it
lives, nor for an RQ worker, whose work horses live one job each by design.

## Fix
Look where short-lived workers can be judged, or let them live:
- `otel-forkcheck run -- <server command>` starts the server and judges what every worker
  exports; `otel-forkcheck receive --pid <master>` does the same for a server you start, pointed
  at it;
- check again when the workers have settled: a window of a few seconds judges every worker
  seen at its start that is still there at its end;
- while checking, raise a recycling limit of a few requests (`limit_max_requests`,
  `--max-requests`, `max-tasks-per-child`).

## Known false alarms
A correct set-up fails too when every worker it has at the end is younger than 2 s: the check
cannot tell it from a broken one, and says so rather than pass; `run` and `receive --pid` can.
Measured with uvicorn `limit_max_requests=20` under load and the SDK in every worker. A tree
that only starts short-lived helper processes (a shell command run by the master) has no
workers and is not this.
Precedence: FC107 (workers that crash and are respawned) and FC305 (workers that could not be read)
say why the workers were not judged, and silence it for the pids they name.

## References
- docs/failure-modes.md#workers-too-short-lived-to-judge (what was measured with uvicorn)
- docs/failure-modes.md#spawn-servers (why a spawned worker is judged only once it is up)
- https://www.uvicorn.org/settings/#resource-limits (limit_max_requests)
";

/// Servers whose workers the tree rules judge; an RQ worker's horses live one job each.
fn serves_with_workers(snap: &Snapshot) -> bool {
    match snap.framework {
        Framework::Rq => false,
        Framework::Unknown => snap.master().is_some(),
        _ => true,
    }
}

/// The root runs a thread a worker that is up would be judged against: an SDK thread (metric
/// reader, span or log processor) or gRPC's.
fn root_has_sdk(snap: &Snapshot) -> bool {
    snap.processes
        .iter()
        .find(|p| p.pid == snap.root_pid)
        .is_some_and(|r| r.exporter_threads().next().is_some())
}

fn check(facts: &Facts) -> Vec<Finding> {
    let Some(snap) = facts.snapshot else {
        return Vec::new();
    };
    // A receiver judges what each worker exports, however young.
    if facts.ledger.is_some()
        || snap.churn.per_job
        || !serves_with_workers(snap)
        || !root_has_sdk(snap)
    {
        return Vec::new();
    }
    let workers: Vec<&Process> = snap
        .processes
        .iter()
        .filter(|p| p.role == Role::Worker)
        .collect();
    if workers.iter().any(|w| judgeable(snap, w)) {
        return Vec::new();
    }
    let churn = &snap.churn;
    if workers.is_empty() && churn.spawned.is_empty() {
        return Vec::new();
    }
    let secs = snap.window_ms as f64 / 1000.0;
    let mut evidence: Vec<String> = workers
        .iter()
        .map(|w| {
            let leaving = match w.python.exiting {
                true => ", leaving (its interpreter was exiting)",
                false => "",
            };
            format!(
                "{} had been up {:.1} s at the end of the window{leaving}",
                who(w),
                age_s(snap, w)
            )
        })
        .collect();
    let leaving = workers.iter().filter(|w| w.python.exiting).count();
    let mut parts = Vec::new();
    if workers.len() > leaving {
        parts.push(format!(
            "{} worker(s) younger than {MIN_WORKER_AGE_S:.0} s",
            workers.len() - leaving
        ));
    }
    if leaving > 0 {
        parts.push(format!("{leaving} leaving, its interpreter exiting"));
    }
    if workers.is_empty() {
        parts.push("none was up at the end".to_string());
    }
    if !churn.spawned.is_empty() {
        let clean = churn
            .wait_statuses
            .iter()
            .filter(|(p, c)| *c == 0 && churn.exited.contains(p))
            .count();
        parts.push(format!(
            "{} started and {} exited during the {secs:.1} s window",
            churn.spawned.len(),
            churn.exited.len()
        ));
        evidence.push(format!(
            "started during the window: {}; exited: {} ({clean} of them with status 0: \
             recycled)",
            list(&churn.spawned),
            list(&churn.exited)
        ));
    }
    if let Some(rc) = &snap.recycling {
        evidence.push(format!("recycling set up: {} ({})", rc.setting, rc.source));
    }
    let pids = workers
        .iter()
        .map(|w| w.pid)
        .chain(churn.spawned.iter().copied())
        .chain(churn.exited.iter().copied())
        .collect();
    vec![RULE.finding(
        pids,
        format!(
            "no worker was up {MIN_WORKER_AGE_S:.0} s to be judged ({}): the check did not see \
             what it judges",
            parts.join("; ")
        ),
        evidence,
        format!(
            "Judge what the workers export, however briefly each lives: `otel-forkcheck run -- \
             <server command>`, or `otel-forkcheck receive --pid {root}` with the server's \
             exporters pointed at it. Workers recycled after a few requests \
             (limit_max_requests, --max-requests, max-tasks-per-child): raise the limit while \
             checking.",
            root = snap.root_pid
        ),
    )]
}

fn list(pids: &[i32]) -> String {
    match pids.len() {
        0 => "none".to_string(),
        n if n > 12 => format!(
            "{} and {} more",
            pids[..12]
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            n - 12
        ),
        _ => pids
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::testkit::*;
    use crate::diagnose::{diagnose, Facts};

    /// A uvicorn parent with the SDK and two spawned workers started `age_ms` before the end of
    /// the window.
    fn uvicorn(age_ms: u64) -> Snapshot {
        let mut snap = gunicorn(sdk_threads(100), vec![main_only(200), main_only(300)]);
        snap.framework = Framework::Uvicorn;
        let end = snap.taken_at_ms + snap.window_ms;
        for w in &mut snap.processes[1..] {
            w.started_by = Some(StartMethod::Spawn);
            w.started_at_ms = end - age_ms;
        }
        snap
    }

    #[test]
    fn workers_all_younger_than_two_seconds_are_not_a_pass() {
        let snap = uvicorn(1_200);
        let found = diagnose(&Facts::from_snapshot(&snap));
        // FC108 leaves young workers alone: FC306 alone speaks, as an error.
        assert_eq!(codes(&found), vec!["FC306"]);
        assert_eq!(found[0].pids, vec![101, 102]);
        assert_eq!(found[0].severity, Severity::Error);
        assert!(
            found[0].title.contains("2 worker(s) younger than 2 s"),
            "{}",
            found[0].title
        );
        assert!(
            found[0].evidence[0].contains("up 1.2 s"),
            "{:?}",
            found[0].evidence
        );
        // One worker up 2 s is judged (here FC108 names it), and FC306 says nothing.
        let mut snap = uvicorn(1_200);
        snap.processes[2].started_at_ms -= 1_000;
        assert_eq!(
            codes(&diagnose(&Facts::from_snapshot(&snap))),
            vec!["FC108"]
        );
    }

    /// Workers up long enough but leaving (their interpreter exiting) are not judged either:
    /// without FC306 such a tree, every worker leaving at once, would pass.
    #[test]
    fn workers_that_are_all_leaving_are_not_a_pass() {
        let mut snap = uvicorn(5_000);
        for w in &mut snap.processes[1..] {
            w.python.exiting = true;
        }
        let found = diagnose(&Facts::from_snapshot(&snap));
        assert_eq!(codes(&found), vec!["FC306"]);
        assert_eq!(found[0].pids, vec![101, 102]);
        assert!(
            found[0]
                .title
                .contains("(2 leaving, its interpreter exiting)"),
            "{}",
            found[0].title
        );
        assert!(
            found[0].evidence[0].ends_with(
                "up 5.0 s at the end of the window, leaving (its interpreter was exiting)"
            ),
            "{:?}",
            found[0].evidence
        );
        // One staying worker is judged (FC108 names it alone), and FC306 says nothing.
        snap.processes[2].python.exiting = false;
        let found = diagnose(&Facts::from_snapshot(&snap));
        assert_eq!(codes(&found), vec!["FC108"]);
        assert_eq!(found[0].pids, vec![102]);
    }

    #[test]
    fn workers_recycled_faster_than_they_start_are_named_from_the_churn() {
        // uvicorn.run(workers=2, limit_max_requests=3): no worker at the end, 20 came and went.
        let mut snap = uvicorn(1_200);
        snap.processes.truncate(1);
        snap.processes[0].role = Role::Other;
        snap.churn.spawned = (500..520).collect();
        snap.churn.exited = (500..520).collect();
        snap.churn.wait_statuses = (500..518).map(|p| (p, 0)).collect();
        let found = check(&Facts::from_snapshot(&snap));
        assert_eq!(codes(&found), vec!["FC306"]);
        assert_eq!(found[0].pids, (500..520).collect::<Vec<_>>());
        assert!(
            found[0]
                .title
                .contains("none was up at the end; 20 started and 20 exited"),
            "{}",
            found[0].title
        );
        assert!(
            found[0].evidence[0].contains("and 8 more"),
            "{:?}",
            found[0].evidence
        );
        assert!(found[0].evidence[0].contains("(18 of them with status 0"));
        assert!(
            found[0].fix.contains("receive --pid 100"),
            "{}",
            found[0].fix
        );
    }

    #[test]
    fn a_crash_loop_says_it_first_and_receivers_rq_and_lone_processes_are_not_this() {
        // Crashes read from the zombies: FC107 names every pid, FC306 yields.
        let mut snap = uvicorn(1_200);
        snap.processes.truncate(1);
        snap.churn.spawned = vec![500, 501, 502];
        snap.churn.exited = vec![500, 501, 502];
        snap.churn.wait_statuses = vec![(500, 256), (501, 256), (502, 256)];
        assert_eq!(
            codes(&diagnose(&Facts::from_snapshot(&snap))),
            vec!["FC107"]
        );
        // A receiver sees what young workers export.
        let snap = uvicorn(1_200);
        let ledger = crate::ledger::Ledger::default();
        let facts = Facts {
            ledger: Some(&ledger),
            ..Facts::from_snapshot(&snap)
        };
        assert!(check(&facts).is_empty());
        // An RQ worker between jobs, its horses gone.
        let mut snap = uvicorn(1_200);
        snap.framework = Framework::Rq;
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
        // A process of unknown kind with no workers, children or churn.
        let mut snap = uvicorn(1_200);
        snap.framework = Framework::Unknown;
        snap.processes.truncate(1);
        snap.processes[0].role = Role::Other;
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
        // A gunicorn whose workers are old passes through it.
        let snap = gunicorn(sdk_threads(100), vec![main_only(200)]);
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
        // A parent without an SDK or gRPC thread: a worker up 2 s would pass either way.
        let mut snap = uvicorn(1_200);
        snap.processes[0].threads = main_only(100);
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
        snap.processes[0]
            .threads
            .push(th(150, "grpc_global_timer", ThreadKind::Grpc));
        assert_eq!(codes(&check(&Facts::from_snapshot(&snap))), vec!["FC306"]);
    }
}
