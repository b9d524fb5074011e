//! A scenario: a process tree and what the receiver saw from it, built one fact a line, so a
//! rule test reads as what happened:
//!
//! ```ignore
//! let mut s = Scenario::gunicorn(2);
//! s.metrics(W2).pid(MASTER).at(10); // worker 2 sends metrics under the master's pid at 10 ms
//! let f = s.now(20).findings(check);
//! ```
//!
//! Times are milliseconds from an arbitrary origin. Each process sends on connections of its
//! own, one per signal (as the SDK's HTTP exporters do), opened at its first export;
//! [`Scenario::conn`] opens one that several processes hold (inherited through fork). The
//! ledger underneath is built with [`crate::ledger::build::B`].

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use super::{gunicorn, main_only, sdk_threads, Process, Snapshot, MASTER};
use crate::diagnose::evidence::interval_var;
use crate::diagnose::{Facts, Finding};
use crate::ledger::build::B;
pub use crate::ledger::Signal;
use crate::ledger::{
    CountExpectation, Holder, Identity, Ledger, MetricKind, MetricPoints, Num, PointValue,
    ResourceSummary, SeriesList, SeriesStart, Served, StopRecord, Temporality,
};

pub const W1: i32 = MASTER + 1;
pub const W2: i32 = MASTER + 2;
pub const W3: i32 = MASTER + 3;
/// When the master and the workers of [`Scenario::gunicorn`] started, ms (0 would read as
/// "unknown"). A process not in the tree started with the workers.
pub const MASTER_STARTED_MS: u64 = 1;
pub const WORKERS_STARTED_MS: u64 = 5;

pub type Check = fn(&Facts) -> Vec<Finding>;

pub struct Scenario {
    tree: Option<Snapshot>,
    b: B,
    /// Every sender as the receiver reads it from /proc.
    holders: BTreeMap<i32, Holder>,
    conn_holders: BTreeMap<u64, Vec<i32>>,
    /// Each process's own connection per signal.
    own: BTreeMap<(i32, Signal), u64>,
}

impl Scenario {
    /// `receive` without `--pid`: no tree, the senders known only from their sockets.
    pub fn no_tree() -> Scenario {
        Scenario {
            tree: None,
            b: B::new(),
            holders: BTreeMap::new(),
            conn_holders: BTreeMap::new(),
            own: BTreeMap::new(),
        }
    }

    /// A gunicorn master [`MASTER`] with workers [`W1`], [`W2`], ..., the SDK set up in each
    /// worker after fork: the master runs its main thread only, each worker the SDK's three.
    pub fn gunicorn(workers: usize) -> Scenario {
        let threads = (0..workers as i32).map(|i| sdk_threads(200 + 100 * i));
        let mut snap = gunicorn(main_only(MASTER), threads.collect());
        for p in &mut snap.processes {
            p.started_at_ms = if p.pid == MASTER {
                MASTER_STARTED_MS
            } else {
                WORKERS_STARTED_MS
            };
        }
        Scenario::tree(snap)
    }

    /// Any tree; its processes are the senders, with their NSpid chains and start times.
    pub fn tree(snap: Snapshot) -> Scenario {
        let mut s = Scenario::no_tree();
        for p in &snap.processes {
            s.holders.insert(
                p.pid,
                Holder {
                    pid: p.pid,
                    nspid: p.nspid.clone(),
                    started_at_ns: p.started_at_ms * 1_000_000,
                    comm: "gunicorn".into(),
                    ancestors: Vec::new(),
                },
            );
        }
        s.tree = Some(snap);
        s
    }

    // --- the processes

    /// `pid` started at `ms` (0: its start could not be read).
    pub fn started(&mut self, pid: i32, ms: u64) -> &mut Self {
        self.edit(pid, |h| h.started_at_ns = ms * 1_000_000);
        if let Some(p) = self.process_mut(pid) {
            p.started_at_ms = ms;
        }
        self
    }

    /// `pid` runs in a container: its NSpid chain, the host's pid first, its own last.
    pub fn nspid(&mut self, pid: i32, chain: &[i32]) -> &mut Self {
        self.edit(pid, |h| h.nspid = chain.to_vec());
        if let Some(p) = self.process_mut(pid) {
            p.nspid = chain.to_vec();
        }
        self
    }

