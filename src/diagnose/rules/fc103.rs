//! FC103 exporter-socket-shared.

use std::collections::BTreeMap;

use crate::diagnose::evidence::{collector_of, socket};
use crate::diagnose::{fix, Facts, Finding, Rule, Severity};
use crate::snapshot::{Endpoint, Role, Socket};

pub static RULE: Rule = Rule {
    code: "FC103",
    slug: "exporter-socket-shared",
    severity: Severity::Error,
    summary: "a non-listening socket to the collector is open in several pids of the tree",
    doc: DOC,
    silenced_by: &[],
    check,
};

const DOC: &str = "\
## What it means
One TCP connection to the OTLP collector (one socket inode) is open in several processes of the
tree: the master opened it before fork and every worker inherited it.

## Why telemetry breaks
OTLP exporters are never re-created after fork: the HTTP exporter's keep-alive session and the
gRPC channel opened in the master are used by every worker at once. One connection then carries
several processes' resources interleaved; when two processes write at the same moment (for
example all flushing on SIGTERM) a body is corrupted and the collector rejects it, and with gRPC
with fork support off the workers crash.

## How it is detected
For every process, /proc/<pid>/fd is read for socket inodes, and /proc/<pid>/net/tcp and tcp6 of
that process's own network namespace give each inode's state and addresses (IPv4-mapped IPv6
normalised). A non-LISTEN socket whose remote address is a configured OTLP endpoint
(OTEL_EXPORTER_OTLP_*ENDPOINT in the tree's environment, or the defaults 4317/4318) and that is
held by more than one pid is reported, with every holder. Listening sockets are shared by design
and ignored.

## Fix
Create the exporters after fork, in each worker (gunicorn post_fork, uWSGI lazy-apps or
@postfork, Celery worker_process_init, multiprocessing initializer); if the master must export,
shut its providers down before forking.

## Known false alarms
A socket held by several pids says who could send on it, not who did: a worker that reconnected
on its own socket still holds the inherited one until it closes it. The race also hides itself:
after a corrupted body everyone reconnects, so the sharing may be gone by the time anyone looks.
Precedence: nothing silences it.

## References
- docs/failure-modes.md#inherited-exporter-connection (what was measured)
- https://github.com/open-telemetry/opentelemetry-python/issues/3307 (what the SDK supports under forking process models)
- https://github.com/open-telemetry/opentelemetry-python/issues/4390 (a unique service.instance.id for every process after fork)
- https://github.com/grpc/grpc/issues/22624 (gRPC's after-fork handling in the child)
- https://github.com/grpc/grpc/blob/master/doc/fork_support.md (gRPC's fork support, GRPC_ENABLE_FORK_SUPPORT)
";

fn check(facts: &Facts) -> Vec<Finding> {
    let Some(snap) = facts.snapshot else {
        return Vec::new();
    };
    // One finding per set of holders: the SDK opens one connection per signal, all inherited
    // by the same processes, and one fix covers them all.
    let mut by_holders: BTreeMap<&[i32], BTreeMap<u64, (&Socket, &Endpoint)>> = BTreeMap::new();
    for p in &snap.processes {
        for s in &p.sockets {
            if s.shared_with.len() < 2 {
                continue;
            }
            if let Some(endpoint) = collector_of(snap, s) {
                by_holders
                    .entry(s.shared_with.as_slice())
                    .or_default()
                    .insert(s.inode, (s, endpoint));
            }
        }
    }
    by_holders
        .into_iter()
        .map(|(holders, sockets)| {
            let names: Vec<String> = holders
                .iter()
                .map(|pid| match snap.process(*pid) {
                    Some(p) if p.role == Role::Master => format!("{pid} (master)"),
                    _ => pid.to_string(),
                })
                .collect();
            let mut evidence: Vec<String> = sockets
                .values()
                .map(|(s, _)| format!("{} is open in pids {}", socket(s), names.join(", ")))
                .collect();
            let mut endpoints: Vec<&Endpoint> = sockets.values().map(|(_, e)| *e).collect();
            endpoints.dedup();
            for e in &endpoints {
                evidence.push(format!(
                    "{}:{} is the OTLP endpoint from {}",
                    e.host, e.port, e.source
                ));
            }
            RULE.finding(
                holders.to_vec(),
                format!(
                    "{} connection(s) to the collector {}:{} are open in {} processes",
                    sockets.len(),
                    endpoints[0].host,
                    endpoints[0].port,
                    holders.len()
                ),
                evidence,
                fix::init_after_fork(snap.framework),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::testkit::*;

    fn sock(inode: u64, state: &str, remote: &str, holders: &[i32]) -> Socket {
        Socket {
            fd: 7,
            inode,
            proto: "tcp".into(),
            state: state.into(),
            local: "127.0.0.1:50000".into(),
            remote: remote.into(),
            shared_with: holders.to_vec(),
            polled_by: Vec::new(),
        }
    }

    #[test]
    fn inherited_collector_connection_is_one_finding_with_all_holders() {
        let mut snap = gunicorn(sdk_threads(100), vec![sdk_threads(200), sdk_threads(300)]);
        for p in &mut snap.processes {
            p.sockets = vec![
                sock(555, "ESTABLISHED", "127.0.0.1:4318", &[100, 101, 102]),
                sock(556, "ESTABLISHED", "127.0.0.1:4318", &[100, 101, 102]),
                sock(9, "LISTEN", "0.0.0.0:0", &[100, 101, 102]),
            ];
        }
        let found = check(&Facts::from_snapshot(&snap));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].pids, vec![100, 101, 102]);
        assert!(found[0].evidence[0].contains("socket inode 555"));
        assert!(found[0].evidence[1].contains("socket inode 556"));
        assert!(found[0].title.starts_with("2 connection(s)"));
        assert!(found[0].evidence[0].contains("100 (master)"));
    }

    #[test]
    fn own_connections_and_other_ports_pass() {
        let mut snap = gunicorn(main_only(100), vec![sdk_threads(200), sdk_threads(300)]);
        snap.processes[1].sockets = vec![sock(1, "ESTABLISHED", "127.0.0.1:4318", &[101])];
        snap.processes[2].sockets = vec![
            sock(2, "ESTABLISHED", "127.0.0.1:4318", &[102]),
            // a shared database connection is a bug, but not this rule's
            sock(3, "ESTABLISHED", "127.0.0.1:5432", &[100, 102]),
        ];
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
    }
}
