//! Metric values: how each data point changes its series, its metric's total per pid
//! ([`PidExports::sums`], [`PidExports::metrics`]) and per identity ([`IdentitySeen::sums`]).
//!
//! A series is followed by its key (resource, scope, metric name, point attributes):
//! - delta sums and histograms: every point is added, unless it is not newer (`time_unix_nano`)
//!   than the last point of its series: a repeat (a retried export);
//! - cumulative: the latest point counts; a point with a later start time is a restart, and
//!   the series' last value before it stays in the total (`carried`); a point older than the
//!   last (by time, or by start) is ignored;
//! - gauges and sums of unspecified temporality: the latest point counts.
//!
//! A metric's total is its series' contributions added up, kept current by the difference each
//! point makes, so an export costs one lookup per point.

use std::collections::BTreeMap;

use super::*;

/// One metric's values from one pid: what a dashboard shows for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricTotal {
    pub kind: MetricKind,
    pub temporality: Temporality,
    #[serde(default)]
    pub monotonic: bool,
    /// Sums: cumulative, the latest value of each series plus its last value before each
    /// restart (a new start time), added over series; delta, every point added. Gauges: the
    /// last value of each series, added over series. Histograms and summaries: the sum of the
    /// observations, the same way.
    pub value: Num,
    /// Histograms and summaries: the number of observations, added up as `value` is.
    #[serde(default)]
    pub count: u64,
    /// Series followed.
    pub series: u64,
    /// Points that changed the total or could have; ...
    pub points: u64,
    /// ... points ignored: a repeat (not newer than the last point of their series) or a
    /// non-finite value.
    #[serde(default)]
    pub repeats: u64,
    /// Cumulative series that restarted (a later start time).
    #[serde(default)]
    pub restarts: u64,
    /// Cumulative or gauge points of series beyond the caps, which could not be followed: the
    /// totals leave them out (0: the totals are exact).
    #[serde(default)]
    pub untracked: u64,
}

impl MetricTotal {
    /// What a user counts: histograms and summaries, the observations; sums and gauges, the
    /// value.
    pub fn total(&self) -> f64 {
        if self.kind.is_counted() {
            self.count as f64
        } else {
            self.value.0
        }
    }
}

/// One series' values from one pid.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesValue {
    pub metric: std::sync::Arc<str>,
    /// Metric name with the point attributes (`requests{route=/}`).
    pub series: std::sync::Arc<str>,
    /// Of its last point.
    pub start_time_unix_nano: u64,
    pub time_unix_nano: u64,
    /// Cumulative and gauges: the last point's value; delta: every point's added.
    pub value: Num,
    #[serde(default)]
    pub count: u64,
    /// Cumulative: the last values before each restart, added.
    #[serde(default)]
    pub carried: Num,
    #[serde(default)]
    pub carried_count: u64,
    #[serde(default)]
    pub restarts: u64,
    /// Internal key (hash of resource, scope, name and attributes).
    #[serde(default, skip_serializing)]
    pub key: u64,
    /// No point accounted yet.
    #[serde(skip)]
    pub fresh: bool,
}

/// What one point did to its series: the difference to the series' contribution (value,
/// count), or nothing.
enum Step {
    Changed(f64, i128, bool),
    Ignored,
}

/// Applies point `p` of a metric to series `s`.
#[inline]
fn step(s: &mut SeriesValue, m: &MetricPoints, p: &PointValue) -> Step {
    let count = i128::from(p.count);
    if s.fresh {
        // Its first point.
        s.fresh = false;
        s.start_time_unix_nano = p.start_time_unix_nano;
        s.time_unix_nano = p.time_unix_nano;
        s.value = p.value;
        s.count = p.count;
        return Step::Changed(p.value.0, count, false);
    }
    if m.adds() {
        if p.time_unix_nano <= s.time_unix_nano {
            return Step::Ignored;
        }
        s.start_time_unix_nano = p.start_time_unix_nano;
        s.time_unix_nano = p.time_unix_nano;
        s.value.0 += p.value.0;
        s.count = s.count.saturating_add(p.count);
        return Step::Changed(p.value.0, count, false);
    }
    if p.time_unix_nano < s.time_unix_nano {
        return Step::Ignored;
    }
    if m.temporality == Temporality::Cumulative && m.kind != MetricKind::Gauge {
        if p.start_time_unix_nano > s.start_time_unix_nano {
            // A restart: what the series had reached stays counted.
            s.carried.0 += s.value.0;
            s.carried_count = s.carried_count.saturating_add(s.count);
            s.restarts += 1;
            s.start_time_unix_nano = p.start_time_unix_nano;
            s.time_unix_nano = p.time_unix_nano;
            s.value = p.value;
            s.count = p.count;
            return Step::Changed(p.value.0, count, true);
        }
        if p.start_time_unix_nano < s.start_time_unix_nano {
            // From before the series' last restart.
            return Step::Ignored;
        }
    }
    if p.time_unix_nano == s.time_unix_nano && p.value == s.value && p.count == s.count {
        return Step::Ignored;
    }
    let (dv, dc) = (p.value.0 - s.value.0, count - i128::from(s.count));
    s.start_time_unix_nano = p.start_time_unix_nano;
    s.time_unix_nano = p.time_unix_nano;
    s.value = p.value;
    s.count = p.count;
    Step::Changed(dv, dc, false)
}

/// In an index of series: not followed (beyond the caps).
const UNFOLLOWED: usize = usize::MAX;

fn add_count(c: &mut u64, d: i128) {
    *c = (i128::from(*c) + d).clamp(0, i128::from(u64::MAX)) as u64;
}

