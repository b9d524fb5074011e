//! Recorded request bodies (scripts/make-otlp-bodies.py), made to look sent by this process:
//! every resource's `process.pid` becomes the sender's pid, and every metric point's
//! `time_unix_nano` moves forward on each request, as consecutive exports of one SDK do (the
//! receiver must not see the same export again and again: that would be a repeat, which it
//! ignores cheaply). Both edits keep the body's size, so they are made in place.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use prost::Message;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// OTLP/HTTP protobuf
    Pb,
    /// OTLP/HTTP JSON
    Json,
    /// OTLP/gRPC
    Grpc,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "pb" => Some(Kind::Pb),
            "json" => Some(Kind::Json),
            "grpc" => Some(Kind::Grpc),
            _ => None,
        }
    }
}

/// One request's bytes and where its timestamps are.
#[derive(Clone)]
pub struct Template {
    pub bytes: Vec<u8>,
    /// Offsets of the time stamps to move (fixed64 little-endian, or 19 ASCII digits in JSON).
    times: Vec<usize>,
    json: bool,
    base: u64,
    /// Data points in one request (metrics), else items.
    pub items: u64,
}

fn set_pid(attrs: &mut [KeyValue], pid: i64) {
    for kv in attrs {
        if kv.key == "process.pid" {
            if let Some(v) = kv.value.as_mut() {
                v.value = Some(any_value::Value::IntValue(pid));
            }
        }
    }
}

/// The body as this pid sends it, in `kind`'s encoding, for `signal` ("metrics", "traces",
/// "logs"); `prefix` is put before it (the HTTP/1.1 head or the gRPC frame header: their
/// lengths must not depend on the body's content, which the edits keep).
pub fn template(kind: Kind, signal: &str, file: &[u8], pid: i64) -> Template {
    if kind == Kind::Json {
        return json_template(file, pid, signal);
    }
    macro_rules! repid {
        ($ty:ty, $field:ident, $items:expr) => {{
            let mut m = <$ty>::decode(file).expect("a protobuf body of that signal");
            if m.encode_to_vec() != file {
                eprintln!("bench_load: note: the body re-encodes differently (field order?)");
            }
            for r in &mut m.$field {
                if let Some(res) = r.resource.as_mut() {
                    set_pid(&mut res.attributes, pid);
                }
            }
            let items: u64 = $items(&m);
            (m.encode_to_vec(), items)
        }};
    }
    let (bytes, items) = match signal {
        "metrics" => repid!(ExportMetricsServiceRequest, resource_metrics, metric_points),
        "traces" => repid!(
            ExportTraceServiceRequest,
            resource_spans,
            |m: &ExportTraceServiceRequest| m
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len() as u64)
                .sum::<u64>()
        ),
        _ => repid!(
            ExportLogsServiceRequest,
            resource_logs,
            |m: &ExportLogsServiceRequest| m
                .resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .map(|s| s.log_records.len() as u64)
                .sum::<u64>()
        ),
    };
    let mut t = Template {
        times: Vec::new(),
        json: false,
        base: 0,
        items,
        bytes,
    };
    if signal == "metrics" {
        let m = ExportMetricsServiceRequest::decode(&t.bytes[..]).expect("decoded once");
        t.base = max_time(&m);
        // time_unix_nano is field 3, fixed64, in every kind of point: key byte 0x19.
        let mut needle = vec![0x19u8];
        needle.extend_from_slice(&t.base.to_le_bytes());
        t.times = find_all(&t.bytes, &needle).map(|i| i + 1).collect();
    }
    t
}

fn metric_points(m: &ExportMetricsServiceRequest) -> u64 {
    let mut n = 0;
    for_points(m, |_| n += 1);
    n
}

fn max_time(m: &ExportMetricsServiceRequest) -> u64 {
    let mut t = 0;
    for_points(m, |x| t = t.max(x));
    t
}

