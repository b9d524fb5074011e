//! Identity learned across connections: an identity (service.instance.id and the other
//! [`Identity::process_key`] attributes) that arrived on a connection held by exactly one pid
//! is that pid's, so its exports on a shared (inherited) connection belong to that pid too.
//!
//! A Celery prefork worker whose SDK was set up in MainProcess is the case: each pool child
//! exports its metrics over MainProcess's inherited keep-alive connection (held by all three
//! pids) under its own service.instance.id, which also arrives from the child on a connection
//! that child opened itself. Without this, those metrics stay "possible" for every holder and
//! the rules that judge a child's own data (FC201, FC206, FC208) see nothing.
//!
//! Resource blocks on a shared connection that name a process but no holder by pid are held
//! back (at most [`MAX_HELD`]; the oldest is settled when more come) and settled when the
//! ledger is read ([`Ledger::settle`]), with everything learned by then, whatever the order of
//! arrival. A block is pinned to pid P when its identity arrived on a connection P held alone,
//! never on one another pid held alone (then several processes share it, e.g. built before a
//! fork by SDKs older than 1.44: it pins nothing), P holds the shared connection (the same
//! process: same start time), and no other holder descends from P (a fork of P could have
//! inherited P's identity). Otherwise the block is "possible" for every holder, as before.

use super::account::note_identity;
use super::*;
use crate::otlp::hash::{Fx, KeyHasher};
use std::hash::BuildHasherDefault;

/// Resource blocks held back, at most.
pub const MAX_HELD: usize = 1024;
/// Identities learned, at most (further ones are not learned).
pub const MAX_LEARNED: usize = 4096;

/// What one resource block adds to a signal's counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Block {
    pub signal: Signal,
    pub at_ms: u64,
    /// The export's first block: it carries the request count and the bytes.
    pub first: bool,
    pub bytes: u64,
}

/// A resource block on a shared connection, waiting to be settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Held {
    pub block: Block,
    pub conn: u64,
    pub holders: Vec<Holder>,
    pub resource: ResourceSummary,
}

/// An identity that arrived on a connection held by one pid alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Learned {
    pub identity: Identity,
    pub pid: i32,
    #[serde(default)]
    pub started_at_ns: u64,
    /// The connection it arrived on first, and when.
    pub conn: u64,
    pub at_ms: u64,
    /// Another pid that sent it on a connection held by that pid alone: the identity is
    /// shared by several processes and pins nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub also_from: Option<i32>,
}

/// Exports on shared connections pinned to a pid by an identity learned from it (the evidence).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityPin {
    pub identity: Identity,
    /// The connection this pid held alone that carried the identity, and when it first did.
    pub learned_conn: u64,
    pub learned_at_ms: u64,
    /// The shared connections whose resource blocks it pinned, and how many blocks.
    pub shared_conns: Vec<u64>,
    pub blocks: u64,
}

impl Ledger {
    /// Accounts a resource block as known to come from `h` (None: unattributed); the pid's
    /// entry, for the caller's own counters.
    pub(super) fn credit(
        &mut self,
        h: Option<&Holder>,
        r: &ResourceSummary,
        b: &Block,
        room: &mut usize,
    ) -> &mut PidExports {
        let e = match h {
            Some(h) => self.pid_entry(h),
            None => &mut self.unattributed,
        };
        let stats = e.signals.get_mut(b.signal);
        if b.first {
            stats.add(r.items, b.bytes, b.at_ms);
        } else {
            stats.items += r.items;
        }
        let idx = note_identity(
            &mut e.identities,
            &mut e.identities_dropped,
            &r.identity,
            b.signal,
            b.at_ms,
        );
        for s in &r.cumulative {
            e.note_series(s);
        }
        e.note_values(&r.metrics, idx, room);
        e
    }

    /// Counts a resource block as possibly sent by each of `holders`.
    pub(super) fn possibly(&mut self, holders: &[Holder], items: u64, b: &Block) {
        for h in holders {
            let stats = self.pid_entry(h).possible.get_mut(b.signal);
            if b.first {
                stats.add(items, b.bytes, b.at_ms);
            } else {
                stats.items += items;
            }
        }
    }

    /// `id` arrived on connection `conn`, held by `h` alone.
    pub(super) fn learn(&mut self, id: &Identity, h: &Holder, conn: u64, at_ms: u64) {
        if id.is_anonymous() {
            return;
        }
        let known = self.learned_position(id);
        match known {
            Some(i) => {
                let l = &mut self.learned[i];
                if l.pid != h.pid || l.started_at_ns != h.started_at_ns {
                    l.also_from.get_or_insert(h.pid);
                }
            }
            None if self.learned.len() < MAX_LEARNED => {
                self.learned_index.add(id, self.learned.len());
                self.learned.push(Learned {
                    identity: id.clone(),
                    pid: h.pid,
                    started_at_ns: h.started_at_ns,
                    conn,
                    at_ms,
                    also_from: None,
                })
            }
            None => {}
        }
    }

