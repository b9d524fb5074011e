//! FC201 worker-not-exporting.

use crate::diagnose::evidence::{interval_ms, who};
use crate::diagnose::{fix, Facts, Finding, PidSignal, Rule, Severity};
use crate::ledger::{Ledger, PidExports, Signal};
use crate::snapshot::Snapshot;

pub static RULE: Rule = Rule {
    code: "FC201",
    slug: "worker-not-exporting",
    severity: Severity::Error,
    summary: "a worker with activity sent no export of an expected signal",
    doc: DOC,
    silenced_by: &["FC104", "FC108", "FC208", "FC209", "FC214"],
    check,
};

/// A worker must have been exporting for this long, and for two of its export intervals, before
/// a signal missing from `--signals` (and from every other process) is held against it.
pub const EXPECT_AFTER_MS: u64 = 10_000;

const DOC: &str = "\
## What it means
A worker is known to be doing work (its traces or logs arrive, or its activity was seen
otherwise), but no export of another expected signal ever came from it, while other processes of
the tree do send that signal.

## Why telemetry breaks
The pipeline for that signal did not survive the fork in this worker: on SDKs before 1.7 (and on
uWSGI without its fork hooks) the batch processor thread is not re-created, the span or log
records pile up in a queue nobody drains, and the worker's telemetry for that signal is silently
lost. (A worker whose metrics alone are missing is FC208.)

## How it is detected
`--pid` names the master (without it, `receive` finds each sender's tree from its own /proc
entry); its workers are read from /proc. Each export is attributed to the
pid(s) holding the client's socket. Evidence of activity is required first (its traces or logs
arrive, or `run` saw it serve requests): a worker that served nothing exports nothing, and the
kernel may hand all requests to one worker; that is not a failure. A signal is then expected
from the worker once two of its own export intervals for that signal have passed
(OTEL_METRIC_EXPORT_INTERVAL, OTEL_BSP_SCHEDULE_DELAY, OTEL_BLRP_SCHEDULE_DELAY in its
environment, else the SDK defaults: 60 s, 5 s, 1 s), and either another process of the tree sent
that signal meanwhile, or `--signals` names it and at least 10 s have passed. Data that only a
stop would have flushed is FC209's.

## Fix
Set the SDK up in each worker after fork (SDK 1.7+ re-creates processor threads at fork; setting
up after fork works on every version):
- gunicorn: `post_fork`; uWSGI: `lazy-apps = true` or `@postfork`; Celery: `worker_process_init`;
  multiprocessing: the Pool initializer. Upgrade SDKs older than 1.7.

## Known false alarms
Workers whose code paths differ (e.g. only some routes log): a worker that served only requests
that produce spans sends no logs. Look at the counts of the other workers.
Precedence: a signal of a worker that FC104 (its metric reader is stuck), FC108 (a spawned
worker with no SDK at all), FC208 (its metrics stalled while traces/logs flow) or FC209 (after
the stop, nothing of it ever arrived) already names is not repeated here: those say the same
data is missing, with a closer cause. Nor one that FC214 names: its code sent it elsewhere.

## References
- docs/failure-modes.md#exporter-thread-missing-in-workers (old SDKs)
- docs/failure-modes.md#uwsgi-without-fork-hooks (servers that fork from C)
- https://github.com/open-telemetry/opentelemetry-python/issues/1567 (batch export in forked children, before the SDK re-created its threads)
- https://github.com/open-telemetry/opentelemetry-python/issues/2266 (batch span processor under uWSGI, which forks without the at-fork hooks)
";

/// The signals a process sent (known or possibly, on a shared connection).
fn sent(p: Option<&PidExports>, s: Signal) -> bool {
    p.is_some_and(|p| p.signals.get(s).any() || p.possible.get(s).any())
}

/// First export of any signal from `p`, known or possible.
fn first_ms(p: &PidExports) -> Option<u64> {
    Signal::ALL
        .iter()
        .flat_map(|s| [p.signals.get(*s).first_ms, p.possible.get(*s).first_ms])
        .flatten()
        .min()
}

/// Signals expected from worker `pid`, given when it started exporting (see the rule doc).
pub fn expected_from(
    snap: &Snapshot,
    ledger: &Ledger,
    pid: i32,
    since_ms: u64,
    active_ms: u64,
) -> Vec<Signal> {
    Signal::ALL
        .into_iter()
        .filter(|s| {
            let others = snap.processes.iter().filter(|q| q.pid != pid).any(|q| {
                ledger
                    .processes
                    .get(&q.pid)
                    .and_then(|e| e.signals.get(*s).last_ms)
                    .is_some_and(|last| last >= since_ms)
            });
            // Either way the worker's own schedule must have come round twice: what only a
            // stop would have flushed is FC209's, not this rule's.
            let own = 2 * interval_ms(snap.process(pid), *s);
            (others && active_ms >= own)
                || (ledger.expected_signals.contains(s) && active_ms >= EXPECT_AFTER_MS.max(own))
        })
        .collect()
}

