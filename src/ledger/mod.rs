//! What the receiver saw, as plain serde data: per OS pid, per signal, per connection.
//!
//! The ledger keeps summaries, never payloads, and every collection in it is capped, so memory
//! stays bounded whatever the senders do. Rules in `diagnose` (FC2xx) read it; `receive` fills
//! it through [`Ledger::record`] and [`Ledger::record_malformed`].
//!
//! Attribution of an export to a pid: the receiver resolves every accepted connection to the
//! socket inode of the client's end and to every pid that holds that inode (after a fork, several
//! may). An export on a connection held by one pid belongs to that pid. On a connection held by
//! several pids, an export whose resource `process.pid` names exactly one of them (any pid of its
//! NSpid chain) belongs to that one; otherwise it is "possible" for each holder and kept apart
//! from what is known (`possible` beside `signals`), so a shared socket never makes a pid look
//! like it exported.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

pub use crate::otlp::identity::{Identity, ResourceSummary, SeriesStart};
pub use crate::otlp::signal::{Proto, Signal};
pub use crate::proc::conn::Holder;

/// Version of the ledger's JSON shape. Fields are added, never renamed.
pub const LEDGER_SCHEMA: u32 = 1;
/// Cumulative series remembered per pid (the earliest start is always kept beyond it).
pub const MAX_SERIES_PER_PID: usize = 512;
/// Distinct resource identities remembered per pid and per connection.
pub const MAX_IDENTITIES: usize = 16;
/// Connections remembered per pid.
pub const MAX_CONNS_PER_PID: usize = 64;
/// Connections remembered in all (the oldest closed ones are forgotten first).
pub const MAX_CONNECTIONS: usize = 4096;
/// Pids remembered in all (pids beyond it are counted under `unattributed`).
pub const MAX_PIDS: usize = 8192;
/// Malformed-input reasons remembered per pid and per connection.
pub const MAX_REASONS: usize = 8;

/// Counts for one signal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalStats {
    /// Export requests.
    pub requests: u64,
    /// Data points, spans or log records.
    pub items: u64,
    /// Bytes as received (compressed when the body was).
    #[serde(default)]
    pub bytes: u64,
    /// Unix milliseconds of the first and the last export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ms: Option<u64>,
}

impl SignalStats {
    fn add(&mut self, items: u64, bytes: u64, at_ms: u64) {
        self.requests += 1;
        self.items += items;
        self.bytes += bytes;
        self.first_ms.get_or_insert(at_ms);
        self.last_ms = Some(self.last_ms.map_or(at_ms, |l| l.max(at_ms)));
    }

    pub fn any(&self) -> bool {
        self.requests > 0
    }
}

/// Per-signal counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signals {
    pub metrics: SignalStats,
    pub traces: SignalStats,
    pub logs: SignalStats,
}

impl Signals {
    pub fn get(&self, s: Signal) -> &SignalStats {
        match s {
            Signal::Metrics => &self.metrics,
            Signal::Traces => &self.traces,
            Signal::Logs => &self.logs,
        }
    }

    pub fn get_mut(&mut self, s: Signal) -> &mut SignalStats {
        match s {
            Signal::Metrics => &mut self.metrics,
            Signal::Traces => &mut self.traces,
            Signal::Logs => &mut self.logs,
        }
    }

    pub fn any(&self) -> bool {
        Signal::ALL.iter().any(|s| self.get(*s).any())
    }

    /// Signals with at least one export.
    pub fn seen(&self) -> Vec<Signal> {
        Signal::ALL
            .iter()
            .copied()
            .filter(|s| self.get(*s).any())
            .collect()
    }

    pub fn last_ms(&self) -> Option<u64> {
        Signal::ALL
            .iter()
            .filter_map(|s| self.get(*s).last_ms)
            .max()
    }
}

/// A resource identity as seen from one pid (or on one connection).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentitySeen {
    pub identity: Identity,
    /// Resource blocks (one per export and resource) that carried it.
    pub exports: u64,
    pub signals: Vec<Signal>,
    pub first_ms: u64,
    pub last_ms: u64,
}

