//! A synthetic OTLP/HTTP protobuf metrics export: one cumulative monotonic Sum
//! `bench.requests` with one series a point. Shared by path (`#[path]`) between
//! tests/values_cost.rs and examples/bench_load, not part of `common`'s module tree.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

/// The export of service `bench` as `process.pid` `pid`: `points` series (attribute `i`),
/// each started at `start`, at `time`, with value `value(i)`.
pub fn sum_body(
    pid: i64,
    points: usize,
    start: u64,
    time: u64,
    value: impl Fn(usize) -> i64,
) -> Vec<u8> {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    kv(
                        "service.name",
                        any_value::Value::StringValue("bench".into()),
                    ),
                    kv("process.pid", any_value::Value::IntValue(pid)),
                ],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "bench.requests".into(),
                    data: Some(metric::Data::Sum(Sum {
                        aggregation_temporality: 2,
                        is_monotonic: true,
                        data_points: (0..points)
                            .map(|i| NumberDataPoint {
                                attributes: vec![kv("i", any_value::Value::IntValue(i as i64))],
                                start_time_unix_nano: start,
                                time_unix_nano: time,
                                value: Some(number_data_point::Value::AsInt(value(i))),
                                ..Default::default()
                            })
                            .collect(),
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}
