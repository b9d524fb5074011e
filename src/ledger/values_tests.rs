//! Metric values on ledgers built export by export: repeats, restarts, delta, gauges,
//! histograms, several identities from one pid, the caps; and the same totals whichever
//! summariser (the protobuf walker with its repeat skipping, or the decoded message) fed them.

use super::build::{id, proc, B};
use super::*;
use crate::otlp::values::SeriesList;

/// One point: (series, start ns, time ns, value, count). The key is the series name's hash.
type Pt<'a> = (&'a str, u64, u64, f64, u64);

fn key(series: &str) -> u64 {
    crate::otlp::hash::Fx::new()
        .bytes(series.as_bytes())
        .finish()
}

fn m(name: &str, kind: MetricKind, t: Temporality, points: &[Pt]) -> MetricPoints {
    let keys = points.iter().map(|p| key(p.0)).collect();
    let names = points.iter().map(|p| p.0.into()).collect();
    MetricPoints {
        name: name.into(),
        kind,
        temporality: t,
        monotonic: kind == MetricKind::Sum,
        series: SeriesList::new(keys, names).into(),
        points: points
            .iter()
            .map(|&(_, start, time, value, count)| PointValue {
                start_time_unix_nano: start,
                time_unix_nano: time,
                value: Num(value),
                count,
            })
            .collect(),
    }
}

fn counter(points: &[Pt]) -> MetricPoints {
    m("requests", MetricKind::Sum, Temporality::Cumulative, points)
}

/// A ledger with pid 10 on connection 1.
struct L {
    b: B,
    c: u64,
}

impl L {
    fn new() -> L {
        let mut b = B::new();
        let c = b.conn(&[proc(10, &[], 0)]);
        L { b, c }
    }

    fn send(&mut self, pid: i64, metrics: Vec<MetricPoints>) -> &mut Self {
        self.send_as(id("app", Some(pid), None), metrics)
    }

    fn send_as(&mut self, identity: Identity, metrics: Vec<MetricPoints>) -> &mut Self {
        let items = metrics.iter().map(|m| m.points.len() as u64).sum();
        let r = ResourceSummary {
            identity,
            items,
            metrics,
            ..Default::default()
        };
        let c = self.c;
        self.b
            .resources(c, &[proc(10, &[], 0)], Signal::Metrics, vec![r], 1);
        self
    }

    fn p(&self) -> &PidExports {
        &self.b.l.processes[&10]
    }

    fn sum(&self, name: &str) -> f64 {
        self.p().sums[name].0
    }

    fn total(&self, name: &str) -> &MetricTotal {
        &self.p().metrics[name]
    }
}

#[test]
fn cumulative_series_count_their_latest_value_added_over_series() {
    let mut l = L::new();
    l.send(
        10,
        vec![counter(&[("r{a}", 1, 10, 3.0, 0), ("r{b}", 1, 10, 1.0, 0)])],
    );
    assert_eq!(l.sum("requests"), 4.0);
    // re-exported unchanged, then grown, then the same point again
    l.send(
        10,
        vec![counter(&[("r{a}", 1, 20, 3.0, 0), ("r{b}", 1, 20, 1.0, 0)])],
    );
    l.send(
        10,
        vec![counter(&[("r{a}", 1, 30, 7.0, 0), ("r{b}", 1, 30, 1.0, 0)])],
    );
    l.send(10, vec![counter(&[("r{a}", 1, 30, 7.0, 0)])]);
    assert_eq!(l.sum("requests"), 8.0);
    // a series that stops being exported keeps its last value; an older point is ignored
    l.send(
        10,
        vec![counter(&[("r{a}", 1, 40, 9.0, 0), ("r{b}", 1, 25, 0.0, 0)])],
    );
    assert_eq!(l.sum("requests"), 10.0);
    let t = l.total("requests");
    assert_eq!((t.series, t.restarts, t.untracked), (2, 0, 0));
    assert_eq!(
        (t.kind, t.temporality, t.monotonic),
        (MetricKind::Sum, Temporality::Cumulative, true)
    );
    assert_eq!(t.points + t.repeats, 9);
    let a = l
        .p()
        .series_values
        .iter()
        .find(|s| &*s.series == "r{a}")
        .unwrap();
    assert_eq!(
        (a.value, a.time_unix_nano, &*a.metric),
        (Num(9.0), 40, "requests")
    );
}