fn check(facts: &Facts) -> Vec<Finding> {
    let (Some(snap), Some(ledger)) = (facts.snapshot, facts.ledger) else {
        return Vec::new();
    };
    let now = ledger.now_ms();
    let mut out = Vec::new();
    for w in snap.workers() {
        let p = ledger.processes.get(&w.pid);
        let hint = ledger.activity.get(&w.pid);
        let request_driven = sent(p, Signal::Traces) || sent(p, Signal::Logs);
        if !request_driven && hint.is_none() {
            continue;
        }
        let since = p.and_then(first_ms).unwrap_or(ledger.started_at_ms);
        let missing: Vec<Signal> =
            expected_from(snap, ledger, w.pid, since, now.saturating_sub(since))
                .into_iter()
                .filter(|s| !sent(p, *s))
                // already said by a rule this one yields to (FC104, FC208, FC209)
                .filter(|s| !facts.explained(w.pid, *s))
                .collect();
        if missing.is_empty() {
            continue;
        }
        let mut evidence = Vec::new();
        if let Some(p) = p {
            for s in Signal::ALL.iter().filter(|s| p.signals.get(**s).any()) {
                let st = p.signals.get(*s);
                evidence.push(format!(
                    "{} sent {} {} export(s) ({} {})",
                    who(w),
                    st.requests,
                    s.as_str(),
                    st.items,
                    s.item()
                ));
            }
            evidence.extend(crate::diagnose::evidence::identity_pins(ledger, w.pid));
        }
        for h in hint.into_iter().flatten() {
            evidence.push(format!("{} was active: {h}", who(w)));
        }
        for s in &missing {
            let from: Vec<String> = snap
                .processes
                .iter()
                .filter(|q| q.pid != w.pid && sent(ledger.processes.get(&q.pid), *s))
                .map(|q| q.pid.to_string())
                .collect();
            evidence.push(format!(
                "no {} export from pid {} in {} s{}",
                s.as_str(),
                w.pid,
                now.saturating_sub(since) / 1000,
                if from.is_empty() {
                    " (expected by --signals)".to_string()
                } else {
                    format!(", while pid(s) {} sent {}", from.join(", "), s.as_str())
                }
            ));
        }
        out.push(
            RULE.finding(
                vec![w.pid],
                format!(
                    "worker {} is active but sends no {}",
                    w.pid,
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
                evidence,
                fix::init_after_fork(snap.framework),
            )
            .with_signals(
                missing
                    .iter()
                    .map(|s| PidSignal {
                        pid: w.pid,
                        signal: *s,
                    })
                    .collect(),
            ),
        );
    }
    out
}

#[cfg(test)]
#[allow(clippy::cloned_ref_to_slice_refs)]
mod tests {
    use super::super::fc202::tree::tree;
    use super::*;
    use crate::ledger::build::*;

    #[test]
    fn traces_arrive_logs_do_not() {
        let snap = tree(100, &[101, 102], 0);
        let (w1, w2) = (proc(101, &[], 0), proc(102, &[], 0));
        let mut b = B::new();
        let c1 = b.conn(&[w1.clone()]);
        let c2 = b.conn(&[w2.clone()]);
        b.sends(
            c1,
            &[w1.clone()],
            Signal::Traces,
            id("a", Some(101), None),
            2,
            1_000,
        );
        b.sends(c1, &[w1], Signal::Logs, id("a", Some(101), None), 2, 1_500);
        b.sends(
            c2,
            &[w2],
            Signal::Traces,
            id("a", Some(102), None),
            2,
            1_000,
        );
        let l = b.at(5_000);
        let f = check(&Facts::new(Some(&snap), Some(&l)));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].code, "FC201");
        assert_eq!(f[0].pids, vec![102]);
        assert!(f[0].title.contains("sends no logs"));
        assert!(f[0]
            .evidence
            .iter()
            .any(|e| e.contains("while pid(s) 101 sent logs")));
    }

    #[test]
    fn silent_worker_without_activity_is_not_a_failure() {
        let snap = tree(100, &[101, 102], 0);
        let w1 = proc(101, &[], 0);
        let mut b = B::new();
        let c1 = b.conn(&[w1.clone()]);
        b.sends(
            c1,
            &[w1.clone()],
            Signal::Traces,
            id("a", Some(101), None),
            2,
            1_000,
        );
        b.sends(c1, &[w1], Signal::Logs, id("a", Some(101), None), 2, 1_000);
        let mut l = b.at(60_000);
        assert!(check(&Facts::new(Some(&snap), Some(&l))).is_empty());
        // ... unless its activity was seen otherwise
        l.activity.insert(102, vec!["served 12 requests".into()]);
        let f = check(&Facts::new(Some(&snap), Some(&l)));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].pids, vec![102]);
        assert!(f[0].title.contains("traces or logs"));
    }

    #[test]
    fn a_signal_expected_by_signals_needs_time() {
        let snap = tree(100, &[101, 102], 0);
        let (w1, w2) = (proc(101, &[], 0), proc(102, &[], 0));
        let mut b = B::new();
        let c1 = b.conn(&[w1.clone()]);
        let c2 = b.conn(&[w2.clone()]);
        b.sends(
            c1,
            &[w1],
            Signal::Metrics,
            id("a", Some(101), None),
            2,
            1_000,
        );
        b.sends(
            c2,
            &[w2],
            Signal::Traces,
            id("a", Some(102), None),
            2,
            1_000,
        );
        let mut l = b.at(3_000);
        l.expected_signals = vec![Signal::Logs];
        assert!(check(&Facts::new(Some(&snap), Some(&l))).is_empty());
        l.as_of_ms = 1_000 + EXPECT_AFTER_MS;
        let f = check(&Facts::new(Some(&snap), Some(&l)));
        assert_eq!(f.len(), 1);
        assert!(f[0].title.contains("sends no logs"));
        assert_eq!(
            f[0].signals,
            vec![PidSignal {
                pid: 102,
                signal: Signal::Logs
            }]
        );
        assert!(check(&Facts::new(None, Some(&l))).is_empty());
    }

    #[test]
    fn metrics_missing_while_traces_arrive_are_left_to_fc208() {
        // 101 exports metrics and traces every second, 102 traces only; both with a 1 s
        // metric interval in their environment.
        let mut snap = tree(100, &[101, 102], 0);
        for p in snap.processes.iter_mut() {
            p.env.otel = vec![("OTEL_METRIC_EXPORT_INTERVAL".into(), "1000".into())];
        }
        let (w1, w2) = (proc(101, &[], 0), proc(102, &[], 0));
        let mut b = B::new();
        let c1 = b.conn(&[w1.clone()]);
        let c2 = b.conn(&[w2.clone()]);
        for t in (1_000..20_000).step_by(1_000) {
            for s in [Signal::Metrics, Signal::Traces] {
                b.sends(c1, &[w1.clone()], s, id("a", Some(101), None), 1, t);
            }
            b.sends(
                c2,
                &[w2.clone()],
                Signal::Traces,
                id("a", Some(102), None),
                1,
                t,
            );
        }
        let l = b.at(20_000);
        let facts = Facts::new(Some(&snap), Some(&l));
        // On its own this rule would say it ...
        let raw = check(&facts);
        assert_eq!(raw.len(), 1, "{raw:?}");
        assert!(raw[0].names_signal(102, Signal::Metrics));
        // ... but FC208 says the same with the closer cause, and precedence keeps that one.
        let all = crate::diagnose::diagnose(&facts);
        let codes: Vec<&str> = all.iter().map(|f| f.code.as_str()).collect();
        assert_eq!(codes, vec!["FC208"], "{all:#?}");
        assert!(all[0].names_signal(102, Signal::Metrics));
    }

    #[test]
    fn a_long_configured_interval_is_waited_for() {
        // An active worker that sent nothing yet, with --signals metrics: overdue only after
        // two of its own export intervals (here 60 s: the SDK default, and what FC209 judges).
        let mut snap = tree(100, &[101], 0);
        snap.processes[1].env.otel = vec![("OTEL_METRIC_EXPORT_INTERVAL".into(), "60000".into())];
        let mut l = B::new().at(15_000);
        l.expected_signals = vec![Signal::Metrics];
        l.activity.insert(101, vec!["served 9 requests".into()]);
        assert!(check(&Facts::new(Some(&snap), Some(&l))).is_empty());
        l.as_of_ms = 121_000;
        let f = check(&Facts::new(Some(&snap), Some(&l)));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].pids, vec![101]);
        assert!(f[0].title.contains("sends no metrics"));
        // another worker's logs (a flush at exit, say) do not make it due any sooner
        let mut two = tree(100, &[101, 102], 0);
        two.processes[1].env.otel = vec![("OTEL_BLRP_SCHEDULE_DELAY".into(), "60000".into())];
        let w2 = proc(102, &[], 0);
        let mut b = B::new();
        let c2 = b.conn(&[w2.clone()]);
        b.sends(c2, &[w2], Signal::Logs, id("a", Some(102), None), 1, 2_000);
        let mut l2 = b.at(15_000);
        l2.activity.insert(101, vec!["served 9 requests".into()]);
        assert!(check(&Facts::new(Some(&two), Some(&l2))).is_empty());
        // with a 1 s interval, 15 s of silence is already overdue
        snap.processes[1].env.otel = vec![("OTEL_METRIC_EXPORT_INTERVAL".into(), "1000".into())];
        l.as_of_ms = 15_000;
        assert_eq!(check(&Facts::new(Some(&snap), Some(&l))).len(), 1);
    }
}