    /// Holds a block back until the ledger is read; the oldest is settled when too many wait.
    pub(super) fn hold(&mut self, h: Held) {
        if self.held.len() >= MAX_HELD {
            if let Some(old) = self.held.pop_front() {
                self.settle_one(old);
            }
        }
        self.held.push_back(h);
    }

    /// Settles every held block with what was learned by now: pinned to the pid whose own
    /// connection carried its identity, else possible for every holder (see the module docs).
    /// The receiver does it on each copy it hands out.
    pub fn settle(&mut self) {
        while let Some(h) = self.held.pop_front() {
            self.settle_one(h);
        }
    }

    fn settle_one(&mut self, h: Held) {
        let id = &h.resource.identity;
        let owner = (!id.is_anonymous())
            .then(|| self.learned_position(id).map(|i| &self.learned[i]))
            .flatten();
        let pinned = owner.filter(|l| l.also_from.is_none()).and_then(|l| {
            let holder = h.holders.iter().find(|x| {
                x.pid == l.pid && (x.started_at_ns == l.started_at_ns || l.started_at_ns == 0)
            })?;
            let heir = h
                .holders
                .iter()
                .any(|x| x.pid != l.pid && x.descends_from(l.pid));
            (!heir).then(|| (holder.clone(), l.conn, l.at_ms))
        });
        let Some((holder, learned_conn, learned_at_ms)) = pinned else {
            self.possibly(&h.holders, h.resource.items, &h.block);
            return;
        };
        let mut room = MAX_VALUE_SERIES.saturating_sub(self.value_series);
        let e = self.credit(Some(&holder), &h.resource, &h.block, &mut room);
        e.pinned_by_identity += 1;
        match e.identity_pins.iter().position(|p| &p.identity == id) {
            Some(i) => {
                let p = &mut e.identity_pins[i];
                p.blocks += 1;
                if !p.shared_conns.contains(&h.conn) && p.shared_conns.len() < MAX_CONNS_PER_PID {
                    p.shared_conns.push(h.conn);
                }
            }
            None if e.identity_pins.len() < MAX_IDENTITIES => e.identity_pins.push(IdentityPin {
                identity: id.clone(),
                learned_conn,
                learned_at_ms,
                shared_conns: vec![h.conn],
                blocks: 1,
            }),
            None => {}
        }
        self.value_series = MAX_VALUE_SERIES - room;
    }
}

impl Ledger {
    /// Where `id`'s process is in `learned`, through the index (built again when it does not
    /// cover every entry, e.g. after loading).
    fn learned_position(&mut self, id: &Identity) -> Option<usize> {
        if self.learned_index.covers != self.learned.len() {
            self.learned_index = LearnedIndex::default();
            for (i, l) in self.learned.iter().enumerate() {
                self.learned_index.add(&l.identity, i);
            }
        }
        let learned = &self.learned;
        self.learned_index
            .by_hash
            .get(&process_hash(id))?
            .iter()
            .copied()
            .find(|&i| same_process(&learned[i].identity, id))
    }
}

/// Indices in `learned` by [`process_hash`], and how many entries it covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct LearnedIndex {
    by_hash: HashMap<u64, Vec<usize>, BuildHasherDefault<KeyHasher>>,
    covers: usize,
}

impl LearnedIndex {
    fn add(&mut self, id: &Identity, i: usize) {
        self.by_hash.entry(process_hash(id)).or_default().push(i);
        self.covers += 1;
    }
}

/// A hash of [`Identity::process_key`]'s fields, built without copying them.
fn process_hash(id: &Identity) -> u64 {
    let opt = |v: Option<i64>| v.map_or(u64::MAX, |x| x as u64);
    Fx::new()
        .word(opt(id.process_pid))
        .word(opt(id.worker_pid))
        .bytes(
            id.service_instance_id
                .as_deref()
                .unwrap_or("\u{0}")
                .as_bytes(),
        )
        .finish()
}

/// Whether `a` and `b` have the same [`Identity::process_key`] (both naming a process), without
/// building the keys: every export is looked up among the identities learned.
fn same_process(a: &Identity, b: &Identity) -> bool {
    a.process_pid == b.process_pid
        && a.worker_pid == b.worker_pid
        && a.service_instance_id == b.service_instance_id
        && !a.is_anonymous()
}
