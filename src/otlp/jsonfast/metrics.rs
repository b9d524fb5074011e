//! OTLP JSON metrics read straight into summaries: typed structs borrowing from the body, every
//! field of every message declared (so each is checked as the reference checks it), the
//! `oneof`s as plain optional fields. Several members of one `oneof` set send the body to the
//! reference (which picks one by key order).

use std::sync::Arc;

use serde::Deserialize;

use opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets;
use opentelemetry_proto::tonic::metrics::v1::summary_data_point::ValueAtQuantile;
use opentelemetry_proto::tonic::metrics::v1::Exemplar;

use super::attrs::{hash_attrs, identity, series_name, CowStr, Kv};
use super::common::{nul, Each, Ref, Resource, Rest, Scope, Seq, Str, I64, U64};
use crate::otlp::hash::Fx;
use crate::otlp::identity::ResourceSummary;
use crate::otlp::values::{MetricKind, MetricPoints, Num, PointValue, SeriesList, Temporality};

#[derive(Default, Deserialize)]
#[serde(default)]
pub struct Request<'a> {
    #[serde(rename = "resourceMetrics", borrow, deserialize_with = "nul")]
    resource_metrics: Vec<ResourceMetrics<'a>>,
    #[serde(flatten)]
    _rest: Rest,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct ResourceMetrics<'a> {
    #[serde(borrow)]
    resource: Option<Resource<'a>>,
    #[serde(rename = "scopeMetrics", borrow, deserialize_with = "nul")]
    scope_metrics: Vec<ScopeMetrics<'a>>,
    #[serde(rename = "schemaUrl", deserialize_with = "nul")]
    _schema_url: Str,
    #[serde(flatten)]
    _rest: Rest,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct ScopeMetrics<'a> {
    #[serde(borrow)]
    scope: Option<Scope<'a>>,
    #[serde(borrow, deserialize_with = "nul")]
    metrics: Vec<Metric<'a>>,
    #[serde(rename = "schemaUrl", deserialize_with = "nul")]
    _schema_url: Str,
    #[serde(flatten)]
    _rest: Rest,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct Metric<'a> {
    #[serde(borrow, deserialize_with = "nul")]
    name: CowStr<'a>,
    #[serde(rename = "description", deserialize_with = "nul")]
    _description: Str,
    #[serde(rename = "unit", deserialize_with = "nul")]
    _unit: Str,
    #[serde(rename = "metadata", borrow, deserialize_with = "nul")]
    _metadata: Vec<Kv<'a>>,
    #[serde(borrow)]
    gauge: Option<Points<NumberPoint<'a>>>,
    #[serde(borrow)]
    sum: Option<Points<NumberPoint<'a>>>,
    #[serde(borrow)]
    histogram: Option<Points<HistogramPoint<'a>>>,
    #[serde(rename = "exponentialHistogram", borrow)]
    exponential_histogram: Option<Points<ExpPoint<'a>>>,
    #[serde(borrow)]
    summary: Option<Points<SummaryPoint<'a>>>,
    #[serde(flatten)]
    _rest: Rest,
}

