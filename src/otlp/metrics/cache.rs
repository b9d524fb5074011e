//! What one connection's exports have told already, so the walker does not say it again.

use std::collections::HashMap;
use std::sync::Arc;

use super::super::hash::KeyHasher;
use super::super::identity::{is_own_pid, Identity, ResourceSummary, SoleSender};
use super::super::values::{PointValue, SeriesList};

type KeyMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<KeyHasher>>;

/// What one connection's exports have told already: each series' name (built once), each
/// metric's series list (shared with the summaries while it stays the same) and, while the
/// connection has a single sender, the start time last passed on for each of its series.
///
/// Exporters re-send every series of a metric in the same order with the same start time on
/// every export; once the ledger has a series' start for the connection's only sender, sending
/// it again changes nothing, so such starts are not listed again (the points' values always
/// are, unless the whole metric is an exact repeat). This holds only while one pid holds the
/// connection and the resource names no other pid, or one whose blocks were accounted to that
/// holder already (a resource made in the master before the fork names the master's pid):
/// after a fork (several holders) or when the holders change, every start is passed on again.
#[derive(Debug, Default, Clone)]
pub struct NameCache {
    names: KeyMap<Arc<str>>,
    /// Per metric (hash of resource, scope and name): its last series list and the start
    /// passed on for each of them (0: none).
    pub(super) shapes: KeyMap<Shape>,
    /// The sole sender the remembered starts were passed on for.
    sender: Option<i32>,
    /// Resource pids other than the sender's own (a resource made before a fork, or by
    /// another process) whose blocks on this connection were accounted to the sender alone,
    /// after the re-check such a pid triggers (see [`NameCache::confirm`]).
    confirmed: Vec<i64>,
    /// Whether the resource block being read may skip unchanged starts and exact repeats.
    pub(super) dedup: bool,
    /// The last resource read on this connection (its bytes, identity and hash): an exporter
    /// sends the same one every time.
    pub(super) last_resource: Option<(Vec<u8>, Identity, u64)>,
    /// The keys of the metric being read.
    pub(super) keys: Vec<u64>,
    /// The last body walked in full, to replay the next one from (see `skeleton`).
    pub(super) skeleton: Option<super::skeleton::Skeleton>,
    /// Series lists made so far ([`NameCache::new_shape`]: the only change to `shapes`' keys),
    /// so that a replay checks its series against them once per change, not per body.
    pub(super) shapes_made: u64,
    /// Point lists of summaries already accounted, emptied, last metric first: a replay fills
    /// them again instead of allocating one per metric (see [`NameCache::recycle`]).
    pub(super) spare: Vec<Vec<PointValue>>,
}

/// Foreign resource pids confirmed per connection, at most (a connection re-checks as many).
const MAX_CONFIRMED: usize = 64;

/// Point lists kept for reuse, at most, and the largest kept.
const MAX_SPARE: usize = 256;
const MAX_SPARE_POINTS: usize = 1024;

#[derive(Debug, Clone)]
pub(super) struct Shape {
    /// The metric's name, shared with the summaries.
    pub(super) metric: Arc<str>,
    pub(super) list: Arc<SeriesList>,
    pub(super) starts: Vec<u64>,
    /// A fingerprint of the metric's points (series keys, starts, times, values, counts),
    /// recorded (under `dedup`) when they were passed on. The same points again, from the same
    /// sender, are an exact repeat, which changes nothing in the ledger: counted, not passed
    /// on. Forgotten when the sender changes or a body is refused. Kept here, not in a map of
    /// its own: one lookup per metric finds both.
    pub(super) last_fp: Option<u64>,
}

/// Series names, metrics, and fingerprints remembered per connection; each map starts over
/// when full.
pub(super) const MAX_NAMES: usize = 4096;

impl NameCache {
    /// Hands back the summaries of an export once accounted: their point lists serve the
    /// next replay (each metric, in the same order, gets back a list of its own size).
    pub fn recycle(&mut self, resources: Vec<ResourceSummary>) {
        for r in resources.into_iter().rev() {
            for m in r.metrics.into_iter().rev() {
                if self.spare.len() >= MAX_SPARE {
                    return;
                }
                let mut points = m.points;
                if points.capacity() <= MAX_SPARE_POINTS {
                    points.clear();
                    self.spare.push(points);
                }
            }
        }
    }

