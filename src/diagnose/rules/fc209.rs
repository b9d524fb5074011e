//! FC209 lost-on-exit.

use std::fmt::Write as _;

use crate::diagnose::evidence::{
    interval_ms, interval_var, names_known, shares_collector_connection,
};
use crate::diagnose::{fix, Facts, Finding, PidSignal, Rule, Severity};
use crate::ledger::{Ledger, PidExports, Served, Signal, StopRecord};
use crate::snapshot::{Process, Role, Snapshot, ThreadKind};

pub static RULE: Rule = Rule {
    code: "FC209",
    slug: "lost-on-exit",
    severity: Severity::Error,
    summary: "data recorded before a graceful stop never arrived (no flush on exit)",
    doc: DOC,
    silenced_by: &["FC104", "FC208"],
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
(OTEL_BSP_SCHEDULE_DELAY, OTEL_BLRP_SCHEDULE_DELAY), metric points wait for the reader's interval
(OTEL_METRIC_EXPORT_INTERVAL, 60 s by default). Whatever was recorded since the last export is
only sent if someone flushes when the worker leaves. The SDK does that itself through an atexit
handler (`shutdown_on_exit=True`, the default on all three providers), and on a graceful gunicorn
stop sync workers leave through sys.exit, so that handler runs: measured, all three signals
arrive even without a `worker_exit` hook. The data is really lost when the atexit flush is off
(`shutdown_on_exit=False`) and nothing else flushes, when a worker is SIGKILLed (after gunicorn's
`graceful_timeout`, for example because a stuck metric reader blocked its shutdown), or when
workers leave through os._exit (Celery/billiard pool processes, multiprocessing pools, uWSGI,
whose master never runs Python atexit). Short-lived workers (max_requests, autoscaling, deploys)
lose their last interval on every restart.

## How it is detected
Only by `otel-forkcheck run`, which sends the requests itself, so it knows which worker served
each one (it connects, then reads which pid of the tree holds the server side of that TCP
connection in /proc/<pid>/net/tcp and /proc/<pid>/fd before sending), and when the response was
complete. It then stops the server with SIGTERM to the master, waits for every process to leave
(SIGKILL to the group only after the grace period, which the evidence then says), waits a moment
for exports in flight, and compares per worker and per expected signal the receiver time of the
last export from that pid with the time of its last served request.

A signal is judged only while the loss can be the exit's fault: when a scheduled export
(OTEL_METRIC_EXPORT_INTERVAL, OTEL_BSP_SCHEDULE_DELAY, OTEL_BLRP_SCHEDULE_DELAY as set in the
worker's environment, else the SDK defaults 60 s, 5 s, 1 s) was due before the stop and did not
come either, exporting itself is broken (a wrong endpoint or protocol, a stuck reader) and other
rules speak (FC104, FC201, FC208). A signal is not judged for a worker whose threads were read
from Python memory and that runs no batching thread for it (no metric reader, span or log
processor): nothing of that signal is pending there (FC102, FC201 say why).

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
- multiprocessing: `multiprocessing.util.Finalize(None, provider.shutdown, exitpriority=10)`
  registered in the Pool initializer.

## Known false alarms
A signal the app does not record on every request (e.g. logs only on errors): a worker whose last
requests logged nothing has an older last log export legitimately. Look at the counts.
A worker that shares a collector connection with other processes (FC103, FC207) is not judged:
the receiver may count its exports under another holder of that connection.
Precedence: a signal of a worker that FC104 (its metric reader is stuck) or FC208 (its metrics
stalled while traces/logs flow) already names is not repeated here: exporting was broken before
the stop, the exit is not the cause.

## References
- docs/failure-modes.md#shutdown-and-data-lost-on-exit (what was measured, and when data is really lost)
- docs/failure-modes.md#celery-prefork-and-multiprocessing-pools (children that leave with os._exit)
- https://github.com/open-telemetry/opentelemetry-python/issues/3307 (what the SDK supports under forking process models)
- https://github.com/open-telemetry/opentelemetry-python/issues/4390 (a unique service.instance.id for every process after fork)
- https://github.com/open-telemetry/opentelemetry-python-contrib/issues/4916 (Celery spans lost when a pool child is recycled)
- https://docs.celeryq.dev/en/stable/userguide/signals.html#worker-process-shutdown (Celery worker_process_shutdown)
";

fn kind_of(s: Signal) -> ThreadKind {
    match s {
        Signal::Metrics => ThreadKind::MetricReader,
        Signal::Traces => ThreadKind::SpanProcessor,
        Signal::Logs => ThreadKind::LogProcessor,
    }
}

/// Export latency allowed on top of the schedule before an export counts as overdue.
const EXPORT_SLACK_MS: u64 = 1_000;

/// Last export of `s` from `p`, known or possibly (a shared connection may hide a loss, it must
/// never invent one).
fn last_export(p: Option<&PidExports>, s: Signal) -> Option<u64> {
    let p = p?;
    p.signals.get(s).last_ms.max(p.possible.get(s).last_ms)
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

/// Why one signal of one worker is lost at exit, or None. `interval` is how long its data may
/// wait for a scheduled export: when a scheduled export was due before the stop and did not
/// come, exporting itself is broken (wrong endpoint or protocol, a stuck reader: FC104, FC201,
/// FC208), and that is not a loss at exit.
fn lost(
    s: Signal,
    exports: Option<&PidExports>,
    served: &Served,
    stop: &StopRecord,
    pid: i32,
    interval: u64,
) -> Option<String> {
    let last = last_export(exports, s);
    // The data nothing carried was recorded from this moment on.
    let pending_since = match last {
        None => served.first_ms,
        Some(_) => served.last_ms,
    };
    if stop.requested_ms > pending_since + interval + EXPORT_SLACK_MS {
        return None;
    }
    match last {
        None => Some(format!(
            "{}: nothing arrived from pid {pid}, neither while it served nor after the stop",
            s.as_str()
        )),
        Some(last) if last < served.last_ms => {
            let st = exports
                .map(|e| e.signals.get(s).clone())
                .unwrap_or_default();
            Some(format!(
                "{}: its last export arrived {} ({} export(s), {} {} in all), {:.1} s before its \
                 last served request; nothing came after, not even at exit",
                s.as_str(),
                rel(last, stop),
                st.requests,
                st.items,
                s.item(),
                (served.last_ms - last) as f64 / 1000.0
            ))
        }
        Some(_) => None,
    }
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
    for (&pid, served) in &ledger.served {
        if served.requests == 0 {
            continue;
        }
        if !shares_collector_connection(snap, Some(ledger), pid).is_empty() {
            // Its exports may be counted under another holder: FC103/FC207 speak for it.
            continue;
        }
        let proc: Option<&Process> = snap.and_then(|s| s.process(pid));
        let exports = ledger.processes.get(&pid);
        let mut lines = Vec::new();
        let mut lost_signals = Vec::new();
        for &s in &signals {
            if facts.explained(pid, s) {
                // A rule this one yields to already names it (FC104, FC208).
                continue;
            }
            if let Some(p) = proc.filter(|p| names_known(p)) {
                if p.threads_of(kind_of(s)).next().is_none() {
                    // No batching thread for this signal: nothing of it is pending here.
                    continue;
                }
            }
            if let Some(mut line) = lost(s, exports, served, stop, pid, interval_ms(proc, s)) {
                if let Some(t) = proc.and_then(|p| p.threads_of(kind_of(s)).next()) {
                    let _ = write!(line, "; thread {} '{}' was batching it", t.tid, t.name);
                }
                if let Some(v) = proc.and_then(|p| p.env_var(interval_var(s))) {
                    let _ = write!(line, "; {}={v} in /proc/{pid}/environ", interval_var(s));
                }
                lines.push(line);
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
        let mut evidence = vec![format!(
            "pid {pid} ({role}) served {} request(s) sent by run, the last completed {}",
            served.requests,
            rel(served.last_ms, stop)
        )];
        evidence.extend(lines);
        if stop.graceful {
            evidence.push(format!(
                "stop: SIGTERM to the master (pid {}); every process left within {:.1} s \
                 (graceful), so the exit flush had its chance",
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
        out.push(
            RULE.finding(
                vec![pid],
                format!(
                    "{role} {pid} served {} request(s) but their {} never arrived: not flushed \
                     when it stopped",
                    served.requests,
                    names.join(", ")
                ),
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
mod tests {
    use super::*;
    use crate::diagnose::testkit::{gunicorn, main_only, sdk_threads, MASTER};
    use crate::ledger::build::*;
    use crate::snapshot::Snapshot;

    const W1: i32 = MASTER + 1;
    const W2: i32 = MASTER + 2;

    fn stop(graceful: bool) -> StopRecord {
        StopRecord {
            master: MASTER,
            requested_ms: 10_000,
            graceful,
            waited_ms: if graceful { 800 } else { 35_000 },
            notes: vec![],
        }
    }

    fn served(n: u64, last_ms: u64) -> Served {
        Served {
            requests: n,
            first_ms: 1_000,
            last_ms,
        }
    }

    /// Two workers; w1 exported every signal at `w1_at` (None: nothing at all).
    fn ledger(w1_at: Option<u64>) -> Ledger {
        let (w1, w2) = (proc(W1, &[], 0), proc(W2, &[], 0));
        let mut b = B::new();
        let c1 = b.conn(std::slice::from_ref(&w1));
        let c2 = b.conn(std::slice::from_ref(&w2));
        for s in Signal::ALL {
            if let Some(at) = w1_at {
                b.sends(
                    c1,
                    std::slice::from_ref(&w1),
                    s,
                    id("a", Some(W1 as i64), None),
                    3,
                    at,
                );
            }
            b.sends(
                c2,
                std::slice::from_ref(&w2),
                s,
                id("a", Some(W2 as i64), None),
                3,
                10_500,
            );
        }
        let mut l = b.at(12_000);
        l.expected_signals = Signal::ALL.to_vec();
        l.served.insert(W1, served(14, 5_000));
        l.served.insert(W2, served(16, 5_100));
        l.stop = Some(stop(true));
        l
    }

    /// Workers with these export intervals in their environment (ms).
    fn snap_with(interval: &str) -> Snapshot {
        let mut snap = gunicorn(main_only(100), vec![sdk_threads(200), sdk_threads(300)]);
        for p in snap.processes.iter_mut() {
            for s in Signal::ALL {
                p.env.otel.push((interval_var(s).into(), interval.into()));
            }
        }
        snap
    }

    fn run(l: &Ledger) -> Vec<Finding> {
        let snap = snap_with("60000");
        check(&Facts::new(Some(&snap), Some(l)))
    }

    #[test]
    fn nothing_arrived_from_a_worker_that_served_is_lost() {
        let f = run(&ledger(None));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].code, "FC209");
        assert_eq!(f[0].pids, vec![W1]);
        assert!(
            f[0].title.contains("metrics, traces, logs"),
            "{}",
            f[0].title
        );
        assert!(f[0].evidence[0].contains("served 14 request(s)"));
        assert!(f[0]
            .evidence
            .iter()
            .any(|e| e.contains("nothing arrived from pid 101")));
        assert!(f[0].evidence.iter().any(|e| e.contains("(graceful)")));
        assert!(f[0].fix.contains("worker_exit"));
        assert!(f[0].fix.contains("shutdown_on_exit"));
        for s in Signal::ALL {
            assert!(f[0].names_signal(W1, s), "{:?}", f[0].signals);
            assert!(!f[0].names_signal(W2, s));
        }
    }

    #[test]
    fn last_export_before_last_request_is_lost() {
        let f = run(&ledger(Some(4_000)));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].pids, vec![W1]);
        assert!(f[0]
            .evidence
            .iter()
            .any(|e| e.contains("1.0 s before its last served request")));
    }

    #[test]
    fn exit_flush_after_last_request_passes() {
        assert!(run(&ledger(Some(10_200))).is_empty());
    }

    #[test]
    fn not_judged_without_a_stop_or_without_requests() {
        let mut l = ledger(None);
        l.stop = None;
        assert!(run(&l).is_empty());
        let mut l = ledger(None);
        l.served.insert(W1, served(0, 0));
        assert!(run(&l).is_empty());
        // A worker that served nothing and sent nothing is not a failure.
        let mut l = ledger(None);
        l.served.remove(&W1);
        assert!(run(&l).is_empty());
    }

    #[test]
    fn a_signal_without_a_batching_thread_is_left_to_other_rules() {
        let l = ledger(None);
        // w1 runs a metric reader only (names read): only metrics can be pending there.
        let mut snap = snap_with("60000");
        snap.processes[1]
            .threads
            .retain(|t| t.kind != ThreadKind::SpanProcessor);
        snap.processes[1]
            .threads
            .retain(|t| t.kind != ThreadKind::LogProcessor);
        let f = check(&Facts::new(Some(&snap), Some(&l)));
        assert_eq!(f.len(), 1);
        assert!(
            f[0].title.contains("their metrics never arrived"),
            "{}",
            f[0].title
        );
    }

    #[test]
    fn a_worker_on_a_shared_connection_is_not_judged() {
        let mut l = ledger(None);
        let c = l.connections.keys().next().copied().unwrap();
        l.connections.get_mut(&c).unwrap().holders = vec![MASTER, W1];
        assert!(run(&l).is_empty());
    }

    #[test]
    fn nothing_arrived_although_an_export_was_due_is_not_an_exit_loss() {
        // 1 s intervals, 9 s between the first request and the stop: exporting is broken.
        let l = ledger(None);
        let snap = snap_with("1000");
        assert!(check(&Facts::new(Some(&snap), Some(&l))).is_empty());
        // Without a snapshot the SDK defaults apply: only metrics (60 s) can still be pending.
        let f = check(&Facts::new(None, Some(&l)));
        assert_eq!(f.len(), 1);
        assert!(
            f[0].title.contains("their metrics never arrived"),
            "{}",
            f[0].title
        );
    }

    #[test]
    fn sigkill_is_said() {
        let mut l = ledger(None);
        l.stop = Some(stop(false));
        let f = run(&l);
        assert!(f[0].evidence.iter().any(|e| e.contains("SIGKILLed")));
    }
}