fn note_identity(
    list: &mut Vec<IdentitySeen>,
    dropped: &mut u64,
    id: &Identity,
    s: Signal,
    at: u64,
) {
    if let Some(seen) = list.iter_mut().find(|i| &i.identity == id) {
        seen.exports += 1;
        seen.last_ms = seen.last_ms.max(at);
        if !seen.signals.contains(&s) {
            seen.signals.push(s);
            seen.signals.sort();
        }
    } else if list.len() < MAX_IDENTITIES {
        list.push(IdentitySeen {
            identity: id.clone(),
            exports: 1,
            signals: vec![s],
            first_ms: at,
            last_ms: at,
        });
    } else {
        *dropped += 1;
    }
}

fn note_reason(list: &mut Vec<String>, reason: &str) {
    if list.len() >= MAX_REASONS {
        list.remove(0);
    }
    list.push(reason.to_string());
}

/// What one OS pid exported (the `exports` of a process in the JSON report).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidExports {
    /// Who this is (pid, NSpid, start time, comm), as resolved from /proc.
    #[serde(flatten)]
    pub sender: Holder,
    /// Exports known to come from this pid.
    pub signals: Signals,
    /// Exports on a connection this pid shared with others, that could not be pinned to one of
    /// them: this pid may have sent them.
    #[serde(default)]
    pub possible: Signals,
    /// Of `signals`, exports on a shared connection pinned to this pid by their resource's
    /// `process.pid`.
    #[serde(default)]
    pub pinned_by_resource: u64,
    /// Bodies that could not be decoded, were too big, or were cut off, on a connection this
    /// pid held.
    #[serde(default)]
    pub malformed: u64,
    #[serde(default)]
    pub malformed_reasons: Vec<String>,
    #[serde(default)]
    pub identities: Vec<IdentitySeen>,
    #[serde(default)]
    pub identities_dropped: u64,
    /// Cumulative metric series and their start times (capped; see `series_dropped`).
    #[serde(default)]
    pub cumulative_series: Vec<SeriesStart>,
    #[serde(default)]
    pub series_dropped: u64,
    /// The earliest cumulative start seen from this pid, kept even beyond the cap.
    #[serde(default)]
    pub earliest_cumulative: Option<SeriesStart>,
    /// Connections this pid held when they were resolved.
    #[serde(default)]
    pub connections: Vec<u64>,
    /// Series key -> index in `cumulative_series` (rebuilt when missing, e.g. after loading).
    #[serde(skip)]
    series_index: HashMap<u64, usize, std::hash::BuildHasherDefault<crate::otlp::hash::KeyHasher>>,
}

impl PidExports {
    pub fn new(pid: i32) -> Self {
        PidExports {
            sender: Holder {
                pid,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// True when `resource_pid` is this process's pid in any pid namespace it lives in.
    pub fn is_own_pid(&self, resource_pid: i64) -> bool {
        self.sender.is_own_pid(resource_pid)
    }

    fn note_series(&mut self, s: &SeriesStart) {
        if self
            .earliest_cumulative
            .as_ref()
            .is_none_or(|e| s.start_time_unix_nano < e.start_time_unix_nano)
        {
            self.earliest_cumulative = Some(s.clone());
        }
        if self.series_index.len() != self.cumulative_series.len() {
            self.series_index = self
                .cumulative_series
                .iter()
                .enumerate()
                .map(|(i, k)| (k.key, i))
                .collect();
        }
        if let Some(&i) = self.series_index.get(&s.key) {
            let known = &mut self.cumulative_series[i];
            // A reset (e.g. re-created after fork) moves the start forward: keep the latest.
            if s.start_time_unix_nano > known.start_time_unix_nano {
                known.start_time_unix_nano = s.start_time_unix_nano;
            }
        } else if self.cumulative_series.len() < MAX_SERIES_PER_PID {
            self.series_index
                .insert(s.key, self.cumulative_series.len());
            self.cumulative_series.push(s.clone());
        } else {
            self.series_dropped += 1;
        }
    }
}

/// One accepted connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnRecord {
    pub id: u64,
    pub proto: Proto,
    /// The client's address as the receiver saw it.
    pub peer: String,
    /// Inode of the client's socket, when found.
    #[serde(default)]
    pub inode: Option<u64>,
    /// Every pid seen holding the client's socket (sorted; grows when a re-check finds more).
    pub holders: Vec<i32>,
    pub requests: u64,
    pub malformed: u64,
    #[serde(default)]
    pub malformed_reasons: Vec<String>,
    #[serde(default)]
    pub identities: Vec<IdentitySeen>,
    #[serde(default)]
    pub identities_dropped: u64,
    pub opened_ms: u64,
    #[serde(default)]
    pub closed_ms: Option<u64>,
    /// Why the sender could not be found, when it could not.
    #[serde(default)]
    pub attribution_error: Option<String>,
}

/// Forwarding to an upstream collector.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardStats {
    pub url: String,
    pub sent: u64,
    pub failed: u64,
    /// Requests not forwarded because too many were already in flight.
    #[serde(default)]
    pub dropped: u64,
    #[serde(default)]
    pub last_error: Option<String>,
}

/// How an export was pinned to a pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttributedBy {
    /// The connection was held by this pid alone.
    Connection,
    /// The connection was shared; the resource's process.pid named this holder.
    Resource,
    /// The connection was shared and nothing told the holders apart.
    Ambiguous,
    /// The sender could not be found.
    Unknown,
}