/// Gauge, Sum, Histogram, ExponentialHistogram and Summary: the points and (for some) the
/// temporality and monotonicity. Which fields each kind has is checked in [`Metric::data`].
#[derive(Default, Deserialize)]
#[serde(default, bound(deserialize = "P: Deserialize<'de> + Default"))]
struct Points<P> {
    #[serde(rename = "dataPoints", deserialize_with = "nul")]
    data_points: Vec<P>,
    #[serde(rename = "aggregationTemporality", deserialize_with = "nul")]
    temporality: Option<i32>,
    #[serde(rename = "isMonotonic", deserialize_with = "nul")]
    monotonic: Option<bool>,
    #[serde(flatten)]
    _rest: Rest,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct NumberPoint<'a> {
    #[serde(borrow, deserialize_with = "nul")]
    attributes: Vec<Kv<'a>>,
    #[serde(rename = "startTimeUnixNano", deserialize_with = "nul")]
    start: U64,
    #[serde(rename = "timeUnixNano", deserialize_with = "nul")]
    time: U64,
    #[serde(rename = "exemplars", deserialize_with = "nul")]
    _exemplars: Each<Exemplar>,
    #[serde(rename = "flags", deserialize_with = "nul")]
    _flags: u32,
    #[serde(rename = "asDouble")]
    as_double: Option<f64>,
    #[serde(rename = "asInt")]
    as_int: Option<I64>,
    #[serde(flatten)]
    _rest: Rest,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct HistogramPoint<'a> {
    #[serde(borrow, deserialize_with = "nul")]
    attributes: Vec<Kv<'a>>,
    #[serde(rename = "startTimeUnixNano", deserialize_with = "nul")]
    start: U64,
    #[serde(rename = "timeUnixNano", deserialize_with = "nul")]
    time: U64,
    #[serde(deserialize_with = "nul")]
    count: U64,
    sum: Option<f64>,
    #[serde(rename = "bucketCounts", deserialize_with = "nul")]
    _bucket_counts: Seq<U64>,
    #[serde(rename = "explicitBounds", deserialize_with = "nul")]
    _explicit_bounds: Seq<f64>,
    #[serde(rename = "exemplars", deserialize_with = "nul")]
    _exemplars: Each<Exemplar>,
    #[serde(rename = "flags", deserialize_with = "nul")]
    _flags: u32,
    #[serde(rename = "min")]
    _min: Option<f64>,
    #[serde(rename = "max")]
    _max: Option<f64>,
    #[serde(flatten)]
    _rest: Rest,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct ExpPoint<'a> {
    #[serde(borrow, deserialize_with = "nul")]
    attributes: Vec<Kv<'a>>,
    #[serde(rename = "startTimeUnixNano", deserialize_with = "nul")]
    start: U64,
    #[serde(rename = "timeUnixNano", deserialize_with = "nul")]
    time: U64,
    #[serde(deserialize_with = "nul")]
    count: U64,
    sum: Option<f64>,
    #[serde(rename = "scale", deserialize_with = "nul")]
    _scale: i32,
    #[serde(rename = "zeroCount", deserialize_with = "nul")]
    _zero_count: U64,
    #[serde(rename = "positive")]
    _positive: Option<Ref<Buckets>>,
    #[serde(rename = "negative")]
    _negative: Option<Ref<Buckets>>,
    #[serde(rename = "flags", deserialize_with = "nul")]
    _flags: u32,
    #[serde(rename = "exemplars", deserialize_with = "nul")]
    _exemplars: Each<Exemplar>,
    #[serde(rename = "min")]
    _min: Option<f64>,
    #[serde(rename = "max")]
    _max: Option<f64>,
    #[serde(rename = "zeroThreshold", deserialize_with = "nul")]
    _zero_threshold: f64,
    #[serde(flatten)]
    _rest: Rest,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct SummaryPoint<'a> {
    #[serde(borrow, deserialize_with = "nul")]
    attributes: Vec<Kv<'a>>,
    #[serde(rename = "startTimeUnixNano", deserialize_with = "nul")]
    start: U64,
    #[serde(rename = "timeUnixNano", deserialize_with = "nul")]
    time: U64,
    #[serde(deserialize_with = "nul")]
    count: U64,
    #[serde(deserialize_with = "nul")]
    sum: f64,
    #[serde(rename = "quantileValues", deserialize_with = "nul")]
    _quantile_values: Each<ValueAtQuantile>,
    #[serde(rename = "flags", deserialize_with = "nul")]
    _flags: u32,
    #[serde(flatten)]
    _rest: Rest,
}

