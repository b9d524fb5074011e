//! FC304 provider-set-up-refused.

use crate::diagnose::evidence::{names_known, who};
use crate::diagnose::{fix, Facts, Finding, Rule, Severity};
use crate::snapshot::{Process, ThreadKind};

pub static RULE: Rule = Rule {
    code: "FC304",
    slug: "provider-set-up-refused",
    severity: Severity::Warning,
    summary: "a worker's own SDK set-up (post_fork, @postfork) was refused: the providers set in the master stay global",
    doc: DOC,
    silenced_by: &[],
    check,
};

const DOC: &str = "\
## What it means
The SDK was set up twice in a worker's life: once in the master before fork, and again in the
worker after it (gunicorn `post_fork`, uWSGI `@postfork`, Celery `worker_process_init`). The
API lets a process set its global tracer, meter and logger providers once; the flag that says
it was done is copied by fork, so the worker's `set_tracer_provider` / `set_meter_provider` /
`set_logger_provider` are refused with a warning (\"Overriding of current MeterProvider is not
allowed\") and the worker keeps the master's providers.

## Why telemetry breaks
The set-up written to fix the fork problem does not take effect, and nothing fails: the new
providers are built (their exporter threads run, idle) but the application records into the
master's, with the master's exporters, connections, resource and pre-fork data (FC101, FC103).
Where the master's providers cannot work in a worker (uWSGI without fork hooks: no metric
reader after fork; SDKs before 1.7), the worker's telemetry is lost although it has an exporter
thread of its own, so a thread count alone calls it healthy.

## How it is detected
Thread names (Python names from interpreter memory, or comm) of the master and of each forked
worker: the master runs N threads of a kind (metric reader, span or log processor) and the
worker runs more than N of that kind, counting the master's metric readers it lists as ghosts
(copied by a fork that ran no at-fork hook; a span or log processor's ghost is not counted, as
such a processor starts a new thread on first use in the worker). Under os.fork the master's providers re-create their
threads in the worker as it starts, and the refused set-up adds its own. In `run`, the
warnings the SDK printed on the server's output are quoted. Workers whose thread names could
not be read are skipped. The target is never paused: this needs no stack.

## Fix
Set the SDK up in one place only: remove the set-up from the import path (or from
`opentelemetry-instrument`) and keep the one that runs after fork:
- gunicorn: no set-up at import with --preload; the set-up in `post_fork` alone.
- uWSGI: the set-up in a `@postfork` function alone (or `lazy-apps = true`).
- Celery: the set-up in `worker_process_init` alone.

## Known false alarms
A worker that builds a second provider on purpose and passes it explicitly (never through the
global `set_*_provider`), with a reader or processor of its own.
Precedence: nothing silences it.

## References
- docs/failure-modes.md#provider-set-up-refused-in-the-worker (what was measured)
- docs/failure-modes.md#sdk-set-up-after-fork (the fix)
- https://github.com/open-telemetry/opentelemetry-python/blob/main/opentelemetry-api/src/opentelemetry/util/_once.py (the set-once flag)
- https://opentelemetry-python.readthedocs.io/en/latest/examples/fork-process-model/README.html (the SDK's guide to forking servers)
";

const KINDS: [ThreadKind; 3] = [
    ThreadKind::MetricReader,
    ThreadKind::SpanProcessor,
    ThreadKind::LogProcessor,
];

/// What the SDK prints when a global provider is set a second time.
const REFUSED: &str = "Overriding of current";

fn check(facts: &Facts) -> Vec<Finding> {
    let Some((snap, master)) = facts.tree_master() else {
        return Vec::new();
    };
    if !names_known(master) {
        return Vec::new();
    }
    let mut pids = Vec::new();
    let mut evidence = Vec::new();
    for w in snap
        .forked_workers()
        .filter(|w| names_known(w) && w.ppid == master.pid)
    {
        let mut extra = Vec::new();
        for kind in KINDS {
            let in_master: Vec<&str> = master.threads_of(kind).map(|t| t.name.as_str()).collect();
            if in_master.is_empty() {
                continue;
            }
            let live = w.threads_of(kind).count();
            // A span or log processor whose thread fork did not copy starts a new one on first
            // use in the worker (pid check), beside its ghost: one processor, not two. The
            // metric reader never does, so its ghost is the master's reader.
            let ghosts = match kind {
                ThreadKind::MetricReader => w
                    .python
                    .ghost_threads
                    .iter()
                    .filter(|g| in_master.contains(&g.name.as_str()))
                    .count(),
                _ => 0,
            };
            if live + ghosts > in_master.len() {
                extra.push(format!(
                    "{}: {} in the master, {live} running in the worker{}",
                    kind.label(),
                    in_master.len(),
                    if ghosts > 0 {
                        format!(" plus {ghosts} of the master's listed as ghosts")
                    } else {
                        String::new()
                    }
                ));
            }
        }
        if extra.is_empty() {
            continue;
        }
        evidence.push(format!(
            "{} runs a second SDK set-up ({}); its threads start {}",
            who(w),
            extra.join("; "),
            starts(w)
        ));
        pids.push(w.pid);
    }
    if pids.is_empty() {
        return Vec::new();
    }
    evidence.insert(
        0,
        format!(
            "{} runs {} SDK thread(s): the global providers were set there before fork",
            who(master),
            KINDS
                .iter()
                .map(|k| master.threads_of(*k).count())
                .sum::<usize>()
        ),
    );
    if let Some(stop) = facts.ledger.and_then(|l| l.stop.as_ref()) {
        let said: Vec<&String> = stop.notes.iter().filter(|n| n.contains(REFUSED)).collect();
        if !said.is_empty() {
            evidence.push(format!(
                "the server's output says {} time(s): {}",
                said.len(),
                said[0]
            ));
        }
    }
    let n = pids.len();
    let mut all = pids.clone();
    all.push(master.pid);
    vec![RULE.finding(
        all,
        format!(
            "{n} worker(s) set the SDK up again after fork, and the API refused it: the \
             master's providers (pid {}) stay global in the workers",
            master.pid
        ),
        evidence,
        fix::init_after_fork_in(snap),
    )]
}

