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

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use super::hash::Fx;
use super::identity::{ResourceSummary, SeriesStart, SoleSender};
use super::values::{MetricKind, MetricPoints, Num, PointValue, Temporality};
use super::wire::*;

mod cache;
mod skeleton;
pub use cache::NameCache;

/// `sender`: the connection's sole holder now, if it has one (see [`NameCache`]).
pub fn summarize_metrics(
    body: &[u8],
    names: &mut NameCache,
    sender: SoleSender,
) -> R<Vec<ResourceSummary>> {
    names.begin(sender);
    let r = match skeleton::replay(body, names, sender) {
        Some(r) => r,
        None => {
            let mut rec = skeleton::Recorder::new(body);
            let r = summarize_body(body, names, sender, rec.as_mut());
            if r.is_ok() {
                names.skeleton = rec.map(|rec| rec.finish(body));
            }
            r
        }
    };
    if r.is_err() {
        // The series noted before the error were not accounted (the body is refused): pass
        // every start on again.
        names.forget_starts();
        names.skeleton = None;
    }
    r
}

/// Where a full walk notes what it read, for the next body's replay (None: not noted).
type Rec<'r> = Option<&'r mut skeleton::Recorder>;

fn summarize_body(
    body: &[u8],
    names: &mut NameCache,
    sender: SoleSender,
    mut rec: Rec,
) -> R<Vec<ResourceSummary>> {
    let mut out = Vec::new();
    let mut rd = Rd::new(body);
    while rd.more() {
        let (f, wt) = rd.key()?;
        if f == 1 {
            expect(f, wt, LEN, &"ExportMetricsServiceRequest")?;
            let b = rd.len_delimited()?;
            out.push(resource_metrics(b, names, sender, rec.as_deref_mut())?);
        } else {
            rd.skip(wt)?;
        }
    }
    Ok(out)
}

fn resource_metrics(
    b: &[u8],
    names: &mut NameCache,
    sender: SoleSender,
    mut rec: Rec,
) -> R<ResourceSummary> {
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
    if let Some(r) = rec.as_deref_mut() {
        r.block(&identity);
    }
    let mut s = ResourceSummary {
        identity,
        ..Default::default()
    };
    let mut rd = Rd::new(b);
    while rd.more() {
        let (f, wt) = rd.key()?;
        if f == 2 {
            scope_metrics(
                rd.len_delimited()?,
                rhash,
                &mut s,
                names,
                rec.as_deref_mut(),
            )?;
        } else {
            rd.skip(wt)?;
        }
    }
    Ok(s)
}

