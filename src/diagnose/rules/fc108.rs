//! FC108 spawned-workers-without-sdk.

use crate::diagnose::evidence::{judgeable, names_known, thread, who};
use crate::diagnose::{fix, Facts, Finding, PidSignal, Rule, Severity};
use crate::ledger::Signal;
use crate::snapshot::{Process, ThreadKind};

pub static RULE: Rule = Rule {
    code: "FC108",
    slug: "spawned-workers-without-sdk",
    severity: Severity::Error,
    summary: "workers started by spawn/forkserver (uvicorn, hypercorn, Pool) have no SDK; the parent has one",
    doc: DOC,
    silenced_by: &[],
    check,
};

const DOC: &str = "\
## What it means
The parent runs OpenTelemetry SDK threads (metric reader, span or log processor), and workers it
started with multiprocessing's spawn or forkserver start method run none: `uvicorn --workers N`,
`hypercorn --workers N`, Granian on Python 3.14+, and pools or processes with
`set_start_method(\"spawn\")` or `\"forkserver\"` (the default on Linux from Python 3.14). The
workers serve the requests, and their telemetry is silently absent.

## Why telemetry breaks
Nothing was forked. A spawned worker is a fresh interpreter (`python -c \"from
multiprocessing.spawn import spawn_main; ...\" --multiprocessing-fork`); a forkserver worker is
a fork of the forkserver process, not of its owner. Neither carries the parent's SDK. The worker
imports the application module again (and the main module as `__mp_main__`, so an
`if __name__ == \"__main__\":` block never runs there): an SDK set up only in a launcher script
or under that block exists in the parent alone, which serves no request. The API in the workers
falls back to its no-op providers, so nothing fails and nothing is exported.

## How it is detected
Roles and start methods come from /proc: a worker is a child of the root running
multiprocessing's `spawn_main` (spawn), or a fork of the root's forkserver child (forkserver);
the resource tracker and the forkserver itself are helpers, never workers. Thread names of each
process (Python names from interpreter memory, or comm): the parent runs an SDK thread, and a
spawned worker older than 2 s runs none of the three kinds. Workers whose Python names could not
be read are skipped.

## Fix
Set the SDK up in code every worker runs:
- uvicorn, Hypercorn, Granian: at import in the application module (`app:app`), or in the ASGI
  lifespan startup (flush in its shutdown); not in the launcher script that calls
  `uvicorn.run(..., workers=N)`, nor under its `__main__` block.
- multiprocessing with spawn or forkserver: in the Pool `initializer`, or at the start of the
  Process target function, with a `multiprocessing.util.Finalize` flush.

## Known false alarms
A worker that sets the SDK up lazily, on its first request, runs no SDK thread before it: send
traffic and look again. At a receiver (`run`, `receive --pid`) it names every signal of each
worker as missing, so FC201 and FC209 do not repeat them. An application that does not use OpenTelemetry in its workers at all,
on purpose, while the parent does.
Precedence: nothing silences it.

## References
- docs/failure-modes.md#spawn-servers (what was measured with uvicorn --workers)
- docs/failure-modes.md#thread-names-by-sdk-version (the thread names looked for)
- https://docs.python.org/3/library/multiprocessing.html#contexts-and-start-methods (spawn, fork and forkserver)
- https://asgi.readthedocs.io/en/latest/specs/lifespan.html (the ASGI lifespan startup and shutdown)
- https://www.uvicorn.org/deployment/ (uvicorn --workers)
";

const SDK_KINDS: [ThreadKind; 3] = [
    ThreadKind::MetricReader,
    ThreadKind::SpanProcessor,
    ThreadKind::LogProcessor,
];

fn sdk_threads_of(p: &Process) -> impl Iterator<Item = &crate::snapshot::Thread> {
    p.threads.iter().filter(|t| SDK_KINDS.contains(&t.kind))
}

