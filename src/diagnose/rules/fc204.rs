//! FC204 resource-pid-mismatch.

use crate::diagnose::{fix, Facts, Finding, Rule, Severity};

pub static RULE: Rule = Rule {
    code: "FC204",
    slug: "resource-pid-mismatch",
    severity: Severity::Error,
    summary: "resource `process.pid` differs from the OS pid that sent it",
    doc: DOC,
    silenced_by: &[],
    check,
};

const DOC: &str = "\
## What it means
An export's resource says `process.pid=N`, but the process that sent it (the one holding the
client's socket) is not N in any pid namespace it lives in.

## Why telemetry breaks
The resource was built in another process, nearly always the pre-fork master: every worker then
reports the master's pid (and usually the master's whole identity), so backends merge the
workers' series (see FC203), and anyone following `process.pid` to a process on the host lands on
the master. SDKs before 1.44 do not re-run resource detectors after fork; a pid put in the
Resource by hand is never refreshed.

## How it is detected
Each connection is resolved to the pid(s) holding the client's socket. For exports known to
come from one pid, the resource `process.pid` is compared with every pid of that process's
`NSpid:` chain (/proc/<pid>/status): inside a container the SDK records the innermost pid (often
1 for the master), and that is not a mismatch. When the resource names a pid that holds none of
the connection, the holders are read again first (a fork may have added one since).

## Fix
Create the Resource in the worker after fork (and SDK 1.44+, which re-runs detectors after
fork), or leave `process.pid` to `OTEL_EXPERIMENTAL_RESOURCE_DETECTORS=process` instead of setting
it by hand.
- gunicorn: `post_fork`; uWSGI: `lazy-apps = true` or `@postfork`; Celery: `worker_process_init`;
  multiprocessing: the Pool initializer.

## Known false alarms
A proxy or agent (an OpenTelemetry Collector, a sidecar) that forwards other processes' exports:
its pid sends resources of other processes by design. Point the application at the receiver
directly.
Precedence: nothing silences it.

## References
- docs/failure-modes.md#master-identity-in-every-worker (what was measured)
- docs/failure-modes.md#containers-and-pid-namespaces (pids inside containers)
- https://github.com/open-telemetry/opentelemetry-python/issues/3001 (metrics going up and down with several gunicorn workers)
- https://github.com/open-telemetry/opentelemetry-python/issues/4390 (a unique service.instance.id for every process after fork)
";

fn check(facts: &Facts) -> Vec<Finding> {
    let Some(ledger) = facts.ledger else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    let mut evidence = Vec::new();
    for p in ledger.processes.values() {
        for i in &p.identities {
            let Some(rp) = i.identity.process_pid else {
                continue;
            };
            if p.is_own_pid(rp) {
                continue;
            }
            pids.push(p.sender.pid);
            let whose = facts
                .snapshot
                .and_then(|s| {
                    s.processes
                        .iter()
                        .find(|q| q.pid as i64 == rp || q.nspid.iter().any(|n| *n as i64 == rp))
                })
                .map(|q| format!(" (that is pid {}, the {:?})", q.pid, q.role).to_lowercase())
                .unwrap_or_default();
            let ns = if p.sender.nspid.len() > 1
                || p.sender.nspid.first().is_some_and(|n| *n != p.sender.pid)
            {
                format!(
                    " (NSpid {})",
                    p.sender
                        .nspid
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            } else {
                String::new()
            };
            evidence.push(format!(
                "pid {}{ns} sent process.pid={rp}{whose} in {} resource block(s) ({})",
                p.sender.pid,
                i.exports,
                i.signals
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    if pids.is_empty() {
        return Vec::new();
    }
    pids.sort_unstable();
    pids.dedup();
    vec![RULE.finding(
        pids.clone(),
        format!(
            "{} process(es) export a resource process.pid that is not their own: the Resource was built before fork",
            pids.len()
        ),
        evidence,
        format!(
            "Build the Resource in each worker (SDK 1.44+ re-runs detectors after fork; do not set \
             process.pid by hand).\n\n{}",
            fix::init_after_fork(facts.framework())
        ),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::testkit::*;

    #[test]
    fn workers_reporting_the_masters_pid() {
        let mut s = Scenario::gunicorn(2);
        s.metrics(W1).pid(MASTER).items(3).at(10);
        s.traces(W2).items(3).at(10);
        s.now(20);
        let f = s.findings(check);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].code, "FC204");
        assert_eq!(f[0].pids, vec![W1]);
        assert_eq!(
            f[0].evidence,
            vec!["pid 101 sent process.pid=100 (that is pid 100, the master) in 1 resource block(s) (metrics)"]
        );
        let f = s.findings_without_tree(check);
        assert_eq!(f[0].pids, vec![W1]);
        assert!(f[0].evidence[0].starts_with("pid 101 sent process.pid=100 in 1"));
    }

    #[test]
    fn container_namespace_pid_is_not_a_mismatch() {
        // gunicorn in a container: the master is pid 1 there, the worker pid 7; the SDK
        // records those.
        let mut s = Scenario::gunicorn(1);
        s.nspid(MASTER, &[MASTER, 1]).nspid(W1, &[W1, 7]);
        s.metrics(MASTER).at(10);
        s.metrics(W1).at(10);
        assert_eq!(
            s.ledger().processes[&W1].identities[0].identity.process_pid,
            Some(7)
        );
        assert!(s.now(20).findings(check).is_empty());
        // ... but the container master's pid from the worker is.
        s.metrics(W1).pid(1).at(11);
        let f = s.findings(check);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].pids, vec![W1]);
        assert!(
            f[0].evidence[0].starts_with(
                "pid 101 (NSpid 101 7) sent process.pid=1 (that is pid 100, the master)"
            ),
            "{:?}",
            f[0].evidence
        );
        assert_eq!(s.findings_without_tree(check)[0].pids, vec![W1]);
    }

    #[test]
    fn no_pid_in_resource_is_not_this_rule() {
        let mut s = Scenario::gunicorn(1);
        s.logs(W1).no_pid().at(10);
        assert!(s.now(20).findings(check).is_empty());
    }
}
