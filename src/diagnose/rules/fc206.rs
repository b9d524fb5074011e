//! FC206 inherited-prefork-data.

use std::collections::HashMap;

use crate::diagnose::{fix, Facts, Finding, Rule, Severity};

pub static RULE: Rule = Rule {
    code: "FC206",
    slug: "inherited-prefork-data",
    severity: Severity::Warning,
    summary: "cumulative series started before the sending process existed",
    doc: DOC,
    silenced_by: &[],
    check,
};

/// Clock-tick granularity of /proc start times (10 ms) plus slack.
pub const TOLERANCE_MS: u64 = 50;

const DOC: &str = "\
## What it means
A process exports cumulative metric series whose `start_time_unix_nano` is earlier than the
process itself started: the series were begun by another process, the one it was forked from.

## Why telemetry breaks
What the master recorded before fork is copied into every worker, and each worker re-exports it
as its own (`prefork=1000` from the master and again from every worker), so sums over workers
count it once per worker. The early start time also tells backends the series has been running
since before the worker existed, which skews rates.

## How it is detected
For every cumulative series (monotonic or not: sums, histograms, exponential histograms,
summaries) the receiver keeps the start time reported by each pid (capped per pid, the earliest
always kept). The sending process's start time is read from /proc/<pid>/stat (clock ticks since
boot, turned into wall-clock time with CLOCK_BOOTTIME, so it is exact to 10 ms). A series
starting more than 50 ms before its sender started is reported. So is a series whose start time,
before its sender started and, to the nanosecond, was also exported for the same series by a
process that started earlier (the master, say): only a copy made by fork repeats it, however soon after the recording the fork came.

## Fix
Record nothing in the master before fork, and set the SDK up in each worker after fork, so each
worker's meters start empty.
- gunicorn: `post_fork` (and no SDK set-up at import with `--preload`); uWSGI: `lazy-apps = true`
  or `@postfork`; Celery: `worker_process_init`; multiprocessing: the Pool initializer.

## Known false alarms
A series whose start time was set explicitly by the application, or clocks stepped backwards
between the start of the sender and its first export.
Precedence: nothing silences it.

## References
- docs/failure-modes.md#pre-fork-data-exported-again (what was measured)
- https://github.com/open-telemetry/opentelemetry-python/issues/2767 (the periodic metric reader and fork: no pid check)
- https://github.com/open-telemetry/opentelemetry-python/issues/3307 (what the SDK supports under forking process models)
";

fn secs(ms: u64) -> String {
    format!("{:.3} s", ms as f64 / 1000.0)
}

/// Series (key, start) -> the earliest process start among the pids exporting it.
fn first_exporters(ledger: &crate::ledger::Ledger) -> HashMap<(u64, u64), u64> {
    let mut first: HashMap<(u64, u64), u64> = HashMap::new();
    for p in ledger.processes.values() {
        if p.sender.started_at_ns == 0 {
            continue;
        }
        for s in &p.cumulative_series {
            let e = first
                .entry((s.key, s.start_time_unix_nano))
                .or_insert(u64::MAX);
            *e = (*e).min(p.sender.started_at_ns);
        }
    }
    first
}