/// One decoded export, ready to be accounted (and printed as a ndjson line).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Export {
    pub at_ms: u64,
    pub conn: u64,
    pub proto: Proto,
    pub signal: Option<Signal>,
    /// Bytes as received.
    pub bytes: u64,
    pub resources: Vec<ResourceSummary>,
}

impl Export {
    pub fn items(&self) -> u64 {
        self.resources.iter().map(|r| r.items).sum()
    }
}

/// The export as accounted: who it went to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accounted {
    /// One entry per resource block: the pids it was recorded against and how.
    pub resources: Vec<(Vec<i32>, AttributedBy)>,
}

/// Requests one pid was seen serving (the server side of the connection was held by it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    pub requests: u64,
    /// Unix milliseconds when the first and the last served response was fully read: whatever
    /// the request recorded was recorded by then.
    pub first_ms: u64,
    pub last_ms: u64,
}

/// How a launched server was stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopRecord {
    /// The pid that got SIGTERM (the master).
    pub master: i32,
    /// Unix milliseconds when SIGTERM was sent.
    pub requested_ms: u64,
    /// True when every process left within the grace period; false when the group was SIGKILLed.
    pub graceful: bool,
    /// How long the stop took, milliseconds.
    pub waited_ms: u64,
    /// What the server itself said about killing workers (e.g. gunicorn's
    /// `Worker (pid:N) was sent SIGKILL!`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Everything the receiver saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub schema: u32,
    /// Unix milliseconds when the receiver started.
    pub started_at_ms: u64,
    /// Unix milliseconds of the last change.
    pub updated_at_ms: u64,
    /// Per OS pid.
    pub processes: BTreeMap<i32, PidExports>,
    /// Exports whose sender could not be found (exited before it was looked up, other host, ...).
    pub unattributed: PidExports,
    pub connections: BTreeMap<u64, ConnRecord>,
    /// Signals the user expects (`--signals`); empty means "whatever arrives".
    #[serde(default)]
    pub expected_signals: Vec<Signal>,
    /// Evidence, gathered outside the receiver (e.g. by `run`), that a pid did work that should
    /// produce telemetry: pid -> what was seen.
    #[serde(default)]
    pub activity: BTreeMap<i32, Vec<String>>,
    /// Requests `run` sent that a pid was seen serving (structured twin of `activity`, for the
    /// timing rules: FC209 compares the last request served with the last export).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub served: BTreeMap<i32, Served>,
    /// How `run` stopped the server, once it has (FC209 judges only after a stop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopRecord>,
    /// Unix milliseconds when this copy of the ledger was taken (the "now" of the rules).
    #[serde(default)]
    pub as_of_ms: u64,
    #[serde(default)]
    pub forward: Option<ForwardStats>,
    /// Totals over everything received.
    pub totals: Signals,
    pub malformed_total: u64,
}

impl Ledger {
    pub fn new(started_at_ms: u64) -> Self {
        Ledger {
            schema: LEDGER_SCHEMA,
            started_at_ms,
            updated_at_ms: started_at_ms,
            ..Default::default()
        }
    }

