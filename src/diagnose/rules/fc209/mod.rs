//! FC209 lost-on-exit.

use std::fmt::Write as _;

use crate::diagnose::evidence::{
    batcher, default_interval_ms, interval_ms, interval_var, names_known,
    shares_collector_connection,
};
use crate::diagnose::{fix, Facts, Finding, PidSignal, Rule, Severity};
use crate::ledger::{Ledger, PidExports, Served, Signal, StopRecord};
use crate::snapshot::{Process, Role, Snapshot};

pub static RULE: Rule = Rule {
    code: "FC209",
    slug: "lost-on-exit",
    severity: Severity::Error,
    summary: "data recorded before a graceful stop never arrived (no flush on exit)",
    doc: DOC,
    silenced_by: &["FC104", "FC108", "FC208", "FC214"],
    check,
};

const DOC: &str = "\
## What it means
A worker served requests, and what those requests recorded (spans, metric points, log records)
never reached the collector: the worker's last export of that signal came before its last
served request, or nothing of that signal came from it at all, even after the server was
stopped and every process had left.

## Why telemetry breaks
The SDK batches: spans and log records wait in a queue for the batch processor's schedule
(OTEL_BSP_SCHEDULE_DELAY, OTEL_BLRP_SCHEDULE_DELAY, or `schedule_delay_millis` in code), metric
points wait for the reader's interval (OTEL_METRIC_EXPORT_INTERVAL, 60 s by default, or
`export_interval_millis` in code). Whatever was recorded since the last export is only sent if
someone flushes when the worker leaves. The SDK does that itself through an atexit handler
(`shutdown_on_exit=True`, the default on all three providers), and on a graceful gunicorn stop
sync workers leave through sys.exit, so that handler runs: measured, all three signals arrive
even without a `worker_exit` hook. The data is really lost when the atexit flush is off
(`shutdown_on_exit=False`) and nothing else flushes, when a worker is SIGKILLed (after
gunicorn's `graceful_timeout`, for example because a stuck metric reader blocked its shutdown),
or when workers leave through os._exit (Celery/billiard pool processes, RQ work horses,
multiprocessing pools, uWSGI, whose master never runs Python atexit). Short-lived workers (max_requests, autoscaling,
deploys) lose their last interval on every restart.

## How it is detected
Only by `otel-forkcheck run`, which sends the requests itself, so it knows which worker served
each one (it connects, then reads which pid of the tree holds the server side of that TCP
connection in /proc/<pid>/net/tcp and /proc/<pid>/fd before sending), and when the response was
complete. It then stops the server with SIGTERM to the master, waits for every process to leave
(SIGKILL to the group only after the grace period, which the evidence then says), waits a moment
for exports in flight, and compares per worker and per expected signal the receiver time of the
last export from that pid with the time of its last served request.

Once the stop has completed every process has left and nothing more can come, so the judgement
is made on what arrived, whatever the export interval: an interval set in code
(`export_interval_millis`, `schedule_delay_millis`) cannot be read from outside, and the
environment's or the SDK's default would be a guess. A worker that served requests (or whose
activity was seen otherwise) gets this finding for each expected signal of which no item ever
arrived from it, or whose last export came before its last served request. When the
environment's interval says a scheduled export was due before the stop, the evidence says so:
either the interval in code is longer, or exporting itself is broken.

Two facts exclude a signal: a worker whose threads were read from Python memory and that runs no
batching thread for it (no metric reader, span or log processor) has nothing of it pending (FC102,
FC201 say why); and a worker that shares a collector connection with other processes (FC103,
FC207) is not judged, since the receiver may count its exports under another holder of that
connection.

The absence of a `worker_exit` hook alone is never a finding: the SDK's atexit flush covers a
graceful stop.

## Fix
Flush before the worker leaves, and keep the SDK's exit flush on:
- gunicorn: a `worker_exit(server, worker)` hook in gunicorn.conf.py calling `shutdown()` on the
  tracer, meter and logger providers; do not pass `shutdown_on_exit=False`; keep
  `graceful_timeout` above the exporters' timeout.
- uWSGI: `uwsgi.atexit` calling the providers' `shutdown()`; stop with SIGTERM to the master
  (`--die-on-term`).
- Celery: a `worker_process_shutdown` signal handler calling `shutdown()`.
- RQ: a Worker subclass (`rq worker --worker-class ...`) whose `perform_job`, which runs in the
  work horse, sets the SDK up and calls `shutdown()` when the job is done.
- multiprocessing: `multiprocessing.util.Finalize(None, provider.shutdown, exitpriority=10)`
  registered in the Pool initializer.
If nothing at all reached the receiver from any process, check first that the exporters use the
endpoints `run` set (an endpoint or protocol chosen in code, OTEL_SDK_DISABLED).

## Known false alarms
A signal the app does not record on every request (e.g. logs only on errors): a worker whose last
requests logged nothing has an older last log export legitimately. Look at the counts.
Exporters aimed elsewhere than the receiver by an `endpoint=` argument in code look the same as
a lost flush: the evidence says when nothing at all arrived from any process. An endpoint set in
the process's environment by its code is FC214.
Precedence: a signal of a worker that FC104 (its metric reader is stuck), FC108 (a spawned
worker with no SDK at all) or FC208 (its metrics stalled while traces/logs flow) already names
is not repeated here: exporting was broken before the stop, the exit is not the cause. Nor one
that FC214 names: its code sent it elsewhere, so whether it was flushed is not known.

## References
- docs/failure-modes.md#shutdown-and-data-lost-on-exit (what was measured, and when data is really lost)
- docs/failure-modes.md#celery-prefork-and-multiprocessing-pools (children that leave with os._exit)
- https://github.com/open-telemetry/opentelemetry-python/issues/3307 (what the SDK supports under forking process models)
- https://github.com/open-telemetry/opentelemetry-python/issues/4390 (a unique service.instance.id for every process after fork)
- https://github.com/open-telemetry/opentelemetry-python-contrib/issues/4916 (Celery spans lost when a pool child is recycled)
- https://docs.celeryq.dev/en/stable/userguide/signals.html#worker-process-shutdown (Celery worker_process_shutdown)
";

/// Export latency allowed on top of the schedule before an export counts as overdue.
const EXPORT_SLACK_MS: u64 = 1_000;

/// What arrived of `s` from `p`, known or possibly (a shared connection may hide a loss, it must
/// never invent one): (export requests, items, last export).
fn arrived(p: Option<&PidExports>, s: Signal) -> (u64, u64, Option<u64>) {
    let Some(p) = p else {
        return (0, 0, None);
    };
    let (k, q) = (p.signals.get(s), p.possible.get(s));
    (
        k.requests + q.requests,
        k.items + q.items,
        k.last_ms.max(q.last_ms),
    )
}

/// "2.3 s before the stop" / "0.4 s after the stop".
fn rel(ms: u64, stop: &StopRecord) -> String {
    let d = ms as i64 - stop.requested_ms as i64;
    if d <= 0 {
        format!("{:.1} s before the stop", -d as f64 / 1000.0)
    } else {
        format!("{:.1} s after the stop was requested", d as f64 / 1000.0)
    }
}

/// Signals to judge: the expected ones, or every signal that arrived from anyone.
fn judged_signals(ledger: &Ledger) -> Vec<Signal> {
    if !ledger.expected_signals.is_empty() {
        return ledger.expected_signals.clone();
    }
    Signal::ALL
        .into_iter()
        .filter(|s| ledger.totals.get(*s).any())
        .collect()
}

/// Pids to judge: every pid that served requests sent by `run`, and every other pid whose
/// activity was recorded (a worker of the tree, when there is a tree: not the master).
fn judged_pids(ledger: &Ledger, snap: Option<&Snapshot>) -> Vec<i32> {
    let mut pids: Vec<i32> = ledger
        .served
        .iter()
        .filter(|(_, s)| s.requests > 0)
        .map(|(p, _)| *p)
        .collect();
    for (&pid, seen) in &ledger.activity {
        let role = snap.and_then(|s| s.process(pid)).map(|p| p.role);
        if !seen.is_empty() && role != Some(Role::Master) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Why one signal of one worker is lost, or None. The stop has completed, so what did not arrive
/// never will, whatever the export interval (see the rule doc).
fn lost(
    s: Signal,
    exports: Option<&PidExports>,
    served: Option<&Served>,
    stop: &StopRecord,
    pid: i32,
) -> Option<String> {
    let (requests, items, last) = arrived(exports, s);
    match (last, served) {
        _ if items == 0 => Some(if requests == 0 {
            format!(
                "{}: nothing arrived from pid {pid}, neither while it served nor after the stop",
                s.as_str()
            )
        } else {
            format!(
                "{}: {requests} export(s) arrived from pid {pid}, without a single {}, neither \
                 while it served nor after the stop",
                s.as_str(),
                s.item()
            )
        }),
        (Some(last), Some(sv)) if last < sv.last_ms => Some(format!(
            "{}: its last export arrived {} ({requests} export(s), {items} {} in all), {:.1} s \
             before its last served request; nothing came after, not even at exit",
            s.as_str(),
            rel(last, stop),
            s.item(),
            (sv.last_ms - last) as f64 / 1000.0
        )),
        _ => None,
    }
}

/// When the worker's environment (or the SDK default) says a scheduled export of `s` was due
/// before the stop, what that means.
fn due_note(
    s: Signal,
    exports: Option<&PidExports>,
    served: Option<&Served>,
    stop: &StopRecord,
    proc: Option<&Process>,
    pid: i32,
) -> Option<String> {
    let sv = served?;
    let interval = interval_ms(proc, s);
    let pending_since = match arrived(exports, s) {
        (_, 0, _) => sv.first_ms,
        _ => sv.last_ms,
    };
    if stop.requested_ms <= pending_since + interval + EXPORT_SLACK_MS {
        return None;
    }
    let source = match proc.and_then(|p| p.env_var(interval_var(s))) {
        Some(v) => format!("{}={v} in its environment", interval_var(s)),
        None => format!(
            "{} unset: the SDK default is {} ms",
            interval_var(s),
            default_interval_ms(s)
        ),
    };
    Some(format!(
        "{}: {source}, so a scheduled export was due {:.1} s before the stop and none came: the \
         interval passed in code ({}) is longer, or exporting from pid {pid} was broken",
        s.as_str(),
        (stop.requested_ms - pending_since - interval) as f64 / 1000.0,
        match s {
            Signal::Metrics => "export_interval_millis",
            _ => "schedule_delay_millis",
        },
    ))
}

fn check(facts: &Facts) -> Vec<Finding> {
    let Some(ledger) = facts.ledger else {
        return Vec::new();
    };
    let Some(stop) = &ledger.stop else {
        return Vec::new();
    };
    let snap: Option<&Snapshot> = facts.snapshot;
    let signals = judged_signals(ledger);
    let mut out = Vec::new();
    for pid in judged_pids(ledger, snap) {
        if !shares_collector_connection(snap, Some(ledger), pid).is_empty() {
            // Its exports may be counted under another holder: FC103/FC207 speak for it.
            continue;
        }
        let served = ledger.served.get(&pid).filter(|s| s.requests > 0);
        let proc: Option<&Process> = snap.and_then(|s| s.process(pid));
        let exports = ledger.processes.get(&pid);
        let mut lines = Vec::new();
        let mut lost_signals = Vec::new();
        for &s in &signals {
            if facts.explained(pid, s) {
                // A rule this one yields to already names it (FC104, FC208).
                continue;
            }
            // Running the SDK without this signal's batching thread: nothing of it is pending
            // here. Running no SDK thread at all when inspected says nothing: the SDK may be
            // set up later (a pool initializer, Celery's worker_process_init, lazily).
            if let Some(p) =
                proc.filter(|p| names_known(p) && p.exporter_threads().next().is_some())
            {
                if p.threads_of(batcher(s)).next().is_none() {
                    continue;
                }
            }
            if let Some(mut line) = lost(s, exports, served, stop, pid) {
                if let Some(t) = proc.and_then(|p| p.threads_of(batcher(s)).next()) {
                    let _ = write!(line, "; thread {} '{}' was batching it", t.tid, t.name);
                }
                lines.push(line);
                lines.extend(due_note(s, exports, served, stop, proc, pid));
                lost_signals.push(s);
            }
        }
        if lost_signals.is_empty() {
            continue;
        }
        let role = match proc.map(|p| p.role) {
            Some(Role::Master) => "master",
            Some(Role::Other) => "other",
            _ => "worker",
        };
        let mut evidence = Vec::new();
        if let Some(sv) = served {
            evidence.push(format!(
                "pid {pid} ({role}) served {} request(s) sent by run, the last completed {}",
                sv.requests,
                rel(sv.last_ms, stop)
            ));
        }
        for a in ledger.activity.get(&pid).into_iter().flatten() {
            if served.is_none() {
                evidence.push(format!("pid {pid} ({role}) was active: {a}"));
            }
        }
        evidence.extend(lines);
        if let Some(e) = exports.filter(|e| e.malformed > 0) {
            evidence.push(format!(
                "{} body(ies) on a connection of pid {pid} could not be decoded ({}): whatever \
                 they carried is not counted",
                e.malformed,
                e.malformed_reasons.join("; ")
            ));
        }
        if !ledger.totals.any() && ledger.malformed_total == 0 {
            evidence.push(format!(
                "no export of any signal reached the receiver from any process ({} \
                 connection(s) accepted): if the exporters are aimed elsewhere (an endpoint or \
                 protocol chosen in code, OTEL_SDK_DISABLED), that is the cause, not the exit",
                ledger.connections.len()
            ));
        }
        if let Some(how) = &stop.ended {
            evidence.push(format!(
                "the command (master pid {}) ended by itself ({how}); judged after a drain of \
                 {:.1} s{}, so nothing more can arrive",
                stop.master,
                stop.waited_ms as f64 / 1000.0,
                if stop.graceful {
                    ", when every process had left"
                } else {
                    " (what was left of its group was then SIGKILLed)"
                }
            ));
        } else if stop.graceful {
            evidence.push(format!(
                "stop: SIGTERM to the master (pid {}); every process left within {:.1} s \
                 (graceful), so the exit flush had its chance and nothing more can arrive",
                stop.master,
                stop.waited_ms as f64 / 1000.0
            ));
        } else {
            evidence.push(format!(
                "stop: SIGTERM to the master (pid {}), but processes were still alive after {:.1} \
                 s and the group was SIGKILLed: a worker killed before it flushed loses what it \
                 had not exported (raise the grace period, or find what blocks shutdown: FC104)",
                stop.master,
                stop.waited_ms as f64 / 1000.0
            ));
        }
        for n in &stop.notes {
            evidence.push(format!("server output: {n}"));
        }
        let names: Vec<&str> = lost_signals.iter().map(|s| s.as_str()).collect();
        let title = match served {
            Some(sv) => format!(
                "{role} {pid} served {} request(s) but their {} never arrived: not flushed when \
                 it stopped",
                sv.requests,
                names.join(", ")
            ),
            None => format!(
                "{role} {pid} was active but its {} never arrived: not flushed when it stopped",
                names.join(", ")
            ),
        };
        out.push(
            RULE.finding(
                vec![pid],
                title,
                evidence,
                fix::flush_on_exit(facts.framework()),
            )
            .with_signals(
                lost_signals
                    .iter()
                    .map(|s| PidSignal { pid, signal: *s })
                    .collect(),
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests;