fn check(facts: &Facts) -> Vec<Finding> {
    let Some(ledger) = facts.ledger else {
        return Vec::new();
    };
    let first = first_exporters(ledger);
    let mut pids = Vec::new();
    let mut evidence = Vec::new();
    for p in ledger.processes.values() {
        if p.sender.started_at_ns == 0 {
            continue;
        }
        let started_ms = p.sender.started_at_ns / 1_000_000;
        let Some(earliest) = &p.earliest_cumulative else {
            continue;
        };
        let start_ms = earliest.start_time_unix_nano / 1_000_000;
        if start_ms + TOLERANCE_MS < started_ms {
            let older = p
                .cumulative_series
                .iter()
                .filter(|s| s.start_time_unix_nano / 1_000_000 + TOLERANCE_MS < started_ms)
                .count();
            pids.push(p.sender.pid);
            evidence.push(format!(
                "pid {}: cumulative series '{}' starts {} before the process started \
                 (start_time_unix_nano={}, process start from /proc/{}/stat); {} of {} cumulative series recorded start before it",
                p.sender.pid,
                earliest.series,
                secs(started_ms - start_ms),
                earliest.start_time_unix_nano,
                p.sender.pid,
                older.max(1),
                p.cumulative_series.len().max(1)
            ));
            evidence.extend(crate::diagnose::evidence::identity_pins(
                ledger,
                p.sender.pid,
            ));
            continue;
        }
        // Within the tolerance: a start time repeated to the nanosecond from an older process.
        // A series that began after the process started may be its own: never a copy.
        let is_copy = |s: &&crate::ledger::SeriesStart| {
            s.start_time_unix_nano < p.sender.started_at_ns
                && first
                    .get(&(s.key, s.start_time_unix_nano))
                    .is_some_and(|&t| t < p.sender.started_at_ns)
        };
        if let Some(s) = p.cumulative_series.iter().find(is_copy) {
            let n = p.cumulative_series.iter().filter(is_copy).count();
            pids.push(p.sender.pid);
            evidence.push(format!(
                "pid {}: cumulative series '{}' has start_time_unix_nano={}, the same to the \
                 nanosecond as exported by a process that started before it: a copy made by fork; \
                 {} of {} cumulative series are such copies",
                p.sender.pid,
                s.series,
                s.start_time_unix_nano,
                n,
                p.cumulative_series.len()
            ));
            evidence.extend(crate::diagnose::evidence::identity_pins(
                ledger,
                p.sender.pid,
            ));
        }
    }
    if pids.is_empty() {
        return Vec::new();
    }
    vec![RULE.finding(
        pids.clone(),
        format!(
            "{} process(es) export cumulative data recorded before they were forked",
            pids.len()
        ),
        evidence,
        fix::init_after_fork(facts.framework()),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::testkit::*;

    #[test]
    fn series_older_than_the_worker() {
        let mut s = Scenario::gunicorn(1);
        s.started(MASTER, 1_000).started(W1, 5_000);
        // the master counted at 2 s, then forked the worker at 5 s: fine for the master ...
        s.metrics(MASTER).cumulative_since(2_000).at(9_000);
        // ... but the worker exports the master's series as its own
        s.metrics(W1).cumulative_since(2_000).at(9_000);
        let f = s.now(10_000).findings(check);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].code, "FC206");
        assert_eq!(f[0].pids, vec![W1]);
        assert!(f[0].evidence[0].contains("starts 3.000 s before"));
        assert!(f[0].evidence[0].ends_with("1 of 1 cumulative series recorded start before it"));
    }

    #[test]
    fn a_workers_series_on_the_masters_inherited_connection_pinned_by_its_identity() {
        // Celery prefork, SDK set up in MainProcess: the worker's metrics go over the master's
        // inherited connection under its own service.instance.id, which also arrived on the
        // worker's own traces connection.
        let mut s = Scenario::gunicorn(2);
        s.started(MASTER, 1_000)
            .started(W1, 5_000)
            .started(W2, 5_000);
        let shared = s.conn(&[MASTER, W1, W2]);
        // (No process.pid in the resources: the SDK's default detectors set none.)
        let send = |s: &mut Scenario, pid, signal, instance, conn: Option<u64>, at| {
            let m = s.send(pid, signal).no_pid().instance(instance);
            let m = match conn {
                Some(c) => m.on(c).cumulative_since(2_000),
                None => m,
            };
            m.at(at);
        };
        send(&mut s, MASTER, Signal::Metrics, "m", Some(shared), 4_000);
        send(&mut s, W1, Signal::Traces, "w1", None, 8_000);
        send(&mut s, W1, Signal::Metrics, "w1", Some(shared), 9_000);
        // W2's identity never arrives alone: its series stay possible for every holder.
        send(&mut s, W2, Signal::Metrics, "w2", Some(shared), 9_000);
        let f = s.now(10_000).findings(check);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].pids, vec![W1]);
        assert!(
            f[0].evidence[1].contains(&format!("on shared connection(s) #{shared}"))
                && f[0].evidence[1].contains("service.instance.id=w1"),
            "{:?}",
            f[0].evidence
        );
    }

    #[test]
    fn series_started_in_the_worker_or_within_tolerance() {
        let mut s = Scenario::gunicorn(1);
        s.started(W1, 5_000);
        s.metrics(W1).cumulative_since(5_500).at(9_000);
        s.metrics(W1).series("latency", 4_990).at(9_000);
        assert!(s.now(10_000).findings(check).is_empty());
    }

    #[test]
    fn same_start_as_an_older_process_within_tolerance() {
        let mut s = Scenario::gunicorn(2);
        s.started(MASTER, 1_000)
            .started(W1, 2_030)
            .started(W2, 2_100);
        // the master recorded at 2 s and forked W1 30 ms later: inside the tolerance, but the
        // start time is the master's to the nanosecond
        s.metrics(MASTER).cumulative_since(2_000).at(9_000);
        s.metrics(W1).cumulative_since(2_000).at(9_000);
        s.metrics(W2).cumulative_since(2_000).at(9_000);
        let f = s.now(10_000).findings(check);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].pids, vec![W1, W2]);
        assert!(f[0].evidence[0].contains("the same to the nanosecond"));
        assert!(f[0].evidence[1].contains("starts 0.100 s before"));
    }

    #[test]
    fn same_start_from_a_younger_process_is_not_a_copy() {
        let mut s = Scenario::gunicorn(2);
        s.started(W1, 5_000).started(W2, 5_010);
        s.metrics(W1).cumulative_since(5_020).at(9_000);
        s.metrics(W2).cumulative_since(5_020).at(9_000);
        assert!(s.now(10_000).findings(check).is_empty());
    }

    #[test]
    fn unknown_start_time_is_skipped() {
        let mut s = Scenario::gunicorn(1);
        s.started(W1, 0);
        s.metrics(W1).cumulative_since(1).at(9_000);
        assert!(s.now(10_000).findings(check).is_empty());
    }
}
