//! FC211 count-doubled.

use crate::diagnose::{fix, Facts, Finding, Rule, Severity};
use crate::ledger::{CountTally, Identity};

use super::count::{judged, number, per_pid_line};

pub static RULE: Rule = Rule {
    code: "FC211",
    slug: "count-doubled",
    severity: Severity::Error,
    summary: "`--expect-count`: the metric's total across pids is above the expected count (pre-fork re-export, shared identity)",
    doc: DOC,
    silenced_by: &[],
    check,
};

const DOC: &str = "\
## What it means
`--expect-count METRIC=N` (or `=served`) said what a counter's total should be once every
process has exported and stopped, and the receiver added up more: some counts arrived twice.

## Why telemetry breaks
Counts recorded in the master before fork are copied into every worker's meter provider; each
worker exports them as its own, and a master that kept its SDK exports them too, so a dashboard
summing over processes shows them once per process (`prefork=1000` from the master and again
from every worker). Workers that also share one resource identity (a `process.pid` or
`service.instance.id` built in the master) make backends merge their series into one, whose
value jumps between the workers' totals.

## How it is detected
Every data point of the metric is followed per sending pid and per series: a cumulative series
counts its latest value (plus its last value before each restart, a later start time), a delta
series every point (repeats not again), a histogram or summary its number of observations. The
pids' totals (exports that could not be pinned to a pid are counted in none) are added and
compared with N, or with the requests `run` saw answered, after the server stopped (`run`) or
the receiver did (`receive`). The pids named are those whose series of the metric started
before the process itself (its start from /proc/<pid>/stat), those that sent it under an
identity another pid also used, and those whose total is above the requests `run` saw them
serve; when none of these tells, every pid that sent the metric.

## Fix
Record nothing in the master before fork, set the SDK up in each worker after fork, and let the
SDK give each worker its own identity (no `process.pid` or `service.instance.id` set by hand in
the master):
- gunicorn: `post_fork` (and no SDK set-up at import with `--preload`); uWSGI: `lazy-apps = true`
  or `@postfork`; Celery: `worker_process_init`; multiprocessing: the Pool initializer.

## Known false alarms
Requests that the application counts more than once on purpose (retries, sub-requests),
traffic from elsewhere during the run (health checks, other clients), or an N that counts
something else than the metric. Compare the per-pid totals in the evidence with what each pid
served.
Precedence: nothing silences it.

## References
- docs/failure-modes.md#counts-that-do-not-add-up (how the totals are made)
- docs/failure-modes.md#pre-fork-data-exported-again (what was measured)
- docs/failure-modes.md#master-identity-in-every-worker (shared identities)
- https://github.com/open-telemetry/opentelemetry-python/issues/3001 (counters that go up and down when workers share an identity)
";

/// Why a pid is named, if it is.
fn doubles(t: &CountTally, pid: i32) -> Vec<String> {
    let Some(p) = t.pid(pid) else {
        return Vec::new();
    };
    let mut why = Vec::new();
    if let Some((series, ms)) = p.prefork_series.first() {
        why.push(format!(
            "series '{series}' started {:.3} s before pid {pid} did{}",
            *ms as f64 / 1000.0,
            match p.prefork_series.len() {
                1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            }
        ));
    }
    for i in &p.shared_identities {
        let others: Vec<String> = t
            .pids
            .iter()
            .filter(|q| q.pid != pid && q.shared_identities.contains(i))
            .map(|q| q.pid.to_string())
            .collect();
        why.push(format!(
            "sent it under {i}, as pid(s) {} did",
            others.join(", ")
        ));
    }
    let any_served = t.pids.iter().any(|q| q.served.is_some());
    match p.served {
        Some(s) if p.total > s as f64 => why.push(format!(
            "counted {} but served {s} request(s)",
            number(p.total)
        )),
        None if any_served && p.total > 0.0 => {
            why.push(format!("counted {} but served no request", number(p.total)))
        }
        _ => {}
    }
    why
}

