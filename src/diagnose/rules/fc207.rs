//! FC207 connection-shared-across-processes.

use std::collections::BTreeMap;

use crate::diagnose::{fix, Facts, Finding, Rule, Severity};

pub static RULE: Rule = Rule {
    code: "FC207",
    slug: "connection-shared-across-processes",
    severity: Severity::Error,
    summary: "one connection carries several identities, or bodies arrive corrupt",
    doc: DOC,
    silenced_by: &[],
    check,
};

const DOC: &str = "\
## What it means
One TCP connection to the receiver carried exports of several different processes (resources
with different `process.pid` / `service.instance.id` / `worker.pid`), or bodies that could not
be decoded arrived on a connection that several processes hold.

## Why telemetry breaks
The exporter's HTTP keep-alive session (or gRPC channel) was opened in the master and inherited
by every worker through fork: they all write to the same socket. When two of them send at the
same moment, their bytes interleave and the collector receives a corrupt body (a 400, and the
whole batch is lost), responses go to the wrong process, and everyone reconnects. The sharing
comes and goes with those reconnects, so it is easy to miss.

## How it is detected
Each connection is resolved to every pid holding the client's socket when it is accepted, and
again when an export names a process that is not among them (a fork since). The receiver
records the distinct resource identities seen on each connection and the bodies it could not
use. Two or more identities on one connection, or malformed bodies on a connection held by two
or more pids, are reported with the connection's holders.

## Fix
Create the exporter (and so its connection) in each worker after fork, not in the master:
- gunicorn: `post_fork`; uWSGI: `lazy-apps = true` or `@postfork`; Celery:
  `worker_process_init`; multiprocessing: the Pool initializer.
If the master must export too, give it its own exporter created after the workers are forked.

## Known false alarms
A proxy that multiplexes many applications onto one connection (an agent or collector in
between): point the applications at the receiver directly.
Precedence: nothing silences it.

## References
- docs/failure-modes.md#inherited-exporter-connection (what was measured)
- https://github.com/open-telemetry/opentelemetry-python/issues/3307 (what the SDK supports under forking process models)
- https://github.com/open-telemetry/opentelemetry-python/issues/4345 (a metric reader lock that deadlocks under gunicorn)
";

fn check(facts: &Facts) -> Vec<Finding> {
    let Some(ledger) = facts.ledger else {
        return Vec::new();
    };
    // One finding per set of holders: the SDK keeps a connection per signal, all inherited by
    // the same processes, and one fix covers them all.
    struct Group {
        evidence: Vec<String>,
        connections: Vec<u64>,
        identities: usize,
        corrupt: u64,
    }
    let mut groups: BTreeMap<Vec<i32>, Group> = BTreeMap::new();
    for c in ledger.connections.values() {
        let mut keys: Vec<_> = c
            .identities
            .iter()
            .filter_map(|i| i.identity.process_key())
            .collect();
        keys.sort();
        keys.dedup();
        let several_ids = keys.len() >= 2;
        let corrupt_shared = c.malformed > 0 && c.holders.len() >= 2;
        if !several_ids && !corrupt_shared {
            continue;
        }
        let holders = c
            .holders
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let mut pids = c.holders.clone();
        if pids.is_empty() {
            // Nobody holds it any more: name the pids the identities claim.
            pids = keys.iter().filter_map(|k| k.0.map(|p| p as i32)).collect();
        }
        pids.sort_unstable();
        pids.dedup();
        let g = groups.entry(pids).or_insert(Group {
            evidence: Vec::new(),
            connections: Vec::new(),
            identities: 0,
            corrupt: 0,
        });
        g.connections.push(c.id);
        g.identities = g.identities.max(keys.len());
        g.corrupt += c.malformed;
        g.evidence.push(format!(
            "connection #{} ({} from {}{}) held by pid(s) [{holders}]: {} export(s), {} malformed",
            c.id,
            c.proto.as_str(),
            c.peer,
            c.inode
                .map(|i| format!(", client socket inode {i}"))
                .unwrap_or_default(),
            c.requests,
            c.malformed
        ));
        if several_ids {
            for i in c.identities.iter().filter(|i| !i.identity.is_anonymous()) {
                g.evidence.push(format!(
                    "  carried {} ({} resource block(s))",
                    i.identity, i.exports
                ));
            }
        }
        for r in &c.malformed_reasons {
            g.evidence.push(format!("  malformed: {r}"));
        }
    }
    groups
        .into_iter()
        .map(|(pids, g)| {
            let which = g
                .connections
                .iter()
                .map(|id| format!("#{id}"))
                .collect::<Vec<_>>()
                .join(", ");
            let title = if g.identities >= 2 {
                format!(
                    "connection(s) {which} carry {} different process identities: one socket, several senders",
                    g.identities
                )
            } else {
                format!(
                    "{} corrupt bodies on connection(s) {which} that {} processes hold",
                    g.corrupt,
                    pids.len()
                )
            };
            RULE.finding(pids, title, g.evidence, fix::init_after_fork(facts.framework()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::testkit::*;

    #[test]
    fn one_connection_three_identities() {
        let mut s = Scenario::gunicorn(2);
        let inherited = s.conn(&[MASTER, W1, W2]);
        for p in [MASTER, W1, W2] {
            s.metrics(p).on(inherited).at(10);
        }
        let f = s.now(20).findings(check);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].code, "FC207");
        assert_eq!(f[0].pids, vec![MASTER, W1, W2]);
        assert!(f[0].title.contains("3 different process identities"));
    }

    #[test]
    fn connections_inherited_by_the_same_processes_are_one_finding() {
        // the SDK's three connections (one per signal), all opened before fork
        let mut s = Scenario::gunicorn(1);
        for signal in Signal::ALL {
            let c = s.conn(&[MASTER, W1]);
            s.send(MASTER, signal).on(c).at(10);
            s.send(W1, signal).on(c).at(10);
        }
        let f = s.now(20).findings(check);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].pids, vec![MASTER, W1]);
        assert!(
            f[0].title.starts_with("connection(s) #1, #2, #3 carry 2"),
            "{}",
            f[0].title
        );
        assert_eq!(
            f[0].evidence
                .iter()
                .filter(|e| e.starts_with("connection #"))
                .count(),
            3
        );
    }

    #[test]
    fn corrupt_body_on_shared_connection() {
        let mut s = Scenario::gunicorn(1);
        let inherited = s.conn(&[MASTER, W1]);
        s.malformed(inherited, "undecodable body: buffer underflow", 10);
        let f = s.now(20).findings(check);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].pids, vec![MASTER, W1]);
        assert!(f[0]
            .title
            .starts_with("1 corrupt bodies on connection(s) #1 that 2 processes hold"));
        assert!(f[0].evidence.iter().any(|e| e.contains("buffer underflow")));
    }

    #[test]
    fn private_connections_and_lone_corruption_are_not_this_rule() {
        let mut s = Scenario::gunicorn(1);
        let own = s.conn(&[W1]);
        s.metrics(W1).on(own).at(10);
        // same process, a second service on the same connection: one process identity
        s.traces(W1).on(own).service("b").at(10);
        s.malformed(own, "garbage", 11);
        assert!(s.now(20).findings(check).is_empty());
    }
}