/// Calls `f` with every data point's time_unix_nano.
fn for_points(m: &ExportMetricsServiceRequest, mut f: impl FnMut(u64)) {
    for sm in m.resource_metrics.iter().flat_map(|r| &r.scope_metrics) {
        for metric in &sm.metrics {
            match &metric.data {
                Some(Data::Gauge(g)) => g.data_points.iter().for_each(|p| f(p.time_unix_nano)),
                Some(Data::Sum(s)) => s.data_points.iter().for_each(|p| f(p.time_unix_nano)),
                Some(Data::Histogram(h)) => h.data_points.iter().for_each(|p| f(p.time_unix_nano)),
                Some(Data::ExponentialHistogram(h)) => {
                    h.data_points.iter().for_each(|p| f(p.time_unix_nano))
                }
                Some(Data::Summary(s)) => s.data_points.iter().for_each(|p| f(p.time_unix_nano)),
                None => {}
            }
        }
    }
}

fn find_all<'a>(hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    hay.windows(needle.len())
        .enumerate()
        .filter(move |(_, w)| *w == needle)
        .map(|(i, _)| i)
}

/// JSON as make-otlp-bodies.py writes it (compact): `"process.pid"`'s intValue becomes the
/// pid, `"timeUnixNano":"<19 digits>"` of metric points are moved.
fn json_template(file: &[u8], pid: i64, signal: &str) -> Template {
    let mut bytes = file.to_vec();
    let key = br#""key":"process.pid","value":{"intValue":""#;
    let at: Vec<usize> = find_all(&bytes, key).map(|i| i + key.len()).collect();
    // From the last, so that the offsets before stay right.
    for i in at.into_iter().rev() {
        let end = i + bytes[i..]
            .iter()
            .position(|b| *b == b'"')
            .expect("closing quote");
        bytes.splice(i..end, pid.to_string().into_bytes());
    }
    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("a JSON body");
    let items = count_json(&v, signal);
    let mut t = Template {
        bytes,
        times: Vec::new(),
        json: true,
        base: 0,
        items,
    };
    if signal == "metrics" {
        let key = br#""timeUnixNano":""#;
        let starts: Vec<usize> = find_all(&t.bytes, key).map(|i| i + key.len()).collect();
        let digits = |i: usize| -> Option<u64> {
            let s = std::str::from_utf8(t.bytes.get(i..i + 19)?).ok()?;
            (t.bytes.get(i + 19) == Some(&b'"')).then(|| s.parse().ok())?
        };
        t.base = starts.iter().filter_map(|i| digits(*i)).max().unwrap_or(0);
        t.times = starts
            .into_iter()
            .filter(|i| digits(*i) == Some(t.base))
            .collect();
    }
    t
}

fn count_json(v: &serde_json::Value, signal: &str) -> u64 {
    let arr = |v: &serde_json::Value, k: &str| -> Vec<serde_json::Value> {
        v.get(k)
            .and_then(|x| x.as_array())
            .cloned()
            .unwrap_or_default()
    };
    let (outer, inner, leaf) = match signal {
        "metrics" => ("resourceMetrics", "scopeMetrics", "metrics"),
        "traces" => ("resourceSpans", "scopeSpans", "spans"),
        _ => ("resourceLogs", "scopeLogs", "logRecords"),
    };
    let mut n = 0;
    for r in arr(v, outer) {
        for s in arr(&r, inner) {
            for x in arr(&s, leaf) {
                if signal != "metrics" {
                    n += 1;
                    continue;
                }
                for kind in [
                    "gauge",
                    "sum",
                    "histogram",
                    "exponentialHistogram",
                    "summary",
                ] {
                    if let Some(d) = x.get(kind) {
                        n += arr(d, "dataPoints").len() as u64;
                    }
                }
            }
        }
    }
    n
}

impl Template {
    /// Puts `prefix` before the body (offsets follow).
    pub fn prefixed(mut self, prefix: &[u8]) -> Template {
        let mut b = prefix.to_vec();
        b.extend_from_slice(&self.bytes);
        self.bytes = b;
        self.times.iter_mut().for_each(|o| *o += prefix.len());
        self
    }

    /// Time stamps of the `n`-th export: `n` microseconds after the recorded one.
    pub fn stamp(&self, buf: &mut [u8], n: u64) {
        let t = self.base + n * 1000;
        if self.json {
            let s = format!("{t:019}");
            for &o in &self.times {
                buf[o..o + 19].copy_from_slice(s.as_bytes());
            }
        } else {
            for &o in &self.times {
                buf[o..o + 8].copy_from_slice(&t.to_le_bytes());
            }
        }
    }

    /// How many time stamps move (a check that the body was understood).
    pub fn stamps(&self) -> usize {
        self.times.len()
    }
}