#[test]
fn a_restarted_series_keeps_what_it_had_reached() {
    let mut l = L::new();
    l.send(10, vec![counter(&[("r", 100, 10, 15.0, 0)])]);
    // new start time: the series restarted (a re-created provider, a process reusing an
    // identity) and counts from zero again
    l.send(10, vec![counter(&[("r", 200, 20, 3.0, 0)])]);
    assert_eq!(l.sum("requests"), 18.0);
    l.send(10, vec![counter(&[("r", 200, 30, 5.0, 0)])]);
    // a late point from before the restart changes nothing
    l.send(10, vec![counter(&[("r", 100, 40, 16.0, 0)])]);
    assert_eq!(l.sum("requests"), 20.0);
    let s = &l.p().series_values[0];
    assert_eq!((s.carried, s.value, s.restarts), (Num(15.0), Num(5.0), 1));
    assert_eq!(l.total("requests").restarts, 1);
}

#[test]
fn delta_points_are_added_and_repeats_are_not() {
    let mut l = L::new();
    let d = |pts: &[Pt]| m("hits", MetricKind::Sum, Temporality::Delta, pts);
    l.send(10, vec![d(&[("h", 0, 10, 2.0, 0)])]);
    l.send(10, vec![d(&[("h", 10, 20, 3.0, 0)])]);
    // a retried export: the same point again
    l.send(10, vec![d(&[("h", 10, 20, 3.0, 0)])]);
    l.send(10, vec![d(&[("h", 20, 30, -1.0, 0)])]);
    assert_eq!(l.sum("hits"), 4.0);
    let t = l.total("hits");
    assert_eq!((t.points, t.repeats), (3, 1));
}

#[test]
fn gauges_count_their_last_value() {
    let mut l = L::new();
    let g = |pts: &[Pt]| m("temp", MetricKind::Gauge, Temporality::Unspecified, pts);
    l.send(
        10,
        vec![g(&[("t{a}", 0, 10, 20.0, 0), ("t{b}", 0, 10, 5.0, 0)])],
    );
    l.send(10, vec![g(&[("t{a}", 0, 20, 21.5, 0)])]);
    // a gauge's start may move every export: never a restart
    l.send(10, vec![g(&[("t{b}", 15, 20, 4.0, 0)])]);
    assert_eq!(l.sum("temp"), 25.5);
    assert_eq!(l.total("temp").restarts, 0);
}

#[test]
fn histograms_count_observations_and_add_their_sums() {
    let mut l = L::new();
    let h = |t, pts: &[Pt]| m("latency", MetricKind::Histogram, t, pts);
    l.send(10, vec![h(Temporality::Delta, &[("l", 0, 10, 0.5, 2)])]);
    l.send(10, vec![h(Temporality::Delta, &[("l", 10, 20, 1.5, 3)])]);
    assert_eq!(l.sum("latency"), 5.0, "sums has the count of a histogram");
    assert_eq!(l.total("latency").value, Num(2.0));
    let c = |pts: &[Pt]| m("sizes", MetricKind::Histogram, Temporality::Cumulative, pts);
    l.send(10, vec![c(&[("s", 1, 10, 4.0, 4)])]);
    l.send(10, vec![c(&[("s", 1, 20, 9.0, 6)])]);
    l.send(10, vec![c(&[("s", 5, 30, 1.0, 1)])]);
    let t = l.total("sizes");
    assert_eq!((t.count, t.value, t.restarts), (7, Num(10.0), 1));
    assert_eq!(l.sum("sizes"), 7.0);
}

