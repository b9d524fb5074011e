//! FC202 master-exporting.

use crate::diagnose::evidence::who;
use crate::diagnose::{fix, Facts, Finding, Rule, Severity};
use crate::ledger::Signal;

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
`--pid` names the master; its tree is read from /proc (and re-read, so new workers are seen).
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
    let Some(master) = snap.master() else {
        return Vec::new();
    };
    let Some(p) = ledger.processes.get(&master.pid) else {
        return Vec::new();
    };
    if !p.signals.any() {
        return Vec::new();
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
    vec![RULE.finding(
        vec![master.pid],
        format!(
            "the master (pid {}) exports telemetry itself: the SDK runs in the master",
            master.pid
        ),
        evidence,
        fix::init_after_fork(snap.framework),
    )]
}

#[cfg(test)]
pub(crate) mod tree {
    //! Snapshot builders for the receiver rules that need a tree.
    use crate::snapshot::{Framework, Process, Role, Snapshot};

    pub fn tree(master: i32, workers: &[i32], started_ms: u64) -> Snapshot {
        let mut processes = vec![Process {
            pid: master,
            ppid: 1,
            nspid: vec![master],
            role: Role::Master,
            started_at_ms: started_ms,
            ..Default::default()
        }];
        for w in workers {
            processes.push(Process {
                pid: *w,
                ppid: master,
                nspid: vec![*w],
                role: Role::Worker,
                started_at_ms: started_ms + 100,
                ..Default::default()
            });
        }
        Snapshot {
            schema: 1,
            root_pid: master,
            framework: Framework::Gunicorn,
            processes,
            ..Default::default()
        }
    }
}

#[cfg(test)]
#[allow(clippy::cloned_ref_to_slice_refs)]
mod tests {
    use super::tree::tree;
    use super::*;
    use crate::ledger::build::*;

    #[test]
    fn master_exports_metrics() {
        let snap = tree(100, &[101], 0);
        let m = proc(100, &[], 0);
        let mut b = B::new();
        let c = b.conn(&[m.clone()]);
        b.sends(c, &[m], Signal::Metrics, id("a", Some(100), None), 4, 1_000);
        let l = b.at(5_000);
        let f = check(&Facts::new(Some(&snap), Some(&l)));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].code, "FC202");
        assert_eq!(f[0].pids, vec![100]);
        assert!(f[0].evidence[0].contains("1 metrics export(s), 4 data points"));
    }

    #[test]
    fn shared_connection_or_workers_only_is_not_the_master() {
        let snap = tree(100, &[101], 0);
        let (m, w) = (proc(100, &[], 0), proc(101, &[], 0));
        let mut b = B::new();
        let c = b.conn(&[m.clone(), w.clone()]);
        // pinned to the worker by its resource, or ambiguous: not the master's
        b.sends(
            c,
            &[m.clone(), w.clone()],
            Signal::Metrics,
            id("a", Some(101), None),
            1,
            1,
        );
        b.sends(c, &[m, w], Signal::Metrics, id("a", None, None), 1, 1);
        let l = b.at(5_000);
        assert!(check(&Facts::new(Some(&snap), Some(&l))).is_empty());
        assert!(check(&Facts::new(None, Some(&l))).is_empty());
    }
}
