//! FC212 count-lost.

use crate::diagnose::{fix, Facts, Finding, Rule, Severity};
use crate::ledger::{CountTally, Signal};
use crate::snapshot::Role;

use super::count::{judged, number, per_pid_line};

pub static RULE: Rule = Rule {
    code: "FC212",
    slug: "count-lost",
    severity: Severity::Error,
    summary: "`--expect-count`: the total is below the expected count (data lost, e.g. at exit)",
    doc: DOC,
    silenced_by: &[],
    check,
};

const DOC: &str = "\
## What it means
`--expect-count METRIC=N` (or `=served`) said what a counter's total should be once every
process has exported and stopped, and the receiver added up less: counts were recorded that
never arrived.

## Why telemetry breaks
The SDK exports metrics on a schedule (`OTEL_METRIC_EXPORT_INTERVAL`, 60 s by default); what a
worker counted since its last export arrives only if something flushes when it leaves. Without
the SDK's exit flush (providers built with `shutdown_on_exit=False`, processes that leave with
`os._exit` as Celery and multiprocessing pool children do, a uWSGI master that never runs
atexit) or when the worker is killed (SIGKILL after gunicorn's `graceful_timeout`), the last
interval's counts are gone. A worker whose metric reader never ran (a lock inherited at fork,
uWSGI without fork hooks) loses all of them.

## How it is detected
Every data point of the metric is followed per sending pid and per series: a cumulative series
counts its latest value (plus its last value before each restart), a delta series every point
(repeats not again), a histogram or summary its number of observations. The pids' totals are
added and compared with N, or with the requests `run` saw answered, after the server stopped
(`run`) or the receiver did (`receive`). The workers named are those whose total is below the
requests `run` saw them serve; without that (under `receive`), the workers of the tree that
sent none of the metric. Exports that arrived on a connection several processes shared and
could not be pinned to one are counted in no total: the evidence says how many there were.

## Fix
Flush what is pending before each worker leaves, and give it the time to:
- gunicorn: keep `shutdown_on_exit` on (the default) or shut the providers down in `worker_exit`,
  and keep `graceful_timeout` above the exporters' timeout; uWSGI: flush from `uwsgi.atexit`,
  stop with SIGTERM to the master; Celery: `worker_process_shutdown`; multiprocessing: a
  `Finalize` registered in the Pool initializer.
If no metrics came from a worker at all, see FC208 and FC104 (a stuck reader).

## Known false alarms
Requests that the application does not count (error responses, paths outside the counter),
an N that counts something else than the metric, or exports still in flight when the receiver
was stopped (stop the server first, then the receiver).
Precedence: nothing silences it.

## References
- docs/failure-modes.md#counts-that-do-not-add-up (how the totals are made)
- docs/failure-modes.md#shutdown-and-data-lost-on-exit (what was measured)
- docs/failure-modes.md#metric-reader-stuck-on-an-inherited-lock (workers whose metrics never come)
- https://github.com/open-telemetry/opentelemetry-python-contrib/issues/4916 (telemetry lost when pool processes leave)
";

