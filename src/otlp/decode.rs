//! Bodies to OTLP messages (protobuf, OTLP JSON, gzip) and messages to ledger summaries.
//!
//! Everything here is pure and bounded: gzip is inflated only up to a cap (gzip bombs), and a
//! body that does not decode is an error value, never a panic.

use std::io::Read;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, NumberDataPoint};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use super::hash::Fx;
use super::identity::{Identity, ResourceSummary, SeriesStart};
use super::signal::Signal;
use super::values::{MetricKind, MetricPoints, Num, PointValue, SeriesList, Temporality};

/// How a body is encoded (from `Content-Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    /// From a Content-Type header value; None for anything OTLP/HTTP does not define.
    pub fn from_content_type(ct: &str) -> Option<Encoding> {
        let mime = ct.split(';').next().unwrap_or("").trim();
        if mime.eq_ignore_ascii_case("application/x-protobuf")
            || mime.eq_ignore_ascii_case("application/protobuf")
        {
            Some(Encoding::Protobuf)
        } else if mime.eq_ignore_ascii_case("application/json") {
            Some(Encoding::Json)
        } else {
            None
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// Why a body could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Over the decompressed size cap.
    TooLarge(usize),
    /// Not valid gzip.
    BadGzip(String),
    /// Not a valid message of the signal in this encoding.
    Undecodable(String),
    /// Content-Encoding other than gzip/identity.
    UnsupportedEncoding(String),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge(cap) => {
                write!(f, "decompressed body larger than {cap} bytes")
            }
            BodyError::BadGzip(e) => write!(f, "invalid gzip body: {e}"),
            BodyError::Undecodable(e) => write!(f, "undecodable body: {e}"),
            BodyError::UnsupportedEncoding(e) => write!(f, "unsupported Content-Encoding {e:?}"),
        }
    }
}

/// Inflates a gzip body, refusing to produce more than `cap` bytes.
pub fn gunzip(body: &[u8], cap: usize) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(cap));
    let mut dec = flate2::read::MultiGzDecoder::new(body).take(cap as u64 + 1);
    dec.read_to_end(&mut out)
        .map_err(|e| BodyError::BadGzip(e.to_string()))?;
    if out.len() > cap {
        return Err(BodyError::TooLarge(cap));
    }
    Ok(out)
}

/// A decoded export request of any signal.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Metrics(ExportMetricsServiceRequest),
    Traces(ExportTraceServiceRequest),
    Logs(ExportLogsServiceRequest),
}

impl Request {
    pub fn signal(&self) -> Signal {
        match self {
            Request::Metrics(_) => Signal::Metrics,
            Request::Traces(_) => Signal::Traces,
            Request::Logs(_) => Signal::Logs,
        }
    }

    /// The message as protobuf (for forwarding requests that came in over gRPC).
    pub fn encode_protobuf(&self) -> Vec<u8> {
        match self {
            Request::Metrics(m) => m.encode_to_vec(),
            Request::Traces(m) => m.encode_to_vec(),
            Request::Logs(m) => m.encode_to_vec(),
        }
    }

    pub fn summarize(&self) -> Vec<ResourceSummary> {
        match self {
            Request::Metrics(m) => summarize_metrics(m),
            Request::Traces(m) => summarize_traces(m),
            Request::Logs(m) => summarize_logs(m),
        }
    }
}

