//! OTLP/HTTP protobuf metrics summarised straight from the wire bytes.
//!
//! The ledger needs little of an export: each resource's identity, the number of data points,
//! for cumulative points a series key and start time, and every point's value (its series key
//! and name, start, time, value and count). Decoding the whole message with prost allocates
//! for every attribute of every point, which made decoding most of the receiver's cost per
//! request. This walker reads the same fields without building the message: it checks the
//! framing of everything it passes (varints, lengths, wire types of the fields it knows, UTF-8
//! of the names it reads), skips unknown fields as protobuf requires, decodes with prost only
//! the resource (once per resource block) and, on a connection's first sight of a series, that
//! point's attributes for the series name. Truncated or garbage bodies are errors, as with
//! prost.
//!
//! Each metric's points are walked once for framing, count and a fingerprint of everything the
//! ledger reads of them (series keys, starts, times, values, counts); they are walked again to
//! be passed on unless that fingerprint is the one the same sender's last export of the metric
//! had: an exact repeat, which the ledger would ignore anyway.
//!
//! Series keys are the same as [`super::decode::summarize_metrics`] computes from a decoded
//! message: a hash of the resource attributes, scope name, metric name and point attributes,
//! each attribute as its protobuf encoding.

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use super::hash::{Fx, KeyHasher};
use super::identity::{is_own_pid, Identity, ResourceSummary, SeriesStart, SoleSender};
use super::values::{MetricKind, MetricPoints, Num, PointValue, Temporality};
use super::wire::*;

/// What one connection's exports have told already: each series' name (built once) and, while
/// the connection has a single sender, the start time last passed on for it.
///
/// Exporters re-send every cumulative series with the same start time on every export; once
/// the ledger has a series' start for the connection's only sender, sending it again changes
/// nothing, so such starts are not listed again (the points' values always are, unless the
/// whole metric is an exact repeat). This holds only while one pid holds the connection and
/// the resource names no other pid: after a fork (several holders) or when the holders
/// change, every start is passed on again.
#[derive(Debug, Default, Clone)]
pub struct NameCache {
    series: HashMap<u64, (Arc<str>, u64), std::hash::BuildHasherDefault<KeyHasher>>,
    /// The sole sender the remembered starts were passed on for.
    sender: Option<i32>,
    /// Whether the resource block being read may skip unchanged starts.
    dedup: bool,
    /// The last resource read on this connection (its bytes, identity and hash): an exporter
    /// sends the same one every time.
    last_resource: Option<(Vec<u8>, Identity, u64)>,
    /// Per metric (hash of resource, scope and name): a fingerprint of its points (series keys,
    /// starts, times, values, counts), recorded (under `dedup`) when they were passed on. The
    /// same points again, from the same sender, are an exact repeat, which changes nothing in
    /// the ledger: counted, not passed on. Emptied when the sender changes or a body is
    /// refused.
    unchanged: HashMap<u64, u64, std::hash::BuildHasherDefault<KeyHasher>>,
}

/// Series remembered per connection; the cache starts over when full.
const MAX_NAMES: usize = 4096;

impl NameCache {
    /// Before a body: the connection's holders now.
    fn begin(&mut self, sender: SoleSender) {
        let sole = sender.map(|(pid, _)| pid);
        if sole != self.sender {
            self.forget_starts();
            self.sender = sole;
        }
    }

    /// Every series' start is passed on again.
    fn forget_starts(&mut self) {
        for v in self.series.values_mut() {
            v.1 = 0;
        }
        self.unchanged.clear();
    }

    /// Before a resource block: skip unchanged starts only if its process.pid (if any) is the
    /// sole sender's own.
    fn resource(&mut self, sender: SoleSender, identity: &Identity) {
        self.dedup = match (sender, identity.process_pid) {
            (Some(_), None) => true,
            (Some((pid, nspid)), Some(p)) => is_own_pid(pid, nspid, p),
            _ => false,
        };
    }

