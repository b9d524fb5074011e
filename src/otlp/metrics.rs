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
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;

    fn fixture() -> ExportMetricsServiceRequest {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/otlp/metrics.json"
        ))
        .unwrap();
        let crate::otlp::decode::Request::Metrics(m) = crate::otlp::decode::decode(
            crate::otlp::signal::Signal::Metrics,
            crate::otlp::decode::Encoding::Json,
            text.as_bytes(),
        )
        .unwrap() else {
            panic!("not metrics")
        };
        m
    }

    #[test]
    fn same_summary_as_the_decoded_message() {
        let m = fixture();
        let want = crate::otlp::decode::summarize_metrics(&m);
        let mut cache = NameCache::default();
        let got = summarize_metrics(&m.encode_to_vec(), &mut cache, None).unwrap();
        assert_eq!(got, want);
        assert!(!want[0].cumulative.is_empty());
        // From the cache the second time: same answer.
        let again = summarize_metrics(&m.encode_to_vec(), &mut cache, None).unwrap();
        assert_eq!(again, want);
    }

    #[test]
    fn unchanged_starts_from_a_sole_sender_are_passed_on_once() {
        let m = fixture();
        let b = m.encode_to_vec();
        let want = crate::otlp::decode::summarize_metrics(&m);
        let n = want[0].cumulative.len();
        let pid = want[0].identity.process_pid.unwrap_or(1) as i32;
        let me = |p: i32| -> SoleSender { Some((p, &[])) };
        let mut c = NameCache::default();
        let first = summarize_metrics(&b, &mut c, me(pid)).unwrap();
        assert_eq!(first, want);
        // Same sender, same starts: counted, not listed again.
        let again = summarize_metrics(&b, &mut c, me(pid)).unwrap();
        assert_eq!(again[0].items, want[0].items);
        assert!(again[0].cumulative.is_empty());
        // Shared connection (after a fork): everything, every time.
        // Shared: no sole sender.
        let shared: SoleSender = None;
        for _ in 0..2 {
            let s = summarize_metrics(&b, &mut c, shared).unwrap();
            assert_eq!(s[0].cumulative.len(), n);
        }
        // A different sole sender: everything again, once.
        let other = summarize_metrics(&b, &mut c, me(pid + 1)).unwrap();
        if want[0].identity.process_pid.is_none() {
            assert_eq!(other[0].cumulative.len(), n);
        } else {
            // The resource names a pid that is not the holder's: never skipped.
            assert_eq!(other[0].cumulative.len(), n);
            let o2 = summarize_metrics(&b, &mut c, me(pid + 1)).unwrap();
            assert_eq!(o2[0].cumulative.len(), n);
        }
        // A moved start (a reset) is passed on.
        let mut m2 = m.clone();
        bump_starts(&mut m2);
        let moved = summarize_metrics(&m2.encode_to_vec(), &mut c, me(pid)).unwrap();
        assert_eq!(moved[0].cumulative.len(), n);
    }

    fn bump_starts(m: &mut ExportMetricsServiceRequest) {
        use opentelemetry_proto::tonic::metrics::v1::metric::Data;
        for rm in &mut m.resource_metrics {
            for sm in &mut rm.scope_metrics {
                for mt in &mut sm.metrics {
                    match &mut mt.data {
                        Some(Data::Sum(s)) => s
                            .data_points
                            .iter_mut()
                            .for_each(|p| p.start_time_unix_nano += 1),
                        Some(Data::Histogram(s)) => s
                            .data_points
                            .iter_mut()
                            .for_each(|p| p.start_time_unix_nano += 1),
                        Some(Data::ExponentialHistogram(s)) => s
                            .data_points
                            .iter_mut()
                            .for_each(|p| p.start_time_unix_nano += 1),
                        Some(Data::Summary(s)) => s
                            .data_points
                            .iter_mut()
                            .for_each(|p| p.start_time_unix_nano += 1),
                        _ => {}
                    }
                }
            }
        }
    }

    #[test]
    fn bad_bodies_are_errors() {
        let b = fixture().encode_to_vec();
        let mut c = NameCache::default();
        for cut in [1, b.len() / 3, b.len() / 2, b.len() - 1] {
            assert!(
                summarize_metrics(&b[..cut], &mut c, None).is_err(),
                "cut at {cut}"
            );
        }
        assert!(summarize_metrics(&[0xff; 64], &mut c, None).is_err());
        // Field 1 with the wrong wire type (varint).
        assert!(summarize_metrics(&[0x08, 0x01], &mut c, None).is_err());
        assert!(summarize_metrics(&[], &mut c, None).unwrap().is_empty());
        // Never stricter than prost: every corruption prost still decodes, the walker takes.
        let (mut both_ok, mut only_walker) = (0, 0);
        for i in 0..b.len() {
            for x in [0x00u8, 0x01, 0x7f, 0x80, 0xff] {
                let mut c2 = b.clone();
                c2[i] = x;
                let walker = summarize_metrics(&c2, &mut NameCache::default(), None);
                match ExportMetricsServiceRequest::decode(c2.as_slice()) {
                    Ok(_) => {
                        assert!(walker.is_ok(), "byte {i} = {x:#x}: {walker:?}");
                        both_ok += 1;
                    }
                    Err(_) if walker.is_ok() => only_walker += 1,
                    Err(_) => {}
                }
            }
        }
        assert!(both_ok > 0);
        // Fields it skips unread (exemplars, bucket counts) may hide what prost would refuse.
        assert!(
            only_walker < b.len(),
            "{only_walker} corruptions only prost refused"
        );
    }

    /// A bench-like export: one cumulative sum of `points` series (`dup`: the first series
    /// twice, with different starts), resource process.pid = `pid`.
    fn sum_of(points: usize, pid: i64, start: u64, dup: bool) -> ExportMetricsServiceRequest {
        use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue};
        use opentelemetry_proto::tonic::metrics::v1::{
            metric, number_data_point, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
        };
        let kv = |k: &str, v: any_value::Value| KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        };
        let point = |i: usize, start: u64| NumberDataPoint {
            attributes: vec![kv("i", any_value::Value::IntValue(i as i64))],
            start_time_unix_nano: start,
            time_unix_nano: start + 10,
            value: Some(number_data_point::Value::AsInt(i as i64)),
            ..Default::default()
        };
        let mut data_points: Vec<_> = (0..points).map(|i| point(i, start)).collect();
        if dup {
            data_points.push(point(0, start + 5));
        }
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", any_value::Value::StringValue("t".into())),
                        kv("process.pid", any_value::Value::IntValue(pid)),
                    ],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "reqs".into(),
                        data: Some(metric::Data::Sum(Sum {
                            aggregation_temporality: 2,
                            is_monotonic: true,
                            data_points,
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn sole(pid: i32) -> SoleSender<'static> {
        Some((pid, &[]))
    }

    #[test]
    fn unchanged_metrics_are_counted_without_lookups() {
        let m = sum_of(100, 42, 1_000, false);
        let b = m.encode_to_vec();
        let want = crate::otlp::decode::summarize_metrics(&m);
        let mut c = NameCache::default();
        assert_eq!(summarize_metrics(&b, &mut c, sole(42)).unwrap(), want);
        assert!(c.unchanged.is_empty(), "the first export changed the cache");
        for _ in 0..3 {
            let again = summarize_metrics(&b, &mut c, sole(42)).unwrap();
            assert_eq!(again[0].items, 100);
            assert!(again[0].cumulative.is_empty());
            assert_eq!(c.unchanged.len(), 1);
        }
        // One series reset (a moved start): only that one is passed on, then quiet again.
        let mut m2 = m.clone();
        if let Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Sum(s)) =
            &mut m2.resource_metrics[0].scope_metrics[0].metrics[0].data
        {
            s.data_points[37].start_time_unix_nano += 1;
        }
        let b2 = m2.encode_to_vec();
        let moved = summarize_metrics(&b2, &mut c, sole(42)).unwrap();
        assert_eq!(moved[0].items, 100);
        assert_eq!(moved[0].cumulative.len(), 1);
        assert_eq!(moved[0].cumulative[0].start_time_unix_nano, 1_001);
        assert!(c.unchanged.is_empty());
        for _ in 0..2 {
            let q = summarize_metrics(&b2, &mut c, sole(42)).unwrap();
            assert_eq!((q[0].items, q[0].cumulative.len()), (100, 0));
        }
        // A new series: passed on.
        let m3 = sum_of(101, 42, 1_000, false);
        let n = summarize_metrics(&m3.encode_to_vec(), &mut c, sole(42)).unwrap();
        assert_eq!(n[0].items, 101);
        // Series 37 moved back to 1_000, series 100 is new.
        assert_eq!(n[0].cumulative.len(), 2);
        // Another sender on the connection: everything again.
        let o = summarize_metrics(&b, &mut c, sole(43)).unwrap();
        assert_eq!(o, want);
        let o2 = summarize_metrics(&b, &mut c, sole(43)).unwrap();
        assert_eq!(
            o2, want,
            "process.pid 42 is not the holder's: never skipped"
        );
    }

    #[test]
    fn a_series_twice_with_two_starts_is_passed_on_every_time() {
        let m = sum_of(3, 7, 500, true);
        let b = m.encode_to_vec();
        let want = crate::otlp::decode::summarize_metrics(&m);
        let mut c = NameCache::default();
        assert_eq!(summarize_metrics(&b, &mut c, sole(7)).unwrap(), want);
        for _ in 0..3 {
            let again = summarize_metrics(&b, &mut c, sole(7)).unwrap();
            assert_eq!(again[0].items, 4);
            // The start alternates: both points of series 0, every time.
            assert_eq!(again[0].cumulative.len(), 2);
        }
    }

    #[test]
    fn a_refused_body_forgets_the_starts_it_noted() {
        // Two resource blocks: the first is noted before the second turns out corrupt.
        let mut m = sum_of(10, 9, 100, false);
        let mut other = sum_of(5, 9, 100, false).resource_metrics.remove(0);
        other.scope_metrics[0].metrics[0].name = "other".into();
        m.resource_metrics.push(other);
        let b = m.encode_to_vec();
        let want = crate::otlp::decode::summarize_metrics(&m);
        let mut c = NameCache::default();
        assert!(summarize_metrics(&b[..b.len() - 3], &mut c, sole(9)).is_err());
        // Nothing of the refused body reached the ledger: all of it is passed on now.
        assert_eq!(summarize_metrics(&b, &mut c, sole(9)).unwrap(), want);
        let quiet = summarize_metrics(&b, &mut c, sole(9)).unwrap();
        assert!(quiet.iter().all(|r| r.cumulative.is_empty()));
        assert!(summarize_metrics(&[0xff; 8], &mut c, sole(9)).is_err());
        assert_eq!(summarize_metrics(&b, &mut c, sole(9)).unwrap(), want);
    }

    #[test]
    fn a_warm_cache_refuses_and_counts_as_a_cold_one() {
        let m = sum_of(20, 5, 100, false);
        let b = m.encode_to_vec();
        let mut warm = NameCache::default();
        for _ in 0..2 {
            summarize_metrics(&b, &mut warm, sole(5)).unwrap();
        }
        assert_eq!(warm.unchanged.len(), 1);
        let items = |r: &[ResourceSummary]| r.iter().map(|r| r.items).sum::<u64>();
        let mut cuts: Vec<Vec<u8>> = (0..b.len()).map(|n| b[..n].to_vec()).collect();
        for i in 0..b.len() {
            for x in [0x00u8, 0x01, 0x02, 0x09, 0x11, 0x7f, 0x80, 0xff] {
                let mut c2 = b.clone();
                c2[i] = x;
                cuts.push(c2);
            }
        }
        for body in &cuts {
            let cold = summarize_metrics(body, &mut NameCache::default(), sole(5));
            let hot = summarize_metrics(body, &mut warm.clone(), sole(5));
            assert_eq!(cold.is_ok(), hot.is_ok(), "{body:?}");
            if let (Ok(cold), Ok(hot)) = (&cold, &hot) {
                assert_eq!(items(cold), items(hot));
                if let Ok(p) = ExportMetricsServiceRequest::decode(body.as_slice()) {
                    let want = crate::otlp::decode::summarize_metrics(&p);
                    assert_eq!(items(hot), items(&want));
                    // Nothing skipped (no sole sender): the same summary as prost's, but for
                    // the internal keys of non-canonically encoded attributes (the walker
                    // hashes them as sent, prost's side as re-encoded).
                    let all = summarize_metrics(body, &mut NameCache::default(), None).unwrap();
                    let unkeyed = |r: &[ResourceSummary]| {
                        r.iter()
                            .map(|r| {
                                let s: Vec<_> = r
                                    .cumulative
                                    .iter()
                                    .map(|s| (s.series.clone(), s.start_time_unix_nano))
                                    .collect();
                                (r.identity.clone(), r.items, s)
                            })
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(unkeyed(&all), unkeyed(&want));
                    if body.len() == b.len() && body[..] == b[..] {
                        assert_eq!(all, want);
                    }
                }
            }
        }
    }
}
