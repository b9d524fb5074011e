//! `--expect-count`: a counter's total across pids, set beside what was expected, with the
//! facts that tell doubling (pre-fork series, shared identities, more than a pid served) from
//! loss (a pid's total short of what it served). FC211 and FC212 judge a [`CountTally`].

use std::cmp::Ordering;

use super::*;

/// Clock-tick granularity of /proc start times (10 ms) plus slack.
const PREFORK_TOLERANCE_MS: u64 = 50;
/// Metric names listed when the expected one never arrived.
const MAX_ARRIVED: usize = 12;

/// One pid's part of a counter's total.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PidCount {
    pub pid: i32,
    /// What it sent of the metric (0 when it sent none).
    pub total: f64,
    /// Requests `run` saw it serve (None: not known, e.g. under `receive`).
    pub served: Option<u64>,
    /// Series of the metric that started before the pid did: (series, how long before, ms).
    pub prefork_series: Vec<(String, u64)>,
    /// Its part under each identity it sent the metric under.
    pub by_identity: Vec<(Identity, f64)>,
    /// Of those identities, the ones other pids sent the metric under too.
    pub shared_identities: Vec<Identity>,
    /// Points of the metric beyond the caps: its total leaves them out.
    pub untracked: u64,
}

/// A counter's total across pids against what was expected.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CountTally {
    pub metric: String,
    /// None: the number of requests served is not known.
    pub expected: Option<f64>,
    /// Where the expected number came from, for evidence.
    pub expected_from: String,
    /// Over every pid, and exports whose sender was not found.
    pub total: f64,
    /// Pids that sent the metric or served requests, by pid.
    pub pids: Vec<PidCount>,
    /// Part of `total` whose sender was not found.
    pub unattributed: f64,
    /// Metric exports on shared connections that could not be pinned to a pid: their values
    /// are in no total.
    pub unpinned_exports: u64,
    /// The metric names that did arrive (some), when this one never did.
    pub arrived: Vec<String>,
}

impl CountTally {
    /// `total` against `expected` (None when nothing is expected); equal within rounding.
    pub fn compare(&self) -> Option<Ordering> {
        let e = self.expected?;
        let slack = 1e-9 * e.abs().max(1.0);
        Some(if (self.total - e).abs() <= slack {
            Ordering::Equal
        } else if self.total > e {
            Ordering::Greater
        } else {
            Ordering::Less
        })
    }

    pub fn pid(&self, pid: i32) -> Option<&PidCount> {
        self.pids.iter().find(|p| p.pid == pid)
    }
}

impl Ledger {
    /// Every `--expect-count`, tallied.
    pub fn count_tallies(&self) -> Vec<CountTally> {
        self.expected_counts.iter().map(|e| self.tally(e)).collect()
    }

    /// The requests `run` saw the workers serve, over every pid.
    pub fn served_total(&self) -> u64 {
        self.served.values().map(|s| s.requests).sum()
    }