    /// The series' name (built by `make` on first sight).
    #[inline]
    fn name(
        &mut self,
        key: u64,
        make: impl FnOnce() -> Result<String, String>,
    ) -> Result<Arc<str>, String> {
        if let Some(e) = self.series.get(&key) {
            return Ok(e.0.clone());
        }
        if self.series.len() >= MAX_NAMES {
            self.series.clear();
        }
        let name: Arc<str> = make()?.into();
        self.series.insert(key, (name.clone(), 0));
        Ok(name)
    }

    /// Whether a cumulative series' start must be passed on (always, unless `dedup` and the
    /// start is the one passed on last). The series is named already.
    #[inline]
    fn start_changed(&mut self, key: u64, start: u64) -> bool {
        if !self.dedup {
            return true;
        }
        match self.series.get_mut(&key) {
            Some(e) if e.1 == start => false,
            Some(e) => {
                e.1 = start;
                true
            }
            None => true,
        }
    }
}

/// `sender`: the connection's sole holder now, if it has one (see [`NameCache`]).
pub fn summarize_metrics(
    body: &[u8],
    names: &mut NameCache,
    sender: SoleSender,
) -> R<Vec<ResourceSummary>> {
    names.begin(sender);
    let r = summarize_body(body, names, sender);
    if r.is_err() {
        // The series noted before the error were not accounted (the body is refused): pass
        // every start on again.
        names.forget_starts();
    }
    r
}

fn summarize_body(
    body: &[u8],
    names: &mut NameCache,
    sender: SoleSender,
) -> R<Vec<ResourceSummary>> {
    let mut out = Vec::new();
    let mut rd = Rd::new(body);
    while rd.more() {
        let (f, wt) = rd.key()?;
        if f == 1 {
            expect(f, wt, LEN, &"ExportMetricsServiceRequest")?;
            out.push(resource_metrics(rd.len_delimited()?, names, sender)?);
        } else {
            rd.skip(wt)?;
        }
    }
    Ok(out)
}

fn resource_metrics(b: &[u8], names: &mut NameCache, sender: SoleSender) -> R<ResourceSummary> {
    // Resource first (encoders write field 1 first, but do not rely on it).
    let mut resource: Option<&[u8]> = None;
    let mut rd = Rd::new(b);
    while rd.more() {
        let (f, wt) = rd.key()?;
        match f {
            1 => {
                expect(f, wt, LEN, &"ResourceMetrics")?;
                resource = Some(rd.len_delimited()?);
            }
            2 => {
                expect(f, wt, LEN, &"ResourceMetrics")?;
                rd.len_delimited()?;
            }
            3 => {
                expect(f, wt, LEN, &"ResourceMetrics")?;
                utf8(rd.len_delimited()?, &"ResourceMetrics.schema_url")?;
            }
            _ => rd.skip(wt)?,
        }
    }
    let (identity, rhash) = match resource {
        Some(r) if names.last_resource.as_ref().is_some_and(|(b, _, _)| b == r) => {
            let (_, id, h) = names.last_resource.as_ref().expect("checked");
            (id.clone(), *h)
        }
        Some(r) => {
            let res = Resource::decode(r).map_err(|e| e.to_string())?;
            let mut h = Fx::new();
            let mut buf = Vec::new();
            for kv in &res.attributes {
                buf.clear();
                kv.encode(&mut buf).map_err(|e| e.to_string())?;
                h = h.bytes(&buf);
            }
            let id = super::decode::identity(Some(&res));
            if r.len() <= 4096 {
                names.last_resource = Some((r.to_vec(), id.clone(), h.finish()));
            }
            (id, h.finish())
        }
        None => (super::decode::identity(None), Fx::new().finish()),
    };
    names.resource(sender, &identity);
    let mut s = ResourceSummary {
        identity,
        ..Default::default()
    };
    let mut rd = Rd::new(b);
    while rd.more() {
        let (f, wt) = rd.key()?;
        if f == 2 {
            scope_metrics(rd.len_delimited()?, rhash, &mut s, names)?;
        } else {
            rd.skip(wt)?;
        }
    }
    Ok(s)
}