    fn pid_entry(&mut self, h: &Holder) -> &mut PidExports {
        if !self.processes.contains_key(&h.pid) && self.processes.len() >= MAX_PIDS {
            return &mut self.unattributed;
        }
        let e = self
            .processes
            .entry(h.pid)
            .or_insert_with(|| PidExports::new(h.pid));
        if e.sender.nspid.is_empty() && !h.nspid.is_empty() {
            e.sender.nspid = h.nspid.clone();
        }
        if e.sender.started_at_ns == 0 {
            e.sender.started_at_ns = h.started_at_ns;
        }
        if e.sender.comm.is_empty() {
            e.sender.comm = h.comm.clone();
        }
        e
    }

    /// A connection on a port that serves both protocols turned out to carry `proto`.
    pub fn set_conn_proto(&mut self, id: u64, proto: Proto) {
        if let Some(c) = self.connections.get_mut(&id) {
            c.proto = proto;
        }
    }

    /// A connection was accepted.
    pub fn open_conn(&mut self, id: u64, proto: Proto, peer: String, at_ms: u64) {
        if self.connections.len() >= MAX_CONNECTIONS {
            // Forget the oldest closed connection, or else the oldest.
            let victim = self
                .connections
                .values()
                .find(|c| c.closed_ms.is_some())
                .map(|c| c.id)
                .or_else(|| self.connections.keys().next().copied());
            if let Some(v) = victim {
                self.connections.remove(&v);
            }
        }
        self.connections.insert(
            id,
            ConnRecord {
                id,
                proto,
                peer,
                opened_ms: at_ms,
                ..Default::default()
            },
        );
        self.updated_at_ms = self.updated_at_ms.max(at_ms);
    }

    /// The holders of a connection's client socket were found (again): they are added.
    pub fn set_holders(
        &mut self,
        id: u64,
        inode: Option<u64>,
        holders: &[Holder],
        error: Option<String>,
    ) {
        for h in holders {
            let e = self.pid_entry(h);
            if !e.connections.contains(&id) && e.connections.len() < MAX_CONNS_PER_PID {
                e.connections.push(id);
            }
        }
        if let Some(c) = self.connections.get_mut(&id) {
            if inode.is_some() {
                c.inode = inode;
            }
            for h in holders {
                if !c.holders.contains(&h.pid) {
                    c.holders.push(h.pid);
                }
            }
            c.holders.sort_unstable();
            if holders.is_empty() {
                if c.holders.is_empty() {
                    c.attribution_error = error;
                }
            } else {
                c.attribution_error = None;
            }
        }
    }

    pub fn close_conn(&mut self, id: u64, at_ms: u64) {
        if let Some(c) = self.connections.get_mut(&id) {
            c.closed_ms = Some(at_ms);
        }
    }