fn check(facts: &Facts) -> Vec<Finding> {
    let Some((snap, master)) = facts.tree_master() else {
        return Vec::new();
    };
    let in_master: Vec<_> = sdk_threads_of(master).collect();
    if in_master.is_empty() {
        return Vec::new();
    }
    let without: Vec<&Process> = snap
        .spawned_workers()
        .filter(|w| names_known(w) && judgeable(snap, w))
        .filter(|w| sdk_threads_of(w).next().is_none())
        .collect();
    if without.is_empty() {
        return Vec::new();
    }
    let mut evidence: Vec<String> = in_master
        .iter()
        .map(|t| format!("{} runs {}", who(master), thread(t)))
        .collect();
    for w in &without {
        let how = w.started_by.map_or("spawn", |s| s.as_str());
        evidence.push(format!(
            "{} was started by {how} ({}) and runs no SDK thread ({} threads: {})",
            who(w),
            short_cmdline(&w.cmdline),
            w.threads.len(),
            w.threads
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let helpers: Vec<String> = snap
        .processes
        .iter()
        .filter(|p| p.ppid == master.pid && p.role == crate::snapshot::Role::Other)
        .map(|p| format!("{} ({})", p.pid, short_cmdline(&p.cmdline)))
        .collect();
    if !helpers.is_empty() {
        evidence.push(format!(
            "not workers, so not judged: {}",
            helpers.join("; ")
        ));
    }
    let n = without.len();
    // No SDK at all: every signal of these workers is missing, which is what FC201 and FC209
    // would otherwise say about them at a receiver, with a farther cause.
    let signals: Vec<PidSignal> = without
        .iter()
        .flat_map(|w| Signal::ALL.map(|signal| PidSignal { pid: w.pid, signal }))
        .collect();
    vec![RULE
        .finding(
            without.iter().map(|w| w.pid).collect(),
            format!(
            "{n} worker(s) started by {} run no OpenTelemetry SDK: only the {} parent (pid {}) \
             has one, so the workers' telemetry is silently absent",
            start_methods(&without),
            snap.framework.as_str(),
            master.pid
        ),
            evidence,
            fix::init_in_spawned_workers(snap.framework),
        )
        .with_signals(signals)]
}

/// "spawn", "forkserver" or "spawn and forkserver".
fn start_methods(workers: &[&Process]) -> String {
    let mut m: Vec<&str> = workers
        .iter()
        .map(|w| w.started_by.map_or("spawn", |s| s.as_str()))
        .collect();
    m.sort_unstable();
    m.dedup();
    m.join(" and ")
}

/// A command line in one line, cut at 100 characters.
fn short_cmdline(cmdline: &[String]) -> String {
    let s = cmdline.join(" ");
    match s.char_indices().nth(100) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::testkit::*;

    /// A uvicorn parent with the SDK, two spawned workers with `workers` threads each, and the
    /// resource tracker.
    fn uvicorn(master: Vec<Thread>, workers: Vec<Vec<Thread>>) -> Snapshot {
        let mut snap = gunicorn(master, workers);
        snap.framework = Framework::Uvicorn;
        for w in &mut snap.processes[1..] {
            w.started_by = Some(StartMethod::Spawn);
            w.cmdline = vec![
                "python".into(),
                "-c".into(),
                "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=7, pipe_handle=9)".into(),
                "--multiprocessing-fork".into(),
            ];
        }
        let mut tracker = process(199, Role::Other, main_only(199));
        tracker.cmdline = vec![
            "python".into(),
            "-c".into(),
            "from multiprocessing.resource_tracker import main;main(6)".into(),
        ];
        snap.processes.push(tracker);
        snap
    }

    #[test]
    fn spawned_workers_without_threads_are_named_exactly() {
        let snap = uvicorn(sdk_threads(100), vec![main_only(200), main_only(300)]);
        let found = check(&Facts::from_snapshot(&snap));
        assert_eq!(codes(&found), vec!["FC108"]);
        assert_eq!(found[0].pids, vec![101, 102]);
        assert!(
            found[0].title.contains("started by spawn"),
            "{}",
            found[0].title
        );
        assert!(found[0].title.contains("uvicorn parent (pid 100)"));
        // three master threads, two workers, the helper said not to be judged
        assert_eq!(found[0].evidence.len(), 6, "{:#?}", found[0].evidence);
        assert!(
            found[0].evidence[5].contains("199 (python -c from multiprocessing.resource_tracker")
        );
        assert!(found[0].fix.contains("lifespan"), "{}", found[0].fix);
        // Every signal of both workers is missing: what FC201 and FC209 yield to.
        assert_eq!(found[0].signals.len(), 6);
        assert!(found[0].names_signal(102, Signal::Logs));
        assert!(!found[0].fix.contains("initializer"), "{}", found[0].fix);
    }

    #[test]
    fn workers_with_their_own_sdk_pass_and_so_does_a_parent_without_one() {
        let snap = uvicorn(sdk_threads(100), vec![sdk_threads(200), sdk_threads(300)]);
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
        let snap = uvicorn(main_only(100), vec![main_only(200), main_only(300)]);
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
        // Only the worker without an SDK is named.
        let snap = uvicorn(sdk_threads(100), vec![sdk_threads(200), main_only(300)]);
        assert_eq!(check(&Facts::from_snapshot(&snap))[0].pids, vec![102]);
    }

    #[test]
    fn forked_young_and_unreadable_workers_are_not_judged() {
        let mut snap = uvicorn(sdk_threads(100), vec![main_only(200), main_only(300)]);
        snap.processes[1].started_at_ms = NOW_MS - 1_000;
        snap.processes[2].python.names_read = false;
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
        // gunicorn's forked workers are FC102's.
        let snap = gunicorn(sdk_threads(100), vec![main_only(200)]);
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
    }

    #[test]
    fn a_leaving_worker_is_not_judged() {
        let mut snap = uvicorn(sdk_threads(100), vec![main_only(200), main_only(300)]);
        snap.processes[1].python.exiting = true;
        let found = check(&Facts::from_snapshot(&snap));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].pids, vec![102]);
    }

    #[test]
    fn forkserver_pool_gets_the_initializer_fix() {
        let mut snap = uvicorn(sdk_threads(100), vec![main_only(200)]);
        snap.framework = Framework::Multiprocessing;
        snap.processes[1].started_by = Some(StartMethod::Forkserver);
        let found = check(&Facts::from_snapshot(&snap));
        assert!(
            found[0].title.contains("started by forkserver"),
            "{}",
            found[0].title
        );
        assert!(found[0].fix.contains("initializer"), "{}", found[0].fix);
    }
}