    /// Every process of the tree exports each signal every `ms` (the OTel interval variables
    /// in its environment).
    pub fn intervals(&mut self, ms: u64) -> &mut Self {
        for p in self.tree.iter_mut().flat_map(|t| t.processes.iter_mut()) {
            for s in Signal::ALL {
                p.env.otel.push((interval_var(s).into(), ms.to_string()));
            }
        }
        self
    }

    pub fn process_mut(&mut self, pid: i32) -> Option<&mut Process> {
        self.tree
            .as_mut()?
            .processes
            .iter_mut()
            .find(|p| p.pid == pid)
    }

    // --- what the receiver saw

    /// A connection held by every one of `pids` (opened before fork, inherited); its id.
    pub fn conn(&mut self, pids: &[i32]) -> u64 {
        let hs: Vec<Holder> = pids.iter().map(|p| self.holder(*p)).collect();
        let c = self.b.conn(&hs);
        self.conn_holders.insert(c, pids.to_vec());
        c
    }

    /// An export from `pid`; say what it carries, then when ([`Send::at`]).
    pub fn send(&mut self, pid: i32, signal: Signal) -> Send<'_> {
        let own = self.holder(pid).nspid.last().copied().unwrap_or(pid);
        Send {
            pid,
            signal,
            conn: None,
            identity: Identity {
                service_name: Some("app".into()),
                process_pid: Some(own as i64),
                ..Default::default()
            },
            items: 1,
            series: Vec::new(),
            metrics: Vec::new(),
            s: self,
        }
    }

    pub fn metrics(&mut self, pid: i32) -> Send<'_> {
        self.send(pid, Signal::Metrics)
    }

    pub fn traces(&mut self, pid: i32) -> Send<'_> {
        self.send(pid, Signal::Traces)
    }

    pub fn logs(&mut self, pid: i32) -> Send<'_> {
        self.send(pid, Signal::Logs)
    }

    /// A body on connection `c` that could not be used.
    pub fn malformed(&mut self, c: u64, reason: &str, at_ms: u64) -> &mut Self {
        let hs = self.holders_of(c);
        self.b.l.record_malformed(c, &hs, reason, at_ms);
        self
    }

    /// `run` saw `pid` serve `requests` of its requests, answered between these times.
    pub fn served(&mut self, pid: i32, requests: u64, when: RangeInclusive<u64>) -> &mut Self {
        let l = &mut self.b.l;
        l.activity.entry(pid).or_default().push(format!(
            "served {requests} request(s) sent by otel-forkcheck run"
        ));
        let (first_ms, last_ms) = when.into_inner();
        l.served.insert(
            pid,
            Served {
                requests,
                first_ms,
                last_ms,
            },
        );
        self
    }

    /// `run` sent SIGTERM to the master at `at_ms`; everything left within 800 ms.
    pub fn stopped(&mut self, at_ms: u64) -> &mut Self {
        self.stop(at_ms, true, 800)
    }

    /// `run` sent SIGTERM at `at_ms` and SIGKILLed the group 35 s later.
    pub fn killed(&mut self, at_ms: u64) -> &mut Self {
        self.stop(at_ms, false, 35_000)
    }

    /// The user expects these signals from every worker (`--signals`).
    pub fn expect(&mut self, signals: &[Signal]) -> &mut Self {
        self.b.l.expected_signals = signals.to_vec();
        self
    }

    /// The user expects this counter total (`--expect-count`; replaces any before).
    pub fn expect_count(&mut self, e: CountExpectation) -> &mut Self {
        self.b.l.expected_counts = vec![e];
        self
    }

    /// The receiver has stopped: nothing more will arrive.
    pub fn closed(&mut self) -> &mut Self {
        self.b.l.closed = true;
        self
    }

    // --- judging

    /// The rules' "now": the ledger is as of `ms`, the tree read over the 3 s before it.
    pub fn now(&mut self, ms: u64) -> &mut Self {
        self.b.l.as_of_ms = ms;
        if let Some(t) = &mut self.tree {
            t.taken_at_ms = ms.saturating_sub(t.window_ms);
        }
        self
    }

    /// What `check` finds in the tree (when there is one) and the ledger.
    pub fn findings(&self, check: Check) -> Vec<Finding> {
        check(&Facts::new(self.tree.as_ref(), Some(&self.b.l)))
    }

    /// What `check` finds in the ledger alone (`receive` without `--pid`).
    pub fn findings_without_tree(&self, check: Check) -> Vec<Finding> {
        check(&Facts::new(None, Some(&self.b.l)))
    }

    pub fn ledger(&self) -> &Ledger {
        &self.b.l
    }

    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.tree.as_ref()
    }

    // --- plumbing

    fn holder(&mut self, pid: i32) -> Holder {
        self.holders
            .entry(pid)
            .or_insert_with(|| Holder {
                pid,
                nspid: vec![pid],
                started_at_ns: WORKERS_STARTED_MS * 1_000_000,
                comm: "gunicorn".into(),
                ancestors: Vec::new(),
            })
            .clone()
    }

    /// Changes a sender, also where the ledger already knows it (order of calls is free).
    fn edit(&mut self, pid: i32, f: impl Fn(&mut Holder)) {
        self.holder(pid);
        if let Some(h) = self.holders.get_mut(&pid) {
            f(h);
        }
        if let Some(p) = self.b.l.processes.get_mut(&pid) {
            f(&mut p.sender);
        }
    }

    fn holders_of(&mut self, c: u64) -> Vec<Holder> {
        let pids = self.conn_holders.get(&c).cloned().unwrap_or_default();
        pids.iter().map(|p| self.holder(*p)).collect()
    }

    fn own_conn(&mut self, pid: i32, signal: Signal) -> u64 {
        if let Some(c) = self.own.get(&(pid, signal)) {
            return *c;
        }
        let c = self.conn(&[pid]);
        self.own.insert((pid, signal), c);
        c
    }

    fn stop(&mut self, at_ms: u64, graceful: bool, waited_ms: u64) -> &mut Self {
        let master = self
            .tree
            .as_ref()
            .and_then(|t| t.master())
            .map_or(MASTER, |m| m.pid);
        self.b.l.stop = Some(StopRecord {
            master,
            requested_ms: at_ms,
            graceful,
            waited_ms,
            notes: Vec::new(),
            ended: None,
            exits: Vec::new(),
        });
        self
    }
}

