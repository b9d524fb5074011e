//! Accounting: how each connection, export and malformed body changes the ledger. Every
//! collection is capped here, so the ledger stays bounded whatever the senders do.

use super::learn::{Block, Held};
use super::*;

impl Ledger {
    pub fn new(started_at_ms: u64) -> Self {
        Ledger {
            schema: LEDGER_SCHEMA,
            started_at_ms,
            updated_at_ms: started_at_ms,
            ..Default::default()
        }
    }

    pub(super) fn pid_entry(&mut self, h: &Holder) -> &mut PidExports {
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
        let mut room = MAX_VALUE_SERIES.saturating_sub(self.value_series);
        if let Some(c) = self.connections.get_mut(&ex.conn) {
            c.requests += 1;
            for r in &ex.resources {
                let _ = note_identity(
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
        let mut held = Vec::new();
        for (i, r) in ex.resources.iter().enumerate() {
            let bytes = if i == 0 { ex.bytes } else { 0 };
            let (pids, by) = pin(holders, &r.identity, |p| {
                self.processes.get(&p).map(|e| e.sender.nspid.clone())
            });
            let block = Block {
                signal,
                at_ms: ex.at_ms,
                first: i == 0,
                bytes,
            };
            match by {
                AttributedBy::Connection | AttributedBy::Resource | AttributedBy::Unknown => {
                    // `pin` takes its pids from `holders`: the holder is found, not copied.
                    let h = pids
                        .first()
                        .and_then(|pid| holders.iter().find(|h| h.pid == *pid));
                    let e = self.credit(h, r, &block, &mut room);
                    if by == AttributedBy::Resource {
                        e.pinned_by_resource += 1;
                    }
                    if let (AttributedBy::Connection, Some(h)) = (by, h) {
                        self.learn(&r.identity, h, ex.conn, ex.at_ms);
                    }
                }
                AttributedBy::Ambiguous if r.identity.process_key().is_some() => {
                    // It names a process: an identity learned elsewhere may pin it (learn.rs).
                    held.push(Held {
                        block,
                        conn: ex.conn,
                        holders: holders.to_vec(),
                        resource: r.clone(),
                    });
                }
                AttributedBy::Ambiguous => self.possibly(holders, r.items, &block),
            }
            out.push((pids, by));
        }
        self.value_series = MAX_VALUE_SERIES - room;
        for h in held {
            self.hold(h);
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

/// Notes `id` in `list`; its index there, None when the list is full.
pub(super) fn note_identity(
    list: &mut Vec<IdentitySeen>,
    dropped: &mut u64,
    id: &Identity,
    s: Signal,
    at: u64,
) -> Option<usize> {
    if let Some(i) = list.iter().position(|i| &i.identity == id) {
        let seen = &mut list[i];
        seen.exports += 1;
        seen.last_ms = seen.last_ms.max(at);
        if !seen.signals.contains(&s) {
            seen.signals.push(s);
            seen.signals.sort();
        }
        Some(i)
    } else if list.len() < MAX_IDENTITIES {
        list.push(IdentitySeen {
            identity: id.clone(),
            exports: 1,
            signals: vec![s],
            first_ms: at,
            last_ms: at,
            sums: BTreeMap::new(),
        });
        Some(list.len() - 1)
    } else {
        *dropped += 1;
        None
    }
}

fn note_reason(list: &mut Vec<String>, reason: &str) {
    if list.len() >= MAX_REASONS {
        list.remove(0);
    }
    list.push(reason.to_string());
}
