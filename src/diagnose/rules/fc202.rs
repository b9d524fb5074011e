//! FC202 master-exporting.

use crate::diagnose::evidence::who;
use crate::diagnose::{fix, Facts, Finding, Rule, Severity};
use crate::ledger::{Ledger, Signal};
use crate::snapshot::{Process, Role, Snapshot};

pub static RULE: Rule = Rule {
    code: "FC202",
    slug: "master-exporting",
    severity: Severity::Warning,
    summary: "the master pid sends exports (stale pre-fork series)",
    doc: DOC,
    silenced_by: &[],
    check,
};

const DOC: &str = "\
## What it means
The pre-fork master process itself sends OTLP exports to the receiver.

## Why telemetry breaks
A master that set the SDK up before forking keeps its providers: its metric reader exports the
series recorded before fork forever (they never change, the master serves no requests), under
the same identity the workers inherited, so backends mix stale master data into the workers'
series. It also means the workers were forked from a process with a live SDK: see FC101, FC203
and FC206.

## How it is detected
`--pid` names the master (without it, `receive` finds each sender's tree from its own /proc
entry); its tree is read from /proc (and re-read, so new workers are seen).
Exports known to come from the master's pid (the connection was the master's alone, or the
resource's `process.pid` named the master among several holders) are counted. Exports on a
connection the master shares with workers that could not be pinned are not counted here (FC207
and FC103 cover the sharing).

## Fix
Do not set the SDK up in the master: set it up in each worker after fork.
- gunicorn: `post_fork` (and no SDK set-up at import with `--preload`); uWSGI: `lazy-apps = true`
  or `@postfork`; Celery: `worker_process_init`; multiprocessing: the Pool initializer.

## Known false alarms
A master that exports its own telemetry on purpose (e.g. spans for worker management) with an
SDK of its own, set up after the workers were forked.
Precedence: nothing silences it.

## References
- docs/failure-modes.md#master-keeps-exporting (what was measured)
- docs/failure-modes.md#pre-fork-data-exported-again (the same data from the workers)
- https://github.com/open-telemetry/opentelemetry-python/issues/3307 (what the SDK supports under forking process models)
";

fn check(facts: &Facts) -> Vec<Finding> {
    let (Some(snap), Some(ledger)) = (facts.snapshot, facts.ledger) else {
        return Vec::new();
    };
    // Every master: `receive` without --pid may have found several trees.
    snap.processes
        .iter()
        .filter(|p| p.role == Role::Master)
        .filter_map(|master| judge(snap, ledger, master))
        .collect()
}

fn judge(snap: &Snapshot, ledger: &Ledger, master: &Process) -> Option<Finding> {
    let p = ledger.processes.get(&master.pid)?;
    if !p.signals.any() {
        return None;
    }
    let mut evidence: Vec<String> = Signal::ALL
        .iter()
        .filter(|s| p.signals.get(**s).any())
        .map(|s| {
            let st = p.signals.get(*s);
            format!(
                "{} sent {} {} export(s), {} {}, last {} s before the end of the observation",
                who(master),
                st.requests,
                s.as_str(),
                st.items,
                s.item(),
                ledger.now_ms().saturating_sub(st.last_ms.unwrap_or(0)) / 1000
            )
        })
        .collect();
    for i in &p.identities {
        evidence.push(format!("  under {}", i.identity));
    }
    Some(RULE.finding(
        vec![master.pid],
        format!(
            "the master (pid {}) exports telemetry itself: the SDK runs in the master",
            master.pid
        ),
        evidence,
        fix::init_after_fork(snap.framework),
    ))
}

/// For the fc201 and fc208 tests until they move to `testkit::Scenario`.
#[cfg(test)]
pub(crate) mod tree {
    pub use crate::diagnose::testkit::tree;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::testkit::*;

    #[test]
    fn master_exports_metrics() {
        let mut s = Scenario::gunicorn(1);
        s.metrics(MASTER).items(4).at(1_000);
        let f = s.now(5_000).findings(check);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].code, "FC202");
        assert_eq!(f[0].pids, vec![MASTER]);
        assert!(f[0].evidence[0].contains("1 metrics export(s), 4 data points"));
        assert!(f[0].evidence[0].contains("last 4 s before the end"));
    }

    #[test]
    fn shared_connection_or_workers_only_is_not_the_master() {
        let mut s = Scenario::gunicorn(1);
        let inherited = s.conn(&[MASTER, W1]);
        // pinned to the worker by its resource, or ambiguous: not the master's
        s.metrics(W1).on(inherited).at(1);
        s.metrics(W1).on(inherited).no_pid().at(1);
        s.traces(W1).at(2);
        s.now(5_000);
        assert!(s.findings(check).is_empty());
        assert!(s.findings_without_tree(check).is_empty());
    }
}