fn scope_metrics(
    b: &[u8],
    rhash: u64,
    s: &mut ResourceSummary,
    names: &mut NameCache,
    mut rec: Rec,
) -> R<()> {
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
            metric(rd.len_delimited()?, base, s, names, rec.as_deref_mut())?;
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

fn metric(
    b: &[u8],
    base: Fx,
    s: &mut ResourceSummary,
    names: &mut NameCache,
    mut rec: Rec,
) -> R<()> {
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
    let mkey = mbase.finish();
    if let Some(r) = rec.as_deref_mut() {
        r.metric(mkey, name, kind);
    }
    // One pass: framing, temporality, every point's key and value. Nothing is noted yet.
    names.keys.clear();
    let mut points = Vec::with_capacity(names.shapes.get(&mkey).map_or(4, |s| s.starts.len()));
    let mut rd = Rd::new(data);
    while rd.more() {
        let (f, wt) = rd.key()?;
        if f == 1 {
            expect(f, wt, LEN, &"Metric.data")?;
            let (key, p) = point(rd.len_delimited()?, layout, mbase, rec.as_deref_mut())?;
            names.keys.push(key);
            points.push(p);
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
    if let Some(r) = rec {
        r.metric_end(temporality, monotonic, &names.keys);
    }
    let m = Read {
        mkey,
        name,
        kind,
        temporality,
        monotonic,
    };
    emit(&m, points, s, names, Some(data))
}

/// What a walk read of one metric besides its points (their keys are in `NameCache::keys`).
pub(super) struct Read<'a> {
    pub(super) mkey: u64,
    pub(super) name: &'a str,
    pub(super) kind: u32,
    pub(super) temporality: Temporality,
    pub(super) monotonic: bool,
}

/// Passes one metric's points on, as far as the ledger needs them (see the module docs):
/// counted; not passed on at all when they are an exact repeat; with the starts that changed.
/// `data` (the metric's data message) names series not named yet; without it, every series
/// must be named already.
pub(super) fn emit(
    m: &Read,
    points: Vec<PointValue>,
    s: &mut ResourceSummary,
    names: &mut NameCache,
    data: Option<&[u8]>,
) -> R<()> {
    let Read {
        mkey,
        name,
        kind,
        temporality,
        monotonic,
    } = *m;
    let items = points.len() as u64;
    s.items += items;
    if items == 0 {
        return Ok(());
    }
    // A fingerprint of everything the ledger reads of the points: one mix per point (the
    // keys' order is checked apart).
    let mut fp = Fx::new();
    for (key, p) in names.keys.iter().zip(&points) {
        fp = fp.word(
            key ^ p.start_time_unix_nano.rotate_left(13)
                ^ p.time_unix_nano.rotate_left(29)
                ^ p.value.0.to_bits().rotate_left(43)
                ^ p.count.rotate_left(53),
        );
    }
    let fp = fp
        .word(items)
        .word(temporality as u64)
        .word(monotonic as u64)
        .finish();
    let dedup = names.dedup;
    let shape = match names.shapes.get_mut(&mkey) {
        // Replayed (no `data`): the skeleton has checked every metric's keys against the
        // cache since its last change, and a replay makes no new series list.
        Some(shape) if data.is_none() || shape.list.keys == names.keys => shape,
        _ => {
            let Some(data) = data else {
                return Err("series cache".into());
            };
            name_series(mkey, name, kind, points.len(), names, data)?;
            names.shapes.get_mut(&mkey).ok_or("series cache")?
        }
    };
    if dedup && shape.last_fp == Some(fp) {
        // The very points of the export before (same series, starts, times and values), from
        // the same sender: a repeat, which changes nothing in the ledger (it ignores points
        // not newer than the last of their series).
        return Ok(());
    }
    if temporality == Temporality::Cumulative {
        for (i, p) in points.iter().enumerate() {
            let start = p.start_time_unix_nano;
            if start == 0 || (dedup && shape.starts[i] == start) {
                continue;
            }
            if dedup {
                shape.starts[i] = start;
            }
            s.cumulative.push(SeriesStart {
                series: shape.list.names[i].clone(),
                start_time_unix_nano: start,
                key: shape.list.keys[i],
            });
        }
    }
    s.metrics.push(MetricPoints {
        name: shape.metric.clone(),
        kind: metric_kind(kind),
        temporality,
        monotonic,
        series: shape.list.clone(),
        points,
    });
    if dedup {
        // Passed on: the same points again would change nothing. Remember them.
        shape.last_fp = Some(fp);
    }
    Ok(())
}

/// New series (or another order) for metric `mkey`: names the ones not named yet from their
/// attributes in `data` (the metric's data message).
fn name_series(
    mkey: u64,
    name: &str,
    kind: u32,
    n: usize,
    names: &mut NameCache,
    data: &[u8],
) -> R<()> {
    let layout = point_layout(kind);
    let mut slices = Vec::with_capacity(n);
    let mut rd = Rd::new(data);
    while rd.more() {
        let (f, wt) = rd.key()?;
        if f == 1 {
            slices.push(rd.len_delimited()?);
        } else {
            rd.skip(wt)?;
        }
    }
    names.new_shape(mkey, name, |i| {
        let mut attrs = Vec::new();
        let mut pd = Rd::new(slices[i]);
        while pd.more() {
            let (f, wt) = pd.key()?;
            if f == layout.0 {
                attrs.push(KeyValue::decode(pd.len_delimited()?).map_err(|e| e.to_string())?);
            } else {
                pd.skip(wt)?;
            }
        }
        Ok(super::decode::series_name(name, &attrs))
    })
}

/// One data point's series key, start (0: none), time, value and count, checking its framing.
/// `rec` notes where each was read and which bytes may change without changing the framing.
#[inline]
fn point(
    b: &[u8],
    (attr_field, msg, counted): (u32, Name, bool),
    mbase: Fx,
    mut rec: Rec,
) -> P<(u64, PointValue)> {
    let mut p = PointValue::default();
    let mut key = mbase;
    let mut at = skeleton::PointAt::default();
    let mut pd = Rd::new(b);
    // Any 8 bytes are a valid fixed64 or double, and a field the walker does not read may hold
    // anything of its length: the bytes just read (ending at the cursor) may change.
    macro_rules! free {
        ($len:expr, $field:expr) => {
            if let Some(r) = rec.as_deref_mut() {
                let end = r.offset(pd.at());
                r.free(end - $len, end);
                if let Some(f) = $field {
                    at.note(f, counted, end - 8);
                }
            }
        };
    }
    while pd.more() {
        let (f, wt) = pd.key()?;
        // An if-chain in the order encoders write the fields (a jump table on the field
        // number mispredicts more).
        if f == 2 {
            expect(f, wt, I64, msg)?;
            p.start_time_unix_nano = pd.fixed64()?;
            free!(8, Some(f));
        } else if f == 3 {
            expect(f, wt, I64, msg)?;
            p.time_unix_nano = pd.fixed64()?;
            free!(8, Some(f));
        } else if f == attr_field {
            expect(f, wt, LEN, msg)?;
            key = key.bytes(pd.len_delimited()?);
        } else if f == 4 {
            // NumberDataPoint.as_double; the others' count (fixed64)
            expect(f, wt, I64, msg)?;
            let v = pd.fixed64()?;
            if counted {
                p.count = v;
            } else {
                p.value = Num(f64::from_bits(v));
            }
            free!(8, Some(f));
        } else if f == 6 && !counted {
            // NumberDataPoint.as_int (sfixed64)
            expect(f, wt, I64, msg)?;
            p.value = Num(pd.fixed64()? as i64 as f64);
            free!(8, Some(f));
        } else if f == 5 && counted {
            // the others' sum (double)
            expect(f, wt, I64, msg)?;
            p.value = Num(f64::from_bits(pd.fixed64()?));
            free!(8, Some(f));
        } else if wt == I64 {
            pd.take(8)?;
            free!(8, None::<u32>);
        } else if wt == LEN {
            let n = pd.len_delimited()?.len();
            free!(n, None::<u32>);
        } else {
            pd.skip(wt)?;
        }
    }
    if let Some(r) = rec {
        r.point(at);
    }
    Ok((key.finish(), p))
}

#[cfg(test)]
mod replay_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod value_tests;
