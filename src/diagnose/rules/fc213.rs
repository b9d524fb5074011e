//! FC213 expected-workers-not-exporting.

use crate::diagnose::evidence::workers_exporting;
use crate::diagnose::{fix, Facts, Finding, Rule, Severity};
use crate::ledger::Signal;
use crate::snapshot::Role;

pub static RULE: Rule = Rule {
    code: "FC213",
    slug: "expected-workers-not-exporting",
    severity: Severity::Error,
    summary: "`--expect-workers N`: fewer than N worker pids exported every expected signal",
    doc: DOC,
    silenced_by: &[],
    check,
};

const DOC: &str = "\
## What it means
`otel-forkcheck receive --expect-workers N` was told that N distinct worker processes would each
export every expected signal (`--signals`, or any signal when none is given), and when the
receiver stopped (its `--timeout`, Ctrl-C or SIGTERM) fewer than N had.

## Why telemetry breaks
Each worker of a pre-fork server must run its own exporting pipeline. When some do not, their
telemetry is missing from the backend while the others' looks normal, so dashboards undercount
without any error: the SDK was set up in the master and its threads or connections did not
survive the fork (old SDKs, uWSGI without fork hooks), a worker's metric reader is stuck on an
inherited lock, the exporters are aimed elsewhere, or the workers never got the traffic or the
time (one export interval) to export anything.

## How it is detected
The receiver attributes every export to the OS pid that holds the client's socket. At the end
it counts the distinct pids that exported every expected signal, using only exports known to
come from them (exports on a connection several processes share that could not be pinned to one
of them do not count). With `--pid`, only processes the tree calls workers count (the master
does not, and workers that exited during the session still do); without it, every sender
counts. The finding is made once the receiver has stopped, when nothing more can arrive; if the
expectation is met earlier, `receive` stops at once and there is nothing to report.

## Fix
Make every worker export on its own, then give it traffic and time:
- gunicorn: set the SDK up in `post_fork`; uWSGI: `lazy-apps = true` or `@postfork`; Celery:
  `worker_process_init`; multiprocessing: the Pool initializer.
- Send requests to every worker before the timeout, and make `--timeout` longer than the
  export interval (OTEL_METRIC_EXPORT_INTERVAL is 60 s by default).
- Check that the exporters use the receiver's endpoint and protocol.
The other findings (FC102, FC104, FC201, FC208) name the workers that are broken.

## Known false alarms
A worker that served nothing exports nothing: the kernel may hand every connection to one
worker, so a short test with few requests may reach fewer than N workers. A `--timeout` shorter
than the export interval ends the count before the first export. Exports the receiver could not
attribute to a pid (a sender that exited before it was looked up, another host) count for no
worker: the evidence gives their number.
Precedence: nothing silences it.

## References
- docs/failure-modes.md#sdk-set-up-after-fork (the set-up that makes every worker export)
- docs/failure-modes.md#exporter-thread-missing-in-workers (workers that cannot export)
- https://github.com/open-telemetry/opentelemetry-python/issues/3307 (what the SDK supports under forking process models)
";

