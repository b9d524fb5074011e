//! Metric values: the walker and the decoded message give the same points, for every kind of
//! metric and every truncation of a body; exact repeats from a sole sender are counted but not
//! passed on again.

use super::*;
use crate::otlp::decode;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope};
use opentelemetry_proto::tonic::metrics::v1::{
    exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
    summary_data_point::ValueAtQuantile, ExponentialHistogram, ExponentialHistogramDataPoint,
    Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    Sum, Summary, SummaryDataPoint,
};

fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn route(r: &str) -> Vec<KeyValue> {
    vec![kv("route", any_value::Value::StringValue(r.into()))]
}

fn num(
    attrs: Vec<KeyValue>,
    start: u64,
    time: u64,
    v: number_data_point::Value,
) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs,
        start_time_unix_nano: start,
        time_unix_nano: time,
        value: Some(v),
        ..Default::default()
    }
}

fn metric(name: &str, data: Data) -> Metric {
    Metric {
        name: name.into(),
        unit: "1".into(),
        description: "d".into(),
        data: Some(data),
        ..Default::default()
    }
}

/// Every kind of metric, at time `t` (ns), under resource process.pid = `pid`.
pub(super) fn every_kind(pid: i64, t: u64) -> ExportMetricsServiceRequest {
    use number_data_point::Value::{AsDouble, AsInt};
    let start = 1_000;
    let metrics = vec![
        metric(
            "requests",
            Data::Sum(Sum {
                aggregation_temporality: 2,
                is_monotonic: true,
                data_points: vec![
                    num(route("/"), start, t, AsInt(30)),
                    num(route("/health"), start, t, AsInt(4)),
                ],
            }),
        ),
        metric(
            "inflight",
            Data::Sum(Sum {
                aggregation_temporality: 1,
                is_monotonic: false,
                data_points: vec![num(vec![], t - 10, t, AsDouble(-1.5))],
            }),
        ),
        metric(
            "temperature",
            Data::Gauge(Gauge {
                data_points: vec![
                    num(route("a"), 0, t, AsDouble(21.25)),
                    num(route("b"), 0, t, AsInt(-3)),
                ],
            }),
        ),
        metric(
            "latency",
            Data::Histogram(Histogram {
                aggregation_temporality: 1,
                data_points: vec![HistogramDataPoint {
                    attributes: route("/"),
                    start_time_unix_nano: t - 10,
                    time_unix_nano: t,
                    count: 7,
                    sum: Some(0.75),
                    bucket_counts: vec![3, 4],
                    explicit_bounds: vec![0.1],
                    min: Some(0.01),
                    max: Some(0.3),
                    ..Default::default()
                }],
            }),
        ),
        metric(
            "sizes",
            Data::Histogram(Histogram {
                aggregation_temporality: 2,
                data_points: vec![HistogramDataPoint {
                    start_time_unix_nano: start,
                    time_unix_nano: t,
                    count: 9,
                    sum: None,
                    bucket_counts: vec![9],
                    ..Default::default()
                }],
            }),
        ),
        metric(
            "exp",
            Data::ExponentialHistogram(ExponentialHistogram {
                aggregation_temporality: 2,
                data_points: vec![ExponentialHistogramDataPoint {
                    attributes: route("/"),
                    start_time_unix_nano: start,
                    time_unix_nano: t,
                    count: 5,
                    sum: Some(12.5),
                    scale: -2,
                    zero_count: 1,
                    positive: Some(Buckets {
                        offset: 1,
                        bucket_counts: vec![1, 3],
                    }),
                    ..Default::default()
                }],
            }),
        ),
        metric(
            "rpc",
            Data::Summary(Summary {
                data_points: vec![SummaryDataPoint {
                    start_time_unix_nano: start,
                    time_unix_nano: t,
                    count: 11,
                    sum: 2.5,
                    quantile_values: vec![ValueAtQuantile {
                        quantile: 0.5,
                        value: 0.2,
                    }],
                    ..Default::default()
                }],
            }),
        ),
        metric(
            "empty",
            Data::Gauge(Gauge {
                data_points: vec![],
            }),
        ),
        Metric {
            name: "no-data".into(),
            ..Default::default()
        },
    ];
    let resource = |p: i64| {
        Some(Resource {
            attributes: vec![
                kv("service.name", any_value::Value::StringValue("svc".into())),
                kv("process.pid", any_value::Value::IntValue(p)),
            ],
            ..Default::default()
        })
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![
            ResourceMetrics {
                resource: resource(pid),
                scope_metrics: vec![
                    ScopeMetrics {
                        scope: Some(InstrumentationScope {
                            name: "app".into(),
                            ..Default::default()
                        }),
                        metrics,
                        ..Default::default()
                    },
                    ScopeMetrics {
                        scope: Some(InstrumentationScope {
                            name: "other".into(),
                            ..Default::default()
                        }),
                        metrics: vec![metric(
                            "requests",
                            Data::Sum(Sum {
                                aggregation_temporality: 2,
                                is_monotonic: true,
                                data_points: vec![num(route("/"), start, t, AsInt(2))],
                            }),
                        )],
                        ..Default::default()
                    },
                ],
                ..Default::default()
            },
            // A second identity in the same export (the master's, say).
            ResourceMetrics {
                resource: resource(pid + 1),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![metric(
                        "requests",
                        Data::Sum(Sum {
                            aggregation_temporality: 2,
                            is_monotonic: true,
                            data_points: vec![num(route("prefork"), 500, t, AsInt(1))],
                        }),
                    )],
                    ..Default::default()
                }],
                ..Default::default()
            },
        ],
    }
}

