//! FC102 worker-missing-exporter-thread.

use crate::diagnose::evidence::{judgeable, names_known, thread, who};
use crate::diagnose::{fix, Facts, Finding, Rule, Severity};
use crate::snapshot::ThreadKind;

pub static RULE: Rule = Rule {
    code: "FC102",
    slug: "worker-missing-exporter-thread",
    severity: Severity::Error,
    summary: "master has exporter threads, a worker has none (no re-creation after fork)",
    doc: DOC,
    silenced_by: &[],
    check,
};

const DOC: &str = "\
## What it means
The master runs an OpenTelemetry exporter thread (metric reader, span or log processor) and a
worker forked from it has no thread of that kind. Whatever that worker records for the signal is
never exported.

## Why telemetry breaks
fork() copies only the calling thread. SDK objects in the child still exist, but the thread that
drains them does not. SDKs before 1.7 (spans, logs) and 1.9 (metrics) never re-create it; newer
SDKs re-create it from os.register_at_fork hooks, which do not run when the server forks in C
(uWSGI without lazy-apps or py-call-osafterfork). In such workers the interpreter may still list
the master's threads ('ghost threads': same names, tids that do not exist in the worker).

## How it is detected
Thread names of each process (Python names from interpreter memory, or comm): a kind present in
the master is absent in a worker older than 2 s (a worker that sets the SDK up in post_fork starts
its threads about 0.5 s after it starts). Workers whose Python names could not be read are skipped,
and so are workers started by spawn or forkserver: nothing of the master came with them, so there
is nothing to re-create (FC108 says when they have no SDK of their own). So is a worker that is
leaving (`python.exiting`: its main thread ended, `threading._SHUTTING_DOWN`, Python 3.9+): the
SDK's shutdown at exit ends its threads one by one, each after its last export.

## Fix
Set the SDK up in each worker after fork (gunicorn post_fork, uWSGI lazy-apps or @postfork,
Celery worker_process_init, multiprocessing initializer), or upgrade the SDK (FC106).

## Known false alarms
Under gunicorn's gevent or eventlet workers, an SDK set up again after the monkey-patching
(post_worker_init) runs its exporters as greenlets, which no /proc read shows: the evidence says
so. A processor that is created lazily on first use (uWSGI, SDK 1.12+ span and log processors) appears
after the worker's first request: send traffic and look again. A worker leaving on Python 3.8,
which does not say it is exiting, is judged as any other.
Precedence: nothing silences it.

## References
- docs/failure-modes.md#exporter-thread-missing-in-workers (old SDKs)
- docs/failure-modes.md#uwsgi-without-fork-hooks (servers that fork from C)
- docs/failure-modes.md#ghost-threads (threads the interpreter lists but the OS does not run)
- https://github.com/open-telemetry/opentelemetry-python/issues/1567 (batch export in forked children, before the SDK re-created its threads)
- https://github.com/open-telemetry/opentelemetry-python/issues/2266 (batch span processor under uWSGI, which forks without the at-fork hooks)
- https://github.com/open-telemetry/opentelemetry-python/issues/2767 (the periodic metric reader and fork: no pid check)
";

const SDK_KINDS: [ThreadKind; 3] = [
    ThreadKind::MetricReader,
    ThreadKind::SpanProcessor,
    ThreadKind::LogProcessor,
];

fn check(facts: &Facts) -> Vec<Finding> {
    let Some((snap, master)) = facts.tree_master() else {
        return Vec::new();
    };
    let mut findings = Vec::new();
    for worker in snap.workers() {
        if !worker.forked() || !names_known(worker) || !judgeable(snap, worker) {
            continue;
        }
        let mut evidence = Vec::new();
        let mut missing = Vec::new();
        for kind in SDK_KINDS {
            let Some(in_master) = master.threads_of(kind).next() else {
                continue;
            };
            if worker.threads_of(kind).next().is_some() {
                continue;
            }
            missing.push(kind.label());
            evidence.push(format!(
                "{} runs {}; {} has no {} thread ({} threads: {})",
                who(master),
                thread(in_master),
                who(worker),
                kind.label(),
                worker.threads.len(),
                worker
                    .threads
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if missing.is_empty() {
            continue;
        }
        if let Some(wc) = snap
            .worker_class
            .as_ref()
            .filter(|w| w.kind.patches_threads())
        {
            evidence.push(format!(
                "gunicorn -k {}: if the worker sets the SDK up again after its monkey-patching \
                 (post_worker_init), its exporters run as greenlets, which no /proc read shows",
                wc.name
            ));
        }
        for ghost in &worker.python.ghost_threads {
            evidence.push(format!(
                "{}: the interpreter lists thread '{}' (os tid {}) that does not exist in /proc/{}/task: a copy of the master's",
                who(worker),
                ghost.name,
                ghost.os_tid,
                worker.pid
            ));
        }
        findings.push(RULE.finding(
            vec![master.pid, worker.pid],
            format!(
                "worker {} has no {} thread, though the master has",
                worker.pid,
                missing.join(", no ")
            ),
            evidence,
            fix::init_after_fork_in(snap),
        ));
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::testkit::*;
    use crate::snapshot::GhostThread;

    #[test]
    fn worker_with_main_thread_only_is_flagged_per_worker() {
        let mut snap = gunicorn(sdk_threads(100), vec![main_only(200), sdk_threads(300)]);
        snap.processes[1].python.ghost_threads = vec![GhostThread {
            name: "OtelBatchSpanProcessor".into(),
            os_tid: 102,
        }];
        let found = check(&Facts::from_snapshot(&snap));
        assert_eq!(codes(&found), vec!["FC102"]);
        assert_eq!(found[0].pids, vec![MASTER, 101]);
        // three missing kinds, one ghost
        assert_eq!(found[0].evidence.len(), 4);
        assert!(found[0].evidence[3].contains("os tid 102"));
    }

    #[test]
    fn young_workers_and_unreadable_names_are_not_judged() {
        let mut snap = gunicorn(sdk_threads(100), vec![main_only(200), main_only(300)]);
        snap.processes[1].started_at_ms = NOW_MS - 1_000;
        snap.processes[2].python.names_read = false;
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
    }

    /// A worker whose interpreter is exiting ends its SDK's threads one by one as each flushes:
    /// measured on gunicorn workers recycled by --max-requests, a missing span and log
    /// processor for seconds while the reader's last export retried.
    #[test]
    fn a_leaving_worker_is_not_judged() {
        let mut snap = gunicorn(sdk_threads(100), vec![main_only(200), main_only(300)]);
        snap.processes[2].python.exiting = true;
        let found = check(&Facts::from_snapshot(&snap));
        assert_eq!(codes(&found), vec!["FC102"]);
        assert_eq!(found[0].pids, vec![MASTER, 101]);
    }

    #[test]
    fn spawned_workers_are_not_missing_anything_after_fork() {
        let mut snap = gunicorn(sdk_threads(100), vec![main_only(200), main_only(300)]);
        snap.processes[1].started_by = Some(StartMethod::Spawn);
        snap.processes[2].started_by = Some(StartMethod::Forkserver);
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
        snap.processes[2].started_by = Some(StartMethod::Fork);
        assert_eq!(
            check(&Facts::from_snapshot(&snap))[0].pids,
            vec![MASTER, 102]
        );
    }

    #[test]
    fn master_without_sdk_threads_means_nothing_to_miss() {
        let snap = gunicorn(main_only(100), vec![main_only(200)]);
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
    }
}