/// One export being described; [`Send::at`] records it.
#[must_use = "an export is recorded by .at(ms)"]
pub struct Send<'a> {
    s: &'a mut Scenario,
    pid: i32,
    signal: Signal,
    conn: Option<u64>,
    identity: Identity,
    items: u64,
    series: Vec<SeriesStart>,
    metrics: Vec<MetricPoints>,
}

impl<'a> Send<'a> {
    /// Resource `process.pid` (default: the sender's own pid, as it sees it in its namespace).
    pub fn pid(mut self, pid: i32) -> Self {
        self.identity.process_pid = Some(pid as i64);
        self
    }

    /// No `process.pid` in the resource.
    pub fn no_pid(mut self) -> Self {
        self.identity.process_pid = None;
        self
    }

    /// Resource `service.instance.id`.
    pub fn instance(mut self, id: &str) -> Self {
        self.identity.service_instance_id = Some(id.into());
        self
    }

    /// Resource `worker.pid`.
    pub fn worker_pid(mut self, pid: i32) -> Self {
        self.identity.worker_pid = Some(pid as i64);
        self
    }

    /// Resource `service.name` (default `app`).
    pub fn service(mut self, name: &str) -> Self {
        self.identity.service_name = Some(name.into());
        self
    }

    /// Nothing but `service.name`: no pid, no instance, no worker pid.
    pub fn anonymous(mut self) -> Self {
        let service_name = self.identity.service_name.take();
        self.identity = Identity {
            service_name,
            ..Default::default()
        };
        self
    }

    /// Data points, spans or log records (default 1).
    pub fn items(mut self, n: u64) -> Self {
        self.items = n;
        self
    }

    /// On connection `c` (from [`Scenario::conn`]) instead of the sender's own.
    pub fn on(mut self, c: u64) -> Self {
        let held = self
            .s
            .conn_holders
            .get(&c)
            .is_some_and(|h| h.contains(&self.pid));
        assert!(held, "pid {} does not hold connection #{c}", self.pid);
        self.conn = Some(c);
        self
    }

    /// A cumulative series `requests` that started at `ms`.
    pub fn cumulative_since(self, ms: u64) -> Self {
        self.series("requests", ms)
    }