/// Decodes an (already inflated) body of `signal` in `enc`.
pub fn decode(signal: Signal, enc: Encoding, body: &[u8]) -> Result<Request, BodyError> {
    let bad = |e: String| BodyError::Undecodable(e);
    match enc {
        Encoding::Protobuf => match signal {
            Signal::Metrics => ExportMetricsServiceRequest::decode(body)
                .map(Request::Metrics)
                .map_err(|e| bad(e.to_string())),
            Signal::Traces => ExportTraceServiceRequest::decode(body)
                .map(Request::Traces)
                .map_err(|e| bad(e.to_string())),
            Signal::Logs => ExportLogsServiceRequest::decode(body)
                .map(Request::Logs)
                .map_err(|e| bad(e.to_string())),
        },
        Encoding::Json => {
            let value: serde_json::Value =
                serde_json::from_slice(body).map_err(|e| bad(format!("JSON: {e}")))?;
            if !value.is_object() {
                return Err(bad("JSON: the body is not an object".into()));
            }
            let value = super::json::normalize(value);
            match signal {
                Signal::Metrics => serde_json::from_value(value)
                    .map(Request::Metrics)
                    .map_err(|e| bad(format!("OTLP JSON: {e}"))),
                Signal::Traces => serde_json::from_value(value)
                    .map(Request::Traces)
                    .map_err(|e| bad(format!("OTLP JSON: {e}"))),
                Signal::Logs => serde_json::from_value(value)
                    .map(Request::Logs)
                    .map_err(|e| bad(format!("OTLP JSON: {e}"))),
            }
        }
    }
}

fn int_of(v: &AnyValue) -> Option<i64> {
    match v.value.as_ref()? {
        any_value::Value::IntValue(i) => Some(*i),
        any_value::Value::StringValue(s) => s.trim().parse().ok(),
        any_value::Value::DoubleValue(d) if d.fract() == 0.0 => Some(*d as i64),
        _ => None,
    }
}

fn str_of(v: &AnyValue) -> Option<String> {
    match v.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        _ => None,
    }
}

/// The identity attributes of a resource.
pub fn identity(resource: Option<&Resource>) -> Identity {
    let mut id = Identity::default();
    let Some(r) = resource else {
        return id;
    };
    for kv in &r.attributes {
        let Some(v) = kv.value.as_ref() else {
            continue;
        };
        match kv.key.as_str() {
            "service.name" => id.service_name = str_of(v),
            "process.pid" => id.process_pid = int_of(v),
            "service.instance.id" => id.service_instance_id = str_of(v),
            "worker.pid" => id.worker_pid = int_of(v),
            _ => {}
        }
    }
    id
}

/// Mixes each attribute's protobuf encoding into `h` (what [`super::fastpb`] reads off the
/// wire, so both paths give a series the same key).
fn hash_attrs(attrs: &[KeyValue], mut h: Fx, buf: &mut Vec<u8>) -> Fx {
    for kv in attrs {
        buf.clear();
        if kv.encode(buf).is_ok() {
            h = h.bytes(buf);
        }
    }
    h
}

pub(crate) fn series_name(name: &str, attrs: &[KeyValue]) -> String {
    series_name_of(
        name,
        attrs.len(),
        attrs.iter().map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(v)) => ShownValue::Str(v),
                Some(any_value::Value::IntValue(v)) => ShownValue::Int(*v),
                Some(any_value::Value::BoolValue(v)) => ShownValue::Bool(*v),
                Some(any_value::Value::DoubleValue(v)) => ShownValue::Double(*v),
                _ => ShownValue::Other,
            };
            (kv.key.as_str(), v)
        }),
    )
}

/// An attribute value as a series name shows it.
pub(crate) enum ShownValue<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
    Double(f64),
    Other,
}

/// `name{k=v,...}` with the first 4 of `len` attributes: the one way both the protobuf and the
/// JSON readers name a series.
pub(crate) fn series_name_of<'a>(
    name: &str,
    len: usize,
    attrs: impl Iterator<Item = (&'a str, ShownValue<'a>)>,
) -> String {
    if len == 0 {
        return name.to_string();
    }
    let mut s = String::with_capacity(name.len() + 16);
    s.push_str(name);
    s.push('{');
    for (i, (key, value)) in attrs.take(4).enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(key);
        s.push('=');
        match value {
            ShownValue::Str(v) => s.push_str(v),
            ShownValue::Int(v) => s.push_str(&v.to_string()),
            ShownValue::Bool(v) => s.push_str(&v.to_string()),
            ShownValue::Double(v) => s.push_str(&v.to_string()),
            ShownValue::Other => s.push('?'),
        }
    }
    if len > 4 {
        s.push_str(",...");
    }
    s.push('}');
    s
}

