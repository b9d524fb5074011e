//! FC203 duplicate-resource-identity.

use std::collections::BTreeMap;

use crate::diagnose::{fix, Facts, Finding, Rule, Severity};

pub static RULE: Rule = Rule {
    code: "FC203",
    slug: "duplicate-resource-identity",
    severity: Severity::Error,
    summary: "one `process.pid`/`service.instance.id` arrives from several OS pids",
    doc: DOC,
    silenced_by: &[],
    check,
};

const DOC: &str = "\
## What it means
The receiver got the same resource `process.pid` (or the same `service.instance.id`) from two or
more different OS processes. To a backend they are one process.

## Why telemetry breaks
Backends key series and service instances on the resource. Several workers under one identity
overwrite each other's cumulative series: counters go \"up and down\" as each worker's total
replaces the other's (https://github.com/open-telemetry/opentelemetry-python/issues/3001),
rates are wrong, and per-instance views show one instance where there are many. It happens when
the Resource was built in the master before fork: SDKs before 1.44 never re-run their resource
detectors in the worker, and a
`process.pid` put into the Resource by hand (`Resource.create({\"process.pid\": os.getpid()})`)
is never refreshed on any version.

## How it is detected
Each accepted connection is resolved to the OS pid(s) holding the client's socket
(/proc/<pid>/net/tcp{,6}, then /proc/*/fd). Exports known to come from one pid (the connection
was its alone, or its resource named it among the holders) are grouped by resource
`process.pid` and by `service.instance.id`; a value seen from two or more OS pids is reported.
Exports on a shared connection that could not be pinned to one pid are not used.

## Fix
Build the providers (and the Resource) in each worker after fork, and let the SDK fill in the
identity: `OTEL_EXPERIMENTAL_RESOURCE_DETECTORS=process` (SDK 1.12+) records the worker's own
pid when the Resource is created in the worker; SDK 1.43+ sets a random `service.instance.id`
and 1.44+ re-runs the detectors after fork. Never put `os.getpid()` into a Resource built in the
master.
- gunicorn: set up in `post_fork`; uWSGI: `lazy-apps = true` or `@postfork`; Celery:
  `worker_process_init`; multiprocessing: the Pool initializer.

## Known false alarms
Senders in different pid namespaces (containers) that each report their own pid there: the same
`process.pid` from two containers is not counted when it is each sender's own (NSpid).
Pid reuse over a very long session (a pid exits and its number comes back to a new process that
sends the same `service.instance.id` on purpose, e.g. a fixed id from configuration). A fixed
`service.instance.id` set in `OTEL_RESOURCE_ATTRIBUTES` for the whole deployment is itself the
problem, not a false alarm.
Precedence: nothing silences it.

## References
- docs/failure-modes.md#master-identity-in-every-worker (what was measured)
- docs/failure-modes.md#resource-identity-by-sdk-version (which SDK version fills in what)
- https://github.com/open-telemetry/opentelemetry-python/issues/3001 (metrics going up and down with several gunicorn workers)
- https://github.com/open-telemetry/opentelemetry-python/issues/3307 (what the SDK supports under forking process models)
- https://github.com/open-telemetry/opentelemetry-python/issues/4390 (a unique service.instance.id for every process after fork)
- https://opentelemetry.io/docs/specs/semconv/registry/attributes/service/ (OpenTelemetry semantic conventions: service.instance.id)
";

fn check(facts: &Facts) -> Vec<Finding> {
    let Some(ledger) = facts.ledger else {
        return Vec::new();
    };
    // (attribute, value) -> pid -> resource blocks
    let mut seen: BTreeMap<(&str, String), BTreeMap<i32, u64>> = BTreeMap::new();
    for p in ledger.processes.values() {
        for i in &p.identities {
            if let Some(v) = i.identity.process_pid {
                *seen
                    .entry(("process.pid", v.to_string()))
                    .or_default()
                    .entry(p.sender.pid)
                    .or_default() += i.exports;
            }
            if let Some(v) = &i.identity.service_instance_id {
                *seen
                    .entry(("service.instance.id", v.clone()))
                    .or_default()
                    .entry(p.sender.pid)
                    .or_default() += i.exports;
            }
        }
    }
    // A process.pid that is each sender's own pid in its pid namespace (containers: every
    // container has a pid 2) names different processes, not one.
    let own_everywhere = |attr: &str, value: &str, pids: &BTreeMap<i32, u64>| {
        attr == "process.pid"
            && value.parse::<i64>().is_ok_and(|v| {
                pids.keys().all(|pid| {
                    ledger
                        .processes
                        .get(pid)
                        .is_some_and(|p| p.sender.is_own_pid(v))
                })
            })
    };
    // One finding per set of colliding pids, with every shared value as evidence.
    let mut by_pids: BTreeMap<Vec<i32>, Vec<String>> = BTreeMap::new();
    for ((attr, value), pids) in &seen {
        if pids.len() < 2 || own_everywhere(attr, value, pids) {
            continue;
        }
        let list: Vec<i32> = pids.keys().copied().collect();
        let detail: Vec<String> = pids
            .iter()
            .map(|(pid, n)| format!("pid {pid}: {n} resource block(s)"))
            .collect();
        by_pids.entry(list).or_default().push(format!(
            "{attr}={value} arrived from {} OS pids ({})",
            pids.len(),
            detail.join(", ")
        ));
    }
    let fw = facts.framework();
    by_pids
        .into_iter()
        .map(|(pids, evidence)| {
            RULE.finding(
                pids.clone(),
                format!(
                    "{} processes (pids {}) export under one resource identity: backends merge their series",
                    pids.len(),
                    pids.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
                ),
                evidence,
                format!(
                    "Give each worker its own identity: build the Resource in the worker (SDK 1.44+ \
                     re-runs resource detectors after fork; 1.43+ sets a random service.instance.id; \
                     OTEL_EXPERIMENTAL_RESOURCE_DETECTORS=process records the worker's pid), and never \
                     put os.getpid() into a Resource built in the master.\n\n{}",
                    fix::init_after_fork(fw)
                ),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::testkit::*;

    #[test]
    fn master_pid_from_two_workers() {
        // the Resource was built in the master before fork (SDK < 1.44)
        let mut s = Scenario::gunicorn(2);
        s.metrics(W1).pid(MASTER).items(3).at(10);
        s.metrics(W2).pid(MASTER).items(3).at(10);
        s.traces(W2).pid(MASTER).at(11);
        let f = s.now(20).findings(check);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].code, "FC203");
        assert_eq!(f[0].pids, vec![W1, W2]);
        assert!(f[0].evidence[0].contains("process.pid=100"));
        assert!(f[0].evidence[0].contains("pid 101: 1 resource block(s)"));
        assert!(f[0].evidence[0].contains("pid 102: 2 resource block(s)"));
    }

    #[test]
    fn same_instance_id_merges_with_pid_evidence() {
        let mut s = Scenario::gunicorn(2);
        s.logs(W1).pid(MASTER).instance("u-1").at(10);
        s.logs(W2).pid(MASTER).instance("u-1").at(10);
        let f = s.now(20).findings(check);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].pids, vec![W1, W2]);
        assert_eq!(f[0].evidence.len(), 2);
        assert!(f[0].evidence[1].starts_with("service.instance.id=u-1 arrived from 2 OS pids"));
    }

    #[test]
    fn distinct_identities_and_ambiguous_exports_are_fine() {
        let mut s = Scenario::gunicorn(2);
        s.metrics(W1).instance("a").at(10);
        s.metrics(W2).instance("b").at(10);
        // a shared connection whose exports name nobody among its holders: no collision
        let inherited = s.conn(&[W1, W2]);
        s.metrics(W1).on(inherited).pid(MASTER).at(10);
        s.metrics(W2).on(inherited).pid(MASTER).at(10);
        s.now(20);
        assert!(s.findings(check).is_empty());
        assert!(check(&Facts::new(None, None)).is_empty());
    }

    #[test]
    fn the_same_pid_inside_two_containers_is_two_processes() {
        // Two senders each in its own pid namespace, both pid 2 there: no collision.
        let mut s = Scenario::no_tree();
        s.nspid(501, &[501, 2]).nspid(601, &[601, 2]);
        s.metrics(501).pid(2).instance("a").at(10);
        s.metrics(601).pid(2).instance("b").at(10);
        assert!(s.now(20).findings_without_tree(check).is_empty());
        // ...but a pid that is not the sender's own is still one identity from two processes.
        let mut s = Scenario::no_tree();
        s.nspid(501, &[501, 2]).nspid(601, &[601, 3]);
        s.metrics(501).pid(2).at(10);
        s.metrics(601).pid(2).at(10);
        let f = s.now(20).findings_without_tree(check);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].pids, vec![501, 601]);
    }
}