#[test]
fn one_pid_under_several_identities_is_counted_per_identity_and_in_all() {
    let mut l = L::new();
    // pre-fork data under the master's identity, the worker's own under its own
    l.send(1, vec![counter(&[("r{prefork}", 1, 10, 1000.0, 0)])]);
    l.send(10, vec![counter(&[("r{/}", 5, 10, 30.0, 0)])]);
    l.send(10, vec![counter(&[("r{/}", 5, 20, 31.0, 0)])]);
    assert_eq!(l.sum("requests"), 1031.0);
    let by: Vec<(Option<i64>, f64)> = l
        .p()
        .identities
        .iter()
        .map(|i| (i.identity.process_pid, i.sums["requests"].0))
        .collect();
    assert_eq!(by, [(Some(1), 1000.0), (Some(10), 31.0)]);
}

#[test]
fn values_on_a_shared_connection_count_only_once_pinned() {
    let mut b = B::new();
    let (a, w) = (proc(10, &[], 0), proc(11, &[], 0));
    let c = b.conn(&[a.clone(), w.clone()]);
    let r = |pid| ResourceSummary {
        identity: id("app", pid, None),
        items: 1,
        metrics: vec![counter(&[("r", 1, 10, 5.0, 0)])],
        ..Default::default()
    };
    b.resources(
        c,
        &[a.clone(), w.clone()],
        Signal::Metrics,
        vec![r(Some(11))],
        1,
    );
    b.resources(c, &[a, w], Signal::Metrics, vec![r(None)], 2);
    assert_eq!(b.l.processes[&11].sums["requests"], Num(5.0));
    assert!(b.l.processes[&10].sums.is_empty(), "ambiguous: not counted");
}

#[test]
fn caps_bound_the_series_and_say_what_they_left_out() {
    let mut l = L::new();
    let names: Vec<String> = (0..MAX_VALUE_SERIES_PER_PID + 3)
        .map(|i| format!("r{{{i}}}"))
        .collect();
    let pts: Vec<Pt> = names.iter().map(|n| (n.as_str(), 1, 10, 1.0, 0)).collect();
    l.send(10, vec![counter(&pts)]);
    let dnames: Vec<String> = names.iter().map(|n| format!("d{n}")).collect();
    let d: Vec<Pt> = dnames.iter().map(|n| (n.as_str(), 0, 10, 1.0, 0)).collect();
    l.send(10, vec![m("d", MetricKind::Sum, Temporality::Delta, &d)]);
    let t = l.total("requests");
    assert_eq!(
        (t.series, t.untracked),
        (MAX_VALUE_SERIES_PER_PID as u64, 3)
    );
    assert_eq!(l.sum("requests"), MAX_VALUE_SERIES_PER_PID as f64);
    // delta points need no series to be added
    assert_eq!(l.sum("d"), names.len() as f64);
    assert_eq!(l.p().series_values.len(), MAX_VALUE_SERIES_PER_PID);
    let metrics: Vec<MetricPoints> = (0..MAX_METRICS_PER_PID + 2)
        .map(|i| {
            m(
                &format!("m{i}"),
                MetricKind::Gauge,
                Temporality::Unspecified,
                &[],
            )
        })
        .collect();
    l.send(10, metrics);
    assert_eq!(l.p().metrics.len(), MAX_METRICS_PER_PID);
    assert_eq!(
        l.p().metrics_dropped,
        4,
        "2 were there, 254 fitted, 4 did not"
    );
}

#[test]
fn the_json_view_has_sums_and_their_detail() {
    let mut l = L::new();
    l.send(10, vec![counter(&[("r", 1, 10, 30.0, 0)])]);
    let v = serde_json::to_value(l.p()).unwrap();
    assert_eq!(v["sums"]["requests"], 30);
    assert_eq!(v["metrics"]["requests"]["temporality"], "cumulative");
    assert_eq!(v["series_values"][0]["series"], "r");
    assert_eq!(v["identities"][0]["sums"]["requests"], 30);
    let back: PidExports = serde_json::from_value(v).unwrap();
    assert_eq!(back.sums, l.p().sums);
}

