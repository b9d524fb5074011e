//! FC101 sdk-initialized-in-master.

use crate::diagnose::evidence::{thread, who};
use crate::diagnose::{fix, Facts, Finding, Rule, Severity};

pub static RULE: Rule = Rule {
    code: "FC101",
    slug: "sdk-initialized-in-master",
    severity: Severity::Warning,
    summary: "the master runs OTel exporter threads: init happened before fork",
    doc: DOC,
    silenced_by: &[],
    check,
};

const DOC: &str = "\
## What it means
The pre-fork master process runs OpenTelemetry SDK threads (a metric reader, a batch span or log
processor, or gRPC's core threads). The SDK was set up before the workers were forked.

## Why telemetry breaks
Every worker starts as a copy of the master, SDK state included. Current SDKs (1.7+) re-create
their processor threads after fork, but the exporter's HTTP keep-alive session or gRPC channel is
inherited, a metric reader whose export lock was held at fork stays stuck forever, the resource
identity is the master's, and whatever the master recorded before fork is exported again by every
worker. Older SDKs, and servers that fork in C (uWSGI), leave workers with no exporter at all.
The master itself keeps exporting its stale pre-fork series.

## How it is detected
Thread names of the master: Python names read from interpreter memory (process_vm_readv, no stop),
or /proc/<pid>/task/<tid>/comm (Python 3.14+, and gRPC's own C threads on every Python).
Names: OtelPeriodicExportingMetricReader, OtelBatchSpanProcessor / OtelBatchSpanRecordProcessor,
OtelBatchLogProcessor / OtelBatchLogRecordProcessor, grpc_global_tim, event_engine, lifeguard.
Only when at least one worker is a fork of the master (same executable and address-space layout):
workers started by spawn or forkserver (uvicorn, Hypercorn, spawn-context pools) inherit nothing,
so an SDK in their parent is no fork problem (FC108 says when they have none of their own).

## Fix
Set the SDK up in each worker after fork, not at import in the master:
- gunicorn: a `post_fork(server, worker)` hook in gunicorn.conf.py (and no SDK set-up at import
  when `preload_app`/`--preload` is on).
- uWSGI: `lazy-apps = true`, or init in a function decorated with `uwsgidecorators.postfork`.
- Celery: init in a `worker_process_init` signal handler.
- RQ: init in the work horse, in a Worker subclass's `perform_job` (with a `shutdown()` when the
  job is done: the horse leaves with os._exit).
- multiprocessing: init in the Pool `initializer`.
- gunicorn `-k gevent`: `post_fork` runs before the monkey-patching, so the exporters are OS
  threads; `-k uvicorn_worker.UvicornWorker`: `post_fork` or the ASGI lifespan startup.
- Granian (forked workers before Python 3.14): init in the app module or the ASGI lifespan
  startup, not in the script that starts Granian.

## Known false alarms
A master that exports on purpose (its own spans) with workers set up separately. Findings FC102,
FC103, FC104 and FC2xx say whether the workers actually suffer.
Precedence: nothing silences it.

## References
- docs/failure-modes.md#sdk-set-up-after-fork (the fix, per framework)
- docs/failure-modes.md#thread-names-by-sdk-version (the thread names looked for)
- docs/failure-modes.md#master-keeps-exporting (what the master itself sends)
- https://opentelemetry-python.readthedocs.io/en/latest/examples/fork-process-model/README.html (the SDK's guide to forking servers)
- https://github.com/open-telemetry/opentelemetry-python/issues/2767 (the periodic metric reader and fork: no pid check)
- https://github.com/open-telemetry/opentelemetry-python/issues/3307 (what the SDK supports under forking process models)
- https://github.com/open-telemetry/opentelemetry-python/issues/4345 (a metric reader lock that deadlocks under gunicorn)
";

fn check(facts: &Facts) -> Vec<Finding> {
    let Some((snap, master)) = facts.tree_master() else {
        return Vec::new();
    };
    let threads: Vec<_> = master.exporter_threads().collect();
    if threads.is_empty() || !snap.master_forked() {
        return Vec::new();
    }
    let evidence = threads
        .iter()
        .map(|t| {
            format!(
                "{} {}, started {:+.1} s after the process",
                who(master),
                thread(t),
                (t.started_at_ms as f64 - master.started_at_ms as f64) / 1000.0
            )
        })
        .collect();
    vec![RULE.finding(
        vec![master.pid],
        format!(
            "the master (pid {}) runs {} OpenTelemetry exporter thread(s): the SDK was set up before fork",
            master.pid,
            threads.len()
        ),
        evidence,
        fix::init_after_fork_in(snap),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::testkit::*;

    #[test]
    fn master_with_sdk_threads_is_flagged_with_each_thread() {
        let snap = gunicorn(sdk_threads(100), vec![sdk_threads(200)]);
        let found = check(&Facts::from_snapshot(&snap));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].pids, vec![MASTER]);
        assert_eq!(found[0].evidence.len(), 3);
        assert!(found[0].evidence[0].contains("OtelPeriodicExportingMetricReader"));
        assert!(found[0].fix.contains("post_fork"));
    }

    #[test]
    fn nothing_forked_means_no_fork_finding() {
        // uvicorn --workers 2 with the SDK set up in the launcher: the workers were spawned.
        let mut snap = gunicorn(sdk_threads(100), vec![main_only(200), main_only(300)]);
        snap.framework = Framework::Uvicorn;
        for w in &mut snap.processes[1..] {
            w.started_by = Some(StartMethod::Spawn);
        }
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
        // One forked worker is enough for the master's SDK to have been inherited.
        snap.processes[2].started_by = Some(StartMethod::Fork);
        assert_eq!(check(&Facts::from_snapshot(&snap))[0].pids, vec![MASTER]);
    }

    #[test]
    fn gevent_workers_get_the_post_fork_fix_with_the_greenlet_caveat() {
        let mut snap = gunicorn(sdk_threads(100), vec![sdk_threads(200)]);
        snap.worker_class = Some(WorkerClass {
            name: "gevent".into(),
            kind: WorkerKind::Gevent,
            source: "-k on the command line".into(),
        });
        let fix = &check(&Facts::from_snapshot(&snap))[0].fix;
        assert!(
            fix.contains("post_fork") && fix.contains("greenlets"),
            "{fix}"
        );
    }

    #[test]
    fn master_with_only_its_own_threads_passes() {
        let snap = gunicorn(main_only(100), vec![sdk_threads(200), sdk_threads(300)]);
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
    }
}
