//! A synthetic OTLP metrics export: one cumulative monotonic Sum with one series a point.
//! Shared by path (`#[path]`) between tests/values_cost.rs, tests/receive_http.rs,
//! tests/receive_hardening.rs, tests/receive_limits.rs, examples/bench_load and examples/soak;
//! not part of `common`'s module tree.
#![allow(dead_code)]

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

pub fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

pub fn kv_str(k: &str, v: &str) -> KeyValue {
    kv(k, any_value::Value::StringValue(v.into()))
}

pub fn kv_int(k: &str, v: i64) -> KeyValue {
    kv(k, any_value::Value::IntValue(v))
}

/// One export of Sum `metric` with `points` series (attribute `i`), each started at `start`,
/// at `time`.
pub struct SumExport<'a> {
    pub resource: Vec<KeyValue>,
    pub metric: &'a str,
    pub points: usize,
    pub start: u64,
    pub time: u64,
}

impl SumExport<'_> {
    /// The request, series `i` with value `value(i)`.
    pub fn request(self, value: impl Fn(usize) -> i64) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: self.resource,
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: self.metric.into(),
                        data: Some(metric::Data::Sum(Sum {
                            aggregation_temporality: 2,
                            is_monotonic: true,
                            data_points: (0..self.points)
                                .map(|i| NumberDataPoint {
                                    attributes: vec![kv_int("i", i as i64)],
                                    start_time_unix_nano: self.start,
                                    time_unix_nano: self.time,
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
    }
}