    pub fn tally(&self, e: &CountExpectation) -> CountTally {
        let name = e.metric.as_str();
        let (expected, expected_from) = match &e.expected {
            ExpectedCount::Exactly(n) => (Some(n.0), format!("--expect-count {name}={}", n.0)),
            ExpectedCount::Served(n) => {
                let n = n.unwrap_or_else(|| self.served_total());
                (
                    Some(n as f64),
                    format!("--expect-count {name}=served: the server answered {n} request(s)"),
                )
            }
        };
        // Which pids sent the metric under each identity that names a process.
        let mut senders: BTreeMap<&Identity, Vec<i32>> = BTreeMap::new();
        for p in self.processes.values() {
            for i in p.identities.iter().filter(|i| i.sums.contains_key(name)) {
                if !i.identity.is_anonymous() {
                    senders.entry(&i.identity).or_default().push(p.sender.pid);
                }
            }
        }
        let mut pids = Vec::new();
        let mut total = 0.0;
        for p in self.processes.values() {
            let sum = p.sums.get(name).map(|v| v.0);
            let served = self.served.get(&p.sender.pid).map(|s| s.requests);
            if sum.is_none() && served.is_none() {
                continue;
            }
            let t = sum.unwrap_or(0.0);
            total += t;
            let started_ms = p.sender.started_at_ns / 1_000_000;
            let prefork_series = p
                .series_values
                .iter()
                .filter(|s| &*s.metric == name && started_ms > 0)
                .filter_map(|s| {
                    let start = s.start_time_unix_nano / 1_000_000;
                    (start > 0 && start + PREFORK_TOLERANCE_MS < started_ms)
                        .then(|| (s.series.to_string(), started_ms - start))
                })
                .collect();
            let by_identity: Vec<(Identity, f64)> = p
                .identities
                .iter()
                .filter_map(|i| i.sums.get(name).map(|v| (i.identity.clone(), v.0)))
                .collect();
            let shared_identities = by_identity
                .iter()
                .filter(|(i, _)| senders.get(i).is_some_and(|s| s.len() > 1))
                .map(|(i, _)| i.clone())
                .collect();
            pids.push(PidCount {
                pid: p.sender.pid,
                total: t,
                served,
                prefork_series,
                by_identity,
                shared_identities,
                untracked: p.metrics.get(name).map_or(0, |m| m.untracked),
            });
        }
        let unattributed = self.unattributed.sums.get(name).map_or(0.0, |v| v.0);
        total += unattributed;
        let unpinned_exports = self
            .processes
            .values()
            .map(|p| p.possible.metrics.requests)
            .max()
            .unwrap_or(0);
        let seen = pids.iter().any(|p| p.total != 0.0) || unattributed != 0.0;
        let arrived = if seen {
            Vec::new()
        } else {
            let mut all: Vec<String> = self
                .processes
                .values()
                .chain([&self.unattributed])
                .flat_map(|p| p.sums.keys().cloned())
                .collect();
            all.sort();
            all.dedup();
            all.truncate(MAX_ARRIVED);
            all
        };
        CountTally {
            metric: name.to_string(),
            expected,
            expected_from,
            total,
            pids,
            unattributed,
            unpinned_exports,
            arrived,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::build::{id, proc, B};
    use super::*;

    fn counter(series: &str, start_ms: u64, v: f64) -> MetricPoints {
        let list =
            crate::otlp::values::SeriesList::new(vec![series.len() as u64], vec![series.into()]);
        MetricPoints {
            name: "requests".into(),
            kind: MetricKind::Sum,
            temporality: Temporality::Cumulative,
            monotonic: true,
            series: list.into(),
            points: vec![PointValue {
                start_time_unix_nano: start_ms * 1_000_000,
                time_unix_nano: 9_000_000_000,
                value: Num(v),
                count: 0,
            }],
        }
    }

    #[test]
    fn a_tally_adds_pids_and_says_what_each_carried() {
        let mut b = B::new();
        // workers 11 and 12 started at 5 s; 12 re-exports a series the master began at 1 s,
        // under the master's identity, which the master (10) also sends
        let (m, w1, w2) = (
            proc(10, &[], 1_000),
            proc(11, &[], 5_000),
            proc(12, &[], 5_000),
        );
        for (h, pid, series, start, v) in [
            (&m, 10, "requests{prefork}", 1_000, 1.0),
            (&w1, 11, "requests{/}", 5_500, 30.0),
            (&w2, 10, "requests{prefork}", 1_000, 1.0),
        ] {
            let c = b.conn(std::slice::from_ref(h));
            let r = ResourceSummary {
                identity: id("app", Some(pid), None),
                items: 1,
                metrics: vec![counter(series, start, v)],
                ..Default::default()
            };
            b.resources(c, std::slice::from_ref(h), Signal::Metrics, vec![r], 9_000);
        }
        let mut l = b.at(10_000);
        l.served.insert(
            11,
            Served {
                requests: 30,
                first_ms: 1,
                last_ms: 2,
            },
        );
        l.expected_counts = vec![CountExpectation {
            metric: "requests".into(),
            expected: ExpectedCount::Served(None),
        }];
        let t = &l.count_tallies()[0];
        assert_eq!((t.expected, t.total), (Some(30.0), 32.0));
        assert_eq!(t.compare(), Some(Ordering::Greater));
        let w2t = t.pid(12).unwrap();
        assert_eq!(
            w2t.prefork_series,
            [("requests{prefork}".to_string(), 4_000)]
        );
        assert_eq!(w2t.shared_identities.len(), 1);
        assert_eq!(t.pid(11).unwrap().served, Some(30));
        assert!(t.pid(11).unwrap().prefork_series.is_empty());
        assert!(
            t.pid(10).unwrap().prefork_series.is_empty(),
            "the master's own"
        );
        // a name that never arrived: what did arrive is listed
        let other = l.tally(&CountExpectation {
            metric: "request".into(),
            expected: ExpectedCount::Exactly(Num(30.0)),
        });
        assert_eq!((other.total, other.compare()), (0.0, Some(Ordering::Less)));
        assert_eq!(other.arrived, ["requests"]);
    }
}