    /// Accounts one decoded export sent on a connection held by `holders` (the holders known
    /// when it arrived).
    pub fn record(&mut self, ex: &Export, holders: &[Holder]) -> Accounted {
        let Some(signal) = ex.signal else {
            return Accounted { resources: vec![] };
        };
        self.updated_at_ms = self.updated_at_ms.max(ex.at_ms);
        self.totals
            .get_mut(signal)
            .add(ex.items(), ex.bytes, ex.at_ms);
        if let Some(c) = self.connections.get_mut(&ex.conn) {
            c.requests += 1;
            for r in &ex.resources {
                note_identity(
                    &mut c.identities,
                    &mut c.identities_dropped,
                    &r.identity,
                    signal,
                    ex.at_ms,
                );
            }
        }
        // Bytes and the request count go to the first resource block's pid.
        let n = ex.resources.len().max(1);
        let mut out = Vec::with_capacity(n);
        for (i, r) in ex.resources.iter().enumerate() {
            let bytes = if i == 0 { ex.bytes } else { 0 };
            let (pids, by) = pin(holders, &r.identity, |p| {
                self.processes.get(&p).map(|e| e.sender.nspid.clone())
            });
            match by {
                AttributedBy::Connection | AttributedBy::Resource | AttributedBy::Unknown => {
                    let e = match pids.first() {
                        Some(pid) => {
                            let h = holders
                                .iter()
                                .find(|h| h.pid == *pid)
                                .cloned()
                                .unwrap_or_default();
                            self.pid_entry(&h)
                        }
                        None => &mut self.unattributed,
                    };
                    let stats = e.signals.get_mut(signal);
                    if i == 0 {
                        stats.add(r.items, bytes, ex.at_ms);
                    } else {
                        stats.items += r.items;
                    }
                    if by == AttributedBy::Resource {
                        e.pinned_by_resource += 1;
                    }
                    note_identity(
                        &mut e.identities,
                        &mut e.identities_dropped,
                        &r.identity,
                        signal,
                        ex.at_ms,
                    );
                    for s in &r.cumulative {
                        e.note_series(s);
                    }
                }
                AttributedBy::Ambiguous => {
                    for h in holders {
                        let e = self.pid_entry(h);
                        let stats = e.possible.get_mut(signal);
                        if i == 0 {
                            stats.add(r.items, bytes, ex.at_ms);
                        } else {
                            stats.items += r.items;
                        }
                    }
                }
            }
            out.push((pids, by));
        }
        if ex.resources.is_empty() {
            // An empty export still counts as a request from its sender.
            let (pids, by) = match holders {
                [one] => (vec![one.pid], AttributedBy::Connection),
                [] => (vec![], AttributedBy::Unknown),
                _ => (
                    holders.iter().map(|h| h.pid).collect(),
                    AttributedBy::Ambiguous,
                ),
            };
            match by {
                AttributedBy::Connection => {
                    self.pid_entry(&holders[0])
                        .signals
                        .get_mut(signal)
                        .add(0, ex.bytes, ex.at_ms);
                }
                AttributedBy::Unknown => self
                    .unattributed
                    .signals
                    .get_mut(signal)
                    .add(0, ex.bytes, ex.at_ms),
                _ => {
                    for h in holders {
                        self.pid_entry(h)
                            .possible
                            .get_mut(signal)
                            .add(0, ex.bytes, ex.at_ms);
                    }
                }
            }
            out.push((pids, by));
        }
        Accounted { resources: out }
    }

    /// Accounts a body that could not be used (undecodable, too big, cut off) on a connection.
    pub fn record_malformed(&mut self, conn: u64, holders: &[Holder], reason: &str, at_ms: u64) {
        self.updated_at_ms = self.updated_at_ms.max(at_ms);
        self.malformed_total += 1;
        if let Some(c) = self.connections.get_mut(&conn) {
            c.malformed += 1;
            note_reason(&mut c.malformed_reasons, reason);
        }
        if holders.is_empty() {
            self.unattributed.malformed += 1;
            note_reason(&mut self.unattributed.malformed_reasons, reason);
        }
        for h in holders {
            let e = self.pid_entry(h);
            e.malformed += 1;
            note_reason(&mut e.malformed_reasons, reason);
        }
    }

    /// The rules' "now": when the copy was taken, or the last change.
    pub fn now_ms(&self) -> u64 {
        self.as_of_ms.max(self.updated_at_ms)
    }

    /// Typical metric export interval, milliseconds: the median, over pids with several metric
    /// exports, of their mean gap. None when no pid exported metrics twice.
    pub fn metric_interval_ms(&self) -> Option<u64> {
        let mut gaps: Vec<u64> = self
            .processes
            .values()
            .filter_map(|p| {
                let m = &p.signals.metrics;
                match (m.first_ms, m.last_ms) {
                    (Some(f), Some(l)) if m.requests >= 2 && l > f => {
                        Some((l - f) / (m.requests - 1))
                    }
                    _ => None,
                }
            })
            .collect();
        if gaps.is_empty() {
            return None;
        }
        gaps.sort_unstable();
        Some(gaps[gaps.len() / 2])
    }

    /// Pids that exported every one of `signals` (known exports, not merely possible ones).
    pub fn pids_exporting_all(&self, signals: &[Signal]) -> Vec<i32> {
        self.processes
            .values()
            .filter(|p| signals.iter().all(|s| p.signals.get(*s).any()))
            .map(|p| p.sender.pid)
            .collect()
    }
}