fn find<'a>(r: &'a ResourceSummary, name: &str) -> Vec<&'a MetricPoints> {
    r.metrics.iter().filter(|m| &*m.name == name).collect()
}

#[test]
fn every_kind_has_the_same_values_on_both_paths() {
    let m = every_kind(42, 5_000);
    let want = decode::summarize_metrics(&m);
    let got = summarize_metrics(&m.encode_to_vec(), &mut NameCache::default(), None).unwrap();
    assert_eq!(got, want);
    let r = &got[0];
    assert_eq!(r.items, 2 + 1 + 2 + 1 + 1 + 1 + 1 + 1);
    let req = find(r, "requests");
    assert_eq!(req.len(), 2, "one per scope");
    assert_eq!(
        (req[0].kind, req[0].temporality, req[0].monotonic),
        (MetricKind::Sum, Temporality::Cumulative, true)
    );
    let v: Vec<(&str, f64)> = req[0].iter().map(|(_, n, p)| (&**n, p.value.0)).collect();
    assert_eq!(
        v,
        [
            ("requests{route=/}", 30.0),
            ("requests{route=/health}", 4.0)
        ]
    );
    assert_ne!(req[0].series.keys[0], req[1].series.keys[0], "scopes apart");
    let inflight = find(r, "inflight")[0];
    assert_eq!(
        (inflight.temporality, inflight.monotonic),
        (Temporality::Delta, false)
    );
    assert_eq!(inflight.points[0].value, Num(-1.5));
    let g = find(r, "temperature")[0];
    assert_eq!(g.kind, MetricKind::Gauge);
    assert_eq!(
        g.points.iter().map(|p| p.value.0).collect::<Vec<_>>(),
        [21.25, -3.0]
    );
    let lat = find(r, "latency")[0];
    assert_eq!(
        (lat.kind, lat.temporality),
        (MetricKind::Histogram, Temporality::Delta)
    );
    assert_eq!((lat.points[0].count, lat.points[0].value), (7, Num(0.75)));
    assert_eq!(find(r, "sizes")[0].points[0].value, Num(0.0), "no sum sent");
    let exp = find(r, "exp")[0];
    assert_eq!(exp.kind, MetricKind::ExponentialHistogram);
    assert_eq!((exp.points[0].count, exp.points[0].value), (5, Num(12.5)));
    let rpc = find(r, "rpc")[0];
    assert_eq!(
        (rpc.kind, rpc.temporality, rpc.points[0].count),
        (MetricKind::Summary, Temporality::Cumulative, 11)
    );
    assert!(find(r, "empty").is_empty() && find(r, "no-data").is_empty());
    assert_eq!(got[1].identity.process_pid, Some(43));
    assert_eq!(
        &*got[1].metrics[0].series.names[0],
        "requests{route=prefork}"
    );
}