/// One data point as the summaries need it: attributes, start, time, value, count.
struct Pt<'a> {
    attrs: &'a [KeyValue],
    start: u64,
    time: u64,
    value: f64,
    count: u64,
}

/// A metric's kind, temporality, monotonicity and points.
fn points<'a>(data: &'a Data) -> (MetricKind, Temporality, bool, Vec<Pt<'a>>) {
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
    let number = |dp: &'a NumberDataPoint| Pt {
        attrs: &dp.attributes,
        start: dp.start_time_unix_nano,
        time: dp.time_unix_nano,
        value: match dp.value {
            Some(Value::AsDouble(d)) => d,
            Some(Value::AsInt(i)) => i as f64,
            None => 0.0,
        },
        count: 0,
    };
    match data {
        Data::Gauge(g) => (
            MetricKind::Gauge,
            Temporality::Unspecified,
            false,
            g.data_points.iter().map(number).collect(),
        ),
        Data::Sum(s) => (
            MetricKind::Sum,
            Temporality::from_i32(s.aggregation_temporality),
            s.is_monotonic,
            s.data_points.iter().map(number).collect(),
        ),
        Data::Histogram(h) => (
            MetricKind::Histogram,
            Temporality::from_i32(h.aggregation_temporality),
            false,
            h.data_points
                .iter()
                .map(|dp| Pt {
                    attrs: &dp.attributes,
                    start: dp.start_time_unix_nano,
                    time: dp.time_unix_nano,
                    value: dp.sum.unwrap_or(0.0),
                    count: dp.count,
                })
                .collect(),
        ),
        Data::ExponentialHistogram(h) => (
            MetricKind::ExponentialHistogram,
            Temporality::from_i32(h.aggregation_temporality),
            false,
            h.data_points
                .iter()
                .map(|dp| Pt {
                    attrs: &dp.attributes,
                    start: dp.start_time_unix_nano,
                    time: dp.time_unix_nano,
                    value: dp.sum.unwrap_or(0.0),
                    count: dp.count,
                })
                .collect(),
        ),
        Data::Summary(s) => (
            MetricKind::Summary,
            Temporality::Cumulative,
            false,
            s.data_points
                .iter()
                .map(|dp| Pt {
                    attrs: &dp.attributes,
                    start: dp.start_time_unix_nano,
                    time: dp.time_unix_nano,
                    value: dp.sum,
                    count: dp.count,
                })
                .collect(),
        ),
    }
}

/// Per resource: identity, data points, cumulative series with their start times, and every
/// metric's points with their values.
pub fn summarize_metrics(req: &ExportMetricsServiceRequest) -> Vec<ResourceSummary> {
    let mut out = Vec::with_capacity(req.resource_metrics.len());
    let mut buf = Vec::new();
    for rm in &req.resource_metrics {
        let identity = identity(rm.resource.as_ref());
        let rhash = match &rm.resource {
            Some(r) => hash_attrs(&r.attributes, Fx::new(), &mut buf).finish(),
            None => Fx::new().finish(),
        };
        let mut s = ResourceSummary {
            identity,
            ..Default::default()
        };
        for sm in &rm.scope_metrics {
            let scope = sm.scope.as_ref().map(|s| s.name.as_str()).unwrap_or("");
            let base = Fx::new().word(rhash).bytes(scope.as_bytes());
            for m in &sm.metrics {
                let Some(data) = &m.data else {
                    continue;
                };
                let mbase = base.bytes(m.name.as_bytes());
                let (kind, temporality, monotonic, pts) = points(data);
                s.items += pts.len() as u64;
                if pts.is_empty() {
                    continue;
                }
                // Summaries are cumulative by definition; gauges have no series start.
                let cumulative = temporality == Temporality::Cumulative;
                let (mut keys, mut names) = (Vec::new(), Vec::new());
                let mut points = Vec::with_capacity(pts.len());
                for p in pts {
                    let series: std::sync::Arc<str> = series_name(&m.name, p.attrs).into();
                    let key = hash_attrs(p.attrs, mbase, &mut buf).finish();
                    if cumulative && p.start > 0 {
                        s.cumulative.push(SeriesStart {
                            series: series.clone(),
                            start_time_unix_nano: p.start,
                            key,
                        });
                    }
                    keys.push(key);
                    names.push(series);
                    points.push(PointValue {
                        start_time_unix_nano: p.start,
                        time_unix_nano: p.time,
                        value: Num(p.value),
                        count: p.count,
                    });
                }
                let values = MetricPoints {
                    name: m.name.as_str().into(),
                    kind,
                    temporality,
                    monotonic,
                    series: SeriesList::new(keys, names).into(),
                    points,
                };
                s.metrics.push(values);
            }
        }
        out.push(s);
    }
    out
}

