//! Small shared phrasings and derived facts the rules use, so evidence reads the same everywhere.

use crate::ledger::{Ledger, Signal};
use crate::snapshot::{Endpoint, Process, Role, Snapshot, Socket, Thread, ThreadKind};

/// "pid 123 (master)".
pub fn who(p: &Process) -> String {
    format!("pid {} ({})", p.pid, p.role.as_str())
}

/// "thread 125 'OtelPeriodicExportingMetricReader' (python name, metric reader)".
pub fn thread(t: &Thread) -> String {
    format!(
        "thread {} '{}' ({} name, {})",
        t.tid,
        t.name,
        t.name_source.as_str(),
        t.kind.label()
    )
}

/// The thread that batches `s` in the SDK (a metric reader, a span or log processor).
pub fn batcher(s: Signal) -> ThreadKind {
    match s {
        Signal::Metrics => ThreadKind::MetricReader,
        Signal::Traces => ThreadKind::SpanProcessor,
        Signal::Logs => ThreadKind::LogProcessor,
    }
}

/// The server's own processes: its master and workers, or every process of the tree when
/// none could be told apart (what the blind-check findings, FC305 and FC307, look at).
pub fn server_processes(snap: &Snapshot) -> impl Iterator<Item = &Process> {
    let known = |p: &Process| matches!(p.role, Role::Master | Role::Worker);
    let any_known = snap.processes.iter().any(known);
    snap.processes
        .iter()
        .filter(move |p| !any_known || known(p))
}

/// A worker younger than this may still be importing the application and setting its SDK
/// up, or not have started its exporter or listener yet.
pub const MIN_WORKER_AGE_S: f64 = 2.0;

/// Whether the findings about a worker's own SDK, exporter and listener (FC102, FC105, FC108,
/// FC109) may judge `w`: up [`MIN_WORKER_AGE_S`], and not leaving (its interpreter exiting:
/// the SDK's shutdown ends its threads one by one as each flushes, and a listener closes).
pub fn judgeable(snap: &Snapshot, w: &Process) -> bool {
    age_s(snap, w) >= MIN_WORKER_AGE_S && !w.python.exiting
}

/// How old the process was when the snapshot ended (when last seen, for one gone by then), in
/// seconds.
pub fn age_s(snap: &Snapshot, p: &Process) -> f64 {
    // A process gone by the end was last seen, and its threads read, at the first sample.
    let seen = match p.gone {
        true => snap.taken_at_ms,
        false => snap.taken_at_ms + snap.window_ms,
    };
    seen.saturating_sub(p.started_at_ms) as f64 / 1000.0
}

/// "socket inode 9 (tcp 127.0.0.1:5000 -> 127.0.0.1:4318 ESTABLISHED)".
pub fn socket(s: &Socket) -> String {
    format!(
        "socket inode {} ({} {} -> {} {})",
        s.inode, s.proto, s.local, s.remote, s.state
    )
}

/// The configured collector endpoint this socket leads to, if any.
pub fn collector_of<'a>(snap: &'a Snapshot, s: &Socket) -> Option<&'a Endpoint> {
    if s.state == "LISTEN" || s.proto == "unix" {
        return None;
    }
    let (host, port) = split_host_port(&s.remote)?;
    snap.collector_endpoints
        .iter()
        .find(|e| e.port == port && host_matches(&e.host, host))
}

fn split_host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host, port.parse().ok()?))
}

/// Loopback names all match each other; a host name we cannot resolve offline matches any
/// address, since the port alone is then the best evidence there is.
fn host_matches(endpoint_host: &str, ip: &str) -> bool {
    let loopback = |h: &str| h == "localhost" || h.starts_with("127.") || h == "::1";
    if endpoint_host == ip || (loopback(endpoint_host) && loopback(ip)) {
        return true;
    }
    endpoint_host.parse::<std::net::IpAddr>().is_err()
}