/// One data point as the summary needs it: attributes, start, time, value, count; None when
/// the reference must decide (a number point with both `asDouble` and `asInt`).
trait Point {
    fn get(&self) -> Option<(&[Kv<'_>], u64, u64, f64, u64)>;
}

impl Point for NumberPoint<'_> {
    fn get(&self) -> Option<(&[Kv<'_>], u64, u64, f64, u64)> {
        let value = match (self.as_double, self.as_int) {
            (Some(_), Some(_)) => return None,
            (Some(d), None) => d,
            (None, Some(i)) => i.0 as f64,
            (None, None) => 0.0,
        };
        Some((&self.attributes, self.start.0, self.time.0, value, 0))
    }
}

impl Point for HistogramPoint<'_> {
    fn get(&self) -> Option<(&[Kv<'_>], u64, u64, f64, u64)> {
        let sum = self.sum.unwrap_or(0.0);
        Some((
            &self.attributes,
            self.start.0,
            self.time.0,
            sum,
            self.count.0,
        ))
    }
}

impl Point for ExpPoint<'_> {
    fn get(&self) -> Option<(&[Kv<'_>], u64, u64, f64, u64)> {
        let sum = self.sum.unwrap_or(0.0);
        Some((
            &self.attributes,
            self.start.0,
            self.time.0,
            sum,
            self.count.0,
        ))
    }
}

impl Point for SummaryPoint<'_> {
    fn get(&self) -> Option<(&[Kv<'_>], u64, u64, f64, u64)> {
        Some((
            &self.attributes,
            self.start.0,
            self.time.0,
            self.sum,
            self.count.0,
        ))
    }
}

/// What one metric adds to its resource's summary.
struct Target<'s> {
    summary: &'s mut ResourceSummary,
    base: Fx,
    buf: &'s mut Vec<u8>,
}

impl Target<'_> {
    /// Adds the metric's points as `decode::summarize_metrics` does; None sends the body to
    /// the reference.
    fn add<P: Point>(
        &mut self,
        name: &str,
        kind: MetricKind,
        temporality: Temporality,
        monotonic: bool,
        pts: &[P],
    ) -> Option<()> {
        let s = &mut *self.summary;
        s.items += pts.len() as u64;
        if pts.is_empty() {
            return Some(());
        }
        let mbase = self.base.bytes(name.as_bytes());
        let (mut keys, mut names) = (Vec::with_capacity(pts.len()), Vec::with_capacity(pts.len()));
        let mut points = Vec::with_capacity(pts.len());
        for p in pts {
            let (attrs, start, time, value, count) = p.get()?;
            let series: Arc<str> = series_name(name, attrs).into();
            let key = hash_attrs(attrs, mbase, self.buf).finish();
            keys.push(key);
            names.push(series);
            points.push(PointValue {
                start_time_unix_nano: start,
                time_unix_nano: time,
                value: Num(value),
                count,
            });
        }
        s.metrics.push(MetricPoints {
            name: name.into(),
            kind,
            temporality,
            monotonic,
            series: SeriesList::new(keys, names).into(),
            points,
        });
        Some(())
    }
}

impl Request<'_> {
    /// The summaries `decode::summarize_metrics` gives for the same body; None when the body
    /// needs the reference path.
    pub fn summarize(&self) -> Option<Vec<ResourceSummary>> {
        let mut out = Vec::with_capacity(self.resource_metrics.len());
        let mut buf = Vec::new();
        for rm in &self.resource_metrics {
            let rhash = match &rm.resource {
                Some(r) => hash_attrs(&r.attributes, Fx::new(), &mut buf).finish(),
                None => Fx::new().finish(),
            };
            let mut s = ResourceSummary {
                identity: identity(rm.resource.as_ref()),
                ..Default::default()
            };
            for sm in &rm.scope_metrics {
                let scope = sm.scope.as_ref().map(|s| &*s.name.0).unwrap_or("");
                let base = Fx::new().word(rhash).bytes(scope.as_bytes());
                let mut t = Target {
                    summary: &mut s,
                    base,
                    buf: &mut buf,
                };
                for m in &sm.metrics {
                    let name = &*m.name.0;
                    let set = [
                        m.gauge.is_some(),
                        m.sum.is_some(),
                        m.histogram.is_some(),
                        m.exponential_histogram.is_some(),
                        m.summary.is_some(),
                    ];
                    if set.iter().filter(|x| **x).count() > 1 {
                        return None;
                    }
                    let t_of = |t: Option<i32>| Temporality::from_i32(t.unwrap_or(0));
                    if let Some(g) = &m.gauge {
                        let (kind, tp) = (MetricKind::Gauge, Temporality::Unspecified);
                        t.add(name, kind, tp, false, &g.data_points)?;
                    } else if let Some(p) = &m.sum {
                        let (tp, mono) = (t_of(p.temporality), p.monotonic.unwrap_or(false));
                        t.add(name, MetricKind::Sum, tp, mono, &p.data_points)?;
                    } else if let Some(p) = &m.histogram {
                        let tp = t_of(p.temporality);
                        t.add(name, MetricKind::Histogram, tp, false, &p.data_points)?;
                    } else if let Some(p) = &m.exponential_histogram {
                        let (kind, tp) = (MetricKind::ExponentialHistogram, t_of(p.temporality));
                        t.add(name, kind, tp, false, &p.data_points)?;
                    } else if let Some(p) = &m.summary {
                        let (kind, tp) = (MetricKind::Summary, Temporality::Cumulative);
                        t.add(name, kind, tp, false, &p.data_points)?;
                    }
                }
            }
            s.list_cumulative();
            out.push(s);
        }
        Some(out)
    }
}