/// Sets `name`'s entry of a `sums` map (allocating the name only the first time).
fn set_sum(sums: &mut BTreeMap<String, Num>, name: &str, v: f64) {
    match sums.get_mut(name) {
        Some(x) => x.0 = v,
        None => {
            sums.insert(name.to_string(), Num(v));
        }
    }
}

impl PidExports {
    /// Accounts the values of one resource block's metrics, sent under `identity` (an index in
    /// `identities`, None when it was not remembered). `room`: series the whole ledger may
    /// still follow.
    pub(super) fn note_values(
        &mut self,
        metrics: &[MetricPoints],
        identity: Option<usize>,
        room: &mut usize,
    ) {
        for m in metrics {
            self.note_metric(m, identity, room);
        }
    }

    /// The index in `series_values` of each of `m`'s series, looked up one by one, new series
    /// added while there is room.
    fn series_of(&mut self, m: &MetricPoints, room: &mut usize) -> Vec<usize> {
        let list = &m.series;
        if self.values_index.len() != self.series_values.len() {
            self.values_index = self
                .series_values
                .iter()
                .enumerate()
                .map(|(i, s)| (s.key, i))
                .collect();
        }
        let mut idx = Vec::with_capacity(list.keys.len());
        for (key, name) in list.keys.iter().zip(&list.names) {
            let i = match self.values_index.get(key) {
                Some(i) => *i,
                None if *room > 0 && self.series_values.len() < MAX_VALUE_SERIES_PER_PID => {
                    *room -= 1;
                    if let Some(t) = self.metrics.get_mut(&*m.name) {
                        t.series += 1;
                    }
                    self.values_index.insert(*key, self.series_values.len());
                    self.series_values.push(SeriesValue {
                        metric: m.name.clone(),
                        series: name.clone(),
                        key: *key,
                        fresh: true,
                        ..Default::default()
                    });
                    self.series_values.len() - 1
                }
                None => UNFOLLOWED,
            };
            idx.push(i);
        }
        idx
    }

    fn note_metric(&mut self, m: &MetricPoints, identity: Option<usize>, room: &mut usize) {
        let (fp, n) = (m.series.fp, m.series.keys.len());
        // A series list seen before (the common case: exporters send the same series in the
        // same order) has its indices in `shape_index`. Series are never removed from
        // `series_values`, so they stay right (`shape_index` is not saved: a loaded ledger
        // builds it again). A non-empty one (its keys hash the metric's name) belongs to a
        // metric followed already, and metrics are never forgotten: no lookup by name for that.
        let mut known = true;
        let followed = match self.shape_index.get_mut(&fp) {
            Some(f) if n > 0 && f.idx.len() == n => f,
            _ => {
                known = false;
                if !self.metrics.contains_key(&*m.name) {
                    if self.metrics.len() >= MAX_METRICS_PER_PID {
                        self.metrics_dropped += 1;
                        return;
                    }
                    let t = MetricTotal {
                        kind: m.kind,
                        temporality: m.temporality,
                        monotonic: m.monotonic,
                        ..Default::default()
                    };
                    self.metrics.insert(m.name.to_string(), t);
                }
                let idx = self.series_of(m, room);
                if self.shape_index.len() >= MAX_METRICS_PER_PID
                    && !self.shape_index.contains_key(&fp)
                {
                    self.shape_index.clear();
                }
                let f = Followed { idx, sums_of: None };
                self.shape_index.entry(fp).insert_entry(f).into_mut()
            }
        };
        let Some(total) = self.metrics.get_mut(&*m.name) else {
            return;
        };
        let before = total.total().to_bits();
        let (mut dv, mut dc) = (0.0f64, 0i128);
        for (p, &i) in m.points.iter().zip(&followed.idx) {
            if !p.value.0.is_finite() {
                total.repeats += 1;
                continue;
            }
            let step = match self.series_values.get_mut(i) {
                Some(s) => step(s, m, p),
                None => {
                    self.series_values_dropped += 1;
                    if m.adds() {
                        Step::Changed(p.value.0, i128::from(p.count), false)
                    } else {
                        total.untracked += 1;
                        continue;
                    }
                }
            };
            match step {
                Step::Changed(v, c, restart) => {
                    total.points += 1;
                    total.restarts += u64::from(restart);
                    dv += v;
                    dc += c;
                }
                Step::Ignored => total.repeats += 1,
            }
        }
        total.value.0 += dv;
        add_count(&mut total.count, dc);
        let now = total.total();
        // `sums` holds every metric's total as of its last export: one this list updated
        // before holds it already when the total did not move.
        if !known || now.to_bits() != before {
            set_sum(&mut self.sums, &m.name, now);
        }
        if let Some(seen) = identity.and_then(|i| self.identities.get_mut(i)) {
            // (An i128 converts through a library call: not for the common 0.)
            let d = match (m.kind.is_counted(), dc) {
                (true, 0) => 0.0,
                (true, _) => dc as f64,
                (false, _) => dv,
            };
            // Adding +0.0 to an entry that is there changes nothing (sums start at +0.0 or a
            // difference, and only add differences: never -0.0).
            if known && followed.sums_of == identity && d.to_bits() == 0 {
                return;
            }
            match seen.sums.get_mut(&*m.name) {
                Some(x) => x.0 += d,
                None => {
                    seen.sums.insert(m.name.to_string(), Num(d));
                }
            }
            followed.sums_of = identity;
        }
    }
}

/// A series list followed by a pid: the index in `series_values` of each series, and the
/// identity (its index in `identities`) whose `sums` has the metric already.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Followed {
    idx: Vec<usize>,
    sums_of: Option<usize>,
}