fn check(facts: &Facts) -> Vec<Finding> {
    let Some(ledger) = facts.ledger else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in judged(ledger, std::cmp::Ordering::Less) {
        let expected = t.expected.unwrap_or(0.0);
        let mut evidence = vec![format!(
            "{}: {} counted across pids, {} short of the {} expected ({})",
            t.metric,
            number(t.total),
            number(expected - t.total),
            number(expected),
            t.expected_from
        )];
        let short = |t: &CountTally| -> Vec<i32> {
            t.pids
                .iter()
                .filter(|p| p.served.is_some_and(|s| p.total < s as f64))
                .map(|p| p.pid)
                .collect()
        };
        let mut pids = short(&t);
        for p in &t.pids {
            let why = match p.served {
                Some(s) if p.total < s as f64 => vec![format!(
                    "{} of the {s} request(s) it served not counted",
                    number(s as f64 - p.total)
                )],
                _ => Vec::new(),
            };
            evidence.push(per_pid_line(p, &why));
        }
        if pids.is_empty() {
            if let Some(snap) = facts.snapshot {
                // No per-pid expectation (receive): the workers that sent none of it.
                for w in snap.processes.iter().filter(|p| p.role == Role::Worker) {
                    if t.pid(w.pid).is_none_or(|p| p.total == 0.0) {
                        pids.push(w.pid);
                        let sent = ledger
                            .processes
                            .get(&w.pid)
                            .map(|p| p.signals.seen())
                            .unwrap_or_default();
                        evidence.push(format!(
                            "pid {} (worker): none of {} arrived from it{}",
                            w.pid,
                            t.metric,
                            if sent.is_empty() {
                                String::new()
                            } else {
                                format!(
                                    " (it sent {})",
                                    sent.iter()
                                        .map(|s| s.as_str())
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                )
                            }
                        ));
                    }
                }
            }
        }
        if !t.arrived.is_empty() {
            evidence.push(format!(
                "no export of {} arrived; metrics that did: {}",
                t.metric,
                t.arrived.join(", ")
            ));
        } else if t.total == 0.0 && !ledger.totals.get(Signal::Metrics).any() {
            evidence.push("no metrics export arrived at all".into());
        }
        if t.unpinned_exports > 0 {
            evidence.push(format!(
                "{} metrics export(s) came on a connection several processes shared and could not be pinned to one: their values are in no total",
                t.unpinned_exports
            ));
        }
        if let Some(stop) = ledger.stop.as_ref().filter(|s| !s.graceful) {
            evidence.push(format!(
                "the server did not stop within {} ms and was SIGKILLed: what its workers had not exported was lost",
                stop.waited_ms
            ));
        }
        out.push(RULE.finding(
            pids,
            format!(
                "{} adds up to {}, expected {}: {} count(s) never arrived",
                t.metric,
                number(t.total),
                number(expected),
                number(expected - t.total)
            ),
            evidence,
            fix::flush_on_exit(facts.framework()),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::testkit::*;
    use crate::ledger::{CountExpectation, ExpectedCount, Num};

    #[test]
    fn a_worker_that_lost_its_last_interval_is_named() {
        let mut s = Scenario::gunicorn(2);
        s.served(W1, 20, 1_000..=8_000)
            .served(W2, 10, 1_000..=8_000);
        s.metrics(W1).counter("requests", 20.0, 10).at(9_000);
        // W2's last 4 requests were counted after its last export, and nothing flushed
        s.metrics(W2).counter("requests", 6.0, 10).at(5_000);
        s.expect_count(CountExpectation {
            metric: "requests".into(),
            expected: ExpectedCount::Served(Some(30)),
        });
        s.now(10_000);
        assert!(s.findings(check).is_empty(), "judged only after the stop");
        s.stopped(9_500);
        let f = s.findings(check);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].code, "FC212");
        assert_eq!(f[0].pids, vec![W2]);
        assert!(f[0]
            .title
            .contains("adds up to 26, expected 30: 4 count(s) never arrived"));
        assert!(f[0].evidence[0].contains("the server answered 30 request(s)"));
        assert!(f[0]
            .evidence
            .iter()
            .any(|e| e == "pid 102: 6 (served 10); 4 of the 10 request(s) it served not counted"));
    }

    #[test]
    fn without_served_counts_the_silent_workers_are_named_and_a_wrong_name_is_shown() {
        let mut s = Scenario::gunicorn(2);
        s.metrics(W1).counter("requests", 20.0, 10).at(9_000);
        s.traces(W2).at(9_000);
        s.expect_count(CountExpectation {
            metric: "requests".into(),
            expected: ExpectedCount::Exactly(Num(30.0)),
        });
        s.closed().now(10_000);
        let f = s.findings(check);
        assert_eq!(f[0].pids, vec![W2]);
        assert!(f[0]
            .evidence
            .iter()
            .any(|e| e
                .contains("pid 102 (worker): none of requests arrived from it (it sent traces)")));
        s.expect_count(CountExpectation {
            metric: "request".into(),
            expected: ExpectedCount::Exactly(Num(30.0)),
        });
        let f = s.findings(check);
        assert!(f[0]
            .evidence
            .iter()
            .any(|e| e == "no export of request arrived; metrics that did: requests"));
        // equal or above: not this rule's
        s.expect_count(CountExpectation {
            metric: "requests".into(),
            expected: ExpectedCount::Exactly(Num(20.0)),
        });
        assert!(s.findings(check).is_empty());
    }
}
