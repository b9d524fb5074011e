//! FC205 missing-process-identity.

use crate::diagnose::{Facts, Finding, Rule, Severity};

pub static RULE: Rule = Rule {
    code: "FC205",
    slug: "missing-process-identity",
    severity: Severity::Warning,
    summary: "no `process.pid`, no `service.instance.id`: workers cannot be told apart",
    doc: DOC,
    silenced_by: &[],
    check,
};

const DOC: &str = "\
## What it means
Exports arrive with a resource that has neither `process.pid` nor `service.instance.id` (nor a
`worker.pid`): nothing in the data says which worker sent it.

## Why telemetry breaks
Every worker of a pre-fork server then exports the same series under the same identity. A
backend sees one process whose cumulative counters jump between the workers' totals (30 from one
worker, 10 from the other, alternating), and no per-worker view is possible. SDKs before 1.43
set no `service.instance.id` by default, and the `process` resource detector is off unless
`OTEL_EXPERIMENTAL_RESOURCE_DETECTORS=process` is set.

## How it is detected
The resource attributes of every export known to come from one OS pid (see FC203 for how the
pid is found) are read: `process.pid`, `service.instance.id`, `worker.pid`. Any pid that sent a
resource with none of them is listed; the finding says how many distinct pids did.

## Fix
Give each worker an identity: upgrade to SDK 1.43+ (random `service.instance.id` per process,
re-generated after fork from 1.44), or set `OTEL_EXPERIMENTAL_RESOURCE_DETECTORS=process`, and
build the providers in each worker after fork (gunicorn `post_fork`, uWSGI `@postfork`, Celery
`worker_process_init`, multiprocessing initializer). A deployment-wide
`OTEL_RESOURCE_ATTRIBUTES=service.instance.id=...` is not a fix: every worker shares it.

## Known false alarms
A program with a single process: there is nothing to tell apart. Cumulative temporality still
breaks only when several processes send the same series.
Precedence: nothing silences it.

## References
- docs/failure-modes.md#no-process-identity (what was measured)
- docs/failure-modes.md#resource-identity-by-sdk-version (which SDK version fills in what)
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
        for i in p.identities.iter().filter(|i| i.identity.is_anonymous()) {
            pids.push(p.sender.pid);
            evidence.push(format!(
                "pid {} sent {} resource block(s) ({}) with only: {}",
                p.sender.pid,
                i.exports,
                i.signals
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                i.identity
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
            "{} process(es) export without process.pid or service.instance.id: their series cannot be told apart",
            pids.len()
        ),
        evidence,
        "Upgrade to opentelemetry-sdk 1.44+ (a random service.instance.id per process, renewed \
         after fork) or set OTEL_EXPERIMENTAL_RESOURCE_DETECTORS=process, and set the SDK up in \
         each worker after fork."
            .to_string(),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::testkit::*;

    #[test]
    fn anonymous_resources_from_two_workers() {
        let mut s = Scenario::gunicorn(2);
        s.metrics(W1).anonymous().items(3).at(10);
        s.metrics(W2).anonymous().items(3).at(10);
        let f = s.now(20).findings(check);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].code, "FC205");
        assert_eq!(f[0].pids, vec![W1, W2]);
        assert!(f[0].evidence[0].contains("service.name=app"));
        assert!(f[0].evidence[0].starts_with("pid 101 sent 1 resource block(s) (metrics)"));
    }

    #[test]
    fn any_identity_attribute_is_enough() {
        let mut s = Scenario::gunicorn(1);
        s.metrics(W1).no_pid().instance("u").at(10);
        s.metrics(W1).at(10);
        s.metrics(W1).no_pid().worker_pid(W1).at(10);
        assert!(s.now(20).findings(check).is_empty());
    }
}
