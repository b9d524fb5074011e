//! FC209 lost-on-exit.

use std::fmt::Write as _;

use crate::diagnose::evidence::{
    default_interval_ms, interval_ms, interval_var, names_known, shares_collector_connection,
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
(OTEL_BSP_SCHEDULE_DELAY, OTEL_BLRP_SCHEDULE_DELAY, or `schedule_delay_millis` in code), metric
points wait for the reader's interval (OTEL_METRIC_EXPORT_INTERVAL, 60 s by default, or
`export_interval_millis` in code). Whatever was recorded since the last export is only sent if
someone flushes when the worker leaves. The SDK does that itself through an atexit handler
(`shutdown_on_exit=True`, the default on all three providers), and on a graceful gunicorn stop
sync workers leave through sys.exit, so that handler runs: measured, all three signals arrive
even without a `worker_exit` hook. The data is really lost when the atexit flush is off
(`shutdown_on_exit=False`) and nothing else flushes, when a worker is SIGKILLed (after
gunicorn's `graceful_timeout`, for example because a stuck metric reader blocked its shutdown),
or when workers leave through os._exit (Celery/billiard pool processes, multiprocessing pools,
uWSGI, whose master never runs Python atexit). Short-lived workers (max_requests, autoscaling,
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
- multiprocessing: `multiprocessing.util.Finalize(None, provider.shutdown, exitpriority=10)`
  registered in the Pool initializer.
If nothing at all reached the receiver from any process, check first that the exporters use the
endpoints `run` set (an endpoint or protocol chosen in code, OTEL_SDK_DISABLED).

## Known false alarms
A signal the app does not record on every request (e.g. logs only on errors): a worker whose last
requests logged nothing has an older last log export legitimately. Look at the counts.
Exporters aimed elsewhere than the receiver (an endpoint chosen in code) look the same as a lost
flush: the evidence says when nothing at all arrived from any process.
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
            if let Some(p) = proc.filter(|p| names_known(p)) {
                if p.threads_of(kind_of(s)).next().is_none() {
                    // No batching thread for this signal: nothing of it is pending here.
                    continue;
                }
            }
            if let Some(mut line) = lost(s, exports, served, stop, pid) {
                if let Some(t) = proc.and_then(|p| p.threads_of(kind_of(s)).next()) {
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
        if stop.graceful {
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
        assert_eq!(
            f[0].signals,
            vec![PidSignal {
                pid: W1,
                signal: Signal::Metrics
            }]
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
    fn after_the_stop_the_interval_does_not_matter() {
        // 1 s intervals in the environment, 9 s between the first request and the stop: a
        // scheduled export was due and none came. The interval set in code may be longer, or
        // exporting is broken; either way nothing of it will ever arrive now (issue 7).
        let l = ledger(None);
        let snap = snap_with("1000");
        let f = check(&Facts::new(Some(&snap), Some(&l)));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].pids, vec![W1]);
        assert_eq!(
            f[0].signals,
            Signal::ALL
                .iter()
                .map(|s| PidSignal {
                    pid: W1,
                    signal: *s
                })
                .collect::<Vec<_>>()
        );
        let ev = f[0].evidence.join("\n");
        assert!(
            ev.contains("traces: OTEL_BSP_SCHEDULE_DELAY=1000 in its environment, so a scheduled export was due"),
            "{ev}"
        );
        assert!(ev.contains("schedule_delay_millis"), "{ev}");
        assert!(ev.contains("export_interval_millis"), "{ev}");
        // Without a snapshot the SDK defaults are said, and every signal is judged all the same.
        let f = check(&Facts::new(None, Some(&l)));
        assert_eq!(f.len(), 1);
        assert!(
            f[0].title
                .contains("their metrics, traces, logs never arrived"),
            "{}",
            f[0].title
        );
        assert!(f[0]
            .evidence
            .iter()
            .any(|e| e.contains("OTEL_BLRP_SCHEDULE_DELAY unset: the SDK default is 1000 ms")));
        // The same after a stop that needed SIGKILL: every process is gone either way.
        let mut l = ledger(None);
        l.stop = Some(stop(false));
        assert_eq!(
            check(&Facts::new(Some(&snap), Some(&l)))[0].signals.len(),
            3
        );
    }

    #[test]
    fn a_stale_last_export_is_lost_whatever_the_interval() {
        // w1 exported at 4 s, its last request was served at 5 s, the stop came at 10 s: with
        // a 1 s interval an export was due after the last request; it did not come.
        let l = ledger(Some(4_000));
        let snap = snap_with("1000");
        let f = check(&Facts::new(Some(&snap), Some(&l)));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].signals.len(), 3);
        assert!(f[0]
            .evidence
            .iter()
            .any(|e| e.contains("1.0 s before its last served request")));
    }

    #[test]
    fn exports_without_items_are_nothing() {
        let mut l = ledger(None);
        let w1 = proc(W1, &[], 0);
        let mut b = B::new();
        let c = b.conn(std::slice::from_ref(&w1));
        b.sends(
            c,
            std::slice::from_ref(&w1),
            Signal::Logs,
            id("a", Some(W1 as i64), None),
            0,
            10_300,
        );
        l.processes.insert(W1, b.at(0).processes[&W1].clone());
        let f = run(&l);
        assert_eq!(f.len(), 1);
        assert!(f[0].names_signal(W1, Signal::Logs));
        assert!(f[0]
            .evidence
            .iter()
            .any(|e| e.contains("logs: 1 export(s) arrived from pid 101, without a single")));
    }

    #[test]
    fn activity_without_served_requests_is_judged_on_what_never_arrived() {
        let mut l = ledger(None);
        l.served.remove(&W1);
        l.activity
            .insert(W1, vec!["picked 3 tasks from the broker".into()]);
        let f = run(&l);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].pids, vec![W1]);
        assert!(f[0].title.contains("was active but its"), "{}", f[0].title);
        assert!(f[0]
            .evidence
            .iter()
            .any(|e| e.contains("was active: picked 3 tasks")));
        // ... but not the master's activity
        l.activity.clear();
        l.activity.insert(MASTER, vec!["something".into()]);
        assert!(run(&l).is_empty());
        // ... and an active worker whose signals arrived is fine
        let mut l = ledger(Some(10_200));
        l.served.remove(&W1);
        l.activity.insert(W1, vec!["x".into()]);
        assert!(run(&l).is_empty());
    }

    #[test]
    fn explained_pairs_are_left_to_the_rule_that_names_them() {
        let l = ledger(None);
        let snap = snap_with("60000");
        let explained = [PidSignal {
            pid: W1,
            signal: Signal::Metrics,
        }];
        let facts = Facts {
            explained: &explained,
            ..Facts::new(Some(&snap), Some(&l))
        };
        let f = check(&facts);
        assert_eq!(f.len(), 1);
        assert!(!f[0].names_signal(W1, Signal::Metrics));
        assert!(
            f[0].title.contains("their traces, logs never"),
            "{}",
            f[0].title
        );
    }

    #[test]
    fn nothing_received_from_anyone_is_said() {
        let l = ledger(None);
        let mut l2 = l.clone();
        l2.processes.clear();
        l2.totals = Default::default();
        let f = run(&l2);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f[0]
            .evidence
            .iter()
            .any(|e| e.contains("no export of any signal reached the receiver")));
        assert!(!run(&l)[0]
            .evidence
            .iter()
            .any(|e| e.contains("no export of any signal reached the receiver")));
    }

    #[test]
    fn sigkill_is_said() {
        let mut l = ledger(None);
        l.stop = Some(stop(false));
        let f = run(&l);
        assert!(f[0].evidence.iter().any(|e| e.contains("SIGKILLed")));
    }
}