pub fn summarize_traces(req: &ExportTraceServiceRequest) -> Vec<ResourceSummary> {
    by_resource(req.resource_spans.iter().map(|r| {
        let spans = r.scope_spans.iter().map(|s| s.spans.len() as u64).sum();
        (r.resource.as_ref(), spans)
    }))
}

pub fn summarize_logs(req: &ExportLogsServiceRequest) -> Vec<ResourceSummary> {
    by_resource(req.resource_logs.iter().map(|r| {
        let records = r
            .scope_logs
            .iter()
            .map(|s| s.log_records.len() as u64)
            .sum();
        (r.resource.as_ref(), records)
    }))
}

/// Spans and log records: each resource block's identity and item count.
fn by_resource<'a>(
    blocks: impl Iterator<Item = (Option<&'a Resource>, u64)>,
) -> Vec<ResourceSummary> {
    blocks
        .map(|(resource, items)| ResourceSummary {
            identity: identity(resource),
            items,
            ..Default::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gunzip_caps_output() {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&vec![0u8; 1 << 20]).unwrap();
        let gz = e.finish().unwrap();
        assert_eq!(gunzip(&gz, 1 << 20).unwrap().len(), 1 << 20);
        assert_eq!(gunzip(&gz, 1000), Err(BodyError::TooLarge(1000)));
        assert!(matches!(
            gunzip(b"not gzip", 1000),
            Err(BodyError::BadGzip(_))
        ));
    }

    #[test]
    fn content_types() {
        assert_eq!(
            Encoding::from_content_type("application/x-protobuf"),
            Some(Encoding::Protobuf)
        );
        assert_eq!(
            Encoding::from_content_type("application/json; charset=utf-8"),
            Some(Encoding::Json)
        );
        assert_eq!(Encoding::from_content_type("text/plain"), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for s in Signal::ALL {
            assert!(decode(s, Encoding::Protobuf, &[0xff, 0xff, 0xff, 0x0f, 0x01]).is_err());
            assert!(decode(s, Encoding::Json, b"{\"resourceMetrics\": [").is_err());
            assert!(decode(s, Encoding::Json, b"[1,2]").is_err());
        }
    }
}

#[cfg(test)]
mod fixture_tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/fixtures/otlp/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn canonical_json_decodes() {
        let m = decode(Signal::Metrics, Encoding::Json, &fixture("metrics.json")).unwrap();
        let s = m.summarize();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].items, 5);
        assert_eq!(s[0].identity.process_pid, Some(4242));
        // the two cumulative sum points and the cumulative exponential histogram point
        assert_eq!(s[0].cumulative.len(), 3);
        let t = decode(Signal::Traces, Encoding::Json, &fixture("trace.json")).unwrap();
        let s = t.summarize();
        assert_eq!(s[0].items, 2);
        assert_eq!(s[0].identity.process_pid, Some(4242));
        let Request::Traces(tr) = &t else { panic!() };
        let span = &tr.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.trace_id.len(), 16);
        assert_eq!(span.span_id.len(), 8);
        assert_eq!(span.start_time_unix_nano, 1544712660000000000);
        assert_eq!(span.kind, 2);
        let l = decode(Signal::Logs, Encoding::Json, &fixture("logs.json")).unwrap();
        let s = l.summarize();
        assert_eq!(s[0].items, 2);
        assert_eq!(s[0].identity.worker_pid, Some(77));
    }
}
