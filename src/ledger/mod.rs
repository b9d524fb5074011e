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
//! NSpid chain) belongs to that one; so does one whose identity arrived on a connection that one
//! holder held alone (see `learn.rs`); otherwise it is "possible" for each holder and kept apart
//! from what is known (`possible` beside `signals`), so a shared socket never makes a pid look
//! like it exported.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

pub use crate::otlp::identity::{Identity, ResourceSummary, SeriesStart};
pub use crate::otlp::signal::{Proto, Signal};
pub use crate::otlp::values::{MetricKind, MetricPoints, Num, PointValue, SeriesList, Temporality};
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
/// Metrics whose values are added up per pid (further metrics are counted in
/// `metrics_dropped`).
pub const MAX_METRICS_PER_PID: usize = 256;
/// Series whose values are followed, per pid ...
pub const MAX_VALUE_SERIES_PER_PID: usize = 512;
/// ... and in all (beyond either, cumulative and gauge points are counted as `untracked`; delta
/// points are still added).
pub const MAX_VALUE_SERIES: usize = 1 << 18;

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
    /// Metric name -> total under this identity, as [`PidExports::sums`] has it for the pid.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sums: BTreeMap<String, Num>,
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
    /// Of `signals`, resource blocks on a shared connection pinned to this pid by an identity
    /// that arrived on a connection this pid held alone (evidence in `identity_pins`).
    #[serde(default)]
    pub pinned_by_identity: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identity_pins: Vec<IdentityPin>,
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
    /// Metric name -> what a user counts of it (exports known to come from this pid; see
    /// [`MetricTotal::total`]): sums, their total; gauges, their last values added over
    /// series; histograms and summaries, their observations.
    #[serde(default)]
    pub sums: BTreeMap<String, Num>,
    /// Metric name -> its values in detail.
    #[serde(default)]
    pub metrics: BTreeMap<String, MetricTotal>,
    #[serde(default)]
    pub metrics_dropped: u64,
    /// Each series' values (capped; see `series_values_dropped`).
    #[serde(default)]
    pub series_values: Vec<SeriesValue>,
    #[serde(default)]
    pub series_values_dropped: u64,
    /// Series key -> index in `cumulative_series` (rebuilt when missing, e.g. after loading).
    #[serde(skip)]
    series_index: KeyIndex,
    /// Series key -> index in `series_values` (rebuilt the same way).
    #[serde(skip)]
    values_index: KeyIndex,
    /// A metric's series list (its fingerprint) -> the index in `series_values` of each.
    #[serde(skip)]
    shape_index:
        HashMap<u64, values::Followed, std::hash::BuildHasherDefault<crate::otlp::hash::KeyHasher>>,
}

type KeyIndex = HashMap<u64, usize, std::hash::BuildHasherDefault<crate::otlp::hash::KeyHasher>>;

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

/// What the receiver's own limits did: connections it closed or refused, requests it turned
/// away for memory. Nothing here is lost telemetry by itself (refused requests are retried by
/// OTLP exporters), but a non-zero count says the receiver was under pressure or attack.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitStats {
    /// Connections closed because no request had been received in full within the
    /// first-request bound after accept (silent TCP, an HTTP/2 preface alone, unfinished
    /// headers).
    #[serde(default)]
    pub first_request_timeouts: u64,
    /// Keep-alive connections closed after the idle bound.
    #[serde(default)]
    pub idle_timeouts: u64,
    /// Idle connections closed to make room for a new one when their listener's cap was reached.
    #[serde(default)]
    pub evicted_listener_cap: u64,
    /// Idle connections closed to make room for a new one from the same peer address when the
    /// per-peer cap was reached.
    #[serde(default)]
    pub evicted_peer_cap: u64,
    /// New connections closed at once: a cap was reached and no idle connection could go.
    #[serde(default)]
    pub refused_connections: u64,
    /// Requests answered 503 (HTTP, with Retry-After) or RESOURCE_EXHAUSTED (gRPC, with
    /// RetryInfo) because the in-flight memory budget was spent.
    #[serde(default)]
    pub budget_refused: u64,
    /// Requests that had to wait for the memory budget before being read.
    #[serde(default)]
    pub budget_waited: u64,
    /// The most bytes of request bodies (compressed and decompressed) held at once.
    #[serde(default)]
    pub budget_peak_bytes: u64,
}

impl LimitStats {
    /// True when no limit did anything.
    pub fn is_quiet(&self) -> bool {
        LimitStats {
            budget_peak_bytes: 0,
            ..self.clone()
        } == LimitStats::default()
    }
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
    /// Worker pids the user expects to export every expected signal (`--expect-workers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_workers: Option<usize>,
    /// Counters whose totals across pids the user expects (`--expect-count`; FC211, FC212).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected_counts: Vec<CountExpectation>,
    /// The receiver has stopped: nothing more will arrive (rules that judge absence at the end
    /// wait for it).
    #[serde(default)]
    pub closed: bool,
    /// Evidence, gathered outside the receiver (e.g. by `run`), that a pid did work that should
    /// produce telemetry: pid -> what was seen.
    #[serde(default)]
    pub activity: BTreeMap<i32, Vec<String>>,
    /// Requests `run` sent that a pid was seen serving (structured twin of `activity`, for the
    /// timing rules: FC209 compares the last request served with the last export).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub served: BTreeMap<i32, Served>,
    /// Every child of the master `run` saw, one by one (activity without requests).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<ChildRecord>,
    /// The OTLP endpoint variables `run` set for the server (FC214).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints_set: Vec<EndpointSet>,
    /// How `run` stopped the server, once it has (FC209 judges only after a stop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopRecord>,
    /// Unix milliseconds when this copy of the ledger was taken (the "now" of the rules).
    #[serde(default)]
    pub as_of_ms: u64,
    #[serde(default)]
    pub forward: Option<ForwardStats>,
    /// What the receiver's limits did (timeouts, caps, memory budget).
    #[serde(default)]
    pub limits: LimitStats,
    /// Totals over everything received.
    pub totals: Signals,
    pub malformed_total: u64,
    /// Identities that arrived on a connection held by one pid alone (capped:
    /// [`learn::MAX_LEARNED`]): what pins exports on shared connections.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learned: Vec<Learned>,
    /// Resource blocks on shared connections waiting to be settled ([`Ledger::settle`]).
    #[serde(skip)]
    held: std::collections::VecDeque<learn::Held>,
    /// Series whose values are followed, over every pid (capped: [`MAX_VALUE_SERIES`]).
    #[serde(skip)]
    value_series: usize,
    /// [`learn::process_hash`] -> indices in `learned` (rebuilt when missing, e.g. after
    /// loading): every export is looked up among thousands of learned identities.
    #[serde(skip)]
    learned_index: learn::LearnedIndex,
}

mod account;
mod learn;
#[cfg(test)]
mod learn_tests;
pub use learn::{IdentityPin, Learned};
mod run;
pub use run::{
    worker_exits, ChildRecord, CountExpectation, EndpointSet, ExpectedCount, Served, StopRecord,
    WorkerExit,
};
mod counts;
pub use counts::{CountTally, PidCount};
pub use values::{MetricTotal, SeriesValue};
#[cfg(test)]
pub(crate) mod build;
#[cfg(test)]
mod tests;
mod values;
#[cfg(test)]
mod values_tests;