/// Other pids `pid` shares a collector connection with: in the snapshot (a collector socket held
/// by several pids, FC103) or in the ledger (a connection resolved to several holders). Exports
/// on such a connection may be counted under another holder (the receiver resolves holders when
/// it accepts, which may be before the fork), so per-pid "nothing arrived" is not evidence there.
pub fn shares_collector_connection(
    snap: Option<&Snapshot>,
    ledger: Option<&crate::ledger::Ledger>,
    pid: i32,
) -> Vec<i32> {
    let mut out = Vec::new();
    if let Some(p) = snap.and_then(|s| s.process(pid).map(|p| (s, p))) {
        let (snap, p) = p;
        for s in p.sockets.iter().filter(|s| collector_of(snap, s).is_some()) {
            out.extend(s.shared_with.iter().copied().filter(|q| *q != pid));
        }
    }
    if let Some(l) = ledger {
        for c in l.connections.values().filter(|c| c.holders.contains(&pid)) {
            out.extend(c.holders.iter().copied().filter(|q| *q != pid));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Pids of the tree with names read from Python memory, still there at the end of the window:
/// only there does "no exporter thread" mean anything on Python < 3.14.
pub fn names_known(p: &Process) -> bool {
    !p.gone && (p.python.names_read || p.threads.iter().any(|t| t.comm.starts_with("Otel")))
}

/// Pids that exported every signal of `signals` (any signal when it is empty), counting exports
/// known to come from them (a shared connection's unpinned exports do not count): the workers of
/// the tree when there is one (processes that exited since stay in a merged tree), else every
/// sender. What `receive --expect-workers N` counts (FC213).
pub fn workers_exporting(ledger: &Ledger, snap: Option<&Snapshot>, signals: &[Signal]) -> Vec<i32> {
    ledger
        .processes
        .values()
        .filter(|p| match snap {
            Some(s) => s
                .process(p.sender.pid)
                .is_some_and(|q| q.role == Role::Worker),
            None => true,
        })
        .filter(|p| {
            if signals.is_empty() {
                p.signals.any()
            } else {
                signals.iter().all(|s| p.signals.get(*s).any())
            }
        })
        .map(|p| p.sender.pid)
        .collect()
}

/// Compares dotted versions numerically ("1.9.0" < "1.12.0"); None when unparsable.
pub fn version_lt(version: &str, min: &str) -> Option<bool> {
    let parse = |v: &str| -> Option<Vec<u64>> {
        v.split('.')
            .map(|part| {
                let digits: String = part.chars().take_while(|c| c.is_ascii_digit()).collect();
                digits.parse().ok()
            })
            .collect()
    };
    Some(parse(version)? < parse(min)?)
}

/// The env variable that sets how long data of this signal waits before an export.
pub fn interval_var(s: Signal) -> &'static str {
    match s {
        Signal::Metrics => "OTEL_METRIC_EXPORT_INTERVAL",
        Signal::Traces => "OTEL_BSP_SCHEDULE_DELAY",
        Signal::Logs => "OTEL_BLRP_SCHEDULE_DELAY",
    }
}

/// The SDK's default for [`interval_var`], milliseconds.
pub fn default_interval_ms(s: Signal) -> u64 {
    match s {
        Signal::Metrics => 60_000,
        Signal::Traces => 5_000,
        Signal::Logs => 1_000,
    }
}

/// How long data of `s` may wait in `p` before a scheduled export: its environment's setting,
/// else the SDK default.
pub fn interval_ms(p: Option<&Process>, s: Signal) -> u64 {
    p.and_then(|p| p.env_var(interval_var(s)))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map_or(default_interval_ms(s), |v| v as u64)
}

/// Why exports on a shared connection count as `pid`'s own: the identity they carried arrived on
/// a connection `pid` held alone (the ledger's identity pins), one line each.
pub fn identity_pins(ledger: &Ledger, pid: i32) -> Vec<String> {
    let Some(p) = ledger.processes.get(&pid) else {
        return Vec::new();
    };
    p.identity_pins
        .iter()
        .map(|pin| {
            let shared: Vec<String> = pin.shared_conns.iter().map(|c| format!("#{c}")).collect();
            format!(
                "pid {pid}: {} resource block(s) on shared connection(s) {} counted as its own: \
                 they carry {}, which arrived on connection #{} held by pid {pid} alone",
                pin.blocks,
                shared.join(", "),
                pin.identity,
                pin.learned_conn
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(version_lt("1.6.2", "1.7.0"), Some(true));
        assert_eq!(version_lt("1.12.0", "1.9.0"), Some(false));
        assert_eq!(version_lt("1.45.2", "1.45.2"), Some(false));
        assert_eq!(version_lt("1.7.0rc1", "1.7.0"), Some(false));
        assert_eq!(version_lt("junk", "1.7.0"), None);
    }

    #[test]
    fn loopback_hosts_match() {
        assert!(host_matches("localhost", "127.0.0.1"));
        assert!(host_matches("127.0.0.1", "127.0.0.1"));
        assert!(!host_matches("10.0.0.1", "127.0.0.1"));
        assert!(host_matches("otel-collector", "10.1.2.3"));
    }
}
