//! FC104 metric-reader-stuck.

use crate::diagnose::evidence::{thread, who};
use crate::diagnose::{fix, Facts, Finding, PidSignal, Rule, Severity};
use crate::ledger::Signal;
use crate::snapshot::{Syscall, ThreadKind};

pub static RULE: Rule = Rule {
    code: "FC104",
    slug: "metric-reader-stuck",
    severity: Severity::Error,
    summary: "reader thread blocked on a lock with no timeout, not waking over the window",
    doc: DOC,
    silenced_by: &[],
    check,
};

const DOC: &str = "\
## What it means
A process's PeriodicExportingMetricReader thread is alive but blocked on a lock with no timeout
and did not wake once during the watch window. That process's metrics will never be exported;
its traces and logs may still arrive, and its shutdown will hang for the export timeout (30 s).

## Why telemetry breaks
The reader holds its _export_lock while an export is in flight. If the master forks while an
export is in flight (typically a slow or failing collector), the child inherits the lock locked,
and no thread in the child will ever release it. The at-fork hook re-creates the reader thread but
does not reset the lock (true up to SDK 1.45.2), so the new thread blocks on its first export.

## How it is detected
/proc/<pid>/task/<tid>/syscall of the reader thread shows futex with a NULL timeout (4th
argument 0) at both samples, and voluntary_ctxt_switches from /proc/<pid>/task/<tid>/status does
not move over the window. A healthy reader waits with a timeout (Event.wait(interval)) and wakes
once per export interval. Needs --window > 0.

## Fix
Set the SDK up after fork in each worker (then no lock is copied mid-export); for gunicorn a
post_fork hook. Restarting the stuck workers clears it until the next fork during a slow export.

## Known false alarms
An export interval longer than the window with the reader mid-export on a lock held by a flush in
another thread: watch for longer (--window 2x the export interval) before acting.
Precedence: nothing silences it. It names the metrics of the stuck process as missing, the
closest cause there is: FC201, FC208 and FC209 do not repeat them for that process (its traces
and logs are still theirs to judge).

## References
- docs/failure-modes.md#metric-reader-stuck-on-an-inherited-lock (what was measured)
- https://github.com/open-telemetry/opentelemetry-python/issues/2767 (the periodic metric reader and fork: no pid check)
- https://github.com/open-telemetry/opentelemetry-python/issues/3885 (gunicorn with several workers breaks metrics)
- https://github.com/open-telemetry/opentelemetry-python/issues/4345 (a metric reader lock that deadlocks under gunicorn)
";

/// futex on x86_64 and on aarch64/riscv (generic syscall table).
fn is_untimed_futex(s: &Option<Syscall>) -> bool {
    match s {
        Some(s) => {
            (s.name == "futex" || s.nr == 202 || s.nr == 98) && s.args.get(3).copied() == Some(0)
        }
        None => false,
    }
}

fn check(facts: &Facts) -> Vec<Finding> {
    let Some(snap) = facts.snapshot else {
        return Vec::new();
    };
    let mut findings = Vec::new();
    for p in &snap.processes {
        for t in p.threads_of(ThreadKind::MetricReader) {
            let Some(woke) = t.wakeups_in_window() else {
                continue;
            };
            if woke > 0 || !is_untimed_futex(&t.syscall) || !is_untimed_futex(&t.syscall_end) {
                continue;
            }
            let args: Vec<String> = t
                .syscall
                .iter()
                .flat_map(|s| s.args.iter().map(|a| format!("{a:#x}")))
                .collect();
            findings.push(RULE.finding(
                vec![p.pid],
                format!("the metric reader of pid {} is stuck: its metrics are never exported", p.pid),
                vec![
                    format!("{} {}", who(p), thread(t)),
                    format!(
                        "/proc/{}/task/{}/syscall: futex, timeout argument 0 (no timeout), args [{}], at the start and end of the {:.1} s window",
                        p.pid,
                        t.tid,
                        args.join(" "),
                        snap.window_ms as f64 / 1000.0
                    ),
                    format!(
                        "/proc/{}/task/{}/status: voluntary_ctxt_switches stayed at {}",
                        p.pid, t.tid, t.wakeups
                    ),
                ],
                fix::init_after_fork(snap.framework),
            )
            .with_signals(vec![PidSignal {
                pid: p.pid,
                signal: Signal::Metrics,
            }]));
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::testkit::*;

    fn futex(timeout: u64) -> Option<Syscall> {
        Some(Syscall {
            nr: 202,
            name: "futex".into(),
            args: vec![0x7f00, 0x189, 0, timeout, 0, 0xffffffff],
        })
    }

    fn with_reader(syscall: Option<Syscall>, wakeups_end: Option<u64>) -> Snapshot {
        let mut snap = gunicorn(main_only(100), vec![sdk_threads(200), sdk_threads(300)]);
        let reader = &mut snap.processes[2].threads[1];
        reader.syscall = syscall.clone();
        reader.syscall_end = syscall;
        reader.wakeups_end = wakeups_end;
        snap
    }

    #[test]
    fn untimed_futex_without_wakeups_is_stuck() {
        let snap = with_reader(futex(0), Some(10));
        let found = check(&Facts::from_snapshot(&snap));
        assert_eq!(codes(&found), vec!["FC104"]);
        assert_eq!(found[0].pids, vec![102]);
        assert!(found[0].evidence[1].contains("/proc/102/task/301/syscall"));
        assert!(found[0].names_signal(102, Signal::Metrics));
        assert!(!found[0].names_signal(102, Signal::Traces));
    }

    #[test]
    fn timed_wait_waking_or_unwatched_reader_is_healthy() {
        // Event.wait(interval): a timeout pointer, so not stuck
        assert!(check(&Facts::from_snapshot(&with_reader(
            futex(0x7ffd1000),
            Some(10)
        )))
        .is_empty());
        // woke during the window
        assert!(check(&Facts::from_snapshot(&with_reader(futex(0), Some(11)))).is_empty());
        // --window 0: no second sample, no verdict
        assert!(check(&Facts::from_snapshot(&with_reader(futex(0), None))).is_empty());
    }
}