fn scope_metrics(b: &[u8], rhash: u64, s: &mut ResourceSummary, names: &mut NameCache) -> R<()> {
    let mut scope = "";
    let mut rd = Rd::new(b);
    while rd.more() {
        let (f, wt) = rd.key()?;
        match f {
            1 => {
                expect(f, wt, LEN, &"ScopeMetrics")?;
                let mut sd = Rd::new(rd.len_delimited()?);
                while sd.more() {
                    let (f, wt) = sd.key()?;
                    if f == 1 {
                        expect(f, wt, LEN, &"InstrumentationScope")?;
                        scope = utf8(sd.len_delimited()?, &"InstrumentationScope.name")?;
                    } else {
                        sd.skip(wt)?;
                    }
                }
            }
            2 => {
                expect(f, wt, LEN, &"ScopeMetrics")?;
                rd.len_delimited()?;
            }
            _ => rd.skip(wt)?,
        }
    }
    let base = Fx::new().word(rhash).bytes(scope.as_bytes());
    let mut rd = Rd::new(b);
    while rd.more() {
        let (f, wt) = rd.key()?;
        if f == 2 {
            metric(rd.len_delimited()?, base, s, names)?;
        } else {
            rd.skip(wt)?;
        }
    }
    Ok(())
}

/// Field numbers of a data point kind: (attributes, message name, whether its fields 4 and 5
/// are a count and a sum rather than NumberDataPoint's `as_double` and exemplars).
fn point_layout(kind: u32) -> (u32, Name, bool) {
    match kind {
        9 => (9, &"HistogramDataPoint", true),
        10 => (1, &"ExponentialHistogramDataPoint", true),
        11 => (7, &"SummaryDataPoint", true),
        _ => (7, &"NumberDataPoint", false),
    }
}

fn metric_kind(kind: u32) -> MetricKind {
    match kind {
        5 => MetricKind::Gauge,
        9 => MetricKind::Histogram,
        10 => MetricKind::ExponentialHistogram,
        11 => MetricKind::Summary,
        _ => MetricKind::Sum,
    }
}

fn metric(b: &[u8], base: Fx, s: &mut ResourceSummary, names: &mut NameCache) -> R<()> {
    let mut name = "";
    let mut data: Option<(u32, &[u8])> = None;
    let mut rd = Rd::new(b);
    while rd.more() {
        let (f, wt) = rd.key()?;
        match f {
            1..=3 => {
                expect(f, wt, LEN, &"Metric")?;
                let v = utf8(rd.len_delimited()?, &"Metric")?;
                if f == 1 {
                    name = v;
                }
            }
            // gauge, sum, histogram, exponential_histogram, summary (a oneof: the last wins)
            5 | 7 | 9 | 10 | 11 => {
                expect(f, wt, LEN, &"Metric")?;
                data = Some((f, rd.len_delimited()?));
            }
            12 => {
                expect(f, wt, LEN, &"Metric")?;
                rd.len_delimited()?;
            }
            _ => rd.skip(wt)?,
        }
    }
    let Some((kind, data)) = data else {
        return Ok(());
    };
    // Summaries are cumulative by definition, gauges have none; sums, histograms and
    // exponential histograms say so in field 2 (after the points, as encoders write it), sums
    // whether they are monotonic in field 3.
    let has_temporality = matches!(kind, 7 | 9 | 10);
    let mut temporality = if kind == 11 {
        Temporality::Cumulative
    } else {
        Temporality::Unspecified
    };
    let mut monotonic = false;
    let layout = point_layout(kind);
    let mbase = base.bytes(name.as_bytes());
    // First pass: framing, temporality, the number of points and a fingerprint of everything
    // the ledger reads of them. Nothing is noted yet.
    let mut items = 0u64;
    let mut fp = Fx::new();
    let mut rd = Rd::new(data);
    while rd.more() {
        let (f, wt) = rd.key()?;
        if f == 1 {
            expect(f, wt, LEN, &"Metric.data")?;
            let p = point(rd.len_delimited()?, layout, mbase)?;
            items += 1;
            fp = fp
                .word(p.key)
                .word(p.start)
                .word(p.time)
                .word(p.value.to_bits())
                .word(p.count);
        } else if f == 2 && has_temporality {
            expect(f, wt, VARINT, &"Metric.data")?;
            temporality = Temporality::from_i32(rd.varint()? as i32);
        } else if f == 3 && kind == 7 {
            expect(f, wt, VARINT, &"Sum")?;
            monotonic = rd.varint()? != 0;
        } else {
            rd.skip(wt)?;
        }
    }
    s.items += items;
    if items == 0 {
        return Ok(());
    }
    let fp = fp
        .word(items)
        .word(temporality as u64)
        .word(monotonic as u64)
        .finish();
    let mkey = mbase.finish();
    if names.dedup && names.unchanged.get(&mkey) == Some(&fp) {
        // The very points of the export before (same series, starts, times and values), from
        // the same sender, and no series changed since: a repeat, which changes nothing in
        // the ledger (it ignores points not newer than the last of their series).
        return Ok(());
    }
    // Second pass (the points are well-formed): every point's value, each cumulative start.
    let cumulative = temporality == Temporality::Cumulative;
    let mut values = MetricPoints {
        name: name.into(),
        kind: metric_kind(kind),
        temporality,
        monotonic,
        points: Vec::with_capacity(items as usize),
    };
    let mut rd = Rd::new(data);
    while rd.more() {
        let (f, wt) = rd.key()?;
        if f != 1 {
            rd.skip(wt)?;
            continue;
        }
        let bytes = rd.len_delimited()?;
        let p = point(bytes, layout, mbase)?;
        let series = names.name(p.key, || {
            let mut attrs = Vec::new();
            let mut pd = Rd::new(bytes);
            while pd.more() {
                let (f, wt) = pd.key()?;
                if f == layout.0 {
                    attrs.push(KeyValue::decode(pd.len_delimited()?).map_err(|e| e.to_string())?);
                } else {
                    pd.skip(wt)?;
                }
            }
            Ok(super::decode::series_name(name, &attrs))
        })?;
        if cumulative && p.start != 0 && names.start_changed(p.key, p.start) {
            s.cumulative.push(SeriesStart {
                series: series.clone(),
                start_time_unix_nano: p.start,
                key: p.key,
            });
        }
        values.points.push(PointValue {
            key: p.key,
            series,
            start_time_unix_nano: p.start,
            time_unix_nano: p.time,
            value: Num(p.value),
            count: p.count,
        });
    }
    s.metrics.push(values);
    if names.dedup {
        // Passed on: the same points again would change nothing. Remember them.
        if names.unchanged.len() >= MAX_NAMES {
            names.unchanged.clear();
        }
        names.unchanged.insert(mkey, fp);
    }
    Ok(())
}