/// "+0.0 s, +0.0 s, +0.5 s after the worker": when its SDK threads started.
fn starts(w: &Process) -> String {
    let mut at: Vec<f64> = w
        .threads
        .iter()
        .filter(|t| KINDS.contains(&t.kind))
        .map(|t| t.started_at_ms.saturating_sub(w.started_at_ms) as f64 / 1000.0)
        .collect();
    at.sort_by(f64::total_cmp);
    let s: Vec<String> = at.iter().map(|a| format!("+{a:.1} s")).collect();
    format!("{} after the worker", s.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::testkit::*;

    /// A worker with the master's three threads re-created at fork and three of its own.
    fn doubled(base: i32) -> Vec<Thread> {
        let mut t = sdk_threads(base);
        t.extend(sdk_threads(base + 10).into_iter().skip(1));
        t
    }

    #[test]
    fn a_refused_post_fork_set_up_is_named_per_worker() {
        let snap = gunicorn(sdk_threads(100), vec![doubled(200), doubled(300)]);
        let found = check(&Facts::from_snapshot(&snap));
        assert_eq!(codes(&found), vec!["FC304"]);
        assert_eq!(found[0].pids, vec![100, 101, 102]);
        assert!(
            found[0].title.starts_with("2 worker(s)"),
            "{}",
            found[0].title
        );
        assert!(found[0].evidence[0].contains("pid 100 (master) runs 3 SDK thread(s)"));
        assert!(
            found[0].evidence[1].contains("metric reader: 1 in the master, 2 running"),
            "{:?}",
            found[0].evidence
        );
        assert!(found[0].fix.contains("post_fork"));
    }

    #[test]
    fn uwsgi_ghosts_count_as_the_masters_copies() {
        let mut snap = gunicorn(sdk_threads(100), vec![sdk_threads(200)]);
        snap.processes[1].python.ghost_threads = vec![GhostThread {
            name: "OtelPeriodicExportingMetricReader".into(),
            os_tid: 101,
        }];
        let found = check(&Facts::from_snapshot(&snap));
        assert_eq!(found[0].pids, vec![100, 101]);
        assert!(found[0].evidence[1].contains("plus 1 of the master's listed as ghosts"));
    }

    #[test]
    fn processors_recreated_on_first_use_beside_their_ghosts_pass() {
        // uWSGI without fork hooks and one set-up in the master: the worker's span and log
        // processors came back on first use, their ghosts stay listed, no reader.
        let mut w = main_only(200);
        w.extend(sdk_threads(200).into_iter().skip(2));
        let mut snap = gunicorn(sdk_threads(100), vec![w]);
        snap.processes[1].python.ghost_threads = [
            "OtelPeriodicExportingMetricReader",
            "OtelBatchSpanRecordProcessor",
            "OtelBatchLogRecordProcessor",
        ]
        .iter()
        .zip(101..)
        .map(|(n, tid)| GhostThread {
            name: n.to_string(),
            os_tid: tid,
        })
        .collect();
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
    }

    #[test]
    fn one_set_up_anywhere_passes() {
        // Preload without a second set-up: the same threads, re-created.
        let snap = gunicorn(sdk_threads(100), vec![sdk_threads(200), sdk_threads(300)]);
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
        // post_fork alone: nothing in the master.
        let snap = gunicorn(main_only(100), vec![doubled(200)]);
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
        // Names unread: not judged.
        let mut snap = gunicorn(sdk_threads(100), vec![doubled(200)]);
        snap.processes[1].python.names_read = false;
        for t in &mut snap.processes[1].threads {
            t.comm = "gunicorn".into();
        }
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
    }
}