    /// A cumulative series `name` that started at `ms`.
    pub fn series(mut self, name: &str, ms: u64) -> Self {
        // Same name, same key: the ledger tells series apart by key.
        let key = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        self.series.push(SeriesStart {
            series: name.into(),
            start_time_unix_nano: ms * 1_000_000,
            key,
        });
        self
    }

    /// A series of a cumulative monotonic counter (`requests{route=/}`: of metric
    /// `requests`) at `value`, started at `start_ms`: its value and its start, as the
    /// summariser passes them on.
    pub fn counter(mut self, series: &str, value: f64, start_ms: u64) -> Self {
        self = self.series(series, start_ms);
        let start = self.series.last().cloned().unwrap_or_default();
        self.metrics.push(MetricPoints {
            name: series.split('{').next().unwrap_or(series).into(),
            kind: MetricKind::Sum,
            temporality: Temporality::Cumulative,
            monotonic: true,
            series: SeriesList::new(vec![start.key], vec![start.series]).into(),
            points: vec![PointValue {
                start_time_unix_nano: start.start_time_unix_nano,
                value: Num(value),
                ..Default::default()
            }],
        });
        self
    }

    /// Arrives at `at_ms`: recorded.
    pub fn at(self, at_ms: u64) -> &'a mut Scenario {
        let s = self.s;
        let c = match self.conn {
            Some(c) => c,
            None => s.own_conn(self.pid, self.signal),
        };
        let holders = s.holders_of(c);
        let mut metrics = self.metrics;
        for p in metrics.iter_mut().flat_map(|m| m.points.iter_mut()) {
            p.time_unix_nano = at_ms * 1_000_000;
        }
        let r = ResourceSummary {
            identity: self.identity,
            items: self.items,
            cumulative: self.series,
            metrics,
        };
        s.b.resources(c, &holders, self.signal, vec![r], at_ms);
        // Settled at once, as a copy from the receiver would be (blocks held on a shared
        // connection are decided with what was learned so far).
        s.b.l.settle();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_connections_per_signal_and_shared_ones_pinned_by_pid() {
        let mut s = Scenario::gunicorn(2);
        let shared = s.conn(&[MASTER, W1, W2]);
        s.metrics(W1).at(10).metrics(W1).at(20).traces(W1).at(20);
        s.metrics(W2).on(shared).at(30);
        s.metrics(W2).on(shared).no_pid().items(4).at(30);
        let l = s.ledger();
        assert_eq!(l.connections.len(), 3, "one shared, two of W1's own");
        assert_eq!(l.processes[&W1].signals.metrics.requests, 2);
        assert_eq!(l.processes[&W2].pinned_by_resource, 1);
        assert_eq!(l.processes[&MASTER].possible.metrics.items, 4);
        assert_eq!(l.connections[&shared].holders, vec![MASTER, W1, W2]);
    }

    #[test]
    fn process_facts_reach_the_tree_and_the_ledger_in_any_order() {
        let mut s = Scenario::gunicorn(1);
        s.metrics(W1).cumulative_since(2).at(10);
        s.started(W1, 3_000).nspid(W1, &[W1, 7]);
        let p = &s.ledger().processes[&W1];
        assert_eq!(p.sender.started_at_ns, 3_000_000_000);
        assert_eq!(p.sender.nspid, vec![W1, 7]);
        assert_eq!(
            p.earliest_cumulative.as_ref().unwrap().series.as_ref(),
            "requests"
        );
        let t = s.snapshot().unwrap().process(W1).unwrap();
        assert_eq!((t.started_at_ms, t.nspid.clone()), (3_000, vec![W1, 7]));
        // the default process.pid is the pid the process sees in its own namespace
        s.metrics(W1).at(11);
        let ids = &s.ledger().processes[&W1].identities;
        assert_eq!(ids.last().unwrap().identity.process_pid, Some(7));
    }

    #[test]
    fn served_stop_and_now() {
        let mut s = Scenario::gunicorn(2);
        s.served(W1, 14, 1_000..=5_000).stopped(10_000).now(12_000);
        let l = s.ledger();
        assert_eq!(l.served[&W1].requests, 14);
        assert_eq!(l.activity[&W1].len(), 1);
        let stop = l.stop.as_ref().unwrap();
        assert_eq!((stop.master, stop.graceful), (MASTER, true));
        assert_eq!(l.now_ms(), 12_000);
        assert_eq!(s.snapshot().unwrap().taken_at_ms, 9_000);
    }
}