/// Decides which holder sent a resource block (see the module docs).
fn pin(
    holders: &[Holder],
    id: &Identity,
    known_nspid: impl Fn(i32) -> Option<Vec<i32>>,
) -> (Vec<i32>, AttributedBy) {
    match holders {
        [] => (vec![], AttributedBy::Unknown),
        [one] => (vec![one.pid], AttributedBy::Connection),
        many => {
            if let Some(rp) = id.process_pid.or(id.worker_pid) {
                let matches: Vec<i32> = many
                    .iter()
                    .filter(|h| {
                        let nspid = if h.nspid.is_empty() {
                            known_nspid(h.pid).unwrap_or_default()
                        } else {
                            h.nspid.clone()
                        };
                        h.pid as i64 == rp || nspid.iter().any(|p| *p as i64 == rp)
                    })
                    .map(|h| h.pid)
                    .collect();
                if matches.len() == 1 {
                    return (matches, AttributedBy::Resource);
                }
            }
            (
                many.iter().map(|h| h.pid).collect(),
                AttributedBy::Ambiguous,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(pid: i32) -> Holder {
        Holder {
            pid,
            nspid: vec![pid],
            started_at_ns: 1_000,
            comm: "python".into(),
        }
    }

    fn export(conn: u64, signal: Signal, id: Identity, items: u64) -> Export {
        Export {
            at_ms: 10,
            conn,
            proto: Proto::Http,
            signal: Some(signal),
            bytes: 100,
            resources: vec![ResourceSummary {
                identity: id,
                items,
                cumulative: vec![],
            }],
        }
    }

    #[test]
    fn single_holder_gets_the_export() {
        let mut l = Ledger::new(0);
        l.open_conn(1, Proto::Http, "127.0.0.1:5000".into(), 0);
        l.set_holders(1, Some(9), &[holder(10)], None);
        let a = l.record(
            &export(1, Signal::Metrics, Identity::default(), 7),
            &[holder(10)],
        );
        assert_eq!(a.resources, vec![(vec![10], AttributedBy::Connection)]);
        let p = &l.processes[&10];
        assert_eq!(p.signals.metrics.requests, 1);
        assert_eq!(p.signals.metrics.items, 7);
        assert_eq!(l.connections[&1].requests, 1);
        assert_eq!(l.totals.metrics.items, 7);
    }

    #[test]
    fn shared_connection_pinned_by_resource_pid_else_possible() {
        let mut l = Ledger::new(0);
        let hs = [holder(10), holder(11)];
        l.open_conn(1, Proto::Http, "p".into(), 0);
        l.set_holders(1, Some(9), &hs, None);
        let id = Identity {
            process_pid: Some(11),
            ..Default::default()
        };
        let a = l.record(&export(1, Signal::Traces, id, 3), &hs);
        assert_eq!(a.resources, vec![(vec![11], AttributedBy::Resource)]);
        assert_eq!(l.processes[&11].signals.traces.items, 3);
        assert_eq!(l.processes[&11].pinned_by_resource, 1);
        assert!(!l.processes[&10].signals.any());

        let a = l.record(&export(1, Signal::Traces, Identity::default(), 2), &hs);
        assert_eq!(a.resources, vec![(vec![10, 11], AttributedBy::Ambiguous)]);
        assert_eq!(l.processes[&10].possible.traces.items, 2);
        assert_eq!(l.processes[&11].possible.traces.items, 2);
        assert!(!l.processes[&10].signals.any());
    }

    #[test]
    fn series_are_capped_but_earliest_kept() {
        let mut e = PidExports::new(1);
        for i in 0..(MAX_SERIES_PER_PID as u64 + 10) {
            e.note_series(&SeriesStart {
                series: format!("s{i}").into(),
                start_time_unix_nano: 1_000_000 - i,
                key: i,
            });
        }
        assert_eq!(e.cumulative_series.len(), MAX_SERIES_PER_PID);
        assert_eq!(e.series_dropped, 10);
        assert_eq!(
            e.earliest_cumulative.as_ref().unwrap().start_time_unix_nano,
            1_000_000 - (MAX_SERIES_PER_PID as u64 + 9)
        );
    }

    #[test]
    fn malformed_counts_on_every_holder_and_connection() {
        let mut l = Ledger::new(0);
        l.open_conn(4, Proto::Http, "p".into(), 0);
        l.record_malformed(4, &[holder(1), holder(2)], "bad protobuf", 5);
        assert_eq!(l.processes[&1].malformed, 1);
        assert_eq!(l.processes[&2].malformed, 1);
        assert_eq!(l.connections[&4].malformed, 1);
        assert_eq!(l.malformed_total, 1);
        l.record_malformed(99, &[], "x", 6);
        assert_eq!(l.unattributed.malformed, 1);
    }

    #[test]
    fn round_trips_through_json() {
        let mut l = Ledger::new(0);
        l.open_conn(1, Proto::Grpc, "127.0.0.1:1".into(), 0);
        l.set_holders(1, Some(3), &[holder(5)], None);
        l.record(
            &export(
                1,
                Signal::Logs,
                Identity {
                    service_name: Some("a".into()),
                    ..Default::default()
                },
                1,
            ),
            &[holder(5)],
        );
        let s = serde_json::to_string(&l).unwrap();
        let back: Ledger = serde_json::from_str(&s).unwrap();
        assert_eq!(back.processes[&5].signals.logs.items, 1);
    }
}

/// Builders for rule tests: ledgers made of plain exports.
#[cfg(test)]
pub(crate) mod build {
    use super::*;

    /// A sender pid with its own NSpid chain (outermost first) and start (Unix ms).
    pub fn proc(pid: i32, nspid: &[i32], started_ms: u64) -> Holder {
        Holder {
            pid,
            nspid: if nspid.is_empty() {
                vec![pid]
            } else {
                nspid.to_vec()
            },
            started_at_ns: started_ms * 1_000_000,
            comm: "gunicorn".into(),
        }
    }

    pub fn id(service: &str, pid: Option<i64>, instance: Option<&str>) -> Identity {
        Identity {
            service_name: Some(service.into()),
            process_pid: pid,
            service_instance_id: instance.map(str::to_string),
            worker_pid: None,
        }
    }

    pub struct B {
        pub l: Ledger,
        next_conn: u64,
    }

    impl B {
        pub fn new() -> B {
            B {
                l: Ledger::new(0),
                next_conn: 1,
            }
        }

        /// Opens a connection held by `holders`; returns its id.
        pub fn conn(&mut self, holders: &[Holder]) -> u64 {
            let c = self.next_conn;
            self.next_conn += 1;
            self.l
                .open_conn(c, Proto::Http, format!("127.0.0.1:{}", 40000 + c), 0);
            self.l.set_holders(c, Some(1000 + c), holders, None);
            c
        }

        /// [`B::export`] without cumulative series: the common case, on one line.
        pub fn sends(
            &mut self,
            c: u64,
            holders: &[Holder],
            signal: Signal,
            identity: Identity,
            items: u64,
            at_ms: u64,
        ) -> &mut Self {
            self.export(c, holders, signal, identity, items, at_ms, None)
        }

        /// One export of `items` on connection `c` at `at_ms`, with cumulative series starting
        /// at `cumulative_start_ms` when given.
        #[allow(clippy::too_many_arguments)]
        pub fn export(
            &mut self,
            c: u64,
            holders: &[Holder],
            signal: Signal,
            identity: Identity,
            items: u64,
            at_ms: u64,
            cumulative_start_ms: Option<u64>,
        ) -> &mut Self {
            let cumulative = cumulative_start_ms
                .map(|s| {
                    vec![SeriesStart {
                        series: "requests".into(),
                        start_time_unix_nano: s * 1_000_000,
                        key: 1,
                    }]
                })
                .unwrap_or_default();
            self.l.record(
                &Export {
                    at_ms,
                    conn: c,
                    proto: Proto::Http,
                    signal: Some(signal),
                    bytes: 10,
                    resources: vec![ResourceSummary {
                        identity,
                        items,
                        cumulative,
                    }],
                },
                holders,
            );
            self
        }

        pub fn at(&mut self, now_ms: u64) -> Ledger {
            let mut l = self.l.clone();
            l.as_of_ms = now_ms;
            l
        }
    }
}
