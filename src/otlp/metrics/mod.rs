//! OTLP/HTTP protobuf metrics summarised straight from the wire bytes.
//!
//! The ledger needs little of an export: each resource's identity, the number of data points,
//! and for cumulative points a series key and start time. Decoding the whole message with prost
//! allocates for every attribute of every point, which made decoding most of the receiver's
//! cost per request. This walker reads the same fields without building the message: it checks
//! the framing of everything it passes (varints, lengths, wire types of the fields it knows,
//! UTF-8 of the names it reads), skips unknown fields as protobuf requires, decodes with prost
//! only the resource (once per resource block) and, on a connection's first sight of a series,
//! that point's attributes for the series name. Truncated or garbage bodies are errors, as
//! with prost.
//!
//! Each metric's points are walked once for framing, count and a fingerprint of their series
//! keys and starts; the per-series cache is consulted (a second walk) only when that
//! fingerprint differs from the last export of the metric that changed nothing, which is the
//! steady state of an exporter re-sending its cumulative series.
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
use super::wire::*;

/// holds the connection and the resource names no other pid: after a fork (several holders)
/// or when the holders change, every point is passed on again.
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
    /// Per metric (hash of resource, scope and name): a fingerprint of its points' series keys
    /// and starts, recorded when noting all of them (under `dedup`) passed nothing on and so
    /// changed nothing. While `series` is unchanged since (any change empties this map), the
    /// same points would again pass nothing on: they are counted without being looked up.
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

    /// The series' name, and whether this start must be passed on.
    fn note(
        &mut self,
        key: u64,
        start: u64,
        make: impl FnOnce() -> Result<String, String>,
    ) -> Result<Option<Arc<str>>, String> {
        let dedup = self.dedup;
        let e = match self.series.get_mut(&key) {
            Some(e) => e,
            None => {
                if self.series.len() >= MAX_NAMES {
                    self.series.clear();
                }
                self.unchanged.clear();
                self.series.entry(key).or_insert((make()?.into(), 0))
            }
        };
        if dedup {
            if e.1 == start {
                return Ok(None);
            }
            e.1 = start;
            self.unchanged.clear();
        }
        Ok(Some(e.0.clone()))
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
        items: 0,
        cumulative: Vec::new(),
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

/// Field numbers of a data point kind: (attributes, message name).
fn point_layout(kind: u32) -> (u32, Name) {
    match kind {
        9 => (9, &"HistogramDataPoint"),
        10 => (1, &"ExponentialHistogramDataPoint"),
        11 => (7, &"SummaryDataPoint"),
        _ => (7, &"NumberDataPoint"),
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
    // Summaries are cumulative by definition, gauges have no series start; sums, histograms
    // and exponential histograms say so in field 2 (after the points, as encoders write it).
    let temporality = matches!(kind, 7 | 9 | 10);
    let mut cumulative = kind == 11;
    let (attr_field, point_msg) = point_layout(kind);
    let mbase = base.bytes(name.as_bytes());
    // First pass: framing, temporality, the number of points and a fingerprint of their
    // series keys and starts. Nothing is noted yet.
    let mut items = 0u64;
    let mut fp = Fx::new();
    let mut rd = Rd::new(data);
    while rd.more() {
        let (f, wt) = rd.key()?;
        if f == 1 {
            expect(f, wt, LEN, &"Metric.data")?;
            let (key, start) = point_key(rd.len_delimited()?, attr_field, point_msg, mbase)?;
            items += 1;
            fp = fp.word(key).word(start);
        } else if f == 2 && temporality {
            expect(f, wt, VARINT, &"Metric.data")?;
            cumulative = rd.varint()? == 2;
        } else {
            rd.skip(wt)?;
        }
    }
    s.items += items;
    if !cumulative || items == 0 {
        return Ok(());
    }
    let fp = fp.word(items).finish();
    let mkey = mbase.finish();
    if names.dedup && names.unchanged.get(&mkey) == Some(&fp) {
        // The same series with the same starts as an export that changed nothing, and
        // nothing changed since: noting them again would pass nothing on.
        return Ok(());
    }
    // Second pass (the points are well-formed): note each cumulative point.
    let before = s.cumulative.len();
    let mut rd = Rd::new(data);
    while rd.more() {
        let (f, wt) = rd.key()?;
        if f != 1 {
            rd.skip(wt)?;
            continue;
        }
        let point = rd.len_delimited()?;
        let (key, start) = point_key(point, attr_field, point_msg, mbase)?;
        if start == 0 {
            continue;
        }
        let series = names.note(key, start, || {
            let mut attrs = Vec::new();
            let mut pd = Rd::new(point);
            while pd.more() {
                let (f, wt) = pd.key()?;
                if f == attr_field {
                    attrs.push(KeyValue::decode(pd.len_delimited()?).map_err(|e| e.to_string())?);
                } else {
                    pd.skip(wt)?;
                }
            }
            Ok(super::decode::series_name(name, &attrs))
        })?;
        let Some(series) = series else {
            continue;
        };
        s.cumulative.push(SeriesStart {
            series,
            start_time_unix_nano: start,
            key,
        });
    }
    if names.dedup && s.cumulative.len() == before {
        // Nothing passed on, so nothing changed: remember it.
        if names.unchanged.len() >= MAX_NAMES {
            names.unchanged.clear();
        }
        names.unchanged.insert(mkey, fp);
    }
    Ok(())
}

/// One data point's series key and start (0: none), checking its framing.
#[inline]
fn point_key(point: &[u8], attr_field: u32, point_msg: Name, mbase: Fx) -> P<(u64, u64)> {
    let mut start = 0u64;
    let mut key = mbase;
    let mut pd = Rd::new(point);
    while pd.more() {
        let (f, wt) = pd.key()?;
        if f == 2 {
            expect(f, wt, I64, point_msg)?;
            start = pd.fixed64()?;
        } else if f == attr_field {
            expect(f, wt, LEN, point_msg)?;
            key = key.bytes(pd.len_delimited()?);
        } else if wt == I64 {
            pd.take(8)?;
        } else {
            pd.skip(wt)?;
        }
    }
    Ok((key.finish(), start))
}

#[cfg(test)]
mod tests;