    /// Metrics whose last points passed on are remembered (exact repeats are not).
    #[cfg(test)]
    pub(super) fn remembered(&self) -> usize {
        self.shapes.values().filter(|s| s.last_fp.is_some()).count()
    }

    /// The emptied point lists kept for reuse, for a replay elsewhere (OTLP/JSON) to take
    /// from; [`NameCache::recycle`] fills them.
    pub fn spare_lists(&mut self) -> &mut Vec<Vec<PointValue>> {
        &mut self.spare
    }

    /// Before a body: the connection's holders now.
    pub(super) fn begin(&mut self, sender: SoleSender) {
        let sole = sender.map(|(pid, _)| pid);
        if sole != self.sender {
            self.forget_starts();
            self.confirmed.clear();
            self.sender = sole;
        }
    }

    /// A block whose resource names `resource_pid`, not `sender`'s own, was accounted to
    /// `sender` as the connection's sole holder (after the re-check a foreign pid triggers):
    /// its later blocks go to the same place, so they may skip what that place has already.
    /// Not for another sender than the one the starts are remembered for (the holders changed
    /// in between).
    pub fn confirm(&mut self, sender: i32, resource_pid: i64) {
        if self.sender == Some(sender)
            && self.confirmed.len() < MAX_CONFIRMED
            && !self.confirmed.contains(&resource_pid)
        {
            self.confirmed.push(resource_pid);
        }
    }

    /// Every series' start is passed on again, and nothing is a repeat.
    pub(super) fn forget_starts(&mut self) {
        for s in self.shapes.values_mut() {
            s.starts.iter_mut().for_each(|x| *x = 0);
            s.last_fp = None;
        }
    }

    /// Before a resource block: skip unchanged starts only if its process.pid (if any) is the
    /// sole sender's own, or confirmed to be accounted to it.
    pub(super) fn resource(&mut self, sender: SoleSender, identity: &Identity) {
        self.dedup = match (sender, identity.process_pid) {
            (Some(_), None) => true,
            (Some((pid, nspid)), Some(p)) => {
                is_own_pid(pid, nspid, p) || self.confirmed.contains(&p)
            }
            _ => false,
        };
    }

    /// A new series list for metric `mkey` with the keys in `self.keys`, named by
    /// `name_of(index)` where no name is known yet; the starts passed on are carried over by
    /// key from the last list.
    pub(super) fn new_shape(
        &mut self,
        mkey: u64,
        metric: &str,
        mut name_of: impl FnMut(usize) -> Result<String, String>,
    ) -> Result<(), String> {
        self.shapes_made = self.shapes_made.wrapping_add(1);
        let mut names = Vec::with_capacity(self.keys.len());
        for (i, k) in self.keys.iter().enumerate() {
            let n = match self.names.get(k) {
                Some(n) => n.clone(),
                None => {
                    if self.names.len() >= MAX_NAMES {
                        self.names.clear();
                    }
                    let n: Arc<str> = name_of(i)?.into();
                    self.names.insert(*k, n.clone());
                    n
                }
            };
            names.push(n);
        }
        let old: KeyMap<u64> = self
            .shapes
            .get(&mkey)
            .map(|s| {
                let starts = s.starts.iter().copied();
                s.list.keys.iter().copied().zip(starts).collect()
            })
            .unwrap_or_default();
        let starts = self
            .keys
            .iter()
            .map(|k| old.get(k).copied().unwrap_or(0))
            .collect();
        if self.shapes.len() >= MAX_NAMES {
            self.shapes.clear();
        }
        let list = Arc::new(SeriesList::new(self.keys.clone(), names));
        let metric = match self.shapes.get(&mkey) {
            Some(s) if &*s.metric == metric => s.metric.clone(),
            _ => metric.into(),
        };
        self.shapes.insert(
            mkey,
            Shape {
                metric,
                list,
                starts,
                last_fp: None,
            },
        );
        Ok(())
    }
}