fn check(facts: &Facts) -> Vec<Finding> {
    let Some(ledger) = facts.ledger else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in judged(ledger, std::cmp::Ordering::Greater) {
        let expected = t.expected.unwrap_or(0.0);
        let mut pids: Vec<i32> = Vec::new();
        let mut evidence = vec![format!(
            "{}: {} counted across pids, {} more than the {} expected ({})",
            t.metric,
            number(t.total),
            number(t.total - expected),
            number(expected),
            t.expected_from
        )];
        for p in &t.pids {
            let why = doubles(&t, p.pid);
            if !why.is_empty() {
                pids.push(p.pid);
            }
            evidence.push(per_pid_line(p, &why));
        }
        if pids.is_empty() {
            pids = t
                .pids
                .iter()
                .filter(|p| p.total > 0.0)
                .map(|p| p.pid)
                .collect();
        }
        let shared: Vec<&Identity> = t.pids.iter().flat_map(|p| &p.shared_identities).collect();
        let prefork = t.pids.iter().any(|p| !p.prefork_series.is_empty());
        let served = t.pids.iter().any(|p| p.served.is_some());
        let cause = match (prefork, shared.is_empty(), served) {
            (true, _, _) => "counts recorded before fork are exported again by every worker",
            (false, false, _) => "several processes report under one identity",
            (false, true, true) => "some processes count more than they served",
            (false, true, false) => "more counts arrived than expected",
        };
        out.push(RULE.finding(
            pids,
            format!(
                "{} adds up to {}, expected {}: {cause}",
                t.metric,
                number(t.total),
                number(expected)
            ),
            evidence,
            fix::init_after_fork(facts.framework()),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::testkit::*;
    use crate::ledger::{CountExpectation, ExpectedCount, Num};

    fn expect(s: &mut Scenario, n: Option<f64>) {
        let expected = match n {
            Some(n) => ExpectedCount::Exactly(Num(n)),
            None => ExpectedCount::Served(None),
        };
        s.expect_count(CountExpectation {
            metric: "requests".into(),
            expected,
        });
    }

    #[test]
    fn preload_prefork_counts_in_every_worker_name_them_all() {
        let mut s = Scenario::gunicorn(2);
        s.started(MASTER, 1_000)
            .started(W1, 5_000)
            .started(W2, 5_000);
        s.served(W1, 20, 6_000..=7_000)
            .served(W2, 10, 6_000..=7_000);
        // the master counted 1 before fork, each worker re-exports it beside its own
        s.metrics(MASTER)
            .counter("requests{prefork}", 1.0, 2_000)
            .at(9_000);
        for (w, n) in [(W1, 20.0), (W2, 10.0)] {
            s.metrics(w)
                .counter("requests{prefork}", 1.0, 2_000)
                .counter("requests{/}", n, 5_500)
                .at(9_000);
        }
        expect(&mut s, None);
        s.stopped(9_500);
        let f = s.now(10_000).findings(check);
        assert_eq!(
            f.len(),
            1,
            "{:?} {:#?}",
            s.ledger().count_tallies(),
            s.ledger().processes
        );
        assert_eq!(f[0].code, "FC211");
        assert_eq!(f[0].pids, vec![MASTER, W1, W2]);
        assert!(
            f[0].title.contains("adds up to 33, expected 30"),
            "{}",
            f[0].title
        );
        assert!(f[0].title.contains("before fork"));
        assert!(f[0].evidence[0].contains("3 more than the 30 expected"));
        let w1 = f[0]
            .evidence
            .iter()
            .find(|e| e.starts_with("pid 101"))
            .unwrap();
        assert!(
            w1.contains("series 'requests{prefork}' started 3.000 s before"),
            "{w1}"
        );
        assert!(w1.contains("counted 21 but served 20"), "{w1}");
        let m = f[0]
            .evidence
            .iter()
            .find(|e| e.starts_with("pid 100"))
            .unwrap();
        assert!(m.contains("served no request"), "{m}");
    }

    #[test]
    fn exact_or_short_or_unjudged_is_not_doubled() {
        let mut s = Scenario::gunicorn(1);
        s.metrics(W1).counter("requests", 30.0, 10).at(9_000);
        expect(&mut s, Some(30.0));
        // not judged before the receiver stopped
        s.now(10_000);
        assert!(s.findings(check).is_empty());
        s.closed();
        assert!(s.findings(check).is_empty(), "exactly 30");
        expect(&mut s, Some(29.0));
        assert_eq!(s.findings(check).len(), 1);
        expect(&mut s, Some(31.0));
        assert!(s.findings(check).is_empty(), "short: FC212's");
    }

    #[test]
    fn one_identity_from_two_pids_is_named() {
        let mut s = Scenario::no_tree();
        for w in [W1, W2] {
            s.metrics(w)
                .pid(MASTER)
                .counter("requests", 10.0, 1)
                .at(9_000);
        }
        expect(&mut s, Some(15.0));
        s.closed();
        let f = s.now(10_000).findings_without_tree(check);
        assert_eq!(f[0].pids, vec![W1, W2]);
        assert!(f[0].title.contains("under one identity"), "{}", f[0].title);
        assert!(
            f[0].evidence[1].contains("process.pid=100, as pid(s) 102 did"),
            "{:?}",
            f[0].evidence
        );
    }
}
