//! FC103 exporter-socket-shared.

use std::collections::BTreeMap;

use crate::diagnose::evidence::{collector_of, socket};
use crate::diagnose::{fix, Facts, Finding, Rule, Severity};

pub static RULE: Rule = Rule {
    code: "FC103",
    slug: "exporter-socket-shared",
    severity: Severity::Error,
    summary: "a non-listening socket to the collector is open in several pids of the tree",
    doc: DOC,
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

## References
opentelemetry-python #3307, #4390; grpc #22624; FIELD-NOTES failure mode 3.
";

fn check(facts: &Facts) -> Vec<Finding> {
    let Some(snap) = facts.snapshot else {
        return Vec::new();
    };
    // One finding per shared connection, whichever holder listed it first.
    let mut shared = BTreeMap::new();
    for p in &snap.processes {
        for s in &p.sockets {
            if s.shared_with.len() < 2 {
                continue;
            }
            if let Some(endpoint) = collector_of(snap, s) {
                shared.entry(s.inode).or_insert((s, endpoint));
            }
        }
    }
    shared
        .values()
        .map(|(s, endpoint)| {
            let holders: Vec<String> = s
                .shared_with
                .iter()
                .map(|pid| match snap.process(*pid) {
                    Some(p) if p.role == crate::snapshot::Role::Master => format!("{pid} (master)"),
                    _ => pid.to_string(),
                })
                .collect();
            RULE.finding(
                s.shared_with.clone(),
                format!(
                    "one connection to the collector {}:{} is open in {} processes",
                    endpoint.host,
                    endpoint.port,
                    s.shared_with.len()
                ),
                vec![
                    format!("{} is open in pids {}", socket(s), holders.join(", ")),
                    format!(
                        "{}:{} is the OTLP endpoint from {}",
                        endpoint.host, endpoint.port, endpoint.source
                    ),
                ],
                fix::init_after_fork(snap.framework),
            )
        })
        .collect()
}