/// An export from process.pid 10 at `t` ns: a cumulative counter (series `a` restarted at
/// `restart_a`), a delta sum, a gauge and a delta histogram.
fn body(t: u64, a: i64, b: i64, restart_a: bool) -> Vec<u8> {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value::Value as V, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::metrics::v1::{
        metric::Data, number_data_point::Value, Gauge, Histogram, HistogramDataPoint, Metric,
        NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use prost::Message;
    let kv = |k: &str, v: V| KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    };
    let pt = |attr: &str, start: u64, v: Value| NumberDataPoint {
        attributes: vec![kv("route", V::StringValue(attr.into()))],
        start_time_unix_nano: start,
        time_unix_nano: t,
        value: Some(v),
        ..Default::default()
    };
    let metric = |name: &str, data: Data| Metric {
        name: name.into(),
        data: Some(data),
        ..Default::default()
    };
    let start_a = if restart_a { 500 } else { 100 };
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![kv("process.pid", V::IntValue(10))],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![
                    metric(
                        "requests",
                        Data::Sum(Sum {
                            aggregation_temporality: 2,
                            is_monotonic: true,
                            data_points: vec![
                                pt("a", start_a, Value::AsInt(a)),
                                pt("b", 100, Value::AsInt(b)),
                            ],
                        }),
                    ),
                    metric(
                        "hits",
                        Data::Sum(Sum {
                            aggregation_temporality: 1,
                            is_monotonic: true,
                            data_points: vec![pt("a", t - 1, Value::AsDouble(0.5))],
                        }),
                    ),
                    metric(
                        "temp",
                        Data::Gauge(Gauge {
                            data_points: vec![pt("a", 0, Value::AsDouble(t as f64))],
                        }),
                    ),
                    metric(
                        "latency",
                        Data::Histogram(Histogram {
                            aggregation_temporality: 1,
                            data_points: vec![HistogramDataPoint {
                                start_time_unix_nano: t - 1,
                                time_unix_nano: t,
                                count: 2,
                                sum: Some(0.25),
                                ..Default::default()
                            }],
                        }),
                    ),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

#[test]
fn both_summarisers_give_the_same_totals_repeats_and_restarts_included() {
    use crate::otlp::decode::{decode, Encoding};
    use crate::otlp::metrics::{summarize_metrics, NameCache};
    let bodies = [
        body(1_000, 1, 2, false),
        body(1_000, 1, 2, false), // a repeat
        body(2_000, 3, 2, false),
        body(2_000, 3, 2, false),
        body(3_000, 1, 4, true),  // series a restarted
        body(2_000, 3, 2, false), // stale
        body(4_000, 2, 5, true),
        body(4_000, 2, 5, true),
    ];
    let (mut fast, mut slow) = (L::new(), L::new());
    let mut cache = NameCache::default();
    let mut skipped = 0;
    for b in &bodies {
        let f = summarize_metrics(b, &mut cache, Some((10, &[10]))).unwrap();
        skipped += usize::from(f[0].metrics.is_empty());
        let Ok(crate::otlp::decode::Request::Metrics(req)) =
            decode(Signal::Metrics, Encoding::Protobuf, b)
        else {
            panic!("undecodable")
        };
        let s = crate::otlp::decode::summarize_metrics(&req);
        for (l, r) in [(&mut fast, f), (&mut slow, s)] {
            let c = l.c;
            l.b.resources(c, &[proc(10, &[], 0)], Signal::Metrics, r, 1);
        }
    }
    assert_eq!(skipped, 3, "the walker skips exact repeats");
    let (f, s) = (fast.p(), slow.p());
    assert_eq!(f.sums, s.sums);
    // the repeats the walker did not pass on are counted as repeats by the other
    let strip = |p: &PidExports| {
        p.metrics
            .iter()
            .map(|(k, t)| (k.clone(), t.value, t.count, t.series, t.restarts))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(f), strip(s));
    assert_eq!(f.series_values, s.series_values);
    assert_eq!(f.identities[0].sums, s.identities[0].sums);
    // a: 3 before its restart, then 2; b: 5; hits: 4 exports of 0.5; temp: the last
    let want = [
        ("hits", 2.0),
        ("latency", 8.0),
        ("requests", 10.0),
        ("temp", 4_000.0),
    ];
    let got: Vec<(&str, f64)> = f.sums.iter().map(|(k, v)| (k.as_str(), v.0)).collect();
    assert_eq!(got, want);
    assert_eq!(f.metrics["latency"].value, Num(1.0));
}
