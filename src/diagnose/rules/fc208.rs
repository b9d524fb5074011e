//! FC208 metrics-stalled.

use crate::diagnose::evidence::{interval_ms, who};
use crate::diagnose::{Facts, Finding, PidSignal, Rule, Severity};
use crate::ledger::Signal;

pub static RULE: Rule = Rule {
    code: "FC208",
    slug: "metrics-stalled",
    severity: Severity::Error,
    summary: "a worker's traces/logs arrive but its metrics do not",
    doc: DOC,
    silenced_by: &["FC104", "FC214"],
    check,
};

const DOC: &str = "\
## What it means
A worker's traces or logs keep arriving, so it is alive and serving, but its metrics never
arrived, or stopped: nothing for more than three metric export intervals.

## Why telemetry breaks
The periodic metric reader of this worker is stuck. Its `_export_lock` was held at the moment
of fork (the master's reader was exporting, typically to a slow or failing collector), the
child got the lock in its held state, and nothing ever releases it (true up to SDK 1.45.2; the
reader has no pid check: https://github.com/open-telemetry/opentelemetry-python/issues/2767).
Traces and logs are unaffected because their processors are re-created with fresh locks. The
worker's shutdown then also blocks for the export timeout (30 s), so gunicorn may SIGKILL it and
lose its last data.

## How it is detected
`--pid` names the master (without it, `receive` finds each sender's tree from its own /proc
entry); workers come from /proc. The metric export interval is the median
gap between metric exports of the processes that send them (when none does, the worker's
OTEL_METRIC_EXPORT_INTERVAL, else 60 s, the SDK default). A worker is reported when metrics are
expected (`--signals` names them, or another process of the tree sends them), its traces or logs arrived, and either no metrics arrived from
it for two intervals plus a second after its first export, or its last metrics export is older
than three intervals while its traces/logs kept coming after that.
`check` confirms from the other side: the reader thread blocked on a futex without a timeout,
its context switches not moving (FC104).

## Fix
Set the SDK up in each worker after fork, so no lock is ever inherited:
- gunicorn: `post_fork`; uWSGI: `lazy-apps = true` or `@postfork`; Celery: `worker_process_init`;
  multiprocessing: the Pool initializer.
Restarting the worker clears it until the next unlucky fork.

## Known false alarms
Applications that record metrics only on some code paths: a worker that served only requests
without metric recording sends spans but no metrics. With a very long export interval (60 s)
and a short observation, give it at least two intervals.
Precedence: not reported for a process whose stuck reader FC104 already names (the same metrics,
seen from inside the process), nor for metrics that FC214 says its code sent elsewhere.

## References
- docs/failure-modes.md#metric-reader-stuck-on-an-inherited-lock (what was measured)
- https://github.com/open-telemetry/opentelemetry-python/issues/2767 (the periodic metric reader and fork: no pid check)
- https://github.com/open-telemetry/opentelemetry-python/issues/3307 (what the SDK supports under forking process models)
- https://github.com/open-telemetry/opentelemetry-python/issues/4345 (a metric reader lock that deadlocks under gunicorn)
";

fn check(facts: &Facts) -> Vec<Finding> {
    let (Some(snap), Some(ledger)) = (facts.snapshot, facts.ledger) else {
        return Vec::new();
    };
    let now = ledger.now_ms();
    let measured = ledger.metric_interval_ms();
    let mut out = Vec::new();
    for w in snap.workers() {
        // When no process exported metrics twice: the worker's setting, else the SDK default.
        let interval = measured
            .unwrap_or_else(|| interval_ms(Some(w), Signal::Metrics))
            .max(100);
        let Some(p) = ledger.processes.get(&w.pid) else {
            continue;
        };
        if facts.explained(w.pid, Signal::Metrics) {
            continue;
        }
        // Traces/logs known (or possibly) from this worker: first and last.
        let other: Vec<_> = [Signal::Traces, Signal::Logs]
            .iter()
            .flat_map(|s| [p.signals.get(*s), p.possible.get(*s)])
            .filter(|st| st.any())
            .collect();
        if other.is_empty() {
            continue;
        }
        let other_first = other.iter().filter_map(|s| s.first_ms).min().unwrap_or(now);
        let other_last = other.iter().filter_map(|s| s.last_ms).max().unwrap_or(0);
        let metrics_expected = ledger.expected_signals.contains(&Signal::Metrics)
            || snap.processes.iter().any(|q| {
                q.pid != w.pid
                    && ledger
                        .processes
                        .get(&q.pid)
                        .is_some_and(|e| e.signals.metrics.any())
            });
        if !metrics_expected {
            continue;
        }
        let last_metrics = [p.signals.metrics.last_ms, p.possible.metrics.last_ms]
            .into_iter()
            .flatten()
            .max();
        let evidence_head = format!(
            "{}: traces/logs exports arrived from {} s to {} s ago",
            who(w),
            now.saturating_sub(other_first) / 1000,
            now.saturating_sub(other_last) / 1000
        );
        let finding = match last_metrics {
            None if now.saturating_sub(other_first) > 2 * interval + 1_000 => Some((
                format!("worker {} sends traces/logs but never sent metrics", w.pid),
                format!(
                    "no metrics export from pid {} in {} s, {} metric export intervals of {} ms",
                    w.pid,
                    now.saturating_sub(other_first) / 1000,
                    now.saturating_sub(other_first) / interval,
                    interval
                ),
            )),
            Some(last)
                if now.saturating_sub(last) > 3 * interval && other_last > last + interval =>
            {
                Some((
                    format!("worker {}'s metrics stopped while its traces/logs go on", w.pid),
                    format!(
                        "last metrics export from pid {} was {} s ago ({} intervals of {} ms); traces/logs arrived after it",
                        w.pid,
                        now.saturating_sub(last) / 1000,
                        now.saturating_sub(last) / interval,
                        interval
                    ),
                ))
            }
            _ => None,
        };
        if let Some((title, line)) = finding {
            out.push(
                RULE.finding(
                    vec![w.pid],
                    title,
                    vec![evidence_head, line],
                    format!(
                    "The worker's metric reader is most likely stuck on a lock inherited at fork \
                     (run `otel-forkcheck --pid {}` to confirm: FC104). {}",
                    snap.root_pid,
                    crate::diagnose::fix::init_after_fork(snap.framework)
                ),
                )
                .with_signals(vec![PidSignal {
                    pid: w.pid,
                    signal: Signal::Metrics,
                }]),
            );
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::cloned_ref_to_slice_refs)]
mod tests {
    use super::super::fc202::tree::tree;
    use super::*;
    use crate::ledger::build::*;

    /// Worker 101 healthy (metrics every second), worker 102: traces only.
    fn ledger(now: u64, w2_metrics_until: Option<u64>) -> crate::ledger::Ledger {
        let (w1, w2) = (proc(101, &[], 0), proc(102, &[], 0));
        let mut b = B::new();
        let c1 = b.conn(&[w1.clone()]);
        let c2 = b.conn(&[w2.clone()]);
        for t in (1_000..now).step_by(1_000) {
            b.sends(
                c1,
                &[w1.clone()],
                Signal::Metrics,
                id("a", Some(101), None),
                1,
                t,
            );
            b.sends(
                c2,
                &[w2.clone()],
                Signal::Traces,
                id("a", Some(102), None),
                1,
                t,
            );
            if w2_metrics_until.is_some_and(|u| t <= u) {
                b.sends(
                    c2,
                    &[w2.clone()],
                    Signal::Metrics,
                    id("a", Some(102), None),
                    1,
                    t,
                );
            }
        }
        b.at(now)
    }

    #[test]
    fn never_sent_metrics() {
        let snap = tree(100, &[101, 102], 0);
        let l = ledger(10_000, None);
        assert_eq!(l.metric_interval_ms(), Some(1_000));
        let f = check(&Facts::new(Some(&snap), Some(&l)));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].code, "FC208");
        assert_eq!(f[0].pids, vec![102]);
        assert!(f[0].title.contains("never sent metrics"));
        assert_eq!(
            f[0].signals,
            vec![PidSignal {
                pid: 102,
                signal: Signal::Metrics
            }]
        );
    }

    #[test]
    fn stopped_sending_metrics() {
        let snap = tree(100, &[101, 102], 0);
        let l = ledger(20_000, Some(5_000));
        let f = check(&Facts::new(Some(&snap), Some(&l)));
        assert_eq!(f.len(), 1);
        assert!(f[0].title.contains("stopped"));
    }

    #[test]
    fn healthy_or_too_early() {
        let snap = tree(100, &[101, 102], 0);
        // both send metrics all along
        let l = ledger(20_000, Some(20_000));
        assert!(check(&Facts::new(Some(&snap), Some(&l))).is_empty());
        // only 2 s observed: not yet two intervals plus a second
        let l = ledger(3_000, None);
        assert!(check(&Facts::new(Some(&snap), Some(&l))).is_empty());
        // no tree: nothing to say
        let l = ledger(20_000, None);
        assert!(check(&Facts::new(None, Some(&l))).is_empty());
    }
}