#[test]
fn every_truncation_refuses_or_agrees_with_prost() {
    let b = every_kind(42, 5_000).encode_to_vec();
    let mut warm = NameCache::default();
    summarize_metrics(&b, &mut warm, Some((42, &[]))).unwrap();
    let mut agreed = 0;
    for cut in 0..=b.len() {
        let body = &b[..cut];
        let prost = ExportMetricsServiceRequest::decode(body);
        let cold = summarize_metrics(body, &mut NameCache::default(), None);
        let hot = summarize_metrics(body, &mut warm.clone(), Some((42, &[])));
        assert_eq!(cold.is_ok(), prost.is_ok(), "cut at {cut}: {cold:?}");
        assert_eq!(hot.is_ok(), prost.is_ok(), "cut at {cut} (warm cache)");
        if let Ok(p) = prost {
            assert_eq!(cold.unwrap(), decode::summarize_metrics(&p), "cut at {cut}");
            agreed += 1;
        }
    }
    // the empty body and the cut between the two resource blocks decode
    assert!(agreed >= 2, "{agreed}");
}

#[test]
fn exact_repeats_from_a_sole_sender_are_counted_not_passed_on() {
    let first = every_kind(42, 5_000).encode_to_vec();
    let me: SoleSender = Some((42, &[]));
    let mut c = NameCache::default();
    let a = summarize_metrics(&first, &mut c, me).unwrap();
    let n = |r: &[ResourceSummary]| -> usize {
        r.iter()
            .flat_map(|r| &r.metrics)
            .map(|m| m.points.len())
            .sum()
    };
    assert_eq!(n(&a), 11);
    // The same body again: counted, nothing passed on for the sender's own resource; the
    // second resource names pid 43, not the sender's: passed on every time.
    let again = summarize_metrics(&first, &mut c, me).unwrap();
    assert_eq!(again[0].items, a[0].items);
    assert!(again[0].metrics.is_empty(), "{:?}", again[0].metrics);
    assert_eq!(again[1].metrics, a[1].metrics);
    // The next export (a later time): every point again, no start listed again.
    let next = summarize_metrics(&every_kind(42, 6_000).encode_to_vec(), &mut c, me).unwrap();
    assert_eq!(n(&next[..1]), n(&a[..1]));
    assert!(next[0].cumulative.is_empty());
    assert!(next[0].metrics[0]
        .points
        .iter()
        .all(|p| p.time_unix_nano == 6_000));
    // Shared connection: everything, every time.
    for _ in 0..2 {
        let s = summarize_metrics(&first, &mut c, None).unwrap();
        assert_eq!(s, decode::summarize_metrics(&every_kind(42, 5_000)));
    }
}

#[test]
fn json_and_protobuf_bodies_give_the_same_values() {
    let text = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/otlp/metrics.json"
    ))
    .unwrap();
    let decode::Request::Metrics(m) = decode::decode(
        crate::otlp::signal::Signal::Metrics,
        decode::Encoding::Json,
        &text,
    )
    .unwrap() else {
        panic!("not metrics")
    };
    let json = decode::summarize_metrics(&m);
    let pb = summarize_metrics(&m.encode_to_vec(), &mut NameCache::default(), None).unwrap();
    assert_eq!(pb, json);
    let counter = find(&json[0], "my.counter")[0];
    let v: Vec<f64> = counter.points.iter().map(|p| p.value.0).collect();
    assert_eq!(v, [5.0, 12.0], "asDouble 5 and asInt \"12\"");
    let h = find(&json[0], "my.histogram")[0];
    assert_eq!((h.temporality, h.points[0].count), (Temporality::Delta, 2));
}