/// What the walker reads of one data point.
struct Point {
    key: u64,
    start: u64,
    time: u64,
    value: f64,
    count: u64,
}

/// One data point's series key, start (0: none), time, value and count, checking its framing.
#[inline]
fn point(b: &[u8], (attr_field, msg, counted): (u32, Name, bool), mbase: Fx) -> P<Point> {
    let mut p = Point {
        key: 0,
        start: 0,
        time: 0,
        value: 0.0,
        count: 0,
    };
    let mut key = mbase;
    let mut pd = Rd::new(b);
    while pd.more() {
        let (f, wt) = pd.key()?;
        match f {
            2 => {
                expect(f, wt, I64, msg)?;
                p.start = pd.fixed64()?;
            }
            3 => {
                expect(f, wt, I64, msg)?;
                p.time = pd.fixed64()?;
            }
            // NumberDataPoint.as_double; the others' count (fixed64)
            4 => {
                expect(f, wt, I64, msg)?;
                let v = pd.fixed64()?;
                if counted {
                    p.count = v;
                } else {
                    p.value = f64::from_bits(v);
                }
            }
            // the others' sum (double); NumberDataPoint.exemplars
            5 if counted => {
                expect(f, wt, I64, msg)?;
                p.value = f64::from_bits(pd.fixed64()?);
            }
            // NumberDataPoint.as_int (sfixed64)
            6 if !counted => {
                expect(f, wt, I64, msg)?;
                p.value = pd.fixed64()? as i64 as f64;
            }
            _ if f == attr_field => {
                expect(f, wt, LEN, msg)?;
                key = key.bytes(pd.len_delimited()?);
            }
            _ if wt == I64 => {
                pd.take(8)?;
            }
            _ => pd.skip(wt)?,
        }
    }
    p.key = key.finish();
    Ok(p)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod value_tests;