fn names(signals: &[Signal]) -> String {
    if signals.is_empty() {
        "any signal".to_string()
    } else {
        signals
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn list(pids: &[i32]) -> String {
    if pids.is_empty() {
        "none".to_string()
    } else {
        pids.iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn check(facts: &Facts) -> Vec<Finding> {
    let Some(ledger) = facts.ledger else {
        return Vec::new();
    };
    let Some(want) = ledger.expected_workers else {
        return Vec::new();
    };
    if !ledger.closed {
        return Vec::new();
    }
    let snap = facts.snapshot;
    let signals = &ledger.expected_signals;
    let mut done = workers_exporting(ledger, snap, signals);
    done.sort_unstable();
    if done.len() >= want {
        return Vec::new();
    }
    let secs = ledger.now_ms().saturating_sub(ledger.started_at_ms) as f64 / 1000.0;
    let mut evidence = vec![format!(
        "--expect-workers {want}: {} distinct worker pid(s) exported {} in {secs:.1} s: {}",
        done.len(),
        names(signals),
        list(&done)
    )];
    // Who sent something, and what was missing.
    for (pid, p) in &ledger.processes {
        if done.contains(pid) {
            continue;
        }
        let role = snap.and_then(|s| s.process(*pid)).map(|q| q.role);
        let seen = p.signals.seen();
        let possible = p.possible.seen();
        let what = if seen.is_empty() {
            "nothing known to come from it".to_string()
        } else {
            format!("only {}", names(&seen))
        };
        let also = if possible.is_empty() {
            String::new()
        } else {
            format!(
                " (and possibly {} on a connection it shares with other processes)",
                names(&possible)
            )
        };
        match (snap, role) {
            (Some(_), Some(Role::Worker)) => {
                evidence.push(format!("worker pid {pid} sent {what}{also}"))
            }
            (Some(_), Some(r)) => evidence.push(format!(
                "pid {pid} ({}) sent {what}{also}: not a worker of the tree, so not counted",
                r.as_str()
            )),
            (Some(_), None) => evidence.push(format!(
                "pid {pid} sent {what}{also}: not in the tree, so not counted"
            )),
            (None, _) => evidence.push(format!("pid {pid} sent {what}{also}")),
        }
    }
    if let Some(s) = snap {
        let silent: Vec<i32> = s
            .workers()
            .map(|w| w.pid)
            .filter(|w| !ledger.processes.contains_key(w))
            .collect();
        if !silent.is_empty() {
            evidence.push(format!(
                "workers of pid {} from which nothing at all arrived: {}",
                s.root_pid,
                list(&silent)
            ));
        }
    }
    if ledger.unattributed.signals.any() {
        evidence.push(format!(
            "{} export(s) could not be attributed to any pid (the sender was gone before it was \
             looked up, or is on another host): they count for no worker",
            Signal::ALL
                .iter()
                .map(|s| ledger.unattributed.signals.get(*s).requests)
                .sum::<u64>()
        ));
    }
    if !ledger.totals.any() {
        evidence.push(format!(
            "no export at all reached the receiver ({} connection(s) accepted)",
            ledger.connections.len()
        ));
    }
    let fix = format!(
        "Make sure every worker exports on its own and gets traffic and time before the receiver \
         stops (a --timeout longer than the export interval):\n\n{}",
        fix::init_after_fork(facts.framework())
    );
    vec![RULE.finding(
        done.clone(),
        format!(
            "{} of {want} expected worker(s) exported {} before the receiver stopped",
            done.len(),
            names(signals)
        ),
        evidence,
        fix,
    )]
}

#[cfg(test)]
#[allow(clippy::cloned_ref_to_slice_refs)]
mod tests {
    use super::super::fc202::tree::tree;
    use super::*;
    use crate::ledger::build::*;
    use crate::ledger::Ledger;

    /// Worker 101 sends every signal, 102 traces only, the master 100 metrics.
    fn ledger() -> Ledger {
        let (m, w1, w2) = (proc(100, &[], 0), proc(101, &[], 0), proc(102, &[], 0));
        let mut b = B::new();
        let c0 = b.conn(&[m.clone()]);
        let c1 = b.conn(&[w1.clone()]);
        let c2 = b.conn(&[w2.clone()]);
        b.sends(c0, &[m], Signal::Metrics, id("a", Some(100), None), 1, 500);
        for s in Signal::ALL {
            b.sends(c1, &[w1.clone()], s, id("a", Some(101), None), 2, 1_000);
        }
        b.sends(
            c2,
            &[w2],
            Signal::Traces,
            id("a", Some(102), None),
            2,
            1_000,
        );
        let mut l = b.at(5_000);
        l.expected_signals = Signal::ALL.to_vec();
        l.expected_workers = Some(2);
        l.closed = true;
        l
    }

    #[test]
    fn fewer_workers_than_expected_when_closed() {
        let snap = tree(100, &[101, 102, 103], 0);
        let l = ledger();
        let f = check(&Facts::new(Some(&snap), Some(&l)));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].code, "FC213");
        assert_eq!(f[0].severity, Severity::Error);
        assert_eq!(f[0].pids, vec![101]);
        assert!(
            f[0].title.starts_with("1 of 2 expected worker(s)"),
            "{}",
            f[0].title
        );
        let ev = f[0].evidence.join("\n");
        assert!(ev.contains("worker pid 102 sent only traces"), "{ev}");
        assert!(ev.contains("pid 100 (master) sent only metrics"), "{ev}");
        assert!(ev.contains("nothing at all arrived: 103"), "{ev}");
        assert!(f[0].signals.is_empty());
    }

    #[test]
    fn not_before_the_receiver_stopped_nor_when_met_nor_unasked() {
        let snap = tree(100, &[101, 102], 0);
        let mut l = ledger();
        l.closed = false;
        assert!(check(&Facts::new(Some(&snap), Some(&l))).is_empty());
        let mut l = ledger();
        l.expected_workers = Some(1);
        assert!(check(&Facts::new(Some(&snap), Some(&l))).is_empty());
        let mut l = ledger();
        l.expected_workers = None;
        assert!(check(&Facts::new(Some(&snap), Some(&l))).is_empty());
        // With traces alone expected, both workers count.
        let mut l = ledger();
        l.expected_signals = vec![Signal::Traces];
        assert!(check(&Facts::new(Some(&snap), Some(&l))).is_empty());
    }

    #[test]
    fn without_a_tree_every_sender_counts_and_any_signal_when_none_is_expected() {
        let mut l = ledger();
        // 101 alone sends every signal: the master is not told apart without a tree.
        l.expected_workers = Some(2);
        assert_eq!(check(&Facts::new(None, Some(&l))).len(), 1);
        l.expected_signals.clear();
        // any signal: 100, 101 and 102 all sent something
        l.expected_workers = Some(3);
        assert!(check(&Facts::new(None, Some(&l))).is_empty());
        l.expected_workers = Some(4);
        let f = check(&Facts::new(None, Some(&l)));
        assert_eq!(f[0].pids, vec![100, 101, 102]);
        assert!(f[0].title.contains("exported any signal"), "{}", f[0].title);
    }

    #[test]
    fn nothing_at_all_is_said() {
        let mut l = Ledger::new(0);
        l.as_of_ms = 300;
        l.expected_workers = Some(1);
        l.closed = true;
        let f = check(&Facts::new(None, Some(&l)));
        assert_eq!(f.len(), 1);
        assert!(f[0].pids.is_empty());
        assert!(f[0].title.starts_with("0 of 1"), "{}", f[0].title);
        assert!(f[0]
            .evidence
            .iter()
            .any(|e| e.contains("no export at all reached the receiver")));
    }

    #[test]
    fn unpinned_exports_on_a_shared_connection_do_not_count() {
        let snap = tree(100, &[101, 102], 0);
        let (w1, w2) = (proc(101, &[], 0), proc(102, &[], 0));
        let mut b = B::new();
        let c = b.conn(&[w1.clone(), w2.clone()]);
        // no process.pid in the resource: possible for both, known for neither
        b.sends(c, &[w1, w2], Signal::Traces, id("a", None, None), 1, 1_000);
        let mut l = b.at(2_000);
        l.expected_workers = Some(1);
        l.closed = true;
        let f = check(&Facts::new(Some(&snap), Some(&l)));
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0]
            .evidence
            .iter()
            .any(|e| e.contains("possibly traces on a connection it shares")));
    }
}
